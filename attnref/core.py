"""Scaled dot-product attention: the NumPy reference and the dispatcher.

Shape letters, used in every name and docstring of attnref:

====  ==========================================================
B     batch (any number of leading dims, broadcast by NumPy rules)
H     heads (dim -3); ``Hq`` query heads, ``Hkv`` key/value heads
L     query (target) length
S     key/value (source) length
E     query/key feature size per head
Ev    value feature size per head
====  ==========================================================

Numerical policy (the single statement of it; tests in ``tests/test_core.py``):

1. Softmax shifts each row by its maximum and normalises by *division*:
   ``weights = exp(s - max s) / sum exp(s - max s)``.
2. A row with no visible key (or whose visible scores are all ``-inf``) is a
   *fully masked row*: its weights and output are 0 and its lse is ``-inf``
   under ``masked_rows="zero"``; weights and output are NaN (lse ``-inf``)
   under ``masked_rows="nan"``, as in PyTorch's math backend before 2.5.
3. A masked key contributes nothing: it gets weight exactly 0. A key hidden
   by a bool mask, ``is_causal`` or ``window`` is never read, so NaN or 1e30
   behind it cannot leak. Behind a ``-inf`` float mask a finite key or value
   (1e30 included) cannot leak either, but a NaN *key* gives a NaN score
   (NaN + -inf is NaN) and so a NaN row, as in PyTorch. Keys of weight 0
   contribute nothing to the output.
4. NaN in a visible query, key, value or float-mask entry propagates to the
   affected outputs.
5. A key whose weight ``exp(s_j - max s)`` would fall below the smallest
   normal number of the compute dtype (``s_j - max s < ln(finfo.tiny)``, about
   -87.3 in float32 and -708.4 in float64) weighs exactly 0, as a masked key:
   its value does not reach the output, so an ``inf`` there cannot either.
   The vector exponentials of the C kernel flush there, and every path
   (NumPy, C portable, AVX2, AVX-512) follows the same rule against the
   row's final max; a finite value loses at most ``S * finfo.tiny * max|v|``,
   far below rounding (why: ``docs/semantics.md``, "attnref's numbers at the
   edges").
6. The empty cases follow the same rules: ``S = 0`` leaves every row fully
   masked (rule 2, so NaN under ``masked_rows="nan"``), and a call whose
   requested results are all empty returns at once, without computing.
7. float16 and bfloat16 inputs are computed in float32 and returned in their
   own dtype; ``precision="float64"`` computes and returns float64.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import numpy as np

from . import kernel
from ._validation import check_backend, sdpa_call
from .masks import band_mask
from .numerics import log_softmax, logsumexp, softmax

__all__ = [
    "softmax",
    "log_softmax",
    "logsumexp",
    "attention_scores",
    "attention_weights",
    "scaled_dot_product_attention",
    "AttentionResult",
]


class AttentionResult(NamedTuple):
    """What :func:`scaled_dot_product_attention` returns when asked for more
    than the output. Fields not asked for are ``None``."""
    output: np.ndarray             # (..., L, Ev)
    weights: Optional[np.ndarray]  # (..., L, S)
    lse: Optional[np.ndarray]      # (..., L)


def attention_scores(query, key, scale=None, *, softcap=None):
    r"""Scaled dot-product scores :math:`s_{ij} = \text{scale}\; q_i \cdot k_j`.

    ``scale=None`` means :math:`1/\sqrt{E}` (Vaswani et al. 2017, eq. 1; seed
    note *attention-math-foundations*, "Cálculo de Pontuações de Atenção").
    ``softcap=c`` then applies :math:`c \tanh(s/c)` (Gemma 2).

    Parameters
    ----------
    query : (..., L, E)
    key : (..., S, E)

    Returns
    -------
    scores : (..., L, S) in the computation dtype
    """
    call = sdpa_call(query, key, _no_values(key), scale=scale, softcap=softcap)
    return _scores(call)


def attention_weights(query, key, attn_mask=None, is_causal=False, scale=None,
                      enable_gqa=False, *, window=None, softcap=None,
                      masked_rows="zero", precision=None,
                      causal_alignment="top_left"):
    """Attention weights ``softmax(scores + mask)``, shape (..., L, S).

    Arguments mean what they mean in :func:`scaled_dot_product_attention`.
    """
    result = scaled_dot_product_attention(
        query, key, _no_values(key), attn_mask, 0.0, is_causal, scale, enable_gqa,
        window=window, softcap=softcap, return_weights=True,
        masked_rows=masked_rows, precision=precision, backend="numpy",
        causal_alignment=causal_alignment)
    return result.weights


def scaled_dot_product_attention(
        query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
        scale=None, enable_gqa=False, *, window=None, softcap=None,
        return_weights=False, return_lse=False, masked_rows="zero",
        precision=None, backend="auto", rng=None, causal_alignment="top_left",
        scores="exact"):
    r"""Scaled dot-product attention, as ``torch.nn.functional.scaled_dot_product_attention``.

    .. math::
        s_{ij} &= \text{scale}\; q_i \cdot k_j \;[\to c\tanh(s_{ij}/c)] \;[+\, \text{bias}_{ij}] \\
        w_{ij} &= \frac{e^{s_{ij} - m_i}}{\sum_{j' \text{ visible}} e^{s_{ij'} - m_i}}
                  \text{ for visible } j, \text{ else } 0 \\
        o_i &= \sum_j w_{ij} v_j, \qquad \text{lse}_i = \log \sum_{j \text{ visible}} e^{s_{ij}}

    (Vaswani et al. 2017, eq. 1; seed note *attention-math-foundations*,
    "Decomposição do Mecanismo de Atenção" and "Atenção Mascarada". The seed
    writes the mask inside the scaling, ``softmax((QK^T + M)/sqrt(d_k))``;
    for a 0/-inf mask that is the same thing, and for a float bias attnref
    follows PyTorch and adds it *after* scaling.)

    Parameters
    ----------
    query : (..., L, E) floating
    key : (..., S, E), same dtype as ``query``
    value : (..., S, Ev), same dtype as ``query``
        Leading dims broadcast (NumPy rules).
    attn_mask : (..., L, S) broadcastable, bool or floating, optional
        bool: True means *may attend*. Floating: added to the scaled scores
        (``-inf`` masks). It must broadcast *to* the attention shape; it may
        not enlarge it.
    dropout_p : float in [0, 1]
        Drops weights with this probability and rescales the rest by
        ``1/(1 - p)``; needs ``rng``; NumPy backend only.
    is_causal : bool
        Query ``i`` sees keys ``j <= i + offset``, offset 0 (top-left, as
        torch) unless ``causal_alignment="bottom_right"`` (offset ``S - L``).
        It may be combined with ``attn_mask`` and ``window`` (all must allow a key).
    scale : float > 0, optional
        ``None`` means ``1/sqrt(E)``.
    enable_gqa : bool
        Grouped-query attention: dim -3 is heads, ``Hq % Hkv == 0``, query
        head ``h`` reads key/value head ``h // (Hq // Hkv)``.
    window : (left, right), optional, keyword-only
        Sliding window: keys ``i+offset-left <= j <= i+offset+right`` stay
        visible; ``None`` leaves a side unbounded.
    softcap : float > 0, optional
        Applies ``softcap * tanh(s / softcap)`` to the scaled scores, before
        the mask (Gemma 2).
    return_weights, return_lse : bool
        Also return the weights ``(..., L, S)`` (after dropout, so
        ``output = weights @ value``) and/or the log-sum-exp ``(..., L)``.
    masked_rows : {"zero", "nan"}
        What a query row with no visible key gives; see the module policy.
    precision : {None, "float32", "float64", "longdouble"}
        ``None`` computes in the input dtype (float16/bfloat16 in float32);
        a dtype name computes in at least that dtype and returns it
        (``"longdouble"`` is the oracle's reference for float64 candidates).
    backend : {"auto", "numpy", "c"}
        ``"auto"`` uses the C kernel when it is compiled and can serve the
        call (no dropout, no returned weights), else NumPy; ``"c"`` raises a
        RuntimeError when it cannot serve.
    rng : numpy.random.Generator, optional
        Source of dropout randomness.
    causal_alignment : {"top_left", "bottom_right"}
        Where the causal/window diagonal sits when ``L != S``.
    scores : {"exact", "fast"}
        How the C kernel sums the score dot products :math:`q_i \cdot k_j`.
        ``"exact"`` (the default): carried in twice the compute dtype's
        precision (float32 products summed in double; Dot2 of Ogita, Rump &
        Oishi 2005 in float64) and rounded once, within the equivalence rule
        of :mod:`attnref.testing.tolerance` on every case. ``"fast"``: plain
        fused multiply-add sums in the compute dtype, as torch and BLAS
        (error up to :math:`\gamma_E \sum_d |q_d k_d|`, Higham 2002, eq.
        3.5), faster, and held to that rule plus one score rounding
        (:func:`attnref.testing.tolerance.plain_score_allowance`). The NumPy
        reference always sums with ``matmul`` in the compute dtype (widen it
        with ``precision``).

    Returns
    -------
    output : (..., L, Ev)
        Alone, or as ``AttentionResult(output, weights, lse)`` when
        ``return_weights`` or ``return_lse`` is set (unrequested fields None).
        From the C kernel, laid out in memory as the query orders its heads
        and positions (``(..., L, H, Ev)`` when the query heads are views of
        one ``(..., L, H*E)`` projection, so that merging them back is a
        view); the values do not depend on the layout.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = (rng.standard_normal((2, 4, 8)) for _ in range(3))
    >>> scaled_dot_product_attention(q, k, v, is_causal=True).shape
    (2, 4, 8)
    """
    call = sdpa_call(
        query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
        window=window, softcap=softcap, return_weights=return_weights,
        return_lse=return_lse, masked_rows=masked_rows, precision=precision,
        rng=rng, causal_alignment=causal_alignment, scores=scores)
    backend = check_backend(backend)
    match backend:
        case _ if _nothing_to_compute(call):
            output, weights, lse = _empty_results(call)
        case "numpy":
            output, weights, lse = _reference(call)
        case "c":
            reason = kernel.unsupported_reason(call)
            if reason is not None:
                raise RuntimeError(f"backend='c' cannot serve this call: {reason}")
            (output, lse), weights = kernel.attention(call), None
        case "auto" if kernel.unsupported_reason(call) is None:
            (output, lse), weights = kernel.attention(call), None
        case _:
            output, weights, lse = _reference(call)
    output = output.astype(call.output_dtype, copy=False)
    if not (call.return_weights or call.return_lse):
        return output
    return AttentionResult(
        output,
        weights.astype(call.output_dtype, copy=False) if call.return_weights else None,
        lse.astype(call.output_dtype, copy=False) if call.return_lse else None)


def _nothing_to_compute(call):
    """True when every array the call returns is empty."""
    batch = math.prod(call.batch_shape)
    rows = batch * call.L
    return (rows * call.Ev == 0 and (not call.return_lse or rows == 0)
            and (not call.return_weights or rows * call.S == 0))


def _empty_results(call):
    """(output, weights, lse) of a call whose returned arrays are empty;
    weights and lse are None unless requested."""
    dtype = call.compute_dtype
    return (np.empty(call.output_shape, dtype),
            np.empty(call.batch_shape + (call.L, call.S), dtype) if call.return_weights else None,
            np.empty(call.lse_shape, dtype) if call.return_lse else None)


def _no_values(key):
    """A value of feature size Ev = 0 for ``key``: weights without outputs."""
    key = np.asarray(key)
    return np.empty(key.shape[:-1] + (0,), key.dtype)


def _grouped(call):
    """Query, key, value, mask with GQA groups split out of the head dim.

    With ``kv_group = G > 1`` the query heads ``Hq = Hkv * G`` become dims
    ``(Hkv, G)`` and keys/values get a broadcast group dim, so no key/value
    head is ever copied.
    """
    query, key, value, mask = call.query, call.key, call.value, call.mask
    if call.kv_group == 1:
        return query, key, value, mask
    Hq, G = call.batch_shape[-1], call.kv_group
    query = np.broadcast_to(query, query.shape[:-3] + (Hq,) + query.shape[-2:])
    query = query.reshape(query.shape[:-3] + (Hq // G, G) + query.shape[-2:])
    key, value = key[..., None, :, :], value[..., None, :, :]
    if mask is not None:
        mask = np.broadcast_to(mask, call.batch_shape + mask.shape[-2:])
        mask = mask.reshape(call.batch_shape[:-1] + (Hq // G, G) + mask.shape[-2:])
    return query, key, value, mask


def _scores(call, query=None, key=None):
    """Scaled (and soft-capped) scores ``(..., L, S)``, before any mask."""
    query = call.query if query is None else query
    key = call.key if key is None else key
    scores = np.matmul(query, np.swapaxes(key, -1, -2)) * call.scale
    if call.softcap is not None:
        scores = call.softcap * np.tanh(scores / call.softcap)
    return scores


def _reference(call):
    """The NumPy path: returns (output, weights, lse) in the compute dtype."""
    query, key, value, mask = _grouped(call)
    with np.errstate(invalid="ignore", over="ignore"):  # inf/NaN inputs follow IEEE rules
        scores = _scores(call, query, key)                     # (..., L, S)
        if mask is not None and mask.dtype != bool:
            scores = scores + mask
        visible = _visible(call, mask)
        if visible is not None:
            scores = np.where(visible, scores, -np.inf)
        scores = _drop_negligible(scores)
        lse = logsumexp(scores)                                # (..., L)
        weights = softmax(scores)                              # (..., L, S)
        if call.dropout_p > 0:
            weights = _dropout(weights, call.dropout_p, call.rng)
        output = _weighted_values(weights, value)              # (..., L, Ev)
        if call.masked_rows == "nan":
            # not through the weights alone: with S = 0 there are none
            masked = np.isneginf(lse)[..., None]
            weights = np.where(masked, np.nan, weights)
            output = np.where(masked, np.nan, output)
    if call.kv_group > 1:
        output = output.reshape(call.output_shape)
        weights = weights.reshape(call.batch_shape + weights.shape[-2:])
        lse = lse.reshape(call.lse_shape)
    return output, weights, lse


def _drop_negligible(scores):
    """Scores with ``s_j - max s < ln(finfo.tiny)`` set to ``-inf`` (policy
    rule 5): their weight would be below the smallest normal number."""
    if scores.size == 0:
        return scores
    floor = np.log(np.finfo(scores.dtype).tiny).astype(scores.dtype)
    peak = np.max(scores, axis=-1, keepdims=True)
    return np.where(scores - peak < floor, -np.inf, scores)


def _visible(call, mask):
    """Bool (..., L, S) of keys each query may see, or None when all are."""
    visible = None
    if call.band_lower is not None or call.band_upper is not None:
        visible = band_mask(call.L, call.S, call.band_lower, call.band_upper,
                            offset=call.diag_offset)
    if mask is not None and mask.dtype == bool:
        visible = mask if visible is None else visible & mask
    return visible


def _dropout(weights, dropout_p, rng):
    """Inverted dropout: keep with probability 1 - p, rescale by 1/(1 - p)."""
    if dropout_p >= 1.0:
        return np.zeros_like(weights)
    keep = rng.random(weights.shape) >= dropout_p
    return np.where(keep, weights / (1.0 - dropout_p), 0).astype(weights.dtype)


def _weighted_values(weights, value):
    """``weights @ value`` where keys of weight 0 contribute nothing.

    A plain matmul would turn ``0 * inf`` or ``0 * NaN`` behind a mask into
    NaN; non-finite values are therefore taken out of the product and put back
    only where a key of positive weight carries them.
    """
    finite = np.isfinite(value)
    if finite.all():
        return np.matmul(weights, value)
    output = np.matmul(weights, np.where(finite, value, 0))
    support = (weights > 0).astype(weights.dtype)              # (..., L, S)
    hits_nan = np.matmul(support, np.isnan(value).astype(weights.dtype)) > 0
    hits_pos = np.matmul(support, (value == np.inf).astype(weights.dtype)) > 0
    hits_neg = np.matmul(support, (value == -np.inf).astype(weights.dtype)) > 0
    output = np.where(hits_pos, np.inf, output)
    output = np.where(hits_neg, -np.inf, output)
    return np.where(hits_nan | (hits_pos & hits_neg), np.nan, output)
