"""attnref.core against torch.nn.functional.scaled_dot_product_attention,
wherever the SPEC says attnref mirrors it (skipped without torch)."""
import numpy as np
import pytest
from hypothesis import given

from attnref import scaled_dot_product_attention as sdpa
from attnref.testing.strategies import AttentionCase, attention_cases

torch = pytest.importorskip("torch")
F = torch.nn.functional

# torch has no window, softcap or bottom-right alignment, and refuses a mask
# together with is_causal; those options are attnref's own.
torch_cases = attention_cases(lengths=(0, 1, 2, 17, 97, 129), head_dims=(1, 16, 59, 64),
                              allow_window=False, allow_softcap=False,
                              alignments=("top_left",))


def run_torch(case):
    options = dict(case.options)
    if "attn_mask" in options:
        options["attn_mask"] = torch.from_numpy(np.ascontiguousarray(options["attn_mask"]))
    tensors = [torch.from_numpy(a) for a in (case.query, case.key, case.value)]
    return F.scaled_dot_product_attention(*tensors, **options).numpy()


@given(torch_cases)
def test_reference_agrees_with_torch_in_float64(case):
    if "attn_mask" in case.options:
        case.options.pop("is_causal", None)
    expected = run_torch(case)
    actual = sdpa(case.query, case.key, case.value, backend="numpy", **case.options)
    # both in float64; torch scales q and k by sqrt(scale) each, attnref the scores
    np.testing.assert_allclose(actual, expected, rtol=1e-10, atol=1e-12)


def test_fully_masked_rows_match_torch_math_path():
    rng = np.random.default_rng(0)
    query, key, value = (rng.standard_normal((1, 2, 4, 8)) for _ in range(3))
    allowed = rng.random((4, 4)) < 0.5
    allowed[2] = False
    expected = F.scaled_dot_product_attention(*(torch.from_numpy(a) for a in (query, key, value)),
                                              attn_mask=torch.from_numpy(allowed)).numpy()
    np.testing.assert_allclose(sdpa(query, key, value, attn_mask=allowed), expected,
                               rtol=1e-12, atol=1e-15)
    assert np.array_equal(expected[..., 2, :], np.zeros((1, 2, 8)))


@pytest.mark.parametrize("dtype, tolerance", [(np.float64, 1e-10), (np.float32, 2e-5)])
@pytest.mark.parametrize("L, S", [(0, 4), (4, 0), (3, 7), (7, 3), (1, 9)])
@pytest.mark.parametrize("mask_kind", ["none", "causal", "bool", "float"])
def test_adversarial_inputs_agree_with_torch(backend, dtype, tolerance, L, S, mask_kind):
    """L != S (is_causal top-left), empty L or S, GQA, E != Ev, a scale
    override, and bool and float masks with a fully masked row."""
    rng = np.random.default_rng(L * 10 + S)
    query = rng.standard_normal((2, 4, L, 5)).astype(dtype)   # (B, Hq, L, E)
    key = rng.standard_normal((2, 2, S, 5)).astype(dtype)     # (B, Hkv, S, E)
    value = rng.standard_normal((2, 2, S, 3)).astype(dtype)   # (B, Hkv, S, Ev)
    options = {"scale": 0.7, "enable_gqa": True, "is_causal": mask_kind == "causal"}
    if mask_kind in ("bool", "float"):
        allowed = rng.random((4, L, S)) < 0.6                 # (Hq, L, S)
        allowed[:, :1] = False                                # a fully masked row
        options["attn_mask"] = (allowed if mask_kind == "bool" else np.where(
            allowed, rng.standard_normal(allowed.shape), -np.inf).astype(dtype))
    expected = run_torch(AttentionCase(query, key, value, options))
    actual = sdpa(query, key, value, backend=backend, **options)
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    np.testing.assert_allclose(actual, expected, rtol=tolerance, atol=tolerance)
