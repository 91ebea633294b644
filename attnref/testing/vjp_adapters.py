"""VJP adapters: attention backward passes behind the signature
:func:`attnref.testing.backward.check_backward` calls.

Each adapter takes NumPy arrays ``(query, key, value, grad_out,
attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
enable_gqa=False)`` (query (B, Hq, L, E), key (B, Hkv, S, E), value (B, Hkv,
S, Ev), grad_out (B, Hq, L, Ev)) and returns ``(dq, dk, dv)``, the gradients
of ``sum(grad_out * attention(...))``, as NumPy arrays in the inputs' dtype.
Frameworks are imported when an adapter is first called.

:data:`VJP_ADAPTERS` pairs each with the semantics profile it speaks and the
capabilities it claims (the forward adapters' claims: a backward runs the
calls its forward runs)::

    >>> from attnref.testing.backward import check_backward
    >>> from attnref.testing.vjp_adapters import VJP_ADAPTERS
    >>> adapter = VJP_ADAPTERS["attnref-numpy"]
    >>> check_backward(adapter.fn, suite="quick", semantics=adapter.semantics,
    ...                capabilities=adapter.capabilities, progress=False).passed
    True
"""
from __future__ import annotations

import numpy as np

from ..backward import scaled_dot_product_attention_backward
from .adapters import (ATTNREF_CAPABILITIES, JAX_CAPABILITIES, TORCH_CAPABILITIES, Adapter,
                       _float32_if_bfloat16, _framework, _jax_mask_and_bias,
                       _require_no_dropout)


def torch_autograd(query, key, value, grad_out, attn_mask=None, dropout_p=0.0,
                   is_causal=False, scale=None, enable_gqa=False):
    """``torch.autograd.grad`` through
    ``torch.nn.functional.scaled_dot_product_attention`` on the CPU, in the
    inputs' dtype (torch picks its backend: the flash CPU kernel where it
    serves the call, else the math path). Speaks the "torch" profile."""
    torch = _framework("torch")
    _require_no_dropout(dropout_p)
    tensors = [torch.from_numpy(np.array(array)).requires_grad_()
               for array in (query, key, value)]
    mask = None if attn_mask is None else torch.from_numpy(np.ascontiguousarray(attn_mask))
    output = torch.nn.functional.scaled_dot_product_attention(
        *tensors, attn_mask=mask, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
    grads = torch.autograd.grad(output, tensors, torch.from_numpy(np.array(grad_out)),
                                allow_unused=True)
    return tuple(np.zeros(array.shape, array.dtype) if grad is None else grad.numpy()
                 for grad, array in zip(grads, (query, key, value)))


def jax_vjp(query, key, value, grad_out, attn_mask=None, dropout_p=0.0, is_causal=False,
            scale=None, enable_gqa=False, *, window=None):
    """``jax.vjp`` of ``jax.nn.dot_product_attention`` (XLA implementation),
    in JAX's (B, T, N, H) layout as :func:`attnref.testing.adapters.
    jax_dot_product_attention`, with 64-bit types enabled;
    ``window=(left, right)`` is JAX's ``local_window_size``. Speaks the
    "jax" profile."""
    jax = _framework("jax")
    _require_no_dropout(dropout_p)
    mask, bias = _jax_mask_and_bias(attn_mask)
    to_jax_layout = [np.swapaxes(array, -2, -3) for array in (query, key, value)]

    def attention(query, key, value):
        return jax.nn.dot_product_attention(query, key, value, bias=bias, mask=mask,
                                            scale=scale, is_causal=is_causal,
                                            local_window_size=window)

    with jax.enable_x64(True):
        _, pullback = jax.vjp(attention, *to_jax_layout)
        grads = pullback(np.swapaxes(grad_out, -2, -3))
        return tuple(np.swapaxes(np.asarray(grad), -2, -3) for grad in grads)


def attnref_numpy_vjp(query, key, value, grad_out, attn_mask=None, dropout_p=0.0,
                      is_causal=False, scale=None, enable_gqa=False, *, softcap=None,
                      window=None, causal_alignment="top_left"):
    """attnref's NumPy backward, for self-checks. Bind ``causal_alignment=
    "bottom_right"`` (``functools.partial``) for the "flash" and "onnx"
    profiles. A bfloat16 float mask is handed over as float32, as
    :func:`attnref.testing.adapters.attnref_numpy` does."""
    return _attnref_vjp("numpy", query, key, value, grad_out, attn_mask, dropout_p, is_causal,
                        scale, enable_gqa, softcap, window, causal_alignment)


def attnref_c_vjp(query, key, value, grad_out, attn_mask=None, dropout_p=0.0,
                  is_causal=False, scale=None, enable_gqa=False, *, softcap=None,
                  window=None, causal_alignment="top_left"):
    """attnref's C backward (``csrc/backward.c``), for self-checks; raises
    RuntimeError when the kernel is not compiled. Keywords as in
    :func:`attnref_numpy_vjp`."""
    return _attnref_vjp("c", query, key, value, grad_out, attn_mask, dropout_p, is_causal,
                        scale, enable_gqa, softcap, window, causal_alignment)


def _attnref_vjp(backend, query, key, value, grad_out, attn_mask, dropout_p, is_causal, scale,
                 enable_gqa, softcap, window, causal_alignment):
    return tuple(scaled_dot_product_attention_backward(
        grad_out, query, key, value, _float32_if_bfloat16(attn_mask), dropout_p, is_causal,
        scale, enable_gqa, softcap=softcap, window=window, backend=backend,
        causal_alignment=causal_alignment)[:3])


VJP_ADAPTERS = {
    "torch": Adapter(torch_autograd, "torch", TORCH_CAPABILITIES, "torch"),
    "jax": Adapter(jax_vjp, "jax", JAX_CAPABILITIES, "jax"),
    "attnref-numpy": Adapter(attnref_numpy_vjp, "torch", ATTNREF_CAPABILITIES),
    "attnref-c": Adapter(attnref_c_vjp, "torch", ATTNREF_CAPABILITIES),
}
