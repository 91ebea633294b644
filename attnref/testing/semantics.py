"""Semantics profiles: how frameworks disagree about attention, made explicit.

A profile says what a boolean mask means, where the causal diagonal sits
when ``L != S``, what a query row with no visible key gives, what a masked
score becomes, and which inputs lie outside what the framework promises
(its *hazards*). The harness (:func:`attnref.testing.check`) passes each
case to the implementation in the profile's conventions and expects the
answer attnref computes under the same conventions; a case whose input is
one of the profile's hazards is reported as a HAZARD, not a FAIL, when the
implementation departs from attnref there.

=============== ============== ================ ===============================
profile         bool ``True``  causal, L != S   fully masked row
=============== ============== ================ ===============================
torch           may attend     top-left         0 (math path since 2.5; fused)
torch_mha       masked out     top-left         0
jax             may attend     top-left         mean of the masked keys' values
                                                (masked logits become
                                                ``-0.7 * finfo.max``, float
                                                biases are added: a row whose
                                                visible logits are all -inf
                                                spreads over its masked keys,
                                                or is NaN when every key is
                                                visible)
flash           may attend     bottom-right     0
onnx            may attend     bottom-right     0 (Attention, opset 23/24 after
                                                the errata: onnx#7297, 2025,
                                                aligns the causal frontier past
                                                the KV cache, onnx#8068, 2026,
                                                zeroes masked rows)
onnx_attention  may attend     KV cache         0 (the ``onnx`` conventions as
                                                an opset-23 graph expresses
                                                them: the first S - L keys are
                                                ``past_key``; none when L >= S)
ort_mha         may attend     KV cache         bool mask: a hazard (filled
                                                with the finite
                                                ``mask_filter_value`` -10000,
                                                the row attends to every key);
                                                ``-inf`` bias: NaN
ort_gqa         may attend     KV cache         ``-inf`` bias: NaN (no bool
                                                mask input)
=============== ============== ================ ===============================

Every profile adds a float mask to the scaled scores, applies ``softcap``
before the mask (so a ``-inf`` entry stays ``-inf``) and uses
``scale = 1/sqrt(E)`` by default. The ``onnx`` profile reads ``S > L`` as a
KV cache (``past_key``), which is when ONNX aligns the causal frontier
bottom-right; without a cache ONNX stays top-left, as the ``torch`` profile.
"KV cache" alignment is bottom-right when S > L (the extra keys are the
cache) and top-left when L > S (no cache).

Hazards (:data:`HAZARDS`), inputs no profile here promises anything about:
NaN or inf in a key or value no query may see, a finite number there large
enough that its products overflow the dtype, scores whose partial sums
overflow the dtype, and, under a profile whose masked scores are finite, a
row with no visible key. ``docs/semantics.md`` has the full matrix with
sources; ``docs/conformance.md`` what each implementation does, measured.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .. import masks
from ..core import scaled_dot_product_attention

HAZARDS = {
    "hidden_nonfinite": "NaN or inf in a key or value no query may see",
    "hidden_huge": "a key or value no query may see beyond sqrt(finfo.max) of the dtype",
    "beyond_range": "scores beyond the dtype's safe range (partial sums of q . k past "
                    "finfo.max, or float mask entries so large that they keep only part "
                    "of a score)",
    "finite_mask_empty_row": "a row with no visible key under a finite mask value",
}
# No framework documents that masked keys and values are never read, nor
# results for scores the dtype cannot hold: these are hazards everywhere.
COMMON_HAZARDS = frozenset({"hidden_nonfinite", "hidden_huge", "beyond_range"})
ALIGNMENTS = ("top_left", "bottom_right", "kv_cache")
# The fields that decide :meth:`Semantics.reference` (what golden vectors
# record); the others say what the framework promises, not what it computes.
REFERENCE_FIELDS = ("name", "mask_true_means", "causal_alignment", "masked_rows", "description")


@dataclass(frozen=True)
class Semantics:
    """One framework's attention conventions.

    ``causal_alignment`` is "top_left", "bottom_right", or "kv_cache" (keys
    beyond the queries are a KV cache: bottom-right when S > L, top-left
    when L > S). ``mask_fill`` is what a score hidden by a bool mask or
    ``is_causal`` becomes (``-inf``, or a finite number such as ORT's
    ``mask_filter_value``). ``hazards`` names the :data:`HAZARDS` the
    framework makes no promise about. ``output_dtype`` is the dtype the
    output must have (None: the inputs' dtype).
    """
    name: str
    mask_true_means: str      # "attend" or "masked_out"
    causal_alignment: str     # one of ALIGNMENTS
    masked_rows: str          # "zero", "nan" or "uniform"
    description: str
    mask_fill: float = -np.inf
    softcap_order: str = "before_mask"
    hazards: frozenset = COMMON_HAZARDS
    output_dtype: Optional[str] = None

    def __post_init__(self):
        # attnref's reference computes these conventions and no others
        # (softcap after the mask would turn -inf into -softcap)
        for name, allowed in (("mask_true_means", ("attend", "masked_out")),
                              ("causal_alignment", ALIGNMENTS),
                              ("masked_rows", ("zero", "nan", "uniform")),
                              ("softcap_order", ("before_mask",))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        unknown = frozenset(self.hazards) - frozenset(HAZARDS)
        if unknown:
            raise ValueError(f"hazards must be among {tuple(HAZARDS)}, got {sorted(unknown)}")

    def reference_conventions(self):
        """The :data:`REFERENCE_FIELDS` as a dict of strings."""
        return {name: getattr(self, name) for name in REFERENCE_FIELDS}

    def arguments(self, inputs):
        """The case's inputs as the implementation must receive them:
        ``(query, key, value)`` and the keyword arguments of the torch SDPA
        signature, plus ``softcap`` and ``window`` when the case sets them."""
        mask = inputs["attn_mask"]
        if mask is not None and mask.dtype == bool and self.mask_true_means == "masked_out":
            mask = ~mask
        keywords = {"attn_mask": mask, "dropout_p": 0.0, "is_causal": inputs["is_causal"],
                    "scale": inputs["scale"], "enable_gqa": inputs["enable_gqa"]}
        for extra in ("softcap", "window"):
            if inputs.get(extra) is not None:
                keywords[extra] = inputs[extra]
        return (inputs["query"], inputs["key"], inputs["value"]), keywords

    def alignment(self, L, S):
        """attnref's ``causal_alignment`` for this profile at lengths L, S."""
        if self.causal_alignment == "kv_cache":
            return "bottom_right" if S > L else "top_left"
        return self.causal_alignment

    def reference(self, inputs, dtype=None):
        """attnref's answer under this profile, computed in ``dtype`` (the
        inputs' own dtype when None; ``numpy.longdouble`` is allowed)."""
        arrays = [inputs[name] if dtype is None else inputs[name].astype(dtype)
                  for name in ("query", "key", "value")]
        mask = inputs["attn_mask"]
        if mask is not None and mask.dtype != bool and dtype is not None:
            mask = mask.astype(dtype)
        elif mask is not None and mask.dtype.name == "bfloat16":
            mask = mask.astype(np.float32)   # exact; attnref computes bfloat16 in float32
        alignment = self.alignment(arrays[0].shape[-2], arrays[1].shape[-2])
        result = scaled_dot_product_attention(
            *arrays, attn_mask=mask, is_causal=inputs["is_causal"], scale=inputs["scale"],
            enable_gqa=inputs["enable_gqa"], causal_alignment=alignment,
            softcap=inputs.get("softcap"), window=inputs.get("window"),
            masked_rows="nan" if self.masked_rows == "nan" else "zero",
            return_lse=True, backend="numpy")
        if self.masked_rows != "uniform":
            return result.output
        return _large_negative_rows(result, arrays[2], inputs, alignment)

    def visible(self, inputs, *, float_mask=True):
        """Bool (..., Hq, L, S): which key each query row may see under this
        profile (bool mask, ``is_causal``, ``window`` and, with
        ``float_mask``, the ``-inf`` entries of a float mask)."""
        query, key, mask = inputs["query"], inputs["key"], inputs["attn_mask"]
        L, S = query.shape[-2], key.shape[-2]
        alignment = self.alignment(L, S)
        visible = np.ones((L, S), dtype=bool)
        if inputs["is_causal"] or inputs.get("window") is not None:
            left, right = inputs.get("window") or (None, None)
            if inputs["is_causal"]:
                right = 0 if right is None else min(right, 0)
            offset = S - L if alignment == "bottom_right" else 0
            visible = masks.band_mask(L, S, None if left is None else -left, right,
                                      offset=offset)
        if mask is not None and (mask.dtype == bool or float_mask):
            visible = visible & (mask if mask.dtype == bool else ~np.isneginf(mask))
        shape = np.broadcast_shapes(query.shape[:-1], visible.shape[:-1]) + (S,)
        return np.broadcast_to(visible, shape)

    def hazard(self, inputs):
        """The first of this profile's :data:`HAZARDS` the inputs meet, as
        ``(name, evidence)``, or None when they stay within its promises."""
        for name, found in (("hidden_nonfinite", _hidden_nonfinite),
                            ("hidden_huge", _hidden_huge),
                            ("beyond_range", _beyond_range),
                            ("finite_mask_empty_row", _finite_mask_empty_row)):
            if name in self.hazards:
                evidence = found(self, inputs)
                if evidence:
                    return name, evidence
        return None


def _hidden_entries(semantics, inputs):
    """(key, value) entries in positions no query may see, as flat arrays."""
    visible = semantics.visible(inputs)                       # (..., Hq, L, S)
    seen = visible.any(axis=(-3, -2))                         # (..., S): any head, any row
    hidden = []
    for name in ("key", "value"):
        array = inputs[name]
        shape = np.broadcast_shapes(array.shape[:-3], seen.shape[:-1])
        hide = np.broadcast_to(seen, shape + seen.shape[-1:]) == 0
        array = np.broadcast_to(array, shape + array.shape[-3:])
        hidden.append(np.moveaxis(array, -3, -2)[hide])       # (n, Hkv, E)
    return hidden


def _hidden_nonfinite(semantics, inputs):
    count = sum(int((~np.isfinite(entries.astype(np.float64))).sum())
                for entries in _hidden_entries(semantics, inputs))
    return f"{count} NaN or inf entries in masked keys and values" if count else ""


def _hidden_huge(semantics, inputs):
    limit = float(np.sqrt(np.finfo(inputs["query"].dtype).max))
    count = 0
    for entries in _hidden_entries(semantics, inputs):
        entries = np.abs(entries.astype(np.float64))
        count += int((np.isfinite(entries) & (entries > limit)).sum())
    return f"{count} masked key and value entries beyond {limit:.3g}" if count else ""


def _beyond_range(semantics, inputs):
    """Scores the dtype cannot hold: a partial sum of ``q . k`` (any order:
    ``sum_e |q_e k_e|``) beyond ``finfo.max``; a score added to a finite
    float mask entry so large that the dtype's spacing there exceeds 1 and
    the sum keeps part of the score (rounded to a multiple of that spacing:
    the row's weights then depend on the rounding, not on the scores; a sum
    that rounds back to the mask entry, as ``finfo.min`` plus scores of a
    few units does, keeps the exact answer, a uniform row); or a finite
    score plus a finite mask entry that rounds to inf."""
    dtype = inputs["query"].dtype
    query = np.abs(inputs["query"].astype(np.float64))
    key = inputs["key"].astype(np.float64)
    if query.size == 0 or key.size == 0:
        return ""
    if inputs["enable_gqa"]:
        key = np.repeat(key, query.shape[-3] // key.shape[-3], axis=-3)
    visible = semantics.visible(inputs)
    limit = float(np.finfo(dtype).max)
    with np.errstate(invalid="ignore", over="ignore"):
        bound = np.matmul(query, np.swapaxes(np.abs(key), -1, -2))      # (..., L, S)
        largest = float(np.nanmax(np.where(visible, bound, 0.0)))
        if largest > limit:
            return f"sum |q_e k_e| reaches {largest:.3g}, beyond {limit:.3g}"
        mask = inputs["attn_mask"]
        if mask is None or mask.dtype == bool:
            return ""
        scale = inputs["scale"] if inputs["scale"] is not None else query.shape[-1] ** -0.5
        scores = np.matmul(inputs["query"].astype(np.float64), np.swapaxes(key, -1, -2)) * scale
        bias = np.broadcast_to(mask.astype(np.float64), scores.shape)
        biased = scores + bias
        rounded = biased.astype(dtype).astype(np.float64)
        wide = visible & np.isfinite(bias) & (np.abs(np.spacing(bias.astype(dtype)))
                                              .astype(np.float64) > 1.0)
        # a score partly absorbed: rounded to a multiple of the spacing, not to the bias
        kept_in_part = wide & (rounded != bias.astype(dtype).astype(np.float64))
        if kept_in_part.any():
            return (f"{int(kept_in_part.sum())} scores added to float mask entries as large as "
                    f"{float(np.max(np.abs(bias[kept_in_part]))):.3g}, where "
                    f"{np.dtype(dtype).name} keeps only part of them")
        overflow = visible & np.isfinite(biased) & np.isinf(rounded)
    count = int(overflow.sum())
    return (f"{count} scores plus their float mask entry overflow {np.dtype(dtype).name}"
            if count else "")


def _finite_mask_empty_row(semantics, inputs):
    if not np.isfinite(semantics.mask_fill):
        return ""
    empty = ~semantics.visible(inputs, float_mask=False).any(axis=-1)
    count = int(empty.sum())
    return (f"{count} rows with no visible key, filled with {semantics.mask_fill:g}"
            if count else "")


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


ORT_MASK_FILTER_VALUE = -10000.0   # MultiHeadAttention's mask_filter_value default

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
    Semantics("onnx_attention", "attend", "kv_cache", "zero",
              "ONNX Attention (opset 23) with the keys beyond L as past_key"),
    Semantics("ort_mha", "attend", "kv_cache", "nan",
              "ONNX Runtime com.microsoft MultiHeadAttention: key_padding_mask filled "
              "with mask_filter_value = -10000",
              mask_fill=ORT_MASK_FILTER_VALUE,
              hazards=COMMON_HAZARDS | {"finite_mask_empty_row"}),
    Semantics("ort_gqa", "attend", "kv_cache", "nan",
              "ONNX Runtime com.microsoft GroupQueryAttention (causal, past_key)"),
)}


def profile(name):
    """The :class:`Semantics` named ``name``."""
    if isinstance(name, Semantics):
        return name
    if name not in PROFILES:
        raise ValueError(f"semantics must be one of {tuple(PROFILES)}, got {name!r}")
    return PROFILES[name]
