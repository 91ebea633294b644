"""Adapters: attention implementations behind the signature :func:`check` calls.

Each adapter takes NumPy arrays with the torch SDPA signature
``(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
scale=None, enable_gqa=False)`` (query (B, Hq, L, E), key (B, Hkv, S, E),
value (B, Hkv, S, Ev)) and returns the output (B, Hq, L, Ev) as a NumPy
array in the inputs' dtype. Frameworks are imported when an adapter is first
called, so this module imports without them.

The ONNX adapters (``onnxruntime``, ``onnx-reference``, ``onnxruntime-mha``,
``onnxruntime-gqa``) live in :mod:`attnref.testing.onnx_adapters`.

Each adapter carries, as a module constant, the capabilities
(:data:`attnref.testing.CAPABILITIES`) it claims; :data:`ADAPTERS` pairs
every adapter with the semantics profile it speaks and those claims::

    >>> from attnref.testing import adapters, check
    >>> adapter = adapters.ADAPTERS["attnref-numpy"]
    >>> report = check(adapter.fn, suite="quick", semantics=adapter.semantics,
    ...                capabilities=adapter.capabilities, progress=False)
    >>> report.passed
    True

``dropout_p`` must be 0: a conformance case has one right answer.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import numpy as np

from .._optional import import_optional as _framework
from ..core import scaled_dot_product_attention
from . import onnx_adapters
from .onnx_adapters import _require_no_dropout
from .cases import CAPABILITIES

# Measured with torch 2.13.0 (CPU): every case shape runs, including a mask
# together with is_causal, GQA, L != S and empty lengths; SDPA has no softcap
# and no window keyword.
TORCH_CAPABILITIES = CAPABILITIES - {"softcap", "window"}
TORCH_MHA_CAPABILITIES = TORCH_CAPABILITIES
# jax.nn.dot_product_attention checks that value has key's shape, so E != Ev
# is refused ("value shape should be ..."); it has local_window_size but no softcap.
JAX_CAPABILITIES = CAPABILITIES - {"e_ne_ev", "softcap"}
ATTNREF_CAPABILITIES = CAPABILITIES


def torch_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
               scale=None, enable_gqa=False):
    """``torch.nn.functional.scaled_dot_product_attention`` on NumPy arrays.

    Runs on the CPU in the inputs' dtype (float16 included), without
    autograd. Speaks the "torch" profile: bool ``attn_mask`` True = may
    attend, causal aligned top-left.
    """
    torch = _framework("torch")
    _require_no_dropout(dropout_p)
    tensors = [_torch_tensor(torch, array) for array in (query, key, value)]
    mask = None if attn_mask is None else _torch_tensor(torch, attn_mask)
    with torch.no_grad():
        output = torch.nn.functional.scaled_dot_product_attention(
            *tensors, attn_mask=mask, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
    if output.dtype == torch.bfloat16:   # NumPy has no bfloat16: hand the bits over
        return output.view(torch.int16).numpy().view(np.asarray(query).dtype)
    return output.numpy()


def _torch_tensor(torch, array):
    """A CPU tensor of ``array``; ml_dtypes' bfloat16 goes over as its bits."""
    array = np.ascontiguousarray(array)
    if array.dtype.name == "bfloat16":
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def torch_mha_masks(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                    scale=None, enable_gqa=False):
    """torch SDPA for callers whose bool masks mean True = masked out.

    ``torch.nn.MultiheadAttention`` (``attn_mask``, ``key_padding_mask``) and
    ``nn.Transformer`` use that polarity; this adapter receives such a mask,
    inverts it and calls :func:`torch_sdpa`, so ``check(torch_mha_masks,
    semantics="torch_mha")`` exercises the polarity translation. Float masks
    are additive in both conventions and pass unchanged.
    """
    if attn_mask is not None and np.asarray(attn_mask).dtype == bool:
        attn_mask = ~np.asarray(attn_mask)
    return torch_sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)


def jax_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
                              is_causal=False, scale=None, enable_gqa=False, *, window=None):
    """``jax.nn.dot_product_attention`` (XLA implementation) on NumPy arrays.

    JAX's layout is (B, T, N, H) (T = L, N heads, H = E), so the head and
    length dims are swapped on the way in and out. A bool ``attn_mask``
    (True = may attend) becomes JAX's ``mask``, a float one its additive
    ``bias``; GQA is native (fewer key/value heads need no flag). Runs with
    64-bit types enabled (the ``jax.enable_x64`` context manager, JAX 0.8 or
    later) so float64 inputs stay float64, though JAX computes the softmax
    in float32 whatever the dtype. ``window=(left, right)`` is JAX's
    ``local_window_size``. Speaks the "jax" profile.
    """
    jax = _framework("jax")
    _require_no_dropout(dropout_p)
    mask, bias = _jax_mask_and_bias(attn_mask)
    to_jax_layout = [np.swapaxes(array, -2, -3) for array in (query, key, value)]
    with jax.enable_x64(True):
        output = jax.nn.dot_product_attention(
            *to_jax_layout, bias=bias, mask=mask, scale=scale, is_causal=is_causal,
            local_window_size=window)
    return np.swapaxes(np.asarray(output), -2, -3)


def attnref_numpy(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                  scale=None, enable_gqa=False, *, softcap=None, window=None,
                  causal_alignment="top_left"):
    """attnref's NumPy reference, for self-checks. Bind ``causal_alignment=
    "bottom_right"`` (``functools.partial``) for the "flash" and "onnx"
    profiles. A bfloat16 float mask is handed over as float32 (exactly:
    attnref computes bfloat16 in float32 and takes no bfloat16 mask)."""
    return scaled_dot_product_attention(
        query, key, value, _float32_if_bfloat16(attn_mask), dropout_p, is_causal, scale,
        enable_gqa, softcap=softcap, window=window, backend="numpy",
        causal_alignment=causal_alignment)


def attnref_c(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
              scale=None, enable_gqa=False, *, softcap=None, window=None,
              causal_alignment="top_left"):
    """attnref's fused C kernel, for self-checks; raises RuntimeError when
    the kernel is not compiled. ``causal_alignment`` as in
    :func:`attnref_numpy`, and so is a bfloat16 float mask."""
    return scaled_dot_product_attention(
        query, key, value, _float32_if_bfloat16(attn_mask), dropout_p, is_causal, scale,
        enable_gqa, softcap=softcap, window=window, backend="c",
        causal_alignment=causal_alignment)


def _float32_if_bfloat16(mask):
    if mask is not None and np.asarray(mask).dtype.name == "bfloat16":
        return np.asarray(mask).astype(np.float32)
    return mask


class Adapter(NamedTuple):
    """An adapter with the profile it speaks, the capabilities it claims, the
    module it wraps (None for attnref's own backends) and any other module
    it needs."""
    fn: Callable
    semantics: str
    capabilities: frozenset
    framework: Optional[str] = None
    needs: tuple = ()

    def framework_version(self):
        """Import the wrapped framework (and what else it needs) now and
        return its version (None for attnref's backends); an ImportError with
        the install command when one is missing."""
        for module in self.needs:
            _framework(module)
        return None if self.framework is None else _framework(self.framework).__version__


ADAPTERS = {
    "torch": Adapter(torch_sdpa, "torch", TORCH_CAPABILITIES, "torch"),
    "torch-mha": Adapter(torch_mha_masks, "torch_mha", TORCH_MHA_CAPABILITIES, "torch"),
    "jax": Adapter(jax_dot_product_attention, "jax", JAX_CAPABILITIES, "jax"),
    "onnxruntime": Adapter(onnx_adapters.onnxruntime_attention, "onnx_attention",
                           onnx_adapters.ONNXRUNTIME_CAPABILITIES, "onnxruntime", ("onnx",)),
    "onnx-reference": Adapter(onnx_adapters.onnx_reference_attention, "onnx_attention",
                              onnx_adapters.ONNX_REFERENCE_CAPABILITIES, "onnx"),
    "onnxruntime-mha": Adapter(onnx_adapters.onnxruntime_mha, "ort_mha",
                               onnx_adapters.MHA_CAPABILITIES, "onnxruntime", ("onnx",)),
    "onnxruntime-gqa": Adapter(onnx_adapters.onnxruntime_gqa, "ort_gqa",
                               onnx_adapters.GQA_CAPABILITIES, "onnxruntime", ("onnx",)),
    "attnref-numpy": Adapter(attnref_numpy, "torch", ATTNREF_CAPABILITIES),
    "attnref-c": Adapter(attnref_c, "torch", ATTNREF_CAPABILITIES),
}


def _jax_mask_and_bias(attn_mask):
    """``attn_mask`` as JAX's ``(mask, bias)`` keywords: a bool mask goes to
    ``mask``, a float one to ``bias``, each 4-D; the other is None."""
    if attn_mask is None:
        return None, None
    attn_mask = np.asarray(attn_mask)
    if attn_mask.dtype == bool:
        return _four_dims(attn_mask), None
    return None, _four_dims(attn_mask)


def _four_dims(mask):
    """JAX wants 4-D masks and biases: (L, S) becomes (1, 1, L, S)."""
    return mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
