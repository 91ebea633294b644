r"""The backward pass of scaled dot-product attention: the NumPy reference.

Given the forward of :func:`attnref.scaled_dot_product_attention` and the
gradient ``dO`` of a loss with respect to its output, this module returns the
gradients with respect to query, key, value and, for a float ``attn_mask``,
the mask. Shape letters as in :mod:`attnref.core` (B, H, Hq, Hkv, L, S, E, Ev).

Notation, for one (batch, head) and :math:`c` the softcap:

.. math::
    a_{ij} &= \text{scale}\; q_i \cdot k_j, \qquad
    t_{ij} = c \tanh(a_{ij}/c) \ (\text{or } a_{ij} \text{ without softcap}), \\
    s_{ij} &= t_{ij} + \text{bias}_{ij} \ (\text{float mask}), \qquad
    P_{ij} = e^{s_{ij} - \text{lse}_i} \text{ on visible keys, else } 0, \qquad
    O = P V.

The gradients (Dao 2023, "FlashAttention-2", arXiv:2307.08691, sec. 2.2 and
Algorithm 2; the softmax Jacobian as in the module docstring of
:mod:`attnref.analysis.regularizers`):

.. math::
    dV &= P^\top dO, \qquad dP = dO\, V^\top, \qquad
    D_i = \textstyle\sum_e dO_{ie}\, O_{ie} = \sum_j P_{ij}\, dP_{ij}, \\
    dS &= P \circ (dP - D \mathbf{1}^\top), \qquad
    dA = dS \circ \big(1 - \tanh^2(A/c)\big) = dS \circ \big(1 - (T/c)^2\big), \\
    dQ &= \text{scale}\; dA\, K, \qquad dK = \text{scale}\; dA^\top Q, \qquad
    d\,\text{bias} = dS.

Without softcap the factor is 1 (:math:`dA = dS`). Under grouped-query
attention (``enable_gqa``) the ``G = Hq / Hkv`` query heads that read one
key/value head each contribute to its gradient, so ``dK`` and ``dV`` of kv
head ``h`` sum over query heads ``h G, ..., h G + G - 1``; likewise every
operand whose leading dims were broadcast gets the sum over the dims it was
broadcast along (a mask ``(L, S)`` shared by every head gets the sum of the
heads' ``dS``).

Policy (that of the forward, :mod:`attnref.core`):

* A key of weight :math:`P_{ij} = 0` (masked by a bool mask, ``is_causal``,
  ``window``, a ``-inf`` bias, or negligible under the forward's rule 5)
  takes no part: ``dS``, ``dA`` and ``d bias`` are exactly 0 there, and a
  NaN or ``inf`` in its key or value reaches no gradient, nor does one in
  the query of a row that does not see it. So a key no query sees has
  ``dK = dV = 0``.
* A fully masked row has :math:`P_{i\cdot} = 0`; under
  ``masked_rows="zero"`` its ``dQ`` row and ``d bias`` row are exactly 0
  and it adds nothing to ``dK``, ``dV``. Under ``masked_rows="nan"`` its
  weights are NaN (the forward's NaN output) and the chain rule carries
  them: its ``dQ`` row and ``d bias`` row are NaN, and so are ``dK`` and
  ``dV`` of every key of its (batch, head), each of which sums over that
  row (PyTorch's math backend before 2.5).
* NaN in a visible input propagates to the gradients it reaches.
"""
from __future__ import annotations

import numbers
from typing import NamedTuple, Optional

import numpy as np

from . import kernel
from ._validation import _flag, as_dtype, check_backend, float_array, sdpa_call
from .core import _drop_negligible, _grouped, _scores, _visible
from .numerics import softmax

__all__ = ["AttentionGradients", "scaled_dot_product_attention_backward", "scores_backward"]


class AttentionGradients(NamedTuple):
    """What :func:`scaled_dot_product_attention_backward` returns; each
    gradient has its operand's own shape and the forward's output dtype."""
    dq: np.ndarray                # query's shape (..., L, E)
    dk: np.ndarray                # key's shape (..., S, E)
    dv: np.ndarray                # value's shape (..., S, Ev)
    dmask: Optional[np.ndarray]   # attn_mask's shape, with mask_grad=True; else None


def scaled_dot_product_attention_backward(
        grad_out, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
        scale=None, enable_gqa=False, *, window=None, softcap=None,
        causal_alignment="top_left", masked_rows="zero", precision=None, backend="auto",
        out=None, lse=None, mask_grad=False):
    r"""Gradients of :func:`attnref.scaled_dot_product_attention`.

    For a loss :math:`\mathcal{L}` of the output :math:`O` and
    ``grad_out`` :math:`= dO = \partial \mathcal{L} / \partial O`, returns
    :math:`\partial \mathcal{L} / \partial Q`, :math:`\partial \mathcal{L} /
    \partial K`, :math:`\partial \mathcal{L} / \partial V` and, with
    ``mask_grad=True``, :math:`\partial \mathcal{L} / \partial\,\text{bias}`
    for a float ``attn_mask``:

    .. math::
        dV = P^\top dO, \quad dP = dO\, V^\top, \quad
        D = \operatorname{rowsum}(dO \circ O), \quad
        dS = P \circ (dP - D), \\
        dA = dS \circ (1 - \tanh^2(A/c)), \quad
        dQ = \text{scale}\; dA\, K, \quad dK = \text{scale}\; dA^\top Q, \quad
        d\,\text{bias} = dS

    with :math:`A` the scaled scores, :math:`c` the softcap (factor 1
    without one) and :math:`P` the weights (Dao 2023, "FlashAttention-2",
    arXiv:2307.08691, sec. 2.2 and Algorithm 2). GQA sums ``dK`` and ``dV``
    over the query heads of each kv head, and any broadcast operand gets the
    sum over its broadcast dims. The masking policy (fully masked rows
    exactly 0 under ``masked_rows="zero"``) is stated in :mod:`attnref.backward`.

    Parameters
    ----------
    grad_out : (..., L, Ev) floating
        :math:`dO`, the shape of the forward's output (``batch_shape + (L,
        Ev)``), in the dtype of ``query``.
    query, key, value, attn_mask, is_causal, scale, enable_gqa, window, softcap, causal_alignment, masked_rows, precision
        As in :func:`attnref.scaled_dot_product_attention`, checked by the
        same code with the same messages.
    dropout_p : float
        Must be 0: the forward draws its dropout mask from ``rng`` and does
        not return it, so the backward could not apply the same one.
    backend : {"auto", "numpy", "c"}
        ``"auto"`` uses the C kernel's backward (``csrc/backward.c``, on the
        forward's code path: portable C, or the SIMD paths of
        ``csrc/backward_tiled.c``) when it is compiled and can serve the
        call, else this NumPy reference; ``"c"`` raises a RuntimeError when
        it cannot serve.
    out : (..., L, Ev), optional
        The forward's output :math:`O`; saves recomputing it for :math:`D`.
    lse : (..., L), optional
        The forward's log-sum-exp (``return_lse=True``); the NumPy backward
        then rebuilds :math:`P` as :math:`e^{s - \text{lse}}` instead of a
        fresh softmax, as FlashAttention-2's backward does; so does the C
        backward, which without it rebuilds :math:`P` from each row's
        maximum and sum (``csrc/backward_impl.h``), at the cost of a first
        pass over the scores and two numbers per query row. Without it is
        more accurate at large scores: given the lse, every weight of a row
        carries the lse's rounding, about :math:`\epsilon |\text{lse}|`
        relative and of one sign, so the gradients are exact for that lse,
        not for the inputs (float64, scores up to about 20: ``dv``'s error
        1.5 to 2x :mod:`attnref.testing.backward`'s bound given the lse,
        0.35x without). To judge a backward given an lse, give the
        reference the same lse.
    mask_grad : bool
        Also return the gradient of a float ``attn_mask``, reduced to the
        mask's own (broadcast) shape; needs a float mask.

    Returns
    -------
    AttentionGradients
        ``(dq, dk, dv, dmask)``, each in its operand's shape; ``dmask`` is
        None unless ``mask_grad``. Computed in the forward's compute dtype
        and returned in its output dtype.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = (rng.standard_normal((2, 4, 8)) for _ in range(3))
    >>> grads = scaled_dot_product_attention_backward(np.ones((2, 4, 8)), q, k, v)
    >>> grads.dq.shape, grads.dmask is None
    ((2, 4, 8), True)
    """
    _check_no_dropout(dropout_p)
    call = sdpa_call(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                     window=window, softcap=softcap, masked_rows=masked_rows,
                     precision=precision, causal_alignment=causal_alignment)
    backend = check_backend(backend)
    if _flag("mask_grad", mask_grad) and (call.mask is None or call.mask.dtype == bool):
        raise ValueError(
            f"mask_grad=True needs a float attn_mask (an additive bias has a gradient), got "
            f"{'none' if call.mask is None else 'a bool mask'}")
    grad_out = _saved("grad_out", grad_out, call.output_shape, call,
                      input_dtype=np.asarray(query).dtype)
    out = None if out is None else _saved("out", out, call.output_shape, call)
    lse = None if lse is None else _saved("lse", lse, call.lse_shape, call)
    reason = kernel.unsupported_reason(call)
    if backend == "c" and reason is not None:
        raise RuntimeError(f"backend='c' cannot serve the backward: {reason}")
    if backend != "numpy" and reason is None:
        dq, dk, dv, dmask = _kernel_backward(call, grad_out, out, lse, mask_grad)
    else:
        dq, dk, dv, dmask = _reference_backward(call, grad_out, out, lse, mask_grad)
    dtype = call.output_dtype
    return AttentionGradients(dq.astype(dtype, copy=False), dk.astype(dtype, copy=False),
                              dv.astype(dtype, copy=False),
                              dmask.astype(dtype, copy=False) if mask_grad else None)


def scores_backward(grad, query, key, attn_mask=None, is_causal=False, scale=None,
                    enable_gqa=False, *, window=None, softcap=None,
                    causal_alignment="top_left", precision=None):
    r"""Gradients with respect to query and key from the gradient with
    respect to the pre-softmax scores.

    ``grad`` is :math:`dS = \partial \mathcal{L} / \partial s` for the
    scores :math:`s = t + \text{bias}` that the softmax of
    :func:`attnref.attention_weights` reads (the ``grad`` of the
    regularisers in :mod:`attnref.analysis.regularizers`). The chain rule
    of :func:`scaled_dot_product_attention_backward` from :math:`dS` on:

    .. math::
        dA = dS \circ (1 - \tanh^2(A/c)), \quad
        dQ = \text{scale}\; dA\, K, \quad dK = \text{scale}\; dA^\top Q

    (factor 1 without softcap). Keys the call hides (bool mask,
    ``is_causal``, ``window``, ``-inf`` bias) have no score to
    differentiate: their ``dS`` is taken as 0, so a NaN key behind them
    reaches nothing.

    Parameters
    ----------
    grad : (..., L, S) floating
        Shaped like the attention weights (``batch_shape + (L, S)``).
    query, key, attn_mask, is_causal, scale, enable_gqa, window, softcap, causal_alignment, precision
        As in :func:`attnref.attention_weights`.

    Returns
    -------
    (dq, dk) : query's and key's shapes, in the output dtype of the forward.

    Examples
    --------
    A gradient step on Q and K lowers a regulariser of the weights:

    >>> from attnref import attention_weights
    >>> from attnref.analysis import head_diversity_regularizer
    >>> rng = np.random.default_rng(0)
    >>> q, k = rng.normal(size=(2, 5, 4)), rng.normal(size=(2, 5, 4))
    >>> before = head_diversity_regularizer(attention_weights(q, k))
    >>> dq, dk = scores_backward(before.grad, q, k)
    >>> after = head_diversity_regularizer(attention_weights(q - 0.5 * dq, k - 0.5 * dk))
    >>> bool(after.loss < before.loss)
    True
    """
    call = sdpa_call(query, key, np.empty(np.shape(key)[:-1] + (0,), np.asarray(key).dtype),
                     attn_mask, 0.0, is_causal, scale, enable_gqa, window=window,
                     softcap=softcap, precision=precision, causal_alignment=causal_alignment)
    grad_scores = _saved("grad", grad, call.batch_shape + (call.L, call.S), call)
    query_g, key_g, _, mask = _grouped(call)
    with np.errstate(invalid="ignore", over="ignore"):
        scores = _scores(call, query_g, key_g)
        visible = _visible(call, mask)
        if mask is not None and mask.dtype != bool:
            visible = np.isfinite(mask) if visible is None else visible & np.isfinite(mask)
        grad_scores = _split_heads(grad_scores, call)
        if visible is not None:
            grad_scores = np.where(visible, grad_scores, 0)
        dq, dk = _query_key_gradients(call, grad_scores, scores, query_g, key_g,
                                      grad_scores != 0)
    return dq.astype(call.output_dtype, copy=False), dk.astype(call.output_dtype, copy=False)


def _kernel_backward(call, grad_out, out, lse, mask_grad):
    """The C backward (``csrc/backward.c``): ``(dq, dk, dv, dmask)`` in the
    operands' shapes (``dmask`` None unless ``mask_grad``). The forward's
    output comes from the C forward when not given."""
    if out is None:
        out, _ = kernel.attention(call)
    dq, dk, dv, dmask = kernel.attention_backward(call, grad_out, out, lse,
                                                  mask_grad=mask_grad)
    return (sum_to_shape(dq, call.query.shape), sum_to_shape(dk, call.key.shape),
            sum_to_shape(dv, call.value.shape),
            None if dmask is None else sum_to_shape(dmask, call.mask.shape))


def _check_no_dropout(dropout_p):
    """A ValueError for a real ``dropout_p`` other than 0 (anything that is
    not a real number is left to the forward's check, with its message)."""
    if (isinstance(dropout_p, numbers.Real) and not isinstance(dropout_p, (bool, np.bool_))
            and dropout_p != 0):
        raise ValueError(
            f"dropout_p must be 0.0 for the backward, got {dropout_p!r}: the forward draws "
            f"its dropout mask from rng and does not return it, so the backward cannot "
            f"apply the same one")


def _saved(name, array, shape, call, input_dtype=None):
    """A tensor the backward receives (``grad_out``, ``out``, ``lse``,
    ``grad``) checked against the forward's ``shape`` and converted to
    the compute dtype. With ``input_dtype`` (query's), it must have that
    dtype, as the output it is the gradient of."""
    array = float_array(name, array)
    if array.shape != tuple(shape):
        raise ValueError(f"{name} must have the forward's shape {tuple(shape)}, got shape "
                         f"{array.shape}")
    if input_dtype is not None and array.dtype != input_dtype:
        raise TypeError(f"{name} must have the dtype of query ({input_dtype}), got dtype "
                        f"{array.dtype}")
    return as_dtype(array, call.compute_dtype)


def _split_heads(array, call):
    """``array`` (``batch_shape + (L, ...)``) with the GQA query heads split
    as :func:`attnref.core._grouped` splits them: ``(..., Hkv, G, L, ...)``."""
    if call.kv_group == 1:
        return array
    Hq, G = call.batch_shape[-1], call.kv_group
    return array.reshape(call.batch_shape[:-1] + (Hq // G, G) + array.shape[len(call.batch_shape):])


def _merge_heads(array, call):
    """The inverse of :func:`_split_heads` on a query-side gradient."""
    if call.kv_group == 1:
        return array
    return array.reshape(call.batch_shape + array.shape[len(call.batch_shape) + 1:])


def _kv_heads(array, call):
    """A key-side gradient ``(..., Hkv, G, S, ...)`` summed over each kv
    head's G query heads."""
    return array if call.kv_group == 1 else array.sum(axis=-3)


def sum_to_shape(array, shape):
    """``array`` summed over the dims it has beyond ``shape`` (leading) and
    the dims where ``shape`` has 1: the gradient of ``numpy.broadcast_to``."""
    shape = tuple(shape)
    if array.ndim > len(shape):   # (a sum over no axes would copy the array)
        array = array.sum(axis=tuple(range(array.ndim - len(shape))))
    axes = tuple(axis for axis, size in enumerate(shape) if size == 1 and array.shape[axis] != 1)
    return array.sum(axis=axes, keepdims=True) if axes else array


def _supported_product(coefficients, support, matrix):
    """``coefficients @ matrix`` in which an entry of ``coefficients`` outside
    ``support`` (a bool of its shape) contributes nothing, whatever ``matrix``
    holds there. A non-finite entry of ``matrix`` met by a supported
    coefficient makes its result NaN (a gradient through an infinite input
    has no finite value)."""
    finite = np.isfinite(matrix)
    if finite.all():
        return np.matmul(coefficients, matrix)
    product = np.matmul(coefficients, np.where(finite, matrix, 0))
    hits = np.matmul(support.astype(product.dtype), (~finite).astype(product.dtype)) > 0
    return np.where(hits, np.nan, product)


def _reference_backward(call, grad_out, out, lse, mask_grad):
    """The NumPy backward: ``(dq, dk, dv, dmask)`` in the compute dtype, each
    in its operand's shape (``dmask`` None unless ``mask_grad``)."""
    query, key, value, mask = _grouped(call)
    grad_out = _split_heads(grad_out, call)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        scores = _scores(call, query, key)                       # T, (..., L, S)
        logits = scores + mask if mask is not None and mask.dtype != bool else scores
        visible = _visible(call, mask)
        if visible is not None:
            logits = np.where(visible, logits, -np.inf)
        logits = _drop_negligible(logits)
        masked = np.all(np.isneginf(logits), axis=-1)            # (..., L): fully masked rows
        if lse is None:
            # a hidden key's weight is 0 even in a row of NaN scores (a NaN
            # query), where softmax would make every weight NaN
            weights = np.where(np.isneginf(logits), 0, softmax(logits))
        else:
            lse = _split_heads(lse, call)[..., None]
            weights = np.where(np.isneginf(logits) | np.isneginf(lse), 0,
                               np.exp(logits - lse))
        if call.masked_rows == "nan":
            weights = np.where(masked[..., None], np.nan, weights)
        support = weights != 0                                   # NaN weights are supported
        if out is None:
            out = _supported_product(weights, support, value)
        else:
            out = _split_heads(out, call)
        grad_value = _kv_heads(_supported_product(np.swapaxes(weights, -1, -2),
                                                  np.swapaxes(support, -1, -2), grad_out), call)
        grad_weights = np.matmul(grad_out, np.swapaxes(value, -1, -2))  # dP, (..., L, S)
        delta = np.sum(grad_out * out, axis=-1, keepdims=True)  # D, (..., L, 1)
        grad_logits = np.where(support, weights * (grad_weights - delta), 0)  # dS
        masked = np.broadcast_to(masked, grad_logits.shape[:-1])
        if call.masked_rows == "nan":
            grad_logits = np.where(masked[..., None], np.nan, grad_logits)
        dq, dk = _query_key_gradients(call, grad_logits, scores, query, key, support)
        if call.masked_rows == "nan":
            dq = np.where(_merge_heads(masked, call)[..., None], np.nan, dq)
    dmask = None
    if mask_grad:
        dmask = sum_to_shape(_merge_heads(grad_logits, call), call.mask.shape)
    dv = sum_to_shape(grad_value, call.value.shape)
    return dq, dk, dv, dmask


def _query_key_gradients(call, grad_logits, scores, query, key, support):
    """``(dq, dk)`` in query's and key's shapes from ``dS`` (grouped
    layout), through the softcap factor and the scale."""
    if call.softcap is not None:
        factor = 1 - np.square(scores / call.softcap)           # 1 - tanh^2(A/c)
        grad_logits = np.where(support, grad_logits * factor, grad_logits)
    dq = call.scale * _supported_product(grad_logits, support, key)
    dk = call.scale * _supported_product(np.swapaxes(grad_logits, -1, -2),
                                         np.swapaxes(support, -1, -2), query)
    dq = sum_to_shape(_merge_heads(dq, call), call.query.shape)
    dk = sum_to_shape(_kv_heads(dk, call), call.key.shape)
    return dq, dk
