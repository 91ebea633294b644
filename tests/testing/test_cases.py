"""attnref.testing.cases: every case builds reproducibly from (name, seed),
and the capabilities it requires are exactly those its inputs need."""
import re

import numpy as np
import pytest

import attnref
from attnref.testing.cases import CAPABILITIES, SUITES, Case

# quick is part of standard; full adds sweeps and long rows, of which a few run here
FULL_SAMPLE = ("sweep_L1_S1025_E16", "sweep_L128_S127_E111_causal", "long_rows_causal",
               "huge_scores_masked")
CASES = list(SUITES["standard"].values()) + [SUITES["full"][name] for name in FULL_SAMPLE]
CASE_IDS = [case.name for case in CASES]


def visible(inputs, alignment="top_left"):
    """Bool (B, Hq, L, S): which key each query row may see (attnref's
    conventions: bool True = may attend, ``-inf`` hides, causal aligned as
    given: top-left, or bottom-right as the flash and onnx profiles)."""
    query, key, mask = inputs["query"], inputs["key"], inputs["attn_mask"]
    L, S = query.shape[-2], key.shape[-2]
    allowed = np.ones(query.shape[:-2] + (L, S), dtype=bool)
    if mask is not None:
        allowed &= mask if mask.dtype == bool else ~np.isneginf(mask)
    if inputs["is_causal"]:
        allowed &= np.tri(L, S, k=0 if alignment == "top_left" else S - L, dtype=bool)
    return allowed


def needed_capabilities(inputs):
    """The capabilities an implementation needs for ``inputs``, read off the
    arrays themselves."""
    query, key, value, mask = (inputs[name] for name in ("query", "key", "value", "attn_mask"))
    Hq, L, E = query.shape[-3:]
    Hkv, S = key.shape[-3:-1]
    conditions = {
        "l_ne_s": L != S,
        "e_ne_ev": value.shape[-1] != E,
        "gqa": Hkv != Hq,
        "bool_mask": mask is not None and mask.dtype == bool,
        "float_mask": mask is not None and mask.dtype != bool,
        "causal": inputs["is_causal"],
        "mask_with_causal": mask is not None and inputs["is_causal"],
        "fully_masked_rows": not all(visible(inputs, alignment).any(axis=-1).all()
                                     for alignment in ("top_left", "bottom_right")),
        "empty": 0 in (L, S),
        "scale": inputs["scale"] is not None,
        "per_head_mask": mask is not None and mask.ndim == 4 and mask.shape[-3] > 1,
        "query_longer": L > S,
        "odd_head_dim": E % 8 != 0 or value.shape[-1] % 8 != 0,
        "softcap": inputs["softcap"] is not None,
        "window": inputs["window"] is not None,
    }
    return {capability for capability, needed in conditions.items() if needed}


def garbage_keys(array):
    """Bool (B, H, S): keys or values holding NaN or a huge number (1e30,
    or float16's largest, 65504; honest entries are a few units)."""
    return (~np.isfinite(array) | (np.abs(array) > 1e4)).any(axis=-1)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_every_case_builds_inputs_attnref_accepts(case):
    inputs = case.inputs(seed=0, dtype=np.float32)
    query, key, value = inputs["query"], inputs["key"], inputs["value"]
    assert query.shape == (case.B, case.Hq, case.L, case.E)
    assert key.shape == (case.B, case.heads_kv, case.S, case.E)
    assert value.shape == (case.B, case.heads_kv, case.S, case.value_dim)
    assert query.dtype == key.dtype == value.dtype == np.float32
    if inputs["attn_mask"] is not None:
        assert inputs["attn_mask"].dtype in (np.bool_, np.float32)
    output = attnref.scaled_dot_product_attention(**inputs)
    assert output.shape == (case.B, case.Hq, case.L, case.value_dim)
    assert np.isfinite(output).all()


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_required_capabilities_are_those_the_inputs_need(case):
    inputs = case.inputs(seed=0)
    assert case.requires == needed_capabilities(inputs)
    assert inputs["enable_gqa"] == ("gqa" in case.requires)
    assert case.requires <= CAPABILITIES


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_inputs_depend_on_name_and_seed_only(case):
    first, again, other_seed = case.inputs(seed=3), case.inputs(seed=3), case.inputs(seed=4)
    for name in ("query", "key", "value"):
        np.testing.assert_array_equal(first[name], again[name])
    if first["attn_mask"] is not None:
        np.testing.assert_array_equal(first["attn_mask"], again["attn_mask"])
    assert any(not np.array_equal(first[name], other_seed[name], equal_nan=True)
               for name in ("query", "key", "value") if first[name].size)


@pytest.mark.parametrize("name", ["huge_scores", "padding_mask", "nan_behind_mask"])
def test_the_dtype_only_rounds_the_same_numbers(name):
    wide = SUITES["standard"][name].inputs(seed=1, dtype=np.float64)
    narrow = SUITES["standard"][name].inputs(seed=1, dtype=np.float16)
    for array in ("query", "key", "value"):
        assert narrow[array].dtype == np.float16
        np.testing.assert_array_equal(narrow[array], wide[array].astype(np.float16))


def test_finfo_min_rows_use_the_minimum_of_the_requested_dtype():
    for dtype in (np.float16, np.float32, np.float64):
        mask = SUITES["standard"]["finfo_min_rows"].inputs(dtype=dtype)["attn_mask"]
        assert mask.dtype == dtype and mask.min() == np.finfo(dtype).min


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("name", ["nan_behind_mask", "big_behind_mask"])
def test_garbage_sits_exactly_behind_the_keys_no_query_may_see(name, dtype):
    inputs = SUITES["standard"][name].inputs(seed=0, dtype=dtype)
    hidden = ~visible(inputs).any(axis=-2)                         # (B, Hq, S)
    assert hidden.any() and not hidden.all()
    np.testing.assert_array_equal(garbage_keys(inputs["key"]), hidden)
    np.testing.assert_array_equal(garbage_keys(inputs["value"]), hidden)
    assert np.isfinite(attnref.scaled_dot_product_attention(**inputs)).all()


def test_suites_nest_and_a_name_means_one_case_everywhere():
    quick, standard, full = SUITES["quick"], SUITES["standard"], SUITES["full"]
    assert set(quick) < set(standard) < set(full)
    for name, case in full.items():
        assert case.name == name
        assert re.fullmatch(r"\w+", name, re.ASCII), name  # it goes into reproducers and file names
        assert case.description
        for suite in (quick, standard):
            assert suite.get(name, case) == case


@pytest.mark.parametrize("field, value", [("mask", "ternary"), ("content", "zeros")])
def test_unknown_mask_or_content_is_refused_by_name(field, value):
    with pytest.raises(ValueError, match=rf"{field} must be one of .* got '{value}'"):
        Case("bad", **{field: value})


def test_the_fully_padded_case_pads_one_whole_sequence():
    mask = SUITES["standard"]["padding_fully_padded"].inputs(seed=0)["attn_mask"]
    assert mask.shape == (3, 1, 1, 40)
    assert not mask[0].any() and mask[1:].any(axis=-1).all()
