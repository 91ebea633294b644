"""Attention and the vectors it mixes: how each output vector is composed of
value vectors, and whether attention follows embedding similarity.

Shape letters: ``L`` queries, ``S`` keys, ``D`` the width of the value or
embedding vectors. ``weights`` are ``(..., L, S)``; vector arguments are
``(..., S, D)`` or ``(..., L, D)`` and broadcast against the leading dims of
``weights``.

Source: the seed note ``attention-weights-and-vectors.md`` ("Proximidade
Semântica e Vetores": ``analyze_semantic_similarity_attention``,
``analyze_attention_vector_composition``, ``compute_composition_entropy``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._common import Record, as_array, as_weights, row_mass, xlogy

__all__ = [
    "SimilarityAttention",
    "VectorComposition",
    "similarity_attention_correlation",
    "vector_composition",
]

_COMPOSITION_MODES = ("normalized", "seed")
_SEED_EPSILON = 1e-10  # compute_composition_entropy's shift, attention-weights-and-vectors.md


def _vectors(array, name, length, weights, axis_letter):
    """``array`` (..., length, D) as a floating ndarray, or a ValueError."""
    array = as_array(array, name)
    if array.shape[-2] != length:
        raise ValueError(
            f"{name} must be (..., {axis_letter}, D) with {axis_letter}={length} to match weights "
            f"{weights.shape}, got {array.shape}")
    return array


@dataclass
class VectorComposition(Record):
    """How each attention output vector is made of value vectors.

    Attributes
    ----------
    attention_vectors : ndarray, shape (..., L, D)
        ``o_i = sum_j w_ij v_j``.
    contribution_norms : ndarray, shape (..., L, S)
        ``||w_ij v_j||``, the notes' ``contribution_magnitude``.
    relative_contributions : ndarray, shape (..., L, S)
        ``||w_ij v_j|| / ||o_i||``; NaN where ``o_i = 0``.
    top_contributors : ndarray of int, shape (..., L, min(k, S))
        Keys by decreasing contribution norm (ties: lower index first).
    effective_contributors : ndarray of int, shape (..., L)
        Number of keys with relative contribution > ``threshold``.
    composition_entropy : ndarray, shape (..., L)
        Entropy of the contributions, in the chosen mode.
    mode : str
    """
    attention_vectors: np.ndarray
    contribution_norms: np.ndarray
    relative_contributions: np.ndarray
    top_contributors: np.ndarray
    effective_contributors: np.ndarray
    composition_entropy: np.ndarray
    mode: str


def vector_composition(weights, values, *, k=5, threshold=0.1, mode="normalized"):
    r"""Decompose each attention output into its per-key contributions.

    Parameters
    ----------
    weights : array_like, shape (..., L, S)
    values : array_like, shape (..., S, D)
        The vectors being mixed (value vectors, or token embeddings as in the
        notes); broadcast against the leading dims of ``weights``.
    k : int, keyword-only, default 5
        Length of ``top_contributors`` (the notes keep 5).
    threshold : float, keyword-only, default 0.1
        A key is an effective contributor when its relative contribution
        exceeds this (the notes' 0.1).
    mode : {"normalized", "seed"}, keyword-only, default "normalized"
        Which composition entropy to return (see Notes).

    Returns
    -------
    VectorComposition
        A fully masked row (all weights 0) has a zero output: its relative
        contributions and entropy are NaN and it has 0 effective contributors.

    Notes
    -----
    Seed: ``analyze_attention_vector_composition`` and
    ``compute_composition_entropy`` (``attention-weights-and-vectors.md``,
    "Attention Vector Composition"), vectorised:

    .. math:: o_i = \sum_j w_{ij} v_j, \quad
              m_{ij} = \lVert w_{ij} v_j \rVert = |w_{ij}|\,\lVert v_j \rVert,
              \quad r_{ij} = m_{ij} / \lVert o_i \rVert,

    ``effective_contributors = #{j : r_ij > threshold}``, and the top ``k``
    keys by ``m_ij``. The norms come from ``|w_ij| ||v_j||``, so the
    ``(L, S, D)`` array of contributions is never built.

    ``mode="seed"`` is the notes' entropy,
    ``-sum_j (r_ij + 1e-10) log(r_ij + 1e-10)``. It is not the entropy of a
    distribution: by the triangle inequality ``sum_j r_ij >= 1``, with
    equality only when the contributing vectors point the same way, so the
    ``r_ij`` do not sum to 1, a single ``r_ij > 1`` (contributions that
    cancel) gives a negative term, and the value moves with how much the
    value vectors cancel, not only with how many keys contribute.
    ``mode="normalized"`` (the default) is the entropy of the shares
    ``p_ij = m_ij / sum_j m_ij``: ``-sum_j p_ij log p_ij``, in
    ``[0, log S]``, 0 when one key supplies the whole output (with
    ``0 log 0 = 0``, no epsilon). It is NaN when no key contributes
    (``sum_j m_ij = 0``).

    Examples
    --------
    Two opposite value vectors partly cancel, so their relative
    contributions sum to 2 and the seed's entropy turns negative:

    >>> import numpy as np
    >>> weights, values = np.array([[0.75, 0.25]]), np.array([[1.0, 0.0], [-1.0, 0.0]])
    >>> vector_composition(weights, values).relative_contributions
    array([[1.5, 0.5]])
    >>> vector_composition(weights, values, mode="seed").composition_entropy.round(4)
    array([-0.2616])
    >>> vector_composition(weights, values).composition_entropy.round(4)
    array([0.5623])
    """
    weights = as_weights(weights)
    values = _vectors(values, "values", weights.shape[-1], weights, "S")
    if mode not in _COMPOSITION_MODES:
        raise ValueError(f"mode must be one of {_COMPOSITION_MODES}, got {mode!r}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    attention_vectors = weights @ values                                          # (..., L, D)
    value_norms = np.linalg.norm(values, axis=-1)[..., None, :]                   # (..., 1, S)
    contribution_norms = np.abs(weights) * value_norms                            # (..., L, S)
    output_norms = np.linalg.norm(attention_vectors, axis=-1)[..., None]          # (..., L, 1)
    with np.errstate(invalid="ignore", divide="ignore"):  # zero output -> NaN, by design
        relative = np.where(output_norms > 0, contribution_norms / output_norms, np.nan)
    order = np.argsort(-contribution_norms, axis=-1, kind="stable")
    if mode == "seed":
        shifted = relative + _SEED_EPSILON
        entropy = -(shifted * np.log(shifted)).sum(axis=-1)
    else:
        total = contribution_norms.sum(axis=-1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):  # no contribution -> NaN
            shares = np.where(total > 0, contribution_norms / total, np.nan)
        entropy = -xlogy(shares, shares).sum(axis=-1)
    return VectorComposition(
        attention_vectors=attention_vectors,
        contribution_norms=contribution_norms,
        relative_contributions=relative,
        top_contributors=order[..., :min(k, weights.shape[-1])],
        effective_contributors=np.sum(relative > threshold, axis=-1),
        composition_entropy=entropy,
        mode=mode)


@dataclass
class SimilarityAttention(Record):
    """Whether attention follows embedding similarity.

    Attributes
    ----------
    similarity_matrix : ndarray, shape (..., L, L)
        Cosine similarity between the embeddings of every pair of tokens.
    correlation : ndarray, shape (...)
        Pearson r between similarity and attention over the token pairs of a
        map; NaN when undefined.
    aligned : ndarray of bool, shape (...)
        ``correlation > threshold`` (False where r is NaN).
    """
    similarity_matrix: np.ndarray
    correlation: np.ndarray
    aligned: np.ndarray


def similarity_attention_correlation(embeddings, weights, *, threshold=0.3):
    r"""Pearson correlation between embedding cosine similarity and attention.

    Parameters
    ----------
    embeddings : array_like, shape (..., L, D)
        One vector per token (broadcast against the leading dims of
        ``weights``).
    weights : array_like, shape (..., L, L)
        Self-attention maps over the same tokens.
    threshold : float, keyword-only, default 0.3
        ``aligned`` is ``r > threshold`` (the notes' 0.3).

    Returns
    -------
    SimilarityAttention

    Notes
    -----
    Seed: ``analyze_semantic_similarity_attention``
    (``attention-weights-and-vectors.md``, "Similarity-Driven Attention"):
    the hypothesis that similar tokens attend to each other more.

    .. math:: c_{ij} = \frac{e_i \cdot e_j}{\lVert e_i \rVert \lVert e_j \rVert},
              \qquad r = \operatorname{Pearson}\bigl(\{c_{ij}\}, \{w_{ij}\}\bigr)

    over the pairs ``(i, j)``; the notes flatten both ``L x L`` matrices
    and call ``torch.corrcoef``. The cosine matrix is one normalised matrix
    product here (the notes fill it with a double Python loop).

    Departures, each where the notes' value is undefined or misleading:

    * An embedding of norm 0 has cosine 0 with every token, itself included:
      the value ``torch.nn.functional.cosine_similarity`` returns for a zero
      vector (its ``eps`` floor); other pairs are exact, with no floor.
    * Fully masked query rows (all weights 0) are left out of the
      correlation (the notes would count their zeros as attention); with no
      such rows, r is the notes' value.
    * r is NaN when either side is constant over the pairs used (for
      example uniform attention, or identical embeddings), as with
      ``corrcoef``; ``aligned`` is then False.

    Masked keys are still pairs: for a causal map the zeros above the
    diagonal enter the correlation, as in the notes.
    """
    weights = as_weights(weights)
    length = weights.shape[-1]
    if weights.shape[-2] != length:
        raise ValueError(
            f"weights must be self-attention maps (..., L, L) over the embedded tokens, got "
            f"{weights.shape}")
    embeddings = _vectors(embeddings, "embeddings", length, weights, "L")
    norms = np.linalg.norm(embeddings, axis=-1)                    # (..., L)
    unit = embeddings / np.where(norms > 0, norms, 1)[..., None]   # zero vectors stay 0
    similarity = unit @ np.swapaxes(unit, -1, -2)                  # (..., L, L)
    visible_rows = np.broadcast_to((row_mass(weights) > 0)[..., None], weights.shape)
    # Every array (..., L, L) over the broadcast leading dims; ``used`` marks
    # the pairs that enter the correlation (rows that are not fully masked).
    similarities, attention, used = np.broadcast_arrays(similarity, weights, visible_rows)
    # A side constant over the pairs has no variance: r is undefined. Tested
    # exactly, since centring a constant can leave rounding noise of 1e-17.
    defined = ~(_constant(similarities, used) | _constant(attention, used))
    with np.errstate(invalid="ignore", divide="ignore"):  # undefined r -> NaN, by design
        similarity_centred = np.where(used, similarities - _pair_mean(similarities, used), 0)
        attention_centred = np.where(used, attention - _pair_mean(attention, used), 0)
        covariance = (similarity_centred * attention_centred).sum(axis=(-2, -1))
        spread = np.sqrt((similarity_centred ** 2).sum(axis=(-2, -1))
                         * (attention_centred ** 2).sum(axis=(-2, -1)))
        correlation = np.where(defined, covariance / spread, np.nan)
    return SimilarityAttention(similarity_matrix=similarity, correlation=correlation,
                               aligned=np.asarray(correlation > threshold))


def _constant(values, pairs):
    """(...): True when ``values`` take one value (or none) over ``pairs``."""
    largest = np.where(pairs, values, -np.inf).max(axis=(-2, -1))
    smallest = np.where(pairs, values, np.inf).min(axis=(-2, -1))
    return ~(largest > smallest)


def _pair_mean(values, pairs):
    """(..., 1, 1): mean of ``values`` over the True entries of ``pairs``."""
    total = np.where(pairs, values, 0).sum(axis=(-2, -1), keepdims=True)
    return total / pairs.sum(axis=(-2, -1), keepdims=True)
