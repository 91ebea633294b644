r"""Attention variants: sparse patterns, top-k, linear attention, position biases.

The seed notes name two cures for the :math:`O(n^2)` cost of attention:
"Atenção Esparsa" and "Atenção Linear" (*attention-math-foundations*,
"Variantes e Extensões do Mecanismo de Atenção", item 3; *attention-allocation*,
"Boas Práticas e Otimizações"). This module gives the reference for each, plus
the position biases that replace absolute position embeddings (the question
the same note asks: "informações de posição relativa ... sem usar embeddings
posicionais absolutos").

Shape letters as in :mod:`attnref.core` (B, H, L, S, E, Ev). Three kinds of
object come out of here, and each plugs into
:func:`attnref.scaled_dot_product_attention` without new machinery:

* **Sparse patterns** are bool masks ``(L, S)``, True = may attend:
  :func:`strided_mask`, :func:`fixed_mask`, :func:`global_tokens_mask`. They
  combine with every other mask through :func:`attnref.masks.combine_masks`
  and go in as ``attn_mask``. (A mask gives the *answer* of a sparse model;
  the saving in compute belongs to a kernel that skips masked blocks.)
* **Position biases** are float arrays ``(H, L, S)`` added to the scaled
  scores, so they go in as a float ``attn_mask``: :func:`alibi_bias`,
  :func:`relative_position_bias` (T5). Shaw et al.'s relative positions are
  indices into learned tables (:func:`clipped_relative_positions`).
* **Different attention functions**: :func:`topk_attention` (softmax over
  the k largest scores) and :func:`linear_attention` (kernelised attention
  in O(L) memory).

Placing a query on the key axis: query ``i`` sits at key position
``i + offset``, with offset 0 (``"top_left"``, the default, as
``is_causal``) or ``S - L`` (``"bottom_right"``, KV-cache decoding); see
:mod:`attnref.masks`. Mask builders call the keyword ``alignment`` (as the
builders in :mod:`attnref.masks`); biases and attention functions call it
``causal_alignment`` (as :func:`attnref.scaled_dot_product_attention`).
"""
from __future__ import annotations

import math

import numpy as np

from . import masks
from ._validation import _flag, float_array, sdpa_call
from .core import _scores, _visible, scaled_dot_product_attention

__all__ = [
    "strided_mask",
    "fixed_mask",
    "global_tokens_mask",
    "topk_attention",
    "linear_attention",
    "elu_feature_map",
    "alibi_slopes",
    "alibi_bias",
    "relative_position_bucket",
    "relative_position_bias",
    "clipped_relative_positions",
]

FEATURE_MAPS = ("elu",)


# ---------------------------------------------------------------------------
# argument checks shared by the builders below

def _lengths(L, S):
    """``L``, ``S`` checked (``S=None`` means ``S = L``)."""
    L = masks.check_length("L", L)
    return L, L if S is None else masks.check_length("S", S)


def _positions(L, S, alignment, name):
    """Key-axis position of every query ``(L, 1)`` and key ``(1, S)``."""
    if alignment not in masks.ALIGNMENTS:
        raise ValueError(f"{name} must be one of {masks.ALIGNMENTS}, got {alignment!r}")
    offset = masks.diagonal_offset(L, S, alignment)
    return np.arange(L)[:, None] + offset, np.arange(S)[None, :]


# ---------------------------------------------------------------------------
# sparse patterns (bool masks, True = may attend)

def strided_mask(L, S=None, *, stride, causal=False, alignment="top_left"):
    r"""The Sparse Transformer's *strided* pattern as a bool mask.

    .. math::
        A_i = \{\, j : |p_i - j| \le \ell \,\} \;\cup\;
              \{\, j : (p_i - j) \bmod \ell = 0 \,\}

    with :math:`\ell` = ``stride`` and :math:`p_i` the key-axis position of
    query ``i``. With ``causal=True`` it is intersected with :math:`j \le p_i`,
    which gives exactly the union of Child et al.'s two strided heads,
    :math:`A^{(1)}_i = \{t, \dots, i\}`, :math:`t = \max(0, i - \ell)` and
    :math:`A^{(2)}_i = \{j : (i - j) \bmod \ell = 0\}` (Child et al. 2019,
    "Generating Long Sequences with Sparse Transformers", sec. 4.3, fig. 3b).
    The non-causal form mirrors it to both sides. With
    :math:`\ell \approx \sqrt{n}` each query sees :math:`O(\sqrt{n})` keys
    (seed note *attention-allocation*, "Boas Práticas e Otimizações",
    "Atenção Esparsa").

    Parameters
    ----------
    L, S : int >= 0
        Query and key lengths; ``S=None`` means ``S = L``.
    stride : int >= 1, keyword-only
        :math:`\ell`: the local window reach and the column period.
    causal : bool
        Keep only keys ``j <= p_i`` (the paper's autoregressive pattern).
    alignment : {"top_left", "bottom_right"}
        Where the diagonal sits when ``L != S``: ``p_i = i`` or ``i + S - L``.

    Returns
    -------
    mask : bool ndarray, shape (L, S)

    Examples
    --------
    >>> strided_mask(8, stride=3, causal=True).astype(int)
    array([[1, 0, 0, 0, 0, 0, 0, 0],
           [1, 1, 0, 0, 0, 0, 0, 0],
           [1, 1, 1, 0, 0, 0, 0, 0],
           [1, 1, 1, 1, 0, 0, 0, 0],
           [0, 1, 1, 1, 1, 0, 0, 0],
           [0, 0, 1, 1, 1, 1, 0, 0],
           [1, 0, 0, 1, 1, 1, 1, 0],
           [0, 1, 0, 0, 1, 1, 1, 1]])
    """
    L, S = _lengths(L, S)
    stride = masks.check_length("stride", stride, minimum=1)
    query_at, key_at = _positions(L, S, alignment, "alignment")
    distance = query_at - key_at                                  # (L, S)
    mask = (np.abs(distance) <= stride) | (distance % stride == 0)
    if _flag("causal", causal):
        mask &= distance >= 0
    return mask


def fixed_mask(L, S=None, *, block, summary=0, causal=False, alignment="top_left"):
    r"""Block-local attention, optionally with the Sparse Transformer's
    *fixed* summary columns, as a bool mask.

    .. math::
        A_i = \{\, j : \lfloor j/\ell \rfloor = \lfloor p_i/\ell \rfloor \,\}
              \;\cup\; \{\, j : j \bmod \ell \ge \ell - c \,\}

    with :math:`\ell` = ``block``, :math:`c` = ``summary`` and :math:`p_i`
    the key-axis position of query ``i``: each query sees its own block, and
    every query sees the last :math:`c` keys of every block, which summarise
    their block (Child et al. 2019, sec. 4.3, fig. 3c: :math:`A^{(1)}` and
    :math:`A^{(2)}` with :math:`t = \ell - c`; the paper's :math:`j \bmod \ell
    \in \{t, \dots, \ell\}` reaches at most :math:`\ell - 1`). ``summary=0``
    is plain block-local attention (the local 1-D attention of the Image
    Transformer, and BigBird's block-local part). ``causal=True`` intersects
    with :math:`j \le p_i`, the paper's autoregressive form.

    Parameters
    ----------
    L, S : int >= 0
        ``S=None`` means ``S = L``.
    block : int >= 1, keyword-only
        :math:`\ell`, the block size; blocks start at key 0.
    summary : int, 0 <= summary <= block
        :math:`c`, the summary columns per block (the paper uses 1 to 32).
    causal : bool
    alignment : {"top_left", "bottom_right"}

    Returns
    -------
    mask : bool ndarray, shape (L, S)

    Examples
    --------
    >>> fixed_mask(6, block=3, summary=1, causal=True).astype(int)
    array([[1, 0, 0, 0, 0, 0],
           [1, 1, 0, 0, 0, 0],
           [1, 1, 1, 0, 0, 0],
           [0, 0, 1, 1, 0, 0],
           [0, 0, 1, 1, 1, 0],
           [0, 0, 1, 1, 1, 1]])
    """
    L, S = _lengths(L, S)
    block = masks.check_length("block", block, minimum=1)
    if isinstance(summary, (bool, np.bool_)) or not isinstance(summary, (int, np.integer)):
        raise TypeError(f"summary must be an int in [0, block], got {type(summary).__name__}")
    if not 0 <= summary <= block:
        raise ValueError(f"summary must be in [0, block={block}], got {summary}")
    query_at, key_at = _positions(L, S, alignment, "alignment")
    mask = (query_at // block == key_at // block) | (key_at % block >= block - summary)
    if _flag("causal", causal):
        mask &= key_at <= query_at
    return mask


def global_tokens_mask(L, S=None, *, global_tokens, window=(0, 0), causal=False,
                       alignment="top_left"):
    r"""A local window plus global tokens (Longformer, BigBird) as a bool mask.

    .. math::
        A_i = \{\, j : p_i - w_l \le j \le p_i + w_r \,\}
              \;\cup\; \{\, j : j \in G \,\}
              \;\cup\; \{\, j : p_i \in G \,\}

    A global token (an index in :math:`G`, a position on the key axis) is
    attended by every query and, as a query, attends to every key; the rest
    is the sliding window ``(w_l, w_r)`` (Beltagy et al. 2020, "Longformer",
    sec. 3.1, fig. 2d; Zaheer et al. 2020, "Big Bird", sec. 2, the ITC
    global tokens, without BigBird's random part). Query ``i`` is global when
    its key-axis position :math:`p_i` is in :math:`G`. ``causal=True``
    intersects with :math:`j \le p_i`.

    Parameters
    ----------
    L, S : int >= 0
        ``S=None`` means ``S = L``.
    global_tokens : 1-D sequence of ints in [0, S), keyword-only
        :math:`G`; may be empty, repeats are allowed.
    window : (left, right)
        The local window; each side an int >= 0 or ``None`` (unbounded).
        Longformer's window of size :math:`w` is ``(w // 2, w // 2)``.
    causal : bool
    alignment : {"top_left", "bottom_right"}

    Returns
    -------
    mask : bool ndarray, shape (L, S)

    Examples
    --------
    >>> global_tokens_mask(5, global_tokens=[0], window=(1, 1)).astype(int)
    array([[1, 1, 1, 1, 1],
           [1, 1, 1, 0, 0],
           [1, 1, 1, 1, 0],
           [1, 0, 1, 1, 1],
           [1, 0, 0, 1, 1]])
    """
    L, S = _lengths(L, S)
    tokens = np.asarray(global_tokens)
    if tokens.ndim != 1 or not (tokens.size == 0 or np.issubdtype(tokens.dtype, np.integer)):
        raise TypeError(
            f"global_tokens must be a 1-D sequence of ints, got shape "
            f"{tokens.shape} and dtype {tokens.dtype}")
    if np.any((tokens < 0) | (tokens >= S)):
        raise ValueError(f"global_tokens must be in [0, S={S}), got {tokens.tolist()}")
    mask = masks.sliding_window_mask(L, S, window, alignment=alignment)
    query_at, key_at = _positions(L, S, alignment, "alignment")
    mask |= np.isin(key_at, tokens) | np.isin(query_at, tokens)
    if _flag("causal", causal):
        mask &= key_at <= query_at
    return mask


# ---------------------------------------------------------------------------
# top-k attention

def topk_attention(query, key, value, k, *, attn_mask=None, is_causal=False,
                   scale=None, return_weights=False):
    r"""Attention restricted to the ``k`` largest scores of each query row.

    .. math::
        s_{ij} = \text{scale}\; q_i \cdot k_j + b_{ij}, \qquad
        T_i = \{\, j \text{ visible} : s_{ij} \ge \tau_i \,\}, \qquad
        w_{ij} = \frac{e^{s_{ij}}}{\sum_{j' \in T_i} e^{s_{ij'}}} [j \in T_i]

    where :math:`b` is a float ``attn_mask`` (0 for a bool one) and
    :math:`\tau_i` is the k-th largest score among the *visible* keys of row
    ``i`` (Gupta et al. 2021, "Memory-efficient Transformers via Top-k
    Attention"; Zhao et al. 2019, "Explicit Sparse Transformer"): a sparse
    pattern chosen by content rather than position (seed note
    *attention-allocation*, "Atenção Esparsa").

    Rules:

    * **Ties**: every key tied with the k-th largest score is kept, so a row
      may keep more than ``k`` keys. This makes the result independent of key
      order (permuting keys permutes nothing else), unlike a lowest-index rule.
    * **Masked keys never count**: keys hidden by ``attn_mask`` or
      ``is_causal`` are not ranked; a row with at most ``k`` visible keys keeps
      them all, and a row with none follows the ``masked_rows="zero"`` policy
      of :mod:`attnref.core` (output 0, weights 0).
    * A NaN score among the visible keys is kept, so it propagates to its row,
      as NaN does in :func:`attnref.scaled_dot_product_attention`.

    The chosen keys become a bool mask combined with ``attn_mask``, and the
    call is then :func:`attnref.scaled_dot_product_attention` on the NumPy
    backend, so dtypes, broadcasting and the numerical policy are the same.

    Parameters
    ----------
    query : (..., L, E) floating
    key : (..., S, E), same dtype
    value : (..., S, Ev), same dtype
    k : int >= 1
        Keys kept per query row (before ties).
    attn_mask : (..., L, S) broadcastable, bool or floating, optional
        As in :func:`attnref.scaled_dot_product_attention`; a float mask is
        part of the score that is ranked.
    is_causal : bool
        Top-left causal, as ``is_causal`` there.
    scale : float > 0, optional
        ``None`` means ``1/sqrt(E)``.
    return_weights : bool
        Also return the weights ``(..., L, S)``.

    Returns
    -------
    output : (..., L, Ev), or ``AttentionResult(output, weights, None)``
        when ``return_weights`` is set.

    Examples
    --------
    >>> q = np.array([[1.0, 0.0]]); kv = np.array([[3.0, 0], [2.0, 0], [-1.0, 0]])
    >>> topk_attention(q, kv, kv, 1, scale=1.0)
    array([[3., 0.]])
    """
    call = sdpa_call(query, key, value, attn_mask, 0.0, is_causal, scale)
    k = masks.check_length("k", k, minimum=1)
    _flag("return_weights", return_weights)
    with np.errstate(invalid="ignore", over="ignore"):  # inf/NaN inputs follow IEEE rules
        scores = _scores(call)                                                    # (..., L, S)
        if call.mask is not None and call.mask.dtype != bool:
            scores = scores + call.mask
        visible = _visible(call, call.mask)
        ranked = scores if visible is None else np.where(visible, scores, -np.inf)
        threshold = _kth_largest(ranked, min(k, call.S))                          # (..., L, 1)
        keep = (ranked >= threshold) | np.isnan(ranked)
        if visible is not None:
            keep = visible & keep
    return scaled_dot_product_attention(
        query, key, value, masks.combine_masks(attn_mask, keep), 0.0, is_causal,
        call.scale, return_weights=return_weights, backend="numpy")


def _kth_largest(ranked, k):
    """The k-th largest entry of each row ``(..., L, 1)``; NaN ranks lowest,
    ``-inf`` when ``k == 0`` (no keys)."""
    if k == 0:
        return np.full(ranked.shape[:-1] + (1,), -np.inf, ranked.dtype)
    descending = -np.where(np.isnan(ranked), -np.inf, ranked)
    return -np.partition(descending, k - 1, axis=-1)[..., k - 1:k]


# ---------------------------------------------------------------------------
# linear attention

def elu_feature_map(x):
    r"""The feature map of linear attention, :math:`\phi(x) = \text{elu}(x) + 1`.

    :math:`\phi(x) = x + 1` for :math:`x > 0` and :math:`e^x` otherwise, so
    :math:`\phi > 0` and every similarity :math:`\phi(q)\cdot\phi(k)` is
    positive (Katharopoulos et al. 2020, "Transformers are RNNs", sec. 3.2.1,
    eq. 7). Shape and dtype are kept.
    """
    x = float_array("x", x)
    # exp of the clipped argument: large positive x would overflow in the unused branch.
    return np.where(x > 0, x + 1, np.exp(np.minimum(x, 0)))


def linear_attention(query, key, value, *, causal=False, feature_map="elu",
                     causal_alignment="top_left", block_size=64):
    r"""Linear attention (Katharopoulos et al. 2020, "Transformers are RNNs").

    The softmax similarity :math:`\exp(q \cdot k)` is replaced by a kernel
    :math:`\phi(q)\cdot\phi(k)` (eq. 4-6), so the sums factor:

    .. math::
        o_i = \frac{\phi(q_i)^\top \sum_j \phi(k_j) v_j^\top}
                   {\phi(q_i)^\top \sum_j \phi(k_j)}

    (eq. 6) and the key sums :math:`S = \sum_j \phi(k_j) v_j^\top` (E, Ev) and
    :math:`z = \sum_j \phi(k_j)` (E,) are computed once: :math:`O(L)` time and
    memory instead of :math:`O(L S)` (seed note *attention-math-foundations*,
    "Variantes e Extensões do Mecanismo de Atenção", item 3, "Atenção
    Eficiente": "Atenção Linear"). There is no ``1/sqrt(E)``
    scale: the paper has none, the kernel replaces the scaled exponential.

    ``causal=True`` sums over visible keys only, :math:`j \le p_i`, with
    :math:`S_i = S_{i-1} + \phi(k_i) v_i^\top` and :math:`z_i = z_{i-1} +
    \phi(k_i)` (eq. 10-12, the RNN form). It streams over blocks of
    ``block_size`` query rows carrying the running :math:`(S, z)`; within a
    block, the keys that only its later rows see are summed under a
    staircase mask. Memory beyond inputs and output is
    :math:`O(\text{block}^2 + E \cdot E_v)` per batch entry: no L x S matrix
    and no (L, E, Ev) tensor is formed. Keys hidden from a row are never read
    for it, so a NaN in a future key or value does not reach earlier rows.

    A row with no visible key (``S = 0``, or a bottom-right causal row before
    the first key) has a zero denominator and gives output 0, as the
    ``masked_rows="zero"`` policy of :mod:`attnref.core`.

    Parameters
    ----------
    query : (..., L, E) floating
    key : (..., S, E), same dtype
    value : (..., S, Ev), same dtype
        Leading dims broadcast. float16/bfloat16 compute in float32 and
        return their own dtype.
    causal : bool
        Query ``i`` sees keys ``j <= i + offset``.
    feature_map : "elu" or callable
        ``"elu"`` is :func:`elu_feature_map`. A callable maps ``(..., n, E)``
        to ``(..., n, F)`` with positive entries (the same F for query and
        key); it is applied to query and key.
    causal_alignment : {"top_left", "bottom_right"}
        offset 0 or ``S - L``, as in :func:`attnref.scaled_dot_product_attention`.
    block_size : int >= 1
        Query rows per streaming step of the causal form; it changes
        rounding only.

    Returns
    -------
    output : (..., L, Ev)

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = (rng.standard_normal((2, 5, 4)) for _ in range(3))
    >>> out = linear_attention(q, k, v, causal=True, block_size=2)
    >>> bool(np.allclose(out, linear_attention(q, k, v, causal=True, block_size=5)))
    True
    """
    call = sdpa_call(query, key, value, causal_alignment=causal_alignment)
    causal = _flag("causal", causal)
    block_size = masks.check_length("block_size", block_size, minimum=1)
    phi = _feature_map(feature_map)
    with np.errstate(invalid="ignore", over="ignore"):  # inf/NaN inputs follow IEEE rules
        phi_q, phi_k = phi(call.query), phi(call.key)
        _check_features(phi_q, phi_k, call)
        phi_q = phi_q.astype(call.compute_dtype, copy=False)
        phi_k = phi_k.astype(call.compute_dtype, copy=False)
        if causal:
            output = _causal_linear(phi_q, phi_k, call.value, call.diag_offset, block_size)
        else:
            state = np.matmul(np.swapaxes(phi_k, -1, -2), call.value)  # (..., E, Ev)
            norm = np.sum(phi_k, axis=-2)                              # (..., E)
            output = _normalised(np.matmul(phi_q, state),
                                 np.matmul(phi_q, norm[..., None]))
    return output.astype(call.output_dtype, copy=False)


def _feature_map(feature_map):
    if callable(feature_map):
        return feature_map
    if feature_map == "elu":
        return elu_feature_map
    raise ValueError(
        f"feature_map must be one of {FEATURE_MAPS} or a callable, got {feature_map!r}")


def _check_features(phi_q, phi_k, call):
    for name, features, rows in (("query", phi_q, call.L), ("key", phi_k, call.S)):
        if not isinstance(features, np.ndarray) or not (
                np.issubdtype(features.dtype, np.floating) and features.ndim >= 2
                and features.shape[-2] == rows):
            raise ValueError(
                f"feature_map must map the {name} to a floating array (..., {rows}, F), "
                f"got {type(features).__name__} of shape {np.shape(features)}")
    if phi_q.shape[-1] != phi_k.shape[-1]:
        raise ValueError(
            f"feature_map must give query and key the same feature size F, got "
            f"{phi_q.shape[-1]} and {phi_k.shape[-1]}")


def _normalised(numerator, denominator):
    """``numerator / denominator`` with 0 for rows that saw no key."""
    return np.divide(numerator, denominator,
                     out=np.zeros(np.broadcast_shapes(numerator.shape, denominator.shape),
                                  numerator.dtype),
                     where=denominator != 0)


def _causal_linear(phi_q, phi_k, value, offset, block_size):
    """Causal linear attention streamed over blocks of query rows.

    Query ``i`` sees keys ``j < seen_by[i]``, and ``seen_by`` never
    decreases, so a block of rows splits its keys in two: those every row of
    the block sees, which are in the running state, and the few (fewer than
    ``block_size``) that only its later rows see, summed directly under a
    staircase mask. Then those join the state for the next block. This is
    the prefix sum :math:`S_i = S_{i-1} + \\phi(k_i) v_i^\\top` taken a block
    at a time, with matrix products instead of a per-row cumulative tensor.
    """
    # phi_q (..., L, F); phi_k (..., S, F); value (..., S, Ev)
    L, S, F, Ev = phi_q.shape[-2], phi_k.shape[-2], phi_k.shape[-1], value.shape[-1]
    batch = np.broadcast_shapes(phi_q.shape[:-2], phi_k.shape[:-2], value.shape[:-2])
    dtype = np.result_type(phi_q, phi_k, value)
    state = np.zeros(batch + (F, Ev), dtype)                       # (..., F, Ev) sum phi(k_j) v_j^T
    norm = np.zeros(batch + (F,), dtype)                           # (..., F)     sum phi(k_j)
    output = np.empty(batch + (L, Ev), dtype)                      # (..., L, Ev)
    seen_by = np.clip(np.arange(L) + offset + 1, 0, S)             # (L,)
    folded = 0                                                     # the state holds keys j < folded
    for start in range(0, L, block_size):
        rows = slice(start, min(start + block_size, L))
        first, last = seen_by[rows.start], seen_by[rows.stop - 1]
        # pass 1: keys every row of the block sees join the running state
        state, norm = _fold(state, norm, phi_k[..., folded:first, :], value[..., folded:first, :])
        # pass 2: keys only the later rows see, under the staircase mask
        q = phi_q[..., rows, :]                                    # (..., b, F)
        new_k, new_v = phi_k[..., first:last, :], value[..., first:last, :]
        within = np.arange(first, last) < seen_by[rows, None]      # (b, n)
        similarity = np.where(within, np.matmul(q, np.swapaxes(new_k, -1, -2)), 0)  # (..., b, n)
        numerator = np.matmul(q, state) + _visible_sum(similarity, within, new_v)
        denominator = np.matmul(q, norm[..., None]) + np.sum(similarity, axis=-1, keepdims=True)
        output[..., rows, :] = _normalised(numerator, denominator)
        # pass 3: the block's remaining keys join the state for the blocks after it
        state, norm = _fold(state, norm, new_k, new_v)
        folded = last
    return output


def _fold(state, norm, phi_k, value):
    """Add keys to the running sums: ``S += phi(K)^T V``, ``z += sum_j phi(k_j)``."""
    return (state + np.matmul(np.swapaxes(phi_k, -1, -2), value),
            norm + np.sum(phi_k, axis=-2))


def _visible_sum(similarity, within, value):
    """``sum_j similarity_ij value_j`` over keys ``within`` row i's view.

    The matrix product would read hidden keys too (as ``0 * value_j``), and a
    NaN or inf value behind the causal mask would leak into earlier rows; so
    when a value is not finite the sum is taken over visible keys only.
    """
    if np.isfinite(value).all():
        return np.matmul(similarity, value)
    terms = similarity[..., :, :, None] * value[..., None, :, :]  # (..., b, n, Ev)
    return np.sum(np.where(within[..., None], terms, 0), axis=-2)


# ---------------------------------------------------------------------------
# ALiBi

def alibi_slopes(num_heads):
    r"""ALiBi head slopes :math:`m_h`, as in the paper's reference code.

    For :math:`n` a power of two, the geometric sequence
    :math:`m_h = 2^{-8h/n}`, :math:`h = 1, \dots, n`, i.e. it starts at
    :math:`2^{-8/n}` with that ratio (8 heads: 1/2, 1/4, ..., 1/256). For other
    :math:`n`, with :math:`p` the largest power of two below :math:`n`: the
    :math:`p` slopes for :math:`p` heads, then the first :math:`n - p` of every
    other slope for :math:`2p` heads (the odd powers :math:`2^{-4(2t-1)/p}`,
    which interleave the first list) (Press et al. 2022, "Train Short, Test
    Long", sec. 3, and ``get_slopes`` in ``ofirpress/attention_with_linear_biases``,
    ``fairseq/models/transformer.py``, computed the same way so the values
    are the same floats).

    Parameters
    ----------
    num_heads : int >= 1

    Returns
    -------
    slopes : float64 ndarray, shape (H,)

    Examples
    --------
    >>> alibi_slopes(4)
    array([0.25      , 0.0625    , 0.015625  , 0.00390625])
    """
    return np.array(_alibi_slope_list(masks.check_length("num_heads", num_heads, minimum=1)))


def _alibi_slope_list(n):
    if n & (n - 1) == 0:
        start = 2.0 ** (-2.0 ** -(math.log2(n) - 3))               # 2^(-8/n)
        return [start * start ** i for i in range(n)]
    closest = 2 ** math.floor(math.log2(n))
    return _alibi_slope_list(closest) + _alibi_slope_list(2 * closest)[0::2][:n - closest]


def alibi_bias(num_heads, L, S, *, causal_alignment="top_left", dtype=np.float64):
    r"""ALiBi's additive bias, :math:`b_{hij} = -m_h\, |j - p_i|`.

    The score of query ``i`` and key ``j`` in head ``h`` is penalised in
    proportion to their distance (Press et al. 2022, sec. 3, fig. 3:
    :math:`\text{softmax}(q_i K^\top + m \cdot [-(i-1), \dots, -1, 0])`),
    with the slopes :math:`m_h` of :func:`alibi_slopes`. :math:`p_i` is
    query ``i``'s key-axis position: ``i`` (``"top_left"``) or
    ``i + S - L`` (``"bottom_right"``, a causal decoder reading a KV cache,
    whose last query is the last key).

    Sign and symmetry: the bias is :math:`\le 0` and 0 on the aligned
    diagonal. Keys ahead of the query (:math:`j > p_i`) get the same
    penalty as keys behind; a causal model masks them anyway, and an encoder
    gets the symmetric form used by bidirectional ALiBi (e.g. MosaicBERT).
    The reference code adds :math:`m_h j` instead of :math:`-m_h (p_i - j)`
    for a causal model: per row that differs by the constant :math:`m_h p_i`,
    which softmax removes, so the weights are equal.

    Add it through a float ``attn_mask`` (it broadcasts against
    ``(B, H, L, S)``), combined with a causal mask if needed, and use no
    other position encoding.

    Parameters
    ----------
    num_heads : int >= 1
    L, S : int >= 0
    causal_alignment : {"top_left", "bottom_right"}
    dtype : floating dtype
        Of the result.

    Returns
    -------
    bias : ndarray, shape (H, L, S)
    """
    slopes = alibi_slopes(num_heads)
    L, S = _lengths(L, S)
    query_at, key_at = _positions(L, S, causal_alignment, "causal_alignment")
    distance = np.abs(key_at - query_at)                           # (L, S)
    return (-slopes[:, None, None] * distance).astype(_float_dtype(dtype))


def _float_dtype(dtype):
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be a floating dtype, got {dtype!r}") from None
    if not np.issubdtype(dtype, np.floating):
        raise TypeError(f"dtype must be a floating dtype, got {dtype}")
    return dtype


# ---------------------------------------------------------------------------
# relative positions: T5 buckets, Shaw et al. clipping

def relative_position_bucket(relative_position, *, bidirectional=True,
                             num_buckets=32, max_distance=128):
    r"""T5's bucket of a relative position ``j - i`` (key minus query).

    With :math:`n` = ``num_buckets`` (halved when ``bidirectional``, the upper
    half for keys after the query, :math:`j - i > 0`) and :math:`d` the
    distance (:math:`|j - i|`; causal: :math:`\max(i - j, 0)`, so every future
    key shares bucket 0): half the buckets, :math:`d < n/2 =: e`, are exact;
    the rest grow logarithmically up to ``max_distance`` and then saturate:

    .. math::
        \text{bucket}(d) = \begin{cases}
           d & d < e \\
           \min\!\left(n - 1,\; e + \left\lfloor
               \frac{\log(d/e)}{\log(\text{max\_distance}/e)} (n - e)
           \right\rfloor\right) & d \ge e
        \end{cases}

    (Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a
    Unified Text-to-Text Transformer", sec. 2.1; ``_relative_position_bucket``
    in Mesh TensorFlow and in Hugging Face's ``modeling_t5.py``). The
    logarithm is taken in float32, as both reference implementations do, so
    buckets at the exact boundaries (distance 16, 32, 64 with the defaults)
    round the same way.

    Parameters
    ----------
    relative_position : array_like of ints, any shape
        Key position minus query position.
    bidirectional : bool
        True for encoders (T5's encoder), False for causal decoders.
    num_buckets : int
        At least 4 when bidirectional, else at least 2.
    max_distance : int
        Distances from ``max_distance`` on share the last bucket; must exceed
        the exact range :math:`e`.

    Returns
    -------
    bucket : int64 ndarray, same shape, values in ``[0, num_buckets)``

    Examples
    --------
    >>> relative_position_bucket(np.array([-200, -20, -3, 0, 3, 20, 200]))
    array([15, 10,  3,  0, 19, 26, 31])
    """
    relative = np.asarray(relative_position)
    if relative.dtype == bool or not np.issubdtype(relative.dtype, np.integer):
        raise TypeError(
            f"relative_position must have an integer dtype, got dtype {relative.dtype}")
    bidirectional = _flag("bidirectional", bidirectional)
    num_buckets = masks.check_length("num_buckets", num_buckets, minimum=1)
    max_distance = masks.check_length("max_distance", max_distance, minimum=1)
    if num_buckets < (4 if bidirectional else 2):
        raise ValueError(
            f"num_buckets must be >= {4 if bidirectional else 2} when "
            f"bidirectional={bidirectional}, got {num_buckets}")
    relative = relative.astype(np.int64)
    bucket = np.zeros(relative.shape, np.int64)
    if bidirectional:
        num_buckets //= 2
        bucket += (relative > 0) * num_buckets
        distance = np.abs(relative)
    else:
        distance = -np.minimum(relative, 0)
    exact = num_buckets // 2
    if max_distance <= exact:
        raise ValueError(
            f"max_distance must be > {exact} (the exact buckets for num_buckets="
            f"{num_buckets * (2 if bidirectional else 1)}), got {max_distance}")
    # float32 as T5 (tf.to_float, torch .float()); distances below `exact` take the other branch.
    ratio = np.log(np.maximum(distance, exact).astype(np.float32) / exact) / np.float32(
        math.log(max_distance / exact))
    large = np.minimum(exact + (ratio * (num_buckets - exact)).astype(np.int64), num_buckets - 1)
    return bucket + np.where(distance < exact, distance, large)


def relative_position_bias(table, L, S, *, bidirectional=True, max_distance=128,
                           causal_alignment="top_left"):
    r"""T5's relative attention bias: gather a ``(num_buckets, H)`` table into
    ``(H, L, S)``.

    .. math:: b_{hij} = \text{table}[\text{bucket}(j - p_i), h]

    with :func:`relative_position_bucket` and :math:`p_i` query ``i``'s
    key-axis position (T5's ``compute_bias``: ``memory_position -
    context_position``; ``"bottom_right"`` is its cached decoding, whose
    queries sit at the end of the keys). T5 adds this bias to the *unscaled*
    scores (it folds ``1/sqrt(E)`` into its weights); with attnref's float
    ``attn_mask``, which is added after scaling, pass ``scale=1.0`` to
    reproduce T5.

    Parameters
    ----------
    table : (num_buckets, H) floating
        The learned bias per bucket and head (T5's
        ``relative_attention_bias.weight``).
    L, S : int >= 0
    bidirectional, max_distance
        As in :func:`relative_position_bucket`.
    causal_alignment : {"top_left", "bottom_right"}

    Returns
    -------
    bias : ndarray of ``table``'s dtype, shape (H, L, S)
    """
    table = float_array("table", table)
    if table.ndim != 2:
        raise ValueError(f"table must be 2-D (num_buckets, H), got shape {table.shape}")
    L, S = _lengths(L, S)
    query_at, key_at = _positions(L, S, causal_alignment, "causal_alignment")
    buckets = relative_position_bucket(
        key_at - query_at, bidirectional=bidirectional, num_buckets=table.shape[0],
        max_distance=max_distance)                                 # (L, S)
    return np.moveaxis(table[buckets], -1, 0)                      # (H, L, S)


def clipped_relative_positions(L, S, max_distance, *, causal_alignment="top_left"):
    r"""Shaw et al.'s clipped relative positions, as indices into a
    ``(2k + 1, ...)`` table.

    .. math:: \text{index}_{ij} = \text{clip}(j - p_i, -k, k) + k \in [0, 2k]

    with :math:`k` = ``max_distance`` and :math:`p_i` query ``i``'s key-axis
    position. Shaw et al. learn :math:`2k + 1` vectors
    :math:`w_{-k}, \dots, w_k` and use :math:`a_{ij} = w_{\text{clip}(j - i, k)}`
    in the scores, :math:`e_{ij} = q_i (k_j + a^K_{ij})^\top / \sqrt{d}`, and
    in the values (Shaw et al. 2018, "Self-Attention with Relative Position
    Representations", sec. 3.2, eq. 4-6); the offset :math:`+k` makes the
    clipped position a row index of that table.

    Parameters
    ----------
    L, S : int >= 0
    max_distance : int >= 0
        :math:`k`; relative positions beyond it share the end rows.
    causal_alignment : {"top_left", "bottom_right"}

    Returns
    -------
    index : int64 ndarray, shape (L, S)

    Examples
    --------
    >>> clipped_relative_positions(3, 4, 1)
    array([[1, 2, 2, 2],
           [0, 1, 2, 2],
           [0, 0, 1, 2]])

    The score term :math:`q_i \cdot a^K_{ij}` for a table ``w_k`` (2k+1, E):

    >>> rng = np.random.default_rng(0)
    >>> q, w_k = rng.standard_normal((3, 8)), rng.standard_normal((3, 8))
    >>> np.einsum("ie,ije->ij", q, w_k[clipped_relative_positions(3, 4, 1)]).shape
    (3, 4)
    """
    L = masks.check_length("L", L)
    S = masks.check_length("S", S)
    max_distance = masks.check_length("max_distance", max_distance)
    query_at, key_at = _positions(L, S, causal_alignment, "causal_alignment")
    return np.clip(key_at - query_at, -max_distance, max_distance).astype(np.int64) + max_distance
