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
    return _turn(x, np.cos(angles).astype(x.dtype), np.sin(angles).astype(x.dtype),
                 interleaved)


def _turn(x, cos, sin, interleaved):
    """``x`` (..., T, E) turned pair by pair by the angles whose ``cos`` and
    ``sin`` (T, E/2) are given, in ``x``'s dtype."""
    if interleaved:
        first, second = x[..., 0::2], x[..., 1::2]                              # (..., T, E/2)
    else:
        first, second = np.split(x, 2, axis=-1)                                 # (..., T, E/2)
    turned_first = first * cos - second * sin
    turned_second = second * cos + first * sin
    if not interleaved:
        return np.concatenate([turned_first, turned_second], axis=-1)
    return np.stack([turned_first, turned_second], axis=-1).reshape(x.shape)


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
        self._tables = (None, None, None)   # ((offset, T, dtype), cos, sin)

    def __repr__(self):
        return (f"Rotary({self.head_dim}, base={self.base:g}, "
                f"interleaved={self.interleaved})")

    def __call__(self, x, offset=0):
        """``x`` (..., T, E) at positions ``offset .. offset + T - 1`` -> (..., T, E)."""
        if np.shape(x)[-1] != self.head_dim:
            raise ValueError(f"Rotary for head_dim {self.head_dim} got heads of shape "
                             f"{np.shape(x)}")
        x = np.asarray(x)
        if x.ndim < 2:
            raise ValueError(f"Rotary needs heads (..., T, E), got shape {x.shape}")
        key = (offset, x.shape[-2], x.dtype)
        cached, cos, sin = self._tables
        if cached != key:
            angles = rotary_angles(np.arange(offset, offset + x.shape[-2]), self.head_dim,
                                   base=self.base)                          # (T, E/2)
            cos, sin = np.cos(angles).astype(x.dtype), np.sin(angles).astype(x.dtype)
            self._tables = (key, cos, sin)
        return _turn(x, cos, sin, self.interleaved)
