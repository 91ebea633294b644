"""Attention masks as boolean arrays: ``True`` means *may attend*.

Every builder returns a NumPy ``bool`` array shaped to broadcast against
attention scores ``(..., L, S)`` (shape letters as in :mod:`attnref.core`).
Causal and sliding-window masks are both *bands* around a diagonal; the
diagonal is placed by an alignment:

* ``"top_left"`` (PyTorch ``is_causal``, the original Transformer): query ``i``
  sits at key ``i``; diagonal offset 0.
* ``"bottom_right"`` (FlashAttention >= 2.1, KV-cache decoding): the last query
  sits at the last key; diagonal offset ``S - L``.

Key ``j`` is visible from query ``i`` when
``lower <= j - i - offset <= upper``; causal is ``upper = 0``, a window
``(left, right)`` is ``lower = -left, upper = right``.

Bool masks combine by logical AND, additive float masks by addition
(:func:`combine_masks`); :func:`mask_to_bias` turns one into the other.
"""
from __future__ import annotations

import numpy as np

ALIGNMENTS = ("top_left", "bottom_right")

__all__ = [
    "ALIGNMENTS",
    "diagonal_offset",
    "band_mask",
    "causal_mask",
    "sliding_window_mask",
    "padding_mask",
    "block_diagonal_mask",
    "combine_masks",
    "mask_to_bias",
]


def check_length(name, value, minimum=0):
    """Validate an int count ``value >= minimum`` (a length, a size, a stride)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        wanted = "an int" if minimum == 0 else f"an int >= {minimum}"
        raise TypeError(f"{name} must be {wanted}, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def diagonal_offset(L, S, alignment="top_left"):
    """Key index of query 0's diagonal: 0 (``"top_left"``) or ``S - L``
    (``"bottom_right"``)."""
    L = check_length("L", L)
    S = check_length("S", S)
    if alignment == "top_left":
        return 0
    if alignment == "bottom_right":
        return S - L
    raise ValueError(
        f"alignment must be one of {ALIGNMENTS}, got {alignment!r}")


def band_mask(L, S, lower=None, upper=None, *, offset=0):
    """Keys within a band around a diagonal.

    ``mask[i, j] = lower <= j - i - offset <= upper``; ``None`` leaves that
    side unbounded. ``offset`` is usually :func:`diagonal_offset`.

    Returns
    -------
    mask : bool ndarray, shape (L, S)
    """
    relative = np.arange(S)[None, :] - np.arange(L)[:, None] - offset  # (L, S)
    mask = np.ones((L, S), dtype=bool)
    if lower is not None:
        mask &= relative >= lower
    if upper is not None:
        mask &= relative <= upper
    return mask


def causal_mask(L, S=None, *, alignment="top_left"):
    """Causal mask: query ``i`` sees keys ``j <= i + offset``.

    ``"top_left"`` matches ``torch.nn.functional.scaled_dot_product_attention
    (is_causal=True)``, which builds ``ones(L, S).tril()``; ``"bottom_right"``
    matches FlashAttention's ``causal=True`` when ``L != S``. With
    ``alignment="top_left"`` and ``L > S`` the last ``L - S`` rows see every
    key; with ``"bottom_right"`` and ``L > S`` the first ``L - S`` rows see
    none (they are fully masked rows).

    Returns
    -------
    mask : bool ndarray, shape (L, S); ``S`` defaults to ``L``.

    Examples
    --------
    >>> causal_mask(2, 3).astype(int)
    array([[1, 0, 0],
           [1, 1, 0]])
    >>> causal_mask(2, 3, alignment="bottom_right").astype(int)
    array([[1, 1, 0],
           [1, 1, 1]])
    """
    S = L if S is None else S
    return band_mask(L, S, None, 0, offset=diagonal_offset(L, S, alignment))


def sliding_window_mask(L, S=None, window=(None, 0), *, alignment="top_left"):
    """Local attention: query ``i`` sees ``i+offset-left <= j <= i+offset+right``.

    ``window=(left, right)``; ``None`` is unbounded on that side, so
    ``(None, 0)`` is causal and ``(w, 0)`` is causal with a look-back of ``w``
    keys (Mistral's sliding window is ``(w - 1, 0)``). Longformer/BigBird
    local bands are ``(w, w)``.

    Returns
    -------
    mask : bool ndarray, shape (L, S); ``S`` defaults to ``L``.
    """
    left, right = check_window(window)
    S = L if S is None else S
    return band_mask(L, S, None if left is None else -left, right,
                     offset=diagonal_offset(L, S, alignment))


def check_window(window):
    """Validate ``window=(left, right)`` (each ``None`` or an int >= 0)."""
    if not isinstance(window, (tuple, list)) or len(window) != 2:
        raise ValueError(
            f"window must be a pair (left, right) of ints >= 0 or None, got {window!r}")
    for side, bound in zip(("left", "right"), window):
        if bound is None:
            continue
        if isinstance(bound, (bool, np.bool_)) or not isinstance(bound, (int, np.integer)):
            raise TypeError(
                f"window {side} bound must be an int >= 0 or None, got {bound!r}")
        if bound < 0:
            raise ValueError(f"window {side} bound must be >= 0 or None, got {bound}")
    return tuple(None if b is None else int(b) for b in window)


def _check_lengths(name, lengths):
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or not (lengths.size == 0 or np.issubdtype(lengths.dtype, np.integer)):
        raise TypeError(
            f"{name} must be a 1-D sequence of ints, got shape {lengths.shape} "
            f"and dtype {lengths.dtype}")
    if np.any(lengths < 0):
        raise ValueError(f"{name} must be >= 0, got {lengths.tolist()}")
    return lengths.astype(np.int64)


def padding_mask(key_lengths, S, *, query_lengths=None, L=None):
    """Mask the padding of right-padded sequences in a batch.

    Sequence ``b`` has ``key_lengths[b]`` real keys; keys ``j >= key_lengths[b]``
    are masked. With ``query_lengths`` (and ``L``), rows
    ``i >= query_lengths[b]`` are masked too: they become fully masked rows,
    whose output is 0 under ``masked_rows="zero"``.

    Returns
    -------
    mask : bool ndarray, shape (B, 1, 1, S), or (B, 1, L, S) with
        ``query_lengths``; broadcasts against ``(B, H, L, S)``.
    """
    key_lengths = _check_lengths("key_lengths", key_lengths)
    S = check_length("S", S)
    if np.any(key_lengths > S):
        raise ValueError(
            f"key_lengths must be <= S={S}, got {key_lengths.tolist()}")
    mask = np.arange(S)[None, :] < key_lengths[:, None]  # (B, S)
    mask = mask[:, None, None, :]
    if query_lengths is None:
        return mask
    query_lengths = _check_lengths("query_lengths", query_lengths)
    if L is None:
        raise ValueError("padding_mask needs L when query_lengths is given")
    L = check_length("L", L)
    if query_lengths.shape != key_lengths.shape:
        raise ValueError(
            f"query_lengths must have one entry per sequence like key_lengths "
            f"{key_lengths.shape}, got shape {query_lengths.shape}")
    if np.any(query_lengths > L):
        raise ValueError(
            f"query_lengths must be <= L={L}, got {query_lengths.tolist()}")
    rows = np.arange(L)[None, :] < query_lengths[:, None]  # (B, L)
    return mask & rows[:, None, :, None]


def block_diagonal_mask(query_lengths, key_lengths=None, *, causal=False,
                        alignment="top_left"):
    """Mask for packed variable-length sequences (FlashAttention's varlen).

    Sequences ``0..n-1`` are concatenated along L (``query_lengths``) and along
    S (``key_lengths``, default the same); a query attends only to keys of its
    own sequence, optionally causally within it (``alignment`` applies per
    sequence).

    Returns
    -------
    mask : bool ndarray, shape (sum(query_lengths), sum(key_lengths))
    """
    query_lengths = _check_lengths("query_lengths", query_lengths)
    key_lengths = query_lengths if key_lengths is None else _check_lengths(
        "key_lengths", key_lengths)
    if query_lengths.shape != key_lengths.shape:
        raise ValueError(
            f"query_lengths and key_lengths must have one entry per sequence, "
            f"got shapes {query_lengths.shape} and {key_lengths.shape}")
    L, S = int(query_lengths.sum()), int(key_lengths.sum())
    mask = np.zeros((L, S), dtype=bool)
    row0 = col0 = 0
    for rows, cols in zip(query_lengths.tolist(), key_lengths.tolist()):
        block = causal_mask(rows, cols, alignment=alignment) if causal else True
        mask[row0:row0 + rows, col0:col0 + cols] = block
        row0, col0 = row0 + rows, col0 + cols
    return mask


def is_floating(dtype):
    """Whether ``dtype`` is a float NumPy knows (float16/32/64, longdouble) or
    ml_dtypes' bfloat16, which NumPy does not count as ``np.floating``."""
    return np.issubdtype(dtype, np.floating) or np.dtype(dtype).name == "bfloat16"


def mask_to_bias(mask, dtype=np.float32):
    """Turn a bool mask into an additive one: 0 where True, -inf where False.

    A float mask is returned cast to ``dtype``.
    """
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return np.where(mask, 0, -np.inf).astype(dtype)
    if not is_floating(mask.dtype):
        raise TypeError(f"mask must be bool or floating, got dtype {mask.dtype}")
    return mask.astype(dtype)


def combine_masks(*masks):
    """Combine masks that must all allow a key.

    Bool masks combine with logical AND; if any mask is an additive float mask,
    bool masks are first turned into 0/-inf biases (:func:`mask_to_bias`) and
    all are added. ``None`` entries are skipped; the result broadcasts the
    inputs' shapes (NumPy rules) and is ``None`` when every entry is ``None``.
    """
    present = [np.asarray(m) for m in masks if m is not None]
    if not present:
        return None
    for position, mask in enumerate(present):
        if mask.dtype != bool and not is_floating(mask.dtype):
            raise TypeError(
                f"mask {position} must be bool or floating, got dtype {mask.dtype}")
    if all(m.dtype == bool for m in present):
        return np.logical_and.reduce(np.broadcast_arrays(*present))
    dtype = np.result_type(*[m for m in present if m.dtype != bool])
    return sum(mask_to_bias(m, dtype) for m in present)
