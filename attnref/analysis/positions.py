"""Positional attention metrics: where, relative to itself, each query looks.

Seed notes: ``attention-weights-and-vectors.md``, "Positional Attention
Patterns" (``analyze_positional_attention_patterns``,
``compute_attention_locality``) and ``attention-allocation.md`` ("Viés
Posicional").

Shapes: ``weights`` are ``(..., L, S)``; per-map metrics return ``(...)``.
Positions are absolute indices aligned top-left: query ``i`` is row ``i`` and
key ``j`` is column ``j`` for ``0 <= i < L``, ``0 <= j < S``, also when
L != S, so the distance is ``|i - j|`` and the offset ``j - i``. (For a
bottom-right aligned map, such as a KV-cache decoding step where the L queries
are the last L of the S positions, slice or pad the map first.) Weights are
read as given (softmax rows sum to 1); a row of zeros (fully masked query) is
skipped by every mean.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ._common import Record, as_weights, mean_over_rows, row_mass

__all__ = [
    "positional_bias",
    "attention_locality",
    "mean_attention_distance",
    "relative_position_profile",
    "previous_token_score",
    "next_token_score",
    "diagonal_score",
    "is_causal",
    "PositionalBias",
    "RelativePositionProfile",
]


def _offsets(length, n_keys):
    """(L, S) int: the offset ``j - i`` of key j from query i."""
    return np.arange(n_keys)[None, :] - np.arange(length)[:, None]


@dataclasses.dataclass
class PositionalBias(Record):
    """The seed's positional pattern summary; every field has shape (...).

    Attributes
    ----------
    first_token_bias : ndarray
        Mean weight a query gives to key 0.
    last_token_bias : ndarray
        Mean weight a query gives to key S - 1.
    middle_attention : ndarray
        Mean weight a query gives to one interior key (1 .. S-2), averaged
        over those keys; NaN when S <= 2.
    attention_spread : ndarray
        Standard deviation (ddof=1) across keys of the mean weight each key
        receives; NaN when S == 1.
    """
    first_token_bias: np.ndarray
    last_token_bias: np.ndarray
    middle_attention: np.ndarray
    attention_spread: np.ndarray


def positional_bias(weights):
    """How the average query's attention is spread over key positions.

    Parameters
    ----------
    weights : array_like, shape (..., L, S)

    Returns
    -------
    PositionalBias

    Notes
    -----
    Seed: ``analyze_positional_attention_patterns``
    (``attention-weights-and-vectors.md``, "Positional Attention Patterns").
    With ``p_j = (1/L') sum_i w_ij``, the attention key ``j`` receives from
    the average (non-empty) query:

    * ``first_token_bias = p_0``, ``last_token_bias = p_{S-1}``;
    * ``middle_attention = mean(p_1 .. p_{S-2})``;
    * ``attention_spread = std(p_0 .. p_{S-1})`` with Bessel's correction
      (ddof=1), as ``torch.Tensor.std`` computes it by default.

    For uniform attention every ``p_j = 1/S``: the three biases equal ``1/S``
    and the spread is 0. ``attention_spread`` measures how unevenly the keys
    are attended (a sink or a favoured token raises it), not how far queries
    look: for that see :func:`mean_attention_distance`. Under a causal mask
    early keys are visible to more queries, so ``p_j`` decreases with ``j``
    even for uniform rows, and ``first_token_bias`` is large by construction.

    Departures: the notes average over ``dim=0``, which for their 2-D map is
    the queries; here the query axis is always -2, leading dims are kept, and
    empty rows are left out of the mean (the notes would count them as
    zeros). The notes' ``attention_locality`` field is
    :func:`attention_locality`.
    """
    weights = as_weights(weights)
    n_keys = weights.shape[-1]
    n_rows = np.sum(row_mass(weights) > 0, axis=-1)
    # A map with no non-empty row divides by NaN and gives NaN everywhere.
    received = weights.sum(axis=-2) / np.where(n_rows > 0, n_rows, np.nan)[..., None]
    no_value = np.full(weights.shape[:-2], np.nan)
    return PositionalBias(
        first_token_bias=received[..., 0],
        last_token_bias=received[..., -1],
        middle_attention=received[..., 1:-1].mean(axis=-1) if n_keys > 2 else no_value,
        attention_spread=received.std(axis=-1, ddof=1) if n_keys > 1 else no_value)


def attention_locality(weights):
    """The seed's locality score: ``1 - mean distance / (S / 2)``.

    Parameters
    ----------
    weights : array_like, shape (..., L, S)

    Returns
    -------
    ndarray, shape (...)
        ``1 - (sum_ij w_ij |i - j| / sum_ij w_ij) / (S / 2)``; NaN for a map
        with no mass.

    Notes
    -----
    Seed: ``compute_attention_locality`` (``attention-weights-and-vectors.md``,
    "Positional Attention Patterns"), reproduced exactly, including its
    normaliser ``S / 2``, which is not the largest possible distance
    (``S - 1``). Consequences:

    * the score is 1 for a purely diagonal map but is not bounded below by 0:
      it ranges over ``[1 - 2 (S - 1) / S, 1]``, down to about -1 for a map
      that sends every query to the farthest key;
    * on short rows it is coarse: for S = 2 only the values 1 (diagonal),
      0 (anti-diagonal) and what lies between are possible, and a
      previous-token head scores ``1 - 2/S`` (0 for S = 2, 0.9 for S = 20),
      so "local" depends on the sequence length;
    * uniform bidirectional attention scores ``1/3 + 2/(3 S^2)`` (mean
      distance ``(S^2 - 1)/(3S)``, about S/3); uniform *causal* attention
      scores ``1/2 + 1/(2S)`` (row i has mean distance i/2), so a causal mask
      alone makes a head look more local; a causal sink head (every query on
      key 0) scores ``1/S``, about 0.

    The notes pool every map they are given (all heads and batch items in one
    sum); here each map keeps its own score. For a per-row, length-free
    alternative see :func:`mean_attention_distance` and
    :func:`relative_position_profile`.
    """
    weights = as_weights(weights)
    length, n_keys = weights.shape[-2:]
    distance = np.abs(_offsets(length, n_keys))
    total = weights.sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):  # empty map -> NaN, by design
        mean_distance = np.where(total > 0, (weights * distance).sum(axis=(-2, -1)) / total, np.nan)
    return 1 - mean_distance / (n_keys / 2)


def mean_attention_distance(weights):
    """Mean distance between a query and the keys it attends to.

    Parameters
    ----------
    weights : array_like, shape (..., L, S)

    Returns
    -------
    ndarray, shape (...)
        ``(1/L') sum_i sum_j w_ij |i - j|`` over the L' non-empty rows, in
        positions; NaN if there are none.

    Notes
    -----
    The attention distance of Vig and Belinkov (2019), "Analyzing the
    Structure of Attention in a Transformer Language Model" (mean distance
    weighted by attention), also the "mean attention distance" of Dosovitskiy
    et al. (2021, ViT) in one dimension. Unlike :func:`attention_locality` it
    is not normalised: 0 for a diagonal head, 1 for a previous-token head at
    any length.
    """
    weights = as_weights(weights)
    length, n_keys = weights.shape[-2:]
    distance_per_row = (weights * np.abs(_offsets(length, n_keys))).sum(axis=-1)
    return mean_over_rows(np.where(row_mass(weights) > 0, distance_per_row, np.nan))


@dataclasses.dataclass
class RelativePositionProfile(Record):
    """Attention mass per relative offset ``j - i``.

    Attributes
    ----------
    offsets : ndarray of int, shape (L + S - 1,)
        ``-(L-1), ..., S-1``.
    profile : ndarray, shape (..., L + S - 1)
        ``profile[..., m]`` is the mean mass at offset ``offsets[m]``.
    """
    offsets: np.ndarray
    profile: np.ndarray


def relative_position_profile(weights):
    """How much attention goes to each relative offset ``j - i``.

    Parameters
    ----------
    weights : array_like, shape (..., L, S)

    Returns
    -------
    RelativePositionProfile
        ``offsets`` (L + S - 1,) from ``-(L-1)`` to ``S-1`` and ``profile``
        (..., L + S - 1) with ``profile[d] = (1/L') sum_i w_{i, i+d}`` over
        the L' non-empty rows (terms with ``i + d`` outside ``[0, S)`` are 0).
        For softmax rows each map's profile sums to 1.

    Notes
    -----
    The mass at offset -1 is :func:`previous_token_score` times the share of
    rows that have a previous key, at 0 the diagonal, at +1 the next token;
    ``sum_d |d| profile[d]`` is :func:`mean_attention_distance`. A standard
    view of positional heads (e.g. Clark et al. 2019, "What Does BERT Look
    At?", section 3; Vig and Belinkov 2019).
    """
    weights = as_weights(weights)
    length, n_keys = weights.shape[-2:]
    n_offsets = length + n_keys - 1
    maps = weights.reshape(-1, length, n_keys)
    # Column of each weight in the flat (maps, offsets) output.
    bins = (np.arange(maps.shape[0])[:, None, None] * n_offsets
            + _offsets(length, n_keys)[None] + length - 1)
    mass = np.bincount(bins.ravel(), weights=maps.ravel(), minlength=maps.shape[0] * n_offsets)
    mass = mass.reshape(weights.shape[:-2] + (n_offsets,))
    n_rows = np.sum(row_mass(weights) > 0, axis=-1)
    profile = mass / np.where(n_rows > 0, n_rows, np.nan)[..., None]
    return RelativePositionProfile(offsets=np.arange(-(length - 1), n_keys), profile=profile)


def is_causal(weights):
    """Whether each map is causal: square, with every weight above the
    diagonal exactly 0 (row ``i`` sees keys ``0..i`` only).

    Parameters
    ----------
    weights : array_like, shape (..., L, S)

    Returns
    -------
    ndarray of bool, shape (...)
        True for a square map with :math:`w_{ij} = 0` for all :math:`j > i`
        (a decoder's self-attention under its causal mask; softmax never
        gives exact zeros to a visible key). False when ``L != S``.

    Notes
    -----
    A map with ``L = S = 1`` is causal (nothing lies above its diagonal).
    Decoder maps of ``L`` new queries against a KV cache of ``S > L`` keys
    (bottom-right aligned) are not square; slice the square part first.
    """
    weights = as_weights(weights)
    length, keys = weights.shape[-2:]
    if length != keys:
        return np.zeros(weights.shape[:-2], dtype=bool)
    above = np.triu(np.ones((length, keys), dtype=bool), k=1)
    return ~np.any((weights != 0) & above, axis=(-2, -1))


def _offset_score(weights, offset):
    """(...): mean of ``w_{i, i+offset}`` over the non-empty rows that have
    key ``i + offset``."""
    weights = as_weights(weights)
    band = np.diagonal(weights, offset=offset, axis1=-2, axis2=-1)  # (..., n)
    first_row = max(0, -offset)
    rows_mass = row_mass(weights)[..., first_row:first_row + band.shape[-1]]
    return mean_over_rows(np.where(rows_mass > 0, band, np.nan))


def previous_token_score(weights):
    """Mean weight a query gives to the token just before it.

    Parameters
    ----------
    weights : array_like, shape (..., L, S)

    Returns
    -------
    ndarray, shape (...)
        ``mean_{i >= 1} w_{i, i-1}`` over the non-empty rows ``1 <= i <= S``;
        NaN if there are none (e.g. L = 1).

    Notes
    -----
    Row 0 has no previous token and is left out. Clark et al. (2019), "What
    Does BERT Look At?", section 3: heads that attend to the previous token.
    TransformerLens's previous-token detection score (``error_measure="mul"``,
    no exclusions) divides the same sum by the mass of all L rows, row 0
    included, so for a square softmax map it equals this score times
    ``(L - 1) / L``.
    """
    return _offset_score(weights, -1)


def next_token_score(weights):
    """Mean weight a query gives to the token just after it.

    Parameters
    ----------
    weights : array_like, shape (..., L, S)

    Returns
    -------
    ndarray, shape (...)
        ``mean_i w_{i, i+1}`` over the non-empty rows ``i <= S - 2``; NaN if
        there are none (e.g. S = 1). 0 under a causal mask.

    Notes
    -----
    Clark et al. (2019), "What Does BERT Look At?", section 3: heads that
    attend to the next token.
    """
    return _offset_score(weights, 1)


def diagonal_score(weights):
    """Mean weight a query gives to its own position.

    Parameters
    ----------
    weights : array_like, shape (..., L, S)

    Returns
    -------
    ndarray, shape (...)
        ``mean_i w_ii`` over the non-empty rows ``i < min(L, S)``.

    Notes
    -----
    The seed's ``diagonal_strength = torch.diag(attention_matrix).mean()``
    (``attention-weights-and-vectors.md``, "Head Specialization Patterns",
    ``classify_attention_pattern``), with empty rows left out; the per-map
    mean of :func:`attnref.analysis.tokens.self_attention`.
    """
    return _offset_score(weights, 0)
