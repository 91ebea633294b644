r"""Attention regularisers with exact gradients, and weight clipping.

Seed note *attention-weights-and-vectors*, "Otimização dos Pesos de Atenção":
the class ``AttentionWeightRegularizer`` (an entropy term and an L1 term) and
``clip_attention_weights``; seed note *attention-allocation*, "Boas Práticas
e Otimizações": regularisation that encourages diversity between heads.

Every regulariser takes the attention ``weights`` shaped ``(..., L, S)`` (L
queries, S keys, any leading dims: heads H, layers, batches), the softmax
rows, as the seed's ``AttentionWeightRegularizer`` does, or the pre-softmax
``scores=`` (keyword), of which it takes ``weights = softmax(scores)`` row by
row. It returns a :class:`LossAndGradient`: the scalar loss and its gradient
with respect to the pre-softmax scores, shaped like the input. That gradient
needs only the weights (see below), so both inputs give it. A key is masked
when its weight is 0, its score is ``-inf`` or ``mask`` is False there;
masked keys get weight 0 and gradient 0, and a row with every key masked adds
nothing to the loss (means skip it).

Gradient through the softmax (the vector-Jacobian product every regulariser
here ends with). With :math:`w = \operatorname{softmax}(s)` over a row and
:math:`g_j = \partial \mathcal{L} / \partial w_j`,

.. math::

    \frac{\partial w_k}{\partial s_j} = w_k(\delta_{kj} - w_j)
    \quad\Rightarrow\quad
    \frac{\partial \mathcal{L}}{\partial s_j}
      = \sum_k g_k w_k (\delta_{kj} - w_j)
      = w_j \Big(g_j - \sum_k w_k g_k\Big).

Adding a constant to every :math:`g_j` of a row leaves this unchanged (the
weights sum to 1), which is why a loss that depends on the weights only
through their row sums, like the seed's L1 term, has zero gradient.

All arithmetic is float64.

Training on query and key. The scores are :math:`s = \text{scale}\; Q K^\top`
(soft-capped, plus any bias), so :func:`attnref.backward.scores_backward`
carries a regulariser's ``grad`` on to :math:`\partial \mathcal{L} /
\partial Q` and :math:`\partial \mathcal{L} / \partial K` through the
chain rule of the attention backward, and a gradient step on Q and K lowers
the regulariser. It lives in :mod:`attnref.backward`, outside this NumPy-only
package, because it reads the attention call's arguments (mask, GQA,
softcap) through attnref's checks.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..numerics import softmax
from ._common import Record, as_array, as_weights, support
from .tokens import entropy

__all__ = [
    "LossAndGradient",
    "entropy_regularizer",
    "sparsity_regularizer",
    "head_diversity_regularizer",
    "clip_attention_weights",
]

SPARSITY_METHODS = ("lp", "entropy", "l1")
DIVERSITY_METHODS = ("cosine", "overlap")
CLIP_METHODS = ("renormalize", "project")


@dataclasses.dataclass
class LossAndGradient(Record):
    """A regulariser's value and its gradient.

    Attributes
    ----------
    loss : float
        The scalar loss.
    grad : ndarray, shaped like the input (..., L, S)
        :math:`\\partial\\,\\text{loss} / \\partial\\,\\text{scores}`, with respect to
        the pre-softmax scores (whether ``weights`` or ``scores`` were given);
        0 on masked keys.
    """
    loss: float
    grad: np.ndarray


def _check_mask(mask, shape, name):
    """``mask`` as a bool array broadcastable to ``shape``, or None."""
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.dtype != bool:
        raise TypeError(f"mask must be a bool array (True = may attend), got dtype {mask.dtype}")
    try:
        broadcast = np.broadcast_shapes(mask.shape, shape)
    except ValueError:
        broadcast = None
    if broadcast != shape:
        raise ValueError(
            f"mask must broadcast to the {name} shape {shape}, got shape {mask.shape}")
    return mask


def _softmax_rows(weights, scores, mask):
    """The float64 softmax rows the regularisers work on, from exactly one of
    ``weights`` (checked by :func:`~attnref.analysis._common.as_weights`,
    masked, renormalised) or ``scores`` (masked, then softmax). Renormalising ``w * mask`` is the softmax of the masked
    ``log w``, so ``mask`` means the same for both inputs."""
    if (weights is None) == (scores is None):
        raise TypeError(
            "pass exactly one of weights (softmax rows) or scores= (pre-softmax), got "
            + ("both" if weights is not None else "neither"))
    if scores is not None:
        scores = as_array(scores, "scores").astype(np.float64)
        if np.isnan(scores).any() or np.isposinf(scores).any():
            raise ValueError("scores must be finite or -inf (a masked key), got NaN or +inf")
        mask = _check_mask(mask, scores.shape, "scores")
        return softmax(scores if mask is None else np.where(mask, scores, -np.inf))
    weights = as_weights(weights, hint="pass pre-softmax scores as scores=").astype(np.float64)
    mask = _check_mask(mask, weights.shape, "weights")
    if mask is not None:
        weights = np.where(mask, weights, 0.0)
    total = np.sum(weights, axis=-1, keepdims=True)
    return np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)


def _softmax_vjp(weights, grad_weights):
    """:math:`w_j (g_j - \\sum_k w_k g_k)` per row: the gradient with respect
    to the scores given ``grad_weights`` = gradient with respect to the weights.

    ``grad_weights`` is first centred on its value at each row's largest
    weight. That changes nothing mathematically (see the module docstring),
    but makes a row-constant ``grad_weights`` give exactly 0 instead of
    rounding noise, and keeps large common offsets out of the sum.
    """
    largest = np.argmax(weights, axis=-1)[..., None]
    centred = grad_weights - np.take_along_axis(grad_weights, largest, axis=-1)
    return weights * (centred - np.sum(weights * centred, axis=-1, keepdims=True))


def _log_visible(weights):
    """``log(weights)`` on visible keys, 0 on masked ones (never ``-inf``)."""
    visible = support(weights)
    return np.log(weights, out=np.zeros_like(weights), where=visible)


def entropy_regularizer(weights=None, target=None, *, scores=None, mask=None):
    r"""Squared distance of each row's attention entropy from a target.

    .. math::

        w = \operatorname{softmax}(s), \qquad
        H_r = -\sum_j w_{rj} \log w_{rj}, \qquad
        \mathcal{L} = \frac{1}{N} \sum_r (H_r - t_r)^2

    with the mean over the N rows that have a visible key, and
    :math:`t_r = \log(n_r / 4)` by default, :math:`n_r` the row's visible
    keys: "not too concentrated, not too spread", the entropy of a uniform
    distribution over a quarter of the keys.

    Source: seed note *attention-weights-and-vectors*, "Attention
    Regularization", ``AttentionWeightRegularizer.entropy_regularization``
    (that class multiplies this term by ``entropy_weight=0.1``; apply such a
    weight to ``loss`` and ``grad`` yourself). Departures, none of which
    changes the value on an unmasked row by more than about
    :math:`10^{-8}`: the seed adds ``1e-10`` to every weight before the log,
    here :math:`0 \log 0 = 0` exactly; the seed has no mask, its
    :math:`\log(S/4)` uses the full width S, here the visible count
    :math:`n_r` (the same when nothing is masked); a fully masked row makes
    the seed's loss NaN, here it is skipped.

    The default target is negative for rows with fewer than 4 visible keys
    (a causal map's first rows), so it cannot be reached and the loss pushes
    those rows towards a single key (entropy 0); a row with one visible key
    has entropy 0 whatever the scores, and contributes a constant.

    Gradient: :math:`\partial\mathcal{L}/\partial w_{rj} =
    -\frac{2}{N}(H_r - t_r)(\log w_{rj} + 1)`, then the softmax product of the
    module docstring, which simplifies to
    :math:`\partial\mathcal{L}/\partial s_{rj} = -\frac{2}{N}(H_r - t_r)\,
    w_{rj}(\log w_{rj} + H_r)`.

    Parameters
    ----------
    weights : array_like, (..., L, S), optional
        Attention weights: softmax rows (each sums to 1, or is all 0 for a
        fully masked query); a weight of 0 marks a masked key.
    target : None, float or array_like broadcastable to (..., L)
        Target entropy in nats per row. None: the seed's :math:`\log(n_r/4)`.
    scores : array_like, (..., L, S), keyword-only, optional
        Pre-softmax attention scores instead of ``weights``; ``-inf`` marks a
        masked key. Give exactly one of the two.
    mask : bool array_like broadcastable to (..., L, S), optional
        True where a query may attend to a key.

    Returns
    -------
    LossAndGradient
        ``loss`` (float; NaN when every row is fully masked) and ``grad``
        (..., L, S), the gradient with respect to the pre-softmax scores.

    Examples
    --------
    >>> result = entropy_regularizer(np.full((1, 8), 1 / 8))  # uniform: H = log 8
    >>> round(result.loss, 6)  # (log 8 - log(8/4))^2 = (log 4)^2
    1.921812
    >>> float(np.abs(result.grad).max())  # uniform rows are a stationary point
    0.0
    >>> entropy_regularizer(scores=np.zeros((1, 8))).loss == result.loss
    True
    """
    weights = _softmax_rows(weights, scores, mask)
    entropy_per_row = entropy(weights)
    has_key = ~np.isnan(entropy_per_row)
    if target is None:
        visible_count = np.sum(support(weights), axis=-1)
        with np.errstate(divide="ignore"):  # log(0 / 4) only on skipped rows
            target = np.log(visible_count / 4.0)
    else:
        target = np.asarray(target, dtype=np.float64)
        try:
            target = np.broadcast_to(target, entropy_per_row.shape)
        except ValueError:
            raise ValueError(
                f"target must broadcast to one entropy per row, shape {entropy_per_row.shape}, "
                f"got shape {target.shape}") from None
    row_count = np.count_nonzero(has_key)
    if row_count == 0:
        return LossAndGradient(loss=float("nan"), grad=np.zeros_like(weights))
    deviation = np.where(has_key, entropy_per_row - target, 0.0)
    loss = float(np.sum(deviation ** 2) / row_count)
    grad_entropy = 2.0 * deviation / row_count
    grad_weights = -grad_entropy[..., None] * (_log_visible(weights) + 1.0) * support(weights)
    return LossAndGradient(loss=loss, grad=_softmax_vjp(weights, grad_weights))


def sparsity_regularizer(weights=None, *, scores=None, mask=None, method="lp", p=0.5,
                         epsilon=1e-10):
    r"""A penalty that is small when attention rows are sparse.

    ``method`` chooses the penalty (w the softmax rows; means are over the N
    rows with a visible key, sums over visible keys):

    ``"lp"`` (default): smoothed :math:`L_p` quasi-norm, :math:`0 < p < 1`,

    .. math:: \mathcal{L} = \frac{1}{N}\sum_r \sum_j (w_{rj} + \epsilon)^p,
              \qquad \frac{\partial\mathcal{L}}{\partial w_{rj}}
              = \frac{p}{N} (w_{rj} + \epsilon)^{p-1}.

        For :math:`\epsilon = 0` a row's term lies between 1 (one key takes
        all the weight) and :math:`n_r^{1-p}` (uniform over :math:`n_r`
        visible keys), so minimising it concentrates attention. The concave
        :math:`w^p` is the standard sparsity surrogate (Chartrand 2007,
        "Exact reconstruction of sparse signals via nonconvex minimization").
        :math:`\epsilon` keeps the gradient below :math:`p\,\epsilon^{p-1}`
        where a weight underflows towards 0; it adds at most
        :math:`n_r \epsilon^p` to a row's term.

    ``"entropy"``: the mean row entropy,

    .. math:: \mathcal{L} = \frac{1}{N}\sum_r H_r, \qquad
              \frac{\partial\mathcal{L}}{\partial w_{rj}} = -\frac{1}{N}(\log w_{rj} + 1);

        minimising it (equivalently, maximising the negative entropy) is the
        other standard way to sharpen attention.

    ``"l1"``: the seed's term, faithfully,

    .. math:: \mathcal{L} = \operatorname{mean}_{\ldots, r, j} |w_{rj}|
              = \frac{N}{R\,S},

        the mean over all R rows and S columns, masked entries included (seed
        note *attention-weights-and-vectors*, "Attention Regularization",
        ``AttentionWeightRegularizer.sparsity_regularization``:
        ``torch.mean(torch.abs(attention_weights))``). It is useless as a
        regulariser: softmax weights are non-negative and every row sums to
        1, so the loss is the constant 1/S (with no masked rows) whatever the
        scores, and its gradient :math:`\partial\mathcal{L}/\partial w = 1/(RS)`
        is constant along each row, which the softmax product turns into
        exactly 0. It is kept so the seed's total loss can be reproduced.

    Parameters
    ----------
    weights : array_like, (..., L, S), optional
        Attention weights: softmax rows (each sums to 1, or is all 0 for a
        fully masked query); a weight of 0 marks a masked key.
    scores : array_like, (..., L, S), keyword-only, optional
        Pre-softmax attention scores instead of ``weights``; ``-inf`` marks a
        masked key. Give exactly one of the two.
    mask : bool array_like broadcastable to (..., L, S), optional
        True where a query may attend to a key.
    method : {"lp", "entropy", "l1"}
    p : float, 0 < p < 1
        Exponent of ``"lp"``.
    epsilon : float, >= 0
        Smoothing of ``"lp"``.

    Returns
    -------
    LossAndGradient
        ``loss`` (float; NaN when every row is fully masked, except for
        ``"l1"``, whose mean over all-zero weights is 0) and ``grad``
        (..., L, S).

    Examples
    --------
    >>> one_hot = np.array([[1.0, 0.0, 0.0]])
    >>> float(sparsity_regularizer(one_hot, epsilon=0.0).loss)  # 1^0.5
    1.0
    >>> scores = np.random.default_rng(0).normal(size=(4, 5))
    >>> seed = sparsity_regularizer(scores=scores, method="l1")
    >>> round(seed.loss, 12), float(np.abs(seed.grad).max())  # 1/S, nothing to follow
    (0.2, 0.0)
    """
    if method not in SPARSITY_METHODS:
        raise ValueError(f"method must be one of {SPARSITY_METHODS}, got {method!r}")
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must lie in (0, 1) (p >= 1 does not reward sparsity), got {p!r}")
    if not epsilon >= 0.0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon!r}")
    weights = _softmax_rows(weights, scores, mask)
    visible = support(weights)
    if method == "l1":
        loss = float(np.mean(np.abs(weights)))
        grad_weights = np.sign(weights) / weights.size
        return LossAndGradient(loss=loss, grad=_softmax_vjp(weights, grad_weights))
    row_count = np.count_nonzero(np.any(visible, axis=-1))
    if row_count == 0:
        return LossAndGradient(loss=float("nan"), grad=np.zeros_like(weights))
    if method == "lp":
        smoothed = weights + epsilon
        loss = float(np.sum(np.where(visible, smoothed ** p, 0.0)) / row_count)
        power = np.power(smoothed, p - 1.0, out=np.zeros_like(smoothed), where=visible)
        grad_weights = p * power / row_count
    else:
        loss = float(np.nansum(entropy(weights)) / row_count)
        grad_weights = -(_log_visible(weights) + 1.0) * visible / row_count
    return LossAndGradient(loss=loss, grad=_softmax_vjp(weights, grad_weights))


def head_diversity_regularizer(weights=None, *, scores=None, mask=None, method="cosine"):
    r"""Mean pairwise similarity between the heads' attention maps.

    Heads are dim -3: the input is ``(..., H, L, S)`` with H >= 2, and each
    group of H heads (one per index of the leading dims: layer, batch) is
    compared within itself. With :math:`A_h = \operatorname{softmax}(s_h)`
    the map of head h and :math:`P = H(H-1)/2` pairs,

    ``"cosine"`` (default): cosine similarity of the flattened maps,

    .. math::

        \mathcal{L} = \frac{1}{G}\sum_{\text{groups}} \frac{1}{P}
                      \sum_{h<g} \frac{\langle A_h, A_g\rangle}{\lVert A_h\rVert\,\lVert A_g\rVert},
        \qquad
        \frac{\partial\mathcal{L}}{\partial A_h} = \frac{1}{G P \lVert A_h\rVert}
            \Big(\sum_{g\ne h} U_g - \Big(\sum_{g\ne h} C_{hg}\Big) U_h\Big)

    with :math:`U_h = A_h / \lVert A_h \rVert` and :math:`C = U U^\top`. It
    lies in [0, 1] (weights are non-negative): 1 when all heads draw the same
    map, 0 when no two heads share a (query, key) cell. A head whose every row
    is masked has no direction and counts as similarity 0.

    ``"overlap"``: mean per-row overlap :math:`\sum_s A_h[l, s] A_g[l, s]`,

    .. math::

        \mathcal{L} = \frac{1}{G}\sum_{\text{groups}} \frac{1}{P L}
                      \sum_{h<g} \sum_{l,s} A_h[l,s]\,A_g[l,s],
        \qquad
        \frac{\partial\mathcal{L}}{\partial A_h} = \frac{1}{G P L}\sum_{g\ne h} A_g,

    the "disagreement on attended positions" of Li et al. 2018,
    "Multi-Head Attention with Disagreement Regularization" (EMNLP), with
    the sign flipped to a penalty and the pairs restricted to h != g (their
    sum over all :math:`H^2` pairs includes each head with itself, which
    rewards spreading each head's own attention, an entropy effect rather
    than diversity). Fully masked rows count as zero overlap.

    Source of the idea: seed note *attention-allocation*, "Boas Práticas e
    Otimizações" ("técnicas que incentivam a diversidade entre as cabeças").
    The gradient with respect to the scores is the softmax product of the
    module docstring, row by row.

    Parameters
    ----------
    weights : array_like, (..., H, L, S), optional
        Attention weights of H >= 2 heads: softmax rows (each sums to 1, or
        is all 0 for a fully masked query); a weight of 0 marks a masked key.
    scores : array_like, (..., H, L, S), keyword-only, optional
        Pre-softmax scores instead of ``weights``; ``-inf`` marks a masked
        key. Give exactly one of the two.
    mask : bool array_like broadcastable to (..., H, L, S), optional
        True where a query may attend to a key.
    method : {"cosine", "overlap"}

    Returns
    -------
    LossAndGradient
        ``loss`` (float) and ``grad`` (..., H, L, S).

    Examples
    --------
    >>> same = np.full((2, 3, 3), 1 / 3)  # two heads, both uniform
    >>> round(head_diversity_regularizer(same).loss, 12)
    1.0
    """
    if method not in DIVERSITY_METHODS:
        raise ValueError(f"method must be one of {DIVERSITY_METHODS}, got {method!r}")
    weights = _softmax_rows(weights, scores, mask)
    if weights.ndim < 3 or weights.shape[-3] < 2:
        raise ValueError(
            f"weights or scores must be (..., H, L, S) with H >= 2 heads, got shape "
            f"{weights.shape}")
    head_count, query_count = weights.shape[-3], weights.shape[-2]
    pair_count = head_count * (head_count - 1) / 2
    group_count = int(np.prod(weights.shape[:-3]))
    flat = weights.reshape(weights.shape[:-3] + (head_count, -1))  # (..., H, L*S)
    if method == "cosine":
        norms = np.linalg.norm(flat, axis=-1, keepdims=True)  # (..., H, 1)
        unit = np.divide(flat, norms, out=np.zeros_like(flat), where=norms > 0)
        cosine = unit @ np.swapaxes(unit, -1, -2)  # (..., H, H)
        off_diagonal = cosine - cosine * np.eye(head_count)
        loss = np.sum(off_diagonal) / 2.0 / pair_count / group_count
        others = np.sum(unit, axis=-2, keepdims=True) - unit
        grad_flat = others - np.sum(off_diagonal, axis=-1, keepdims=True) * unit
        grad_flat = np.divide(grad_flat, norms, out=np.zeros_like(flat), where=norms > 0)
    else:
        gram = flat @ np.swapaxes(flat, -1, -2)  # (..., H, H)
        loss = (np.sum(gram) - np.trace(gram, axis1=-2, axis2=-1).sum()) / 2.0 / query_count
        loss = loss / pair_count / group_count
        grad_flat = (np.sum(flat, axis=-2, keepdims=True) - flat) / query_count
    grad_weights = grad_flat.reshape(weights.shape) / pair_count / group_count
    return LossAndGradient(loss=float(loss), grad=_softmax_vjp(weights, grad_weights))


def _check_clip_bounds(min_val, max_val):
    if not 0.0 <= min_val <= max_val or not max_val > 0.0:
        raise ValueError(
            f"need 0 <= min_val <= max_val and max_val > 0, got min_val={min_val!r}, "
            f"max_val={max_val!r}")


def _project_capped_simplex(weights, visible, min_val, max_val):
    r"""Euclidean projection of each row's visible entries onto
    :math:`\{x: \sum x = 1,\ \text{min\_val} \le x \le \text{max\_val}\}`.

    The KKT conditions give :math:`x_j = \operatorname{clip}(w_j - \tau,
    \text{min\_val}, \text{max\_val})` with :math:`\tau` the root of the
    non-increasing, piecewise-linear :math:`f(\tau) = \sum_j x_j(\tau)`.
    Entry j is free (its clip inactive) for :math:`w_j - \text{max\_val} <
    \tau < w_j - \text{min\_val}`, so between consecutive sorted breakpoints
    f is linear with slope minus the number of free entries; walking the
    breakpoints with cumulative sums gives f at each of them, and the root is
    found by linear interpolation in the interval where f crosses 1. Exact
    up to rounding, O(S log S) per row, no iteration. Masked entries get a
    breakpoint pair that changes no slope, so they are ignored.
    """
    visible_count = np.sum(visible, axis=-1)  # (..., L)
    enter = np.where(visible, weights - max_val, 0.0)  # becomes free here
    leave = np.where(visible, weights - min_val, 0.0)  # reaches min_val here
    breakpoints = np.concatenate([enter, leave], axis=-1)  # (..., L, 2S)
    free_change = np.concatenate([visible, -visible.astype(np.int64)], axis=-1)
    order = np.argsort(breakpoints, axis=-1, kind="stable")
    taus = np.take_along_axis(breakpoints, order, axis=-1)
    free_after = np.cumsum(np.take_along_axis(free_change, order, axis=-1), axis=-1)
    drop = np.cumsum(free_after[..., :-1] * np.diff(taus, axis=-1), axis=-1)
    total_at = visible_count[..., None] * max_val - np.concatenate(
        [np.zeros(drop.shape[:-1] + (1,)), drop], axis=-1)  # f at each breakpoint
    # f is non-increasing, so the points with f >= 1 are a prefix; the root lies
    # after the last of them (index 0 at least: f there is n * max_val >= 1).
    last = np.maximum(np.sum(total_at >= 1.0, axis=-1) - 1, 0)[..., None]
    tau_before = np.take_along_axis(taus, last, axis=-1)
    excess = np.take_along_axis(total_at, last, axis=-1) - 1.0
    slope = np.take_along_axis(free_after, last, axis=-1)
    tau = tau_before + np.divide(excess, slope, out=np.zeros_like(excess), where=slope > 0)
    return np.where(visible, np.clip(weights - tau, min_val, max_val), 0.0)


def clip_attention_weights(weights, min_val=1e-6, max_val=0.8, method="renormalize"):
    r"""Bound every attention weight to ``[min_val, max_val]`` and keep rows
    summing to 1.

    Only visible keys (weight > 0) are touched: a masked key (weight 0 in a
    row that has visible keys) stays 0, ``min_val`` applies to visible keys
    only, and a fully masked row stays all zeros. The seed clamps every
    entry, so with a mask it would hand ``min_val`` to masked keys (attention
    leaking through the mask) and turn a fully masked row into a uniform one;
    on rows without zeros the two agree exactly. A visible weight that
    underflowed to exactly 0 is indistinguishable from a masked one and is
    left at 0 too.

    ``method="renormalize"``: the seed's clamp-then-renormalise
    (seed note *attention-weights-and-vectors*, "Attention Weight Clipping",
    ``clip_attention_weights``),

    .. math:: x_j = \frac{\operatorname{clip}(w_j, m, M)}{\sum_k \operatorname{clip}(w_k, m, M)}.

        The division can push weights back out of the bounds: ``[0.9, 0.1]``
        with M = 0.8 clamps to ``[0.8, 0.1]`` and renormalises to
        ``[0.889, 0.111]``.

    ``method="project"``: the Euclidean projection onto the capped simplex,

    .. math:: x = \arg\min_x \lVert x - w \rVert_2 \ \text{ s.t. }\
              \sum_j x_j = 1,\ m \le x_j \le M,

        whose solution is :math:`x_j = \operatorname{clip}(w_j - \tau, m, M)`
        with the shift :math:`\tau` chosen so the row sums to 1 (found
        exactly by a sort over the breakpoints; e.g. Wang & Lu 2015,
        "Projection onto the capped simplex", arXiv:1503.01002). Every bound
        holds and projecting twice changes nothing. It exists only when a
        row's n visible keys allow it, :math:`n m \le 1 \le n M`; otherwise a
        ValueError is raised. Note that with the default ``max_val=0.8`` a
        row with a single visible key (the first row of a causal map) is
        infeasible: pass ``max_val=1.0`` or drop such rows first.

    Parameters
    ----------
    weights : array_like, (..., L, S)
        Attention weights: rows of non-negative entries summing to 1, or 0
        for a fully masked row (checked). The projection is defined for any
        non-negative row; pass unnormalised rows inside
        :func:`attnref.analysis.skip_distribution_check`.
    min_val, max_val : float
        Bounds m and M for visible keys, ``0 <= min_val <= max_val``.
    method : {"renormalize", "project"}

    Returns
    -------
    ndarray, (..., L, S), float64

    Examples
    --------
    >>> row = np.array([[0.9, 0.1]])
    >>> clip_attention_weights(row).round(3)  # the seed: max_val broken again
    array([[0.889, 0.111]])
    >>> clip_attention_weights(row, method="project")
    array([[0.8, 0.2]])
    """
    if method not in CLIP_METHODS:
        raise ValueError(f"method must be one of {CLIP_METHODS}, got {method!r}")
    weights = as_weights(weights).astype(np.float64)
    _check_clip_bounds(min_val, max_val)
    visible = support(weights)
    if method == "renormalize":
        clipped = np.where(visible, np.clip(weights, min_val, max_val), 0.0)
        total = np.sum(clipped, axis=-1, keepdims=True)
        # total == 0 only on fully masked rows; they stay zero.
        return np.divide(clipped, total, out=np.zeros_like(clipped), where=total > 0)
    visible_count = np.sum(visible, axis=-1)
    # A few ulps of slack so that e.g. min_val = 1/3 with 3 keys is accepted.
    slack = 4 * np.finfo(np.float64).eps
    infeasible = (visible_count > 0) & (
        (visible_count * min_val > 1.0 + slack) | (visible_count * max_val < 1.0 - slack))
    if infeasible.any():
        counts = sorted(set(visible_count[infeasible].tolist()))
        raise ValueError(
            f"clip_attention_weights(method='project'): bounds [min_val, max_val] = "
            f"[{min_val}, {max_val}] cannot hold on a row with n visible keys unless "
            f"n * min_val <= 1 <= n * max_val; rows with n in {counts} break this")
    return _project_capped_simplex(weights, visible, min_val, max_val)
