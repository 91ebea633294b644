"""The one place that checks and normalises attention arguments.

Both the NumPy reference (:mod:`attnref.core`) and the C kernel wrapper
(:mod:`attnref.kernel`) consume the :class:`SdpaCall` record built here, so
neither imports the other's internals. Every error names the argument, what
arrived and what was expected.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from . import masks

BACKENDS = ("auto", "numpy", "c")
MASKED_ROWS = ("zero", "nan")
#: How the C kernel sums the score dot products q.k (``scores=``): "exact",
#: carried in twice the compute dtype's precision and rounded once (the
#: default), or "fast", plain fused multiply-add sums in the compute dtype
#: (as torch and BLAS).
SCORE_MODES = ("exact", "fast")
PRECISIONS = (None, "float32", "float64", "longdouble")


@dataclass(frozen=True)
class SdpaCall:
    """A validated scaled dot-product attention call.

    Arrays keep their own (unbroadcast) shapes and are already in
    ``compute_dtype`` (a bool ``mask`` stays bool). ``batch_shape`` is the
    broadcast of every operand's leading dims, so the output is
    ``batch_shape + (L, Ev)``. Visible keys satisfy
    ``band_lower <= j - i - diag_offset <= band_upper`` (``None`` = unbounded)
    and the mask.
    """
    query: np.ndarray          # (..., L, E)
    key: np.ndarray            # (..., S, E)
    value: np.ndarray          # (..., S, Ev)
    mask: Optional[np.ndarray]  # (..., L, S) broadcastable, bool or compute_dtype
    batch_shape: Tuple[int, ...]
    L: int
    S: int
    E: int
    Ev: int
    kv_group: int              # query head h reads kv head h // kv_group
    scale: float
    softcap: Optional[float]
    diag_offset: int
    band_lower: Optional[int]
    band_upper: Optional[int]
    dropout_p: float
    rng: Optional[np.random.Generator]
    masked_rows: str
    scores: str                # one of SCORE_MODES: how the C kernel sums q.k
    compute_dtype: np.dtype
    output_dtype: np.dtype
    return_weights: bool
    return_lse: bool

    @property
    def output_shape(self):
        return self.batch_shape + (self.L, self.Ev)

    @property
    def lse_shape(self):
        return self.batch_shape + (self.L,)


_NATIVE_FLOATS = frozenset(np.dtype(t) for t in (np.float16, np.float32, np.float64))


def float_array(name, value):
    """``value`` as a floating ndarray; a TypeError names ``name`` otherwise."""
    if isinstance(value, np.ndarray) and value.dtype in _NATIVE_FLOATS:
        return value  # the common case, checked cheaply: small calls are wrapper-bound
    array = np.asarray(value)
    if not masks.is_floating(array.dtype):
        raise TypeError(
            f"{name} must have a floating dtype (float16, bfloat16, float32 or "
            f"float64), got dtype {array.dtype}")
    return array


def unbroadcast(array, keep_last=False):
    """The smallest view of ``array`` that broadcasts back to it: every dim of
    stride 0 (``numpy.broadcast_to``) cut to size 1, except the last one with
    ``keep_last``."""
    dims = array.ndim - 1 if keep_last else array.ndim
    return array[tuple(slice(0, 1) if step == 0 and d < dims else slice(None)
                       for d, step in enumerate(array.strides))]


def as_dtype(array, dtype):
    """``array`` in ``dtype`` without materialising its broadcasts: the
    :func:`unbroadcast` view is converted and broadcast again, so the result
    costs the unbroadcast size. Returns ``array`` itself when it already has
    ``dtype``."""
    if array.dtype == dtype:
        return array
    if array.size == 0 or 0 not in array.strides:
        return array.astype(dtype)
    return np.broadcast_to(unbroadcast(array).astype(dtype), array.shape)


def compute_dtype_for(dtype, precision=None):
    """The dtype attention is computed in for inputs of ``dtype``.

    float32, float64 and longdouble compute as themselves; narrower floats
    (float16, bfloat16) compute in float32; ``precision`` raises the result
    to at least that dtype.
    """
    if precision not in PRECISIONS:
        raise ValueError(
            f"precision must be one of {PRECISIONS}, got {precision!r}")
    dtype = np.dtype(dtype)
    base = dtype if dtype.itemsize >= 4 else np.dtype(np.float32)
    if precision is None:
        return base
    return np.promote_types(base, np.dtype(precision))


def _positive_finite(name, value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {value}")
    return value


def _flag(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


def _broadcast_batch(shapes_by_name, hint=""):
    """Broadcast leading (batch) shapes, naming the operands that disagree."""
    shapes = set(shapes_by_name.values())
    if len(shapes) == 1:
        return shapes.pop()
    try:
        return np.broadcast_shapes(*shapes_by_name.values())
    except ValueError:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes_by_name.items())
        raise ValueError(
            f"leading (batch) dims do not broadcast: {listed}{hint}") from None


def _check_mask(attn_mask, batch_shape, L, S, compute_dtype):
    mask = np.asarray(attn_mask)
    if mask.dtype != bool and not masks.is_floating(mask.dtype):
        raise TypeError(
            f"attn_mask must be bool (True = may attend) or floating (added to "
            f"the scores), got dtype {mask.dtype}")
    target = batch_shape + (L, S)
    if mask.ndim < 2 or mask.ndim > len(target):
        raise ValueError(
            f"attn_mask must broadcast to (..., L, S) = {target}, got shape "
            f"{mask.shape}")
    try:
        if np.broadcast_shapes(mask.shape, target) != target:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"attn_mask of shape {mask.shape} does not broadcast to the "
            f"attention shape (..., L, S) = {target}") from None
    return mask if mask.dtype == bool else as_dtype(mask, compute_dtype)


def _band(is_causal, window, causal_alignment, L, S):
    """``(diag_offset, band_lower, band_upper)``. A window side at least
    ``L + S`` reaches past every key (``|j - i - diag_offset| < L + S``), so it
    is the same as ``None``: any int is accepted, and what reaches the
    kernel fits its int64 fields."""
    if causal_alignment not in masks.ALIGNMENTS:
        raise ValueError(
            f"causal_alignment must be one of {masks.ALIGNMENTS}, got {causal_alignment!r}")
    diag_offset = masks.diagonal_offset(L, S, causal_alignment)
    band_lower = band_upper = None
    if is_causal:
        band_upper = 0
    if window is not None:
        left, right = (None if side is None or side >= L + S else side
                       for side in masks.check_window(window))
        if left is not None:
            band_lower = -left
        if right is not None:
            band_upper = right if band_upper is None else min(band_upper, right)
    return diag_offset, band_lower, band_upper


def sdpa_call(query, key, value, attn_mask=None, dropout_p=0.0,
              is_causal=False, scale=None, enable_gqa=False, *, window=None,
              softcap=None, return_weights=False, return_lse=False,
              masked_rows="zero", precision=None, rng=None,
              causal_alignment="top_left", scores="exact"):
    """Check every argument of ``scaled_dot_product_attention``; see there."""
    query = float_array("query", query)
    key = float_array("key", key)
    value = float_array("value", value)
    for name, array in (("query", query), ("key", key), ("value", value)):
        if array.ndim < 2:
            raise ValueError(
                f"{name} must have at least 2 dims (..., length, features), "
                f"got shape {array.shape}")
    if not (query.dtype == key.dtype == value.dtype):
        raise TypeError(
            f"query, key and value must share one dtype, got {query.dtype}, "
            f"{key.dtype} and {value.dtype}")
    L, E = query.shape[-2:]
    S, key_E = key.shape[-2:]
    value_S, Ev = value.shape[-2:]
    if key_E != E:
        raise ValueError(
            f"key must have the query's feature size E={E} in its last dim, "
            f"got key shape {key.shape} for query shape {query.shape}")
    if value_S != S:
        raise ValueError(
            f"value must have the key's length S={S} in dim -2, got value "
            f"shape {value.shape} for key shape {key.shape}")
    if E < 1:
        raise ValueError(f"query feature size E must be >= 1, got query shape {query.shape}")

    kv_group = 1
    if _flag("enable_gqa", enable_gqa):
        for name, array in (("query", query), ("key", key), ("value", value)):
            if array.ndim < 3:
                raise ValueError(
                    f"enable_gqa=True needs heads in dim -3: {name} must be "
                    f"(..., H, length, features), got shape {array.shape}")
        Hq, Hk, Hv = query.shape[-3], key.shape[-3], value.shape[-3]
        if Hk != Hv:
            raise ValueError(
                f"key and value must have the same number of heads, got "
                f"{Hk} (key shape {key.shape}) and {Hv} (value shape {value.shape})")
        if Hk == 0 or Hq % Hk != 0:
            raise ValueError(
                f"enable_gqa=True needs query heads divisible by key/value "
                f"heads, got Hq={Hq} and Hkv={Hk}")
        kv_group = Hq // Hk
        batch_shape = _broadcast_batch({
            "query": query.shape[:-3], "key": key.shape[:-3],
            "value": value.shape[:-3]}) + (Hq,)
    else:
        batch_shape = _broadcast_batch({
            "query": query.shape[:-2], "key": key.shape[:-2],
            "value": value.shape[:-2]},
            hint=" (for fewer key/value heads than query heads, pass enable_gqa=True)")

    compute_dtype = compute_dtype_for(query.dtype, precision)
    output_dtype = query.dtype if precision is None else compute_dtype
    if scale is None:
        scale = 1.0 / math.sqrt(E)
    scale = _positive_finite("scale", scale)
    if softcap is not None:
        softcap = _positive_finite("softcap", softcap)

    if isinstance(dropout_p, (bool, np.bool_)) or not isinstance(dropout_p, (int, float, np.integer, np.floating)):
        raise TypeError(f"dropout_p must be a float in [0, 1], got {type(dropout_p).__name__}")
    dropout_p = float(dropout_p)
    if not 0.0 <= dropout_p <= 1.0:
        raise ValueError(f"dropout_p must be in [0, 1], got {dropout_p}")
    if dropout_p > 0 and not isinstance(rng, np.random.Generator):
        raise ValueError(
            f"dropout_p={dropout_p} needs rng, a numpy.random.Generator "
            f"(e.g. numpy.random.default_rng(0)), got {rng!r}")

    if masked_rows not in MASKED_ROWS:
        raise ValueError(f"masked_rows must be one of {MASKED_ROWS}, got {masked_rows!r}")
    if not isinstance(scores, str) or scores not in SCORE_MODES:
        raise ValueError(f"scores must be one of {SCORE_MODES}, got {scores!r}")
    diag_offset, band_lower, band_upper = _band(
        _flag("is_causal", is_causal), window, causal_alignment, L, S)
    mask = None if attn_mask is None else _check_mask(
        attn_mask, batch_shape, L, S, compute_dtype)

    return SdpaCall(
        query=as_dtype(query, compute_dtype),
        key=as_dtype(key, compute_dtype),
        value=as_dtype(value, compute_dtype),
        mask=mask, batch_shape=tuple(batch_shape), L=L, S=S, E=E, Ev=Ev,
        kv_group=kv_group, scale=scale, softcap=softcap,
        diag_offset=diag_offset, band_lower=band_lower, band_upper=band_upper,
        dropout_p=dropout_p, rng=rng, masked_rows=masked_rows, scores=scores,
        compute_dtype=np.dtype(compute_dtype), output_dtype=np.dtype(output_dtype),
        return_weights=_flag("return_weights", return_weights),
        return_lse=_flag("return_lse", return_lse))


def check_backend(backend):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend
