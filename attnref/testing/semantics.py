"""Semantics profiles: how frameworks disagree about attention, made explicit.

A profile says what a boolean mask means, where the causal diagonal sits
when ``L != S``, and what a query row with no visible key gives. The harness
(:func:`attnref.testing.check`) passes each case to the implementation in the
profile's conventions and expects the answer attnref computes under the same
conventions.

=========== ============== ================ ==================================
profile     bool ``True``  causal, L != S   fully masked row
=========== ============== ================ ==================================
torch       may attend     top-left         0 (math path since 2.5; fused)
torch_mha   masked out     top-left         0
jax         may attend     top-left         mean of the masked keys' values
                                            (masked logits become
                                            ``-0.7 * finfo.max``, float biases
                                            are added: a row whose visible
                                            logits are all -inf spreads over
                                            its masked keys, or is NaN when
                                            every key is visible)
flash       may attend     bottom-right     0
onnx        may attend     bottom-right     0 (Attention, opset 23/24 after
                                            the errata: onnx#7297, 2025, aligns
                                            the causal frontier past the KV
                                            cache, onnx#8068, 2026, zeroes
                                            masked rows)
=========== ============== ================ ==================================

Every profile adds a float mask to the scaled scores and uses
``scale = 1/sqrt(E)`` by default. The ``onnx`` profile reads ``S > L`` as a
KV cache (``past_key``), which is when ONNX aligns the causal frontier
bottom-right; without a cache ONNX stays top-left, as the ``torch`` profile.
``docs/semantics.md`` has the full matrix with sources.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import masks
from ..core import scaled_dot_product_attention


@dataclass(frozen=True)
class Semantics:
    """One framework's attention conventions."""
    name: str
    mask_true_means: str      # "attend" or "masked_out"
    causal_alignment: str     # "top_left" or "bottom_right"
    masked_rows: str          # "zero", "nan" or "uniform"
    description: str

    def arguments(self, inputs):
        """The case's inputs as the implementation must receive them:
        ``(query, key, value)`` and the keyword arguments of the torch SDPA
        signature."""
        mask = inputs["attn_mask"]
        if mask is not None and mask.dtype == bool and self.mask_true_means == "masked_out":
            mask = ~mask
        return ((inputs["query"], inputs["key"], inputs["value"]),
                {"attn_mask": mask, "dropout_p": 0.0, "is_causal": inputs["is_causal"],
                 "scale": inputs["scale"], "enable_gqa": inputs["enable_gqa"]})

    def reference(self, inputs, dtype=None):
        """attnref's answer under this profile, computed in ``dtype`` (the
        inputs' own dtype when None; ``numpy.longdouble`` is allowed)."""
        arrays = [inputs[name] if dtype is None else inputs[name].astype(dtype)
                  for name in ("query", "key", "value")]
        mask = inputs["attn_mask"]
        if mask is not None and mask.dtype != bool and dtype is not None:
            mask = mask.astype(dtype)
        result = scaled_dot_product_attention(
            *arrays, attn_mask=mask, is_causal=inputs["is_causal"], scale=inputs["scale"],
            enable_gqa=inputs["enable_gqa"], causal_alignment=self.causal_alignment,
            masked_rows="nan" if self.masked_rows == "nan" else "zero",
            return_lse=True, backend="numpy")
        if self.masked_rows != "uniform":
            return result.output
        return _large_negative_rows(result, arrays[2], inputs, self.causal_alignment)


def _large_negative_rows(result, value, inputs, alignment):
    """JAX's answer on rows whose visible logits are all -inf (lse = -inf).

    JAX computes ``z = where(visible, scale q.k + bias, -0.7 finfo.max)``.
    On a row with a finite visible logit the masked keys' weights underflow
    to exactly 0, as in attnref. On a row without one, the masked keys hold
    the largest logit, so the softmax is uniform over them: the output is the
    mean of the masked keys' values, and NaN when no key is masked (every
    logit is -inf).
    """
    L, S = result.output.shape[-2], value.shape[-2]
    if S == 0:
        return result.output                                   # an empty softmax sums nothing
    visible = (masks.causal_mask(L, S, alignment=alignment) if inputs["is_causal"]
               else np.ones((L, S), dtype=bool))
    if inputs["attn_mask"] is not None and inputs["attn_mask"].dtype == bool:
        visible = visible & inputs["attn_mask"]
    if inputs["enable_gqa"]:
        value = np.repeat(value, result.output.shape[-3] // value.shape[-3], axis=-3)
    hidden = ~np.broadcast_to(visible, result.output.shape[:-2] + (L, S))
    hidden = hidden.astype(value.dtype)
    count = hidden.sum(axis=-1, keepdims=True)                 # (..., L, 1)
    with np.errstate(invalid="ignore", divide="ignore"):       # 0/0 -> NaN: nothing masked
        spread = np.matmul(hidden, value) / count              # (..., L, Ev)
    masked_rows = np.isneginf(result.lse)[..., None]
    return np.where(masked_rows, spread, result.output).astype(result.output.dtype)


PROFILES = {profile.name: profile for profile in (
    Semantics("torch", "attend", "top_left", "zero",
              "torch.nn.functional.scaled_dot_product_attention (2.5+)"),
    Semantics("torch_mha", "masked_out", "top_left", "zero",
              "torch.nn.MultiheadAttention-style masks: True = masked out"),
    Semantics("jax", "attend", "top_left", "uniform",
              "jax.nn.dot_product_attention (XLA implementation)"),
    Semantics("flash", "attend", "bottom_right", "zero",
              "FlashAttention 2.1+: causal aligned bottom-right"),
    Semantics("onnx", "attend", "bottom_right", "zero",
              "ONNX Attention (opset 23/24 with the 2025-2026 errata)"),
)}


def profile(name):
    """The :class:`Semantics` named ``name``."""
    if isinstance(name, Semantics):
        return name
    if name not in PROFILES:
        raise ValueError(f"semantics must be one of {tuple(PROFILES)}, got {name!r}")
    return PROFILES[name]
