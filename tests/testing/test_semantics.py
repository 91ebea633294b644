"""attnref.testing.semantics: each profile's conventions on small inputs
whose answers are worked out by hand."""
from pathlib import Path

import numpy as np
import pytest

import attnref
from attnref.testing.cases import SUITES
from attnref.testing.semantics import PROFILES, Semantics, profile


def call(query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False):
    """A case's inputs dict, as :meth:`attnref.testing.Case.inputs` returns it."""
    return {"query": query, "key": key, "value": value, "attn_mask": attn_mask,
            "is_causal": is_causal, "scale": scale, "enable_gqa": enable_gqa}


def random_call(L, S, *, attn_mask=None, is_causal=False, seed=0):
    rng = np.random.default_rng(seed)
    return call(rng.standard_normal((1, 2, L, 4)), rng.standard_normal((1, 2, S, 4)),
                rng.standard_normal((1, 2, S, 3)), attn_mask, is_causal)


def test_the_profiles_and_their_lookup():
    assert set(PROFILES) == {"torch", "torch_mha", "jax", "flash", "onnx", "onnx_attention",
                             "ort_mha", "ort_gqa"}
    for name, semantics in PROFILES.items():
        assert profile(name) is semantics and profile(semantics) is semantics


def test_an_unknown_profile_is_refused_by_name():
    with pytest.raises(ValueError, match=r"semantics must be one of \('torch', .*\), got 'keras'"):
        profile("keras")


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_arguments_invert_a_bool_mask_only_for_torch_mha(name):
    allowed = np.array([[True, False, True], [False, False, True]])
    bias = np.array([[0.0, -np.inf, 1.5], [0.5, 0.0, -2.0]])
    inputs = random_call(2, 3, attn_mask=allowed)
    (query, key, value), keywords = profile(name).arguments(inputs)
    assert query is inputs["query"] and key is inputs["key"] and value is inputs["value"]
    expected = ~allowed if name == "torch_mha" else allowed
    np.testing.assert_array_equal(keywords["attn_mask"], expected)
    assert keywords == {"attn_mask": keywords["attn_mask"], "dropout_p": 0.0,
                        "is_causal": False, "scale": None, "enable_gqa": False}
    assert profile(name).arguments(random_call(2, 3, attn_mask=bias))[1]["attn_mask"] is bias
    assert profile(name).arguments(random_call(2, 3))[1]["attn_mask"] is None


@pytest.mark.parametrize("name", ["flash", "onnx"])
@pytest.mark.parametrize("L, S", [(2, 5), (5, 2), (4, 4)])
def test_flash_and_onnx_align_the_causal_diagonal_bottom_right(name, L, S):
    causal = random_call(L, S, is_causal=True)
    causal_and_mask = random_call(L, S, is_causal=True, attn_mask=np.tri(L, S, 1, dtype=bool))
    for inputs in (causal, causal_and_mask):
        expected = attnref.scaled_dot_product_attention(
            **inputs, causal_alignment="bottom_right", backend="numpy")
        np.testing.assert_array_equal(profile(name).reference(inputs), expected)
    if L != S:
        assert not np.allclose(profile(name).reference(causal), profile("torch").reference(causal))


@pytest.mark.parametrize("name", ["torch", "torch_mha"])
def test_torch_profiles_are_attnref_defaults(name):
    inputs = random_call(5, 2, is_causal=True)
    expected = attnref.scaled_dot_product_attention(**inputs, backend="numpy")
    np.testing.assert_array_equal(profile(name).reference(inputs), expected)


def test_jax_fully_masked_rows_average_every_value():
    value = np.array([[[[1.0, 2.0], [3.0, 4.0], [5.0, 9.0]]]])           # (1, 1, 3, 2)
    allowed = np.array([[True, False, True], [False, False, False]])
    inputs = call(np.zeros((1, 1, 2, 2)), np.ones((1, 1, 3, 2)), value, allowed)
    # equal scores: row 0 averages its visible keys 0 and 2, row 1 sees none:
    # JAX's finite -0.7 * finfo.max logits make it the mean of all three values
    np.testing.assert_allclose(profile("jax").reference(inputs)[0, 0],
                               [[3.0, 5.5], [3.0, 5.0]], rtol=1e-15)
    np.testing.assert_allclose(profile("torch").reference(inputs)[0, 0],
                               [[3.0, 5.5], [0.0, 0.0]], rtol=1e-15)


def test_jax_masked_rows_read_the_kv_head_of_their_group():
    head_values = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 9.0]])            # mean (3, 5)
    value = np.stack([head_values, 10 * head_values])[None]                   # (1, 2, 3, 2)
    inputs = call(np.zeros((1, 4, 1, 2)), np.ones((1, 2, 3, 2)), value,
                  np.zeros((1, 3), dtype=bool), enable_gqa=True)
    # query head h reads kv head h // 2 (torch's repeat_interleave), not h % 2
    np.testing.assert_allclose(profile("jax").reference(inputs)[0, :, 0],
                               [[3.0, 5.0], [3.0, 5.0], [30.0, 50.0], [30.0, 50.0]],
                               rtol=1e-15)


def test_jax_with_no_keys_gives_zeros():
    inputs = call(np.ones((1, 1, 2, 4)), np.ones((1, 1, 0, 4)), np.ones((1, 1, 0, 3)))
    np.testing.assert_array_equal(profile("jax").reference(inputs), np.zeros((1, 1, 2, 3)))


def test_reference_computes_in_the_requested_dtype():
    inputs = SUITES["quick"]["float_mask"].inputs(seed=0, dtype=np.float32)
    for name in PROFILES:
        narrow = profile(name).reference(inputs)
        wide = profile(name).reference(inputs, np.float64)
        assert narrow.dtype == np.float32 and wide.dtype == np.float64
        np.testing.assert_allclose(narrow, wide, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_no_profile_lets_nan_hidden_behind_a_mask_leak(name):
    inputs = SUITES["standard"]["nan_behind_mask"].inputs(seed=0)
    assert np.isnan(inputs["value"]).any()
    assert np.isfinite(profile(name).reference(inputs)).all()


def test_the_docs_matrix_has_a_column_and_a_section_for_every_profile():
    text = (Path(__file__).parents[2] / "docs" / "semantics.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| convention"))
    for name in PROFILES:
        assert f"`{name}`" in header and f"### `{name}`" in text, name


@pytest.mark.parametrize("name", ["onnx_attention", "ort_mha", "ort_gqa"])
@pytest.mark.parametrize("L, S, alignment", [(2, 5, "bottom_right"), (5, 2, "top_left"),
                                             (4, 4, "top_left")])
def test_kv_cache_profiles_align_bottom_right_only_past_a_cache(name, L, S, alignment):
    inputs = random_call(L, S, is_causal=True)
    expected = attnref.scaled_dot_product_attention(
        **inputs, causal_alignment=alignment, backend="numpy")
    assert profile(name).alignment(L, S) == alignment
    np.testing.assert_array_equal(profile(name).reference(inputs), expected)


def test_softcap_and_window_reach_the_implementation_only_when_set():
    inputs = SUITES["standard"]["softcap_masked"].inputs(seed=0)
    keywords = profile("torch").arguments(inputs)[1]
    assert keywords["softcap"] == 2.0 and "window" not in keywords
    keywords = profile("torch").arguments(SUITES["standard"]["causal_window"].inputs(seed=0))[1]
    assert keywords["window"] == (7, 0) and "softcap" not in keywords
    assert "softcap" not in profile("torch").arguments(SUITES["quick"]["aligned"].inputs())[1]


@pytest.mark.parametrize("case, dtype, expected", [
    ("nan_behind_mask", np.float32, "hidden_nonfinite"),
    ("big_behind_mask", np.float32, "hidden_huge"),      # 1e30 > sqrt(3.4e38)
    ("big_behind_mask", np.float16, "hidden_huge"),      # 65504 > sqrt(65504)
    ("big_behind_mask", np.float64, None),               # 1e30 < sqrt(1.8e308)
    ("finfo_min_rows", np.float32, None),                # s + finfo.min rounds to finfo.min
    ("finfo_min_rows", np.float16, None),                # |s| < 16: rounds to -65504 too
    ("float_mask", np.float16, None),
    ("aligned", np.float32, None),
    ("fully_masked_neg_inf", np.float32, None),          # -inf rows: promised 0 (or NaN)
])
def test_hazards_are_read_off_the_inputs(case, dtype, expected):
    inputs = SUITES["standard"][case].inputs(seed=0, dtype=dtype)
    for name in PROFILES:
        found = profile(name).hazard(inputs)
        assert (found and found[0]) == (expected or None), name


def test_huge_dot_products_are_beyond_the_range_of_float16():
    rng = np.random.default_rng(0)
    query = np.full((1, 1, 2, 64), 40.0, dtype=np.float16)
    inputs = call(query, query.copy(), rng.standard_normal((1, 1, 2, 4)).astype(np.float16))
    name, evidence = profile("torch").hazard(inputs)
    assert name == "beyond_range" and "1.02e+05" in evidence     # 64 * 40 * 40
    assert profile("torch").hazard({**inputs, **{k: inputs[k].astype(np.float32)
                                                 for k in ("query", "key", "value")}}) is None


def test_a_mask_entry_that_keeps_part_of_a_score_is_beyond_the_range():
    one = np.ones((1, 1, 1, 1), dtype=np.float16)
    for bias, expected in ((-4096.0, "beyond_range"),       # float16 spacing 4: 3 - 4096 -> -4092
                           (-1024.0, None)):                # spacing 1: the score is kept whole
        inputs = call(3 * one, one, one, attn_mask=np.full((1, 1), bias, np.float16), scale=1.0)
        found = profile("torch").hazard(inputs)
        assert (found and found[0]) == expected, bias


def test_a_row_without_keys_is_a_hazard_only_under_a_finite_mask_value():
    inputs = SUITES["standard"]["padding_fully_padded"].inputs(seed=0)
    assert profile("torch").hazard(inputs) is None
    name, evidence = profile("ort_mha").hazard(inputs)
    assert name == "finite_mask_empty_row" and evidence.startswith("32 rows")   # L = 16, Hq = 2
    assert evidence.endswith("filled with -10000")


@pytest.mark.parametrize("field, value", [("causal_alignment", "diagonal"),
                                          ("softcap_order", "after_mask"),
                                          ("masked_rows", "mean"),
                                          ("hazards", frozenset({"cosmic_rays"}))])
def test_a_profile_attnref_cannot_compute_is_refused_by_name(field, value):
    fields = {"name": "custom", "mask_true_means": "attend", "causal_alignment": "top_left",
              "masked_rows": "zero", "description": "a custom profile", field: value}
    with pytest.raises(ValueError, match=rf"{field} must be"):
        Semantics(**fields)
