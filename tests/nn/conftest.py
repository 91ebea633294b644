"""The one tolerance table of the attnref.nn tests, and small shared builders.

Every comparison in ``tests/nn`` goes through :func:`assert_close`, whose
tolerance is chosen by the dtype of the computation:

- float64 (``rtol=1e-12, atol=1e-12``): the references are the same formulas
  evaluated in another order (plain loops, torch's fused kernels), so they
  differ by reassociation only: a few units of 2.2e-16 per sum of at most a
  few hundred terms, times the 1/std amplification of a LayerNorm (about 10 at
  the unit-scale inputs used here), i.e. ~1e-13 at worst.
- float32 (``rtol=1e-5, atol=1e-5``): the same argument with eps = 1.2e-7
  gives ~1e-6 through a block (two LayerNorms and an FFN); 1e-5 leaves a 10x
  margin and still catches any wrong formula, whose errors are O(0.1).
"""
import numpy as np
import pytest

from attnref.nn import LayerNorm, Linear, MultiHeadAttention

TOLERANCES = {
    np.dtype(np.float64): dict(rtol=1e-12, atol=1e-12),
    np.dtype(np.float32): dict(rtol=1e-5, atol=1e-5),
}


def _assert_close(actual, expected, dtype=None):
    """``actual`` equals ``expected`` within the tolerance of ``dtype``
    (default ``actual``'s dtype), and has its shape."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    tolerance = TOLERANCES[np.dtype(dtype or actual.dtype)]
    np.testing.assert_allclose(actual, expected, **tolerance)


@pytest.fixture(scope="session")
def assert_close():
    """:func:`_assert_close`, session-scoped so Hypothesis tests may use it."""
    return _assert_close


@pytest.fixture(scope="session", params=[np.float64, np.float32], ids=["float64", "float32"])
def dtype(request):
    return np.dtype(request.param)


def _copy_into_torch(module, layer):
    """Copy an attnref layer's parameters into the matching torch module.

    torch.nn.MultiheadAttention packs W_Q, W_K, W_V row-wise into
    ``in_proj_weight`` (3D, D) and ``in_proj_bias``; W_O is ``out_proj``.
    """
    import torch

    def put(parameter, array):
        assert tuple(parameter.shape) == array.shape, (tuple(parameter.shape), array.shape)
        parameter.copy_(torch.from_numpy(array))

    with torch.no_grad():
        if isinstance(layer, MultiHeadAttention):
            assert module.num_heads == layer.num_heads == layer.num_kv_heads
            projections = (layer.w_q, layer.w_k, layer.w_v)
            put(module.in_proj_weight, np.concatenate([p.weight for p in projections]))
            put(module.in_proj_bias, np.concatenate([p.bias for p in projections]))
            _copy_into_torch(module.out_proj, layer.w_o)
        elif isinstance(layer, Linear):
            put(module.weight, layer.weight)
            put(module.bias, layer.bias)
        elif isinstance(layer, LayerNorm):
            assert module.eps == layer.eps
            put(module.weight, layer.weight)
            put(module.bias, layer.bias)
        else:
            raise TypeError(f"no torch counterpart for {type(layer)}")
    return module


@pytest.fixture(scope="session")
def copy_into_torch():
    """:func:`_copy_into_torch`."""
    return _copy_into_torch
