r"""Rotary position embeddings (RoPE; Su et al. 2021, "RoFormer", eq. 13-15).

Each head vector ``x`` of width ``E`` is cut into ``E/2`` pairs and pair
``i`` of the vector at position ``t`` is turned by the angle
:math:`\theta_{t,i} = t \cdot \text{base}^{-2i/E}`:

.. math::
    \begin{pmatrix} y_a \\ y_b \end{pmatrix} =
    \begin{pmatrix} \cos\theta_{t,i} & -\sin\theta_{t,i} \\
                    \sin\theta_{t,i} & \cos\theta_{t,i} \end{pmatrix}
    \begin{pmatrix} x_a \\ x_b \end{pmatrix}

so that :math:`q_t \cdot k_s` depends on the positions only through
``t - s`` (RoFormer §3.4.2). Two layouts choose which coordinates pair up:

- *interleaved* (original Meta Llama, GPT-J, RoFormer): ``(x[2i], x[2i+1])``;
- *rotate-half* (Hugging Face Llama, GPT-NeoX): ``(x[i], x[i + E/2])``,
  computed as ``x cos + rotate_half(x) sin``.

A model trained in one layout runs in the other once the rows of
:math:`W^Q` and :math:`W^K` are permuted within each head:
:func:`rotate_half_to_interleaved` is llama.cpp's ``permute`` in
``convert_hf_to_gguf.py`` (why GGUF files store Q and K in the interleaved
layout), :func:`interleaved_to_rotate_half` its inverse (transformers'
``reverse_permute`` when it loads a GGUF file). The permutation moves
coordinates inside a head, so attention scores and weights are unchanged.

Shapes: ``x`` ``(..., T, E)``; angles ``(T, E/2)``.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .rows import for_row_blocks

__all__ = ["Rotary", "rotary_angles", "apply_rotary", "rotate_half_to_interleaved",
           "interleaved_to_rotate_half"]


def _check_head_dim(head_dim):
    if (isinstance(head_dim, bool) or not isinstance(head_dim, (int, np.integer))
            or head_dim < 2 or head_dim % 2):
        raise ValueError(f"head_dim must be a positive even integer, got {head_dim!r}")
    return int(head_dim)


def _check_base(base):
    if (isinstance(base, bool) or not isinstance(base, numbers.Real)
            or not (math.isfinite(base) and base > 1)):
        raise ValueError(f"base must be a finite number > 1, got {base!r}")
    return float(base)


def rotary_angles(positions, head_dim, *, base=10000.0):
    r"""The angles :math:`\theta_{t,i} = t \cdot \text{base}^{-2i/E}`, ``(T, E/2)`` float64.

    ``positions`` is a 1-D array of ``T`` non-negative integer positions.
    Computed in float64 (Hugging Face computes them in float32; the two
    differ by ~1e-7 relative).
    """
    head_dim, base = _check_head_dim(head_dim), _check_base(base)
    positions = np.asarray(positions)
    if positions.ndim != 1 or not np.issubdtype(positions.dtype, np.integer):
        raise ValueError(f"positions must be a 1-D integer array, got {positions.dtype} "
                         f"shape {positions.shape}")
    if positions.size and positions.min() < 0:
        raise ValueError(f"positions must be >= 0, got {positions.min()}")
    frequencies = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)  # (E/2,)
    return positions.astype(np.float64)[:, None] * frequencies                     # (T, E/2)


def apply_rotary(x, angles, *, interleaved=False):
    """Rotate the pairs of ``x`` (..., T, E) by ``angles`` (T, E/2); same shape and dtype.

    ``interleaved=False`` pairs ``(x[i], x[i + E/2])`` (rotate-half, Hugging
    Face); ``True`` pairs ``(x[2i], x[2i+1])`` (Meta, GPT-J).
    """
    x = np.asarray(x)
    angles = np.asarray(angles)
    if x.ndim < 2 or x.shape[-1] % 2 or angles.shape != (x.shape[-2], x.shape[-1] // 2):
        raise ValueError(f"apply_rotary needs x (..., T, E) with E even and angles (T, E/2), "
                         f"got x {x.shape} and angles {angles.shape}")
    return _turn(x, _tables(angles, x.dtype, interleaved), interleaved, np.empty_like(x))


def _pairs(x, interleaved):
    """A view of ``x`` (..., E) with each rotation pair on an axis of its own:
    ``(..., E/2, 2)`` interleaved, ``(..., 2, E/2)`` rotate-half (splitting
    the last axis never needs a copy, whatever ``x``'s strides)."""
    half = x.shape[-1] // 2
    return x.reshape(x.shape[:-1] + ((half, 2) if interleaved else (2, half)))


def _tables(angles, dtype, interleaved):
    """``(cos, sin)``, each ``(T, E)`` in ``dtype``, for angles ``(T, E/2)``:
    the cosine of each coordinate's pair angle, and its sine negated on the
    pair's first coordinate (the one the rotation subtracts from)."""
    cos, sin = np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)    # (T, E/2)
    axis = -1 if interleaved else -2
    full = angles.shape[:-1] + (2 * angles.shape[-1],)
    return (np.stack([cos, cos], axis).reshape(full),
            np.stack([-sin, sin], axis).reshape(full))


def _turn(x, tables, interleaved, out):
    r"""``x`` (..., T, E) turned pair by pair into ``out`` (``x`` itself allowed),
    with the ``(cos, sin)`` tables of :func:`_tables`, in ``x``'s dtype.

    With :math:`(a, b)` a pair and :math:`\bar x` each coordinate's partner
    (``b`` at ``a``, ``a`` at ``b``): :math:`y = x \cos\theta + \bar x
    \cdot (\mp\sin\theta)`, i.e. :math:`y_a = a\cos - b\sin`,
    :math:`y_b = b\cos + a\sin` (the module's rotation), rounded as those
    two lines are. Three passes and one temporary; the partners are a view.
    """
    cos, sin = tables
    partner = np.flip(_pairs(x, interleaved), axis=-1 if interleaved else -2)
    turned = np.empty_like(x)                     # the sine terms, laid out as x
    np.multiply(partner, _pairs(sin, interleaved), out=_pairs(turned, interleaved))
    np.multiply(x, cos, out=out)
    out += turned
    return out


def _check_rows(weight, num_heads):
    weight = np.asarray(weight)
    if (isinstance(num_heads, bool) or not isinstance(num_heads, (int, np.integer))
            or num_heads < 1):
        raise ValueError(f"num_heads must be a positive integer, got {num_heads!r}")
    if weight.ndim not in (1, 2) or weight.shape[0] % (2 * num_heads):
        raise ValueError(f"weight must be (H*E, in) or (H*E,) with E even for {num_heads} "
                         f"heads, got shape {weight.shape}")
    return weight


def rotate_half_to_interleaved(weight, num_heads):
    """Permute the rows of a Q or K projection (``(H*E, in)`` or a bias ``(H*E,)``)
    from the rotate-half layout to the interleaved one.

    Row ``i`` of each head goes to ``2i`` and row ``i + E/2`` to ``2i + 1``:
    llama.cpp's ``permute`` (``convert_hf_to_gguf.py``),
    ``w.reshape(H, 2, E/2, ...).swapaxes(1, 2).reshape(w.shape)``. For K pass
    the number of kv heads.
    """
    weight = _check_rows(weight, num_heads)
    half = weight.shape[0] // num_heads // 2
    return (weight.reshape(num_heads, 2, half, *weight.shape[1:]).swapaxes(1, 2)
            .reshape(weight.shape))


def interleaved_to_rotate_half(weight, num_heads):
    """The inverse of :func:`rotate_half_to_interleaved`: rows ``2i`` and
    ``2i + 1`` of each head go to ``i`` and ``i + E/2`` (what a GGUF reader
    applies to ``attn_q`` and ``attn_k`` to run them in the rotate-half form)."""
    weight = _check_rows(weight, num_heads)
    half = weight.shape[0] // num_heads // 2
    return (weight.reshape(num_heads, half, 2, *weight.shape[1:]).swapaxes(1, 2)
            .reshape(weight.shape))


class Rotary:
    """RoPE for one attention layer: turns query and key heads by their positions.

    Parameters
    ----------
    head_dim : int, even
        ``E``, the width of a query/key head (all of it is rotated).
    base : float > 1
        ``rope_theta`` (10000 in RoFormer; SmolLM2 uses 100000).
    interleaved : bool
        The pair layout, see the module docstring.

    One instance may serve every layer of a model: it keeps the cosines and
    sines of the last positions and dtype it turned, so the layers of one
    forward pass compute them once (they are the same numbers each time).
    """

    def __init__(self, head_dim, *, base=10000.0, interleaved=False):
        self.head_dim, self.base = _check_head_dim(head_dim), _check_base(base)
        self.interleaved = bool(interleaved)
        self._cached = (None, None)   # ((offset, T, dtype), (cos, sin) of _tables)

    def __repr__(self):
        return (f"Rotary({self.head_dim}, base={self.base:g}, "
                f"interleaved={self.interleaved})")

    def __call__(self, x, offset=0, *, out=None):
        """``x`` (..., T, E) at positions ``offset .. offset + T - 1`` -> (..., T, E).

        ``out``: an array of ``x``'s shape and dtype to write the result
        into, ``x`` itself included (the heads are then turned in place, as
        a model does with the projections it has just computed). Without it
        the result is a new array laid out as ``x``. The positions are
        turned in blocks (:func:`attnref.nn.rows.for_row_blocks`).
        """
        if np.shape(x)[-1] != self.head_dim:
            raise ValueError(f"Rotary for head_dim {self.head_dim} got heads of shape "
                             f"{np.shape(x)}")
        x = np.asarray(x)
        if x.ndim < 2:
            raise ValueError(f"Rotary needs heads (..., T, E), got shape {x.shape}")
        if out is None:
            out = np.empty_like(x)
        elif not (isinstance(out, np.ndarray) and out.shape == x.shape and out.dtype == x.dtype
                  and out.flags.writeable):
            raise ValueError(f"out must be a writeable numpy array of shape {x.shape} and dtype "
                             f"{x.dtype}, got {type(out).__name__} "
                             f"{getattr(out, 'shape', '')} {getattr(out, 'dtype', '')}")
        key = (offset, x.shape[-2], x.dtype)
        cached, tables = self._cached
        if cached != key:
            angles = rotary_angles(np.arange(offset, offset + x.shape[-2]), self.head_dim,
                                   base=self.base)                          # (T, E/2)
            tables = _tables(angles, x.dtype, self.interleaved)            # (T, E) each
            self._cached = (key, tables)
        cos, sin = tables

        def turn(start, stop):
            _turn(x[..., start:stop, :], (cos[start:stop], sin[start:stop]), self.interleaved,
                  out[..., start:stop, :])

        for_row_blocks(turn, x.shape[-2], x.size // max(1, x.shape[-2]) * x.itemsize)
        return out
