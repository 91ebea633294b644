"""Every rejection of bad input names the argument, what arrived and what was expected."""
import numpy as np
import pytest

from attnref import scaled_dot_product_attention as sdpa

q = np.zeros((2, 4, 3, 8))
k = np.zeros((2, 4, 5, 8))
v = np.zeros((2, 4, 5, 6))
kv2 = np.zeros((2, 2, 5, 8))

CASES = [
    ({"query": np.zeros(8)}, ValueError, r"query must have at least 2 dims .* got shape \(8,\)"),
    ({"value": np.zeros(5)}, ValueError, r"value must have at least 2 dims"),
    ({"key": np.zeros((2, 4, 5, 7))}, ValueError, r"key must have the query's feature size E=8 .* got key shape \(2, 4, 5, 7\)"),
    ({"value": np.zeros((2, 4, 6, 6))}, ValueError, r"value must have the key's length S=5 .* got value shape \(2, 4, 6, 6\)"),
    ({"query": np.zeros((2, 4, 3, 0)), "key": np.zeros((2, 4, 5, 0))}, ValueError, r"E must be >= 1"),
    ({"key": np.zeros((3, 4, 5, 8)), "value": np.zeros((3, 4, 5, 6))}, ValueError, r"leading \(batch\) dims do not broadcast: query \(2, 4\), key \(3, 4\)"),
    ({"key": kv2, "value": np.zeros((2, 2, 5, 6))}, ValueError, r"do not broadcast.*pass enable_gqa=True"),
    ({"key": np.zeros((2, 3, 5, 8)), "value": np.zeros((2, 3, 5, 6)), "enable_gqa": True}, ValueError, r"query heads divisible by key/value heads, got Hq=4 and Hkv=3"),
    ({"key": kv2, "value": np.zeros((2, 1, 5, 6)), "enable_gqa": True}, ValueError, r"key and value must have the same number of heads, got 2"),
    ({"query": np.zeros((3, 8)), "key": np.zeros((5, 8)), "value": np.zeros((5, 6)), "enable_gqa": True}, ValueError, r"enable_gqa=True needs heads in dim -3: query must be"),
    ({"attn_mask": np.ones((3, 4), bool)}, ValueError, r"attn_mask of shape \(3, 4\) does not broadcast to the attention shape \(\.\.\., L, S\) = \(2, 4, 3, 5\)"),
    ({"attn_mask": np.ones((7, 2, 4, 3, 5), bool)}, ValueError, r"attn_mask must broadcast to \(\.\.\., L, S\) = \(2, 4, 3, 5\), got shape \(7, 2, 4, 3, 5\)"),
    ({"attn_mask": np.ones(5, bool)}, ValueError, r"attn_mask must broadcast to"),
    ({"attn_mask": np.ones((3, 5), np.int64)}, TypeError, r"attn_mask must be bool \(True = may attend\) or floating .* got dtype int64"),
    ({"query": q.astype(np.int32), "key": k.astype(np.int32), "value": v.astype(np.int32)}, TypeError, r"query must have a floating dtype .* got dtype int32"),
    ({"value": v.astype(np.complex128)}, TypeError, r"value must have a floating dtype .* got dtype complex128"),
    ({"key": k.astype(np.float32)}, TypeError, r"query, key and value must share one dtype, got float64, float32 and float64"),
    ({"scale": 0.0}, ValueError, r"scale must be finite and > 0, got 0.0"),
    ({"scale": -1.0}, ValueError, r"scale must be finite and > 0, got -1.0"),
    ({"scale": np.inf}, ValueError, r"scale must be finite and > 0, got inf"),
    ({"scale": np.nan}, ValueError, r"scale must be finite and > 0, got nan"),
    ({"scale": "1"}, TypeError, r"scale must be a real number, got str"),
    ({"softcap": 0.0}, ValueError, r"softcap must be finite and > 0"),
    ({"window": (1, 2, 3)}, ValueError, r"window must be a pair \(left, right\)"),
    ({"window": 3}, ValueError, r"window must be a pair"),
    ({"window": (-2, 0)}, ValueError, r"window left bound must be >= 0 or None, got -2"),
    ({"window": (0, 1.5)}, TypeError, r"window right bound must be an int >= 0 or None, got 1.5"),
    ({"causal_alignment": "center"}, ValueError, r"causal_alignment must be one of \('top_left', 'bottom_right'\), got 'center'"),
    ({"backend": "cuda"}, ValueError, r"backend must be one of \('auto', 'numpy', 'c'\), got 'cuda'"),
    ({"masked_rows": "inf"}, ValueError, r"masked_rows must be one of \('zero', 'nan'\), got 'inf'"),
    ({"scores": "float64"}, ValueError, r"scores must be one of \('exact', 'fast'\), got 'float64'"),
    ({"scores": None}, ValueError, r"scores must be one of \('exact', 'fast'\), got None"),
    ({"precision": "float16"}, ValueError, r"precision must be one of \(None, 'float32', 'float64', 'longdouble'\), got 'float16'"),
    ({"dropout_p": 0.1}, ValueError, r"dropout_p=0.1 needs rng, a numpy.random.Generator"),
    ({"dropout_p": 0.1, "rng": 0}, ValueError, r"needs rng, a numpy.random.Generator .* got 0"),
    ({"dropout_p": 1.5, "rng": np.random.default_rng()}, ValueError, r"dropout_p must be in \[0, 1\], got 1.5"),
    ({"dropout_p": "0.1"}, TypeError, r"dropout_p must be a float in \[0, 1\], got str"),
    ({"is_causal": "yes"}, TypeError, r"is_causal must be a bool, got str"),
    ({"return_lse": 1}, TypeError, r"return_lse must be a bool, got int"),
]


@pytest.mark.parametrize("changes, error, match", CASES, ids=[c[2][:40] for c in CASES])
def test_bad_input_is_named(changes, error, match):
    arguments = {"query": q, "key": k, "value": v, **changes}
    with pytest.raises(error, match=match):
        sdpa(**arguments)


def test_bad_input_is_rejected_by_the_c_backend_too(backend):
    with pytest.raises(ValueError, match="scale must be finite and > 0"):
        sdpa(q, k, v, scale=-1.0, backend=backend)


def test_array_likes_are_accepted():
    output = sdpa([[1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]], [[1.0], [2.0]], backend="numpy")
    assert output.shape == (1, 1)


def test_a_bfloat16_float_mask_is_a_float_mask():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    bfloat16 = np.dtype(ml_dtypes.bfloat16)
    rng = np.random.default_rng(0)
    query, key, value = (rng.standard_normal((1, 2, 4, 8)).astype(bfloat16) for _ in range(3))
    bias = rng.standard_normal((4, 4)).astype(bfloat16)
    output = sdpa(query, key, value, bias)
    # bfloat16 inputs are computed in float32 and the result rounded once
    expected = sdpa(*(x.astype(np.float32) for x in (query, key, value)),
                    bias.astype(np.float32)).astype(bfloat16)
    assert output.dtype == bfloat16
    np.testing.assert_array_equal(output.astype(np.float32), expected.astype(np.float32))
