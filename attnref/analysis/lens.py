r"""Reading the residual stream in vocabulary space: the logit lens and
direct logit attribution.

The seed note *heads-as-information-movers* ("Análise Matemática do Fluxo
de Informação") writes the residual stream as a sum: the embedding, then
what every attention head and every feed-forward block adds,

.. math:: h^{L} = h^0 + \sum_{l} \Big(\sum_h c^{l,h} + b_O^l + m^l\Big),

with :math:`c^{l,h}` head ``h``'s output through its slice of :math:`W_O`
(:attr:`attnref.nn.trace.AttentionRecord.head_contributions`) and
:math:`m^l` the feed-forward output. A decoder turns the final stream into
next-token logits through a final norm and the unembedding ``U`` (the LM
head, ``(V, D)``): :math:`z = U\,\mathrm{norm}(h^L) + b_U`.

* The **logit lens** (nostalgebraist 2020, "interpreting GPT: the logit
  lens") applies that map to the stream after every layer: what the model
  would predict if it stopped there.
* **Direct logit attribution** (Elhage et al. 2021, "A Mathematical
  Framework for Transformer Circuits", Sec. "Direct path"; Wang et al.
  2022, "Interpretability in the Wild", Sec. 3.1) splits one logit into
  the sum's terms, with the norm's scale frozen at the final stream.

Shape letters: ``T`` positions, ``D`` model width, ``V`` vocabulary, ``H``
heads, ``C`` components. Everything here is NumPy on arrays; the norm is a
callable or its parameters, so nothing depends on :mod:`attnref.nn`.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from ._common import Record, as_array

__all__ = ["DirectLogitAttribution", "LogitLens", "direct_logit_attribution", "logit_lens",
           "residual_components"]

#: Logits computed at a time by :func:`logit_lens` (rows x V), to bound memory.
_LENS_BLOCK = 1 << 22


@dataclass
class LogitLens(Record):
    """:func:`logit_lens`: the top ``k`` tokens and their probabilities.

    Attributes
    ----------
    top_ids : ndarray of int64, shape (..., T, k)
        Token ids by decreasing probability, for every leading index (the
        layer) and position.
    top_probs : ndarray, shape (..., T, k)
        Their softmax probabilities.
    """

    top_ids: np.ndarray
    top_probs: np.ndarray


@dataclass
class DirectLogitAttribution(Record):
    """:func:`direct_logit_attribution`: one logit split into terms.

    Attributes
    ----------
    attribution : ndarray, shape (..., T)
        Each component's direct contribution to the logit of ``token_ids``.
    bias : ndarray, shape (T,)
        The terms no component carries: the norm's bias and the unembedding
        bias, read along the token's direction.
    logit : ndarray, shape (T,)
        The logit of the final stream, ``u_t . norm(r_t) + b``.
    token_ids : ndarray of int64, shape (T,)
    scale : ndarray, shape (T,)
        The frozen normaliser ``sigma_t`` of each position.
    """

    attribution: np.ndarray
    bias: np.ndarray
    logit: np.ndarray
    token_ids: np.ndarray
    scale: np.ndarray


def _unembedding(unembedding, width, name="unembedding"):
    unembedding = as_array(unembedding, name)
    if unembedding.ndim != 2 or unembedding.shape[1] != width:
        raise ValueError(f"{name} must be (V, D) with D={width} (the stream's width), got shape "
                         f"{unembedding.shape}")
    return unembedding


def _vector(value, length, name):
    if value is None:
        return None
    value = as_array(value, name, min_ndim=1)
    if value.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},), got {value.shape}")
    return value


def logit_lens(residual, final_norm, unembedding, *, k=5, unembedding_bias=None):
    r"""Decode the residual stream through the final norm and the LM head.

    Parameters
    ----------
    residual : array_like, shape (..., T, D)
        Residual streams, e.g. ``(layers + 1, T, D)``: the stream entering
        the first layer, then after each layer
        (:meth:`attnref.nn.trace.Trace.residual_stream`); the last entry is
        the stream the model itself decodes.
    final_norm : callable
        The model's final norm, ``(N, D) -> (N, D)`` (RMSNorm or LayerNorm
        with their weights).
    unembedding : array_like, shape (V, D)
        The LM head (the token embedding matrix when tied).
    k : int >= 1, keyword-only
        Tokens kept per position (at most V).
    unembedding_bias : array_like, shape (V,), optional, keyword-only

    Returns
    -------
    LogitLens
        ``top_ids`` and ``top_probs``, ``(..., T, k)``.

    Notes
    -----
    nostalgebraist 2020, "interpreting GPT: the logit lens" (LessWrong):

    .. math:: p^l_t = \mathrm{softmax}\big(U\,\mathrm{norm}(h^l_t) + b_U\big),

    the distribution the model would output at position ``t`` if the layers
    after ``l`` added nothing. On the last entry it is the model's own
    output. The softmax is shifted by the row maximum and computed in
    float64; logits are formed ``2**22`` entries at a time, so memory stays
    bounded for any ``T``.
    """
    residual = as_array(residual, "residual")
    width = residual.shape[-1]
    unembedding = _unembedding(unembedding, width)
    vocabulary = unembedding.shape[0]
    bias = _vector(unembedding_bias, vocabulary, "unembedding_bias")
    if not callable(final_norm):
        raise TypeError(f"final_norm must be callable (the model's final norm), got "
                        f"{type(final_norm).__name__}")
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= vocabulary:
        raise ValueError(f"k must be an integer in [1, {vocabulary}], got {k!r}")
    rows = residual.reshape(-1, width)
    top_ids = np.zeros((rows.shape[0], k), dtype=np.int64)
    top_probs = np.zeros((rows.shape[0], k))
    block = max(1, _LENS_BLOCK // vocabulary)
    for start in range(0, rows.shape[0], block):
        normed = np.asarray(final_norm(rows[start:start + block]))
        if normed.shape != rows[start:start + block].shape:
            raise ValueError(f"final_norm must keep the shape (N, D) of its input, got "
                             f"{normed.shape} for {rows[start:start + block].shape}")
        logits = (normed @ unembedding.T).astype(np.float64)                 # (N, V)
        if bias is not None:
            logits += bias
        logits -= logits.max(axis=-1, keepdims=True)
        np.exp(logits, out=logits)
        logits /= logits.sum(axis=-1, keepdims=True)                          # probabilities
        best = np.argpartition(-logits, k - 1, axis=-1)[:, :k]
        order = np.argsort(-np.take_along_axis(logits, best, axis=-1), axis=-1, kind="stable")
        best = np.take_along_axis(best, order, axis=-1)
        top_ids[start:start + block] = best
        top_probs[start:start + block] = np.take_along_axis(logits, best, axis=-1)
    shape = residual.shape[:-1] + (k,)
    return LogitLens(top_ids=top_ids.reshape(shape), top_probs=top_probs.reshape(shape))


def direct_logit_attribution(components, residual, unembedding, token_ids, *, norm_weight=None,
                             norm_bias=None, eps=1e-6, center=False, unembedding_bias=None):
    r"""Each component's direct contribution to the logit of a token, with
    the final norm's scale frozen at the final stream.

    Parameters
    ----------
    components : array_like, shape (..., T, D)
        Terms of the residual stream: per-head contributions ``(layers, H,
        T, D)``, feed-forward outputs ``(layers, T, D)``, the embedding
        ``(T, D)`` (:func:`residual_components` gives them all).
    residual : array_like, shape (T, D)
        The final stream (before the final norm), which the components of a
        complete decomposition sum to.
    unembedding : array_like, shape (V, D)
        The LM head.
    token_ids : array_like of int, shape (T,)
        The token whose logit is split, per position (the predicted one:
        ``logits.argmax(-1)``).
    norm_weight, norm_bias : array_like, shape (D,), optional, keyword-only
        The final norm's gain ``g`` (None: 1) and bias ``b`` (None: 0).
    eps : float >= 0, keyword-only
        The norm's epsilon.
    center : bool, keyword-only
        False for RMSNorm (Zhang & Sennrich 2019), True for LayerNorm, which
        subtracts the mean first.
    unembedding_bias : array_like, shape (V,), optional, keyword-only

    Returns
    -------
    DirectLogitAttribution
        ``attribution`` ``(..., T)``, and per position ``bias``, ``logit``,
        ``token_ids`` and the frozen ``scale``.

    Notes
    -----
    The final norm is :math:`\mathrm{norm}(x) = g \odot P x / \sigma(x) + b`
    with :math:`P` the identity (RMSNorm) or the centring
    :math:`x - \bar{x}` (LayerNorm) and
    :math:`\sigma(x) = \sqrt{\overline{(Px)^2} + \epsilon}`. Freezing
    :math:`\sigma_t = \sigma(r_t)` at the final stream :math:`r_t` (the
    standard linearisation: Elhage et al. 2021; Wang et al. 2022, Sec. 3.1;
    TransformerLens's ``apply_ln_to_stack``) makes the logit of token
    :math:`\tau_t` linear in the stream:

    .. math:: z_t = \frac{(g \odot U_{\tau_t}) \cdot P r_t}{\sigma_t}
              + b \cdot U_{\tau_t} + b_U[\tau_t],
              \qquad
              \mathrm{DLA}(c)_t = \frac{(g \odot U_{\tau_t}) \cdot P c_t}{\sigma_t}.

    With the scale frozen this is exact, not an approximation: when the
    components sum to :math:`r_t`, their attributions sum to
    :math:`z_t - \text{bias}_t` up to float rounding. What the frozen scale
    does not say is how the logit would change if one component were
    removed (the scale would change too): attribution is a decomposition,
    not an ablation.
    """
    residual = as_array(residual, "residual")
    if residual.ndim != 2:
        raise ValueError(f"residual must be (T, D), the final stream, got shape {residual.shape}")
    length, width = residual.shape
    components = as_array(components, "components")
    if components.shape[-2:] != (length, width):
        raise ValueError(f"components must be (..., T, D) with T={length}, D={width} to match "
                         f"residual, got shape {components.shape}")
    unembedding = _unembedding(unembedding, width)
    vocabulary = unembedding.shape[0]
    token_ids = np.asarray(token_ids)
    if (token_ids.shape != (length,) or not np.issubdtype(token_ids.dtype, np.integer)
            or (length and (token_ids.min() < 0 or token_ids.max() >= vocabulary))):
        raise ValueError(f"token_ids must be {length} integer ids in [0, {vocabulary}), got "
                         f"{token_ids!r}")
    gain = _vector(norm_weight, width, "norm_weight")
    shift = _vector(norm_bias, width, "norm_bias")
    output_bias = _vector(unembedding_bias, vocabulary, "unembedding_bias")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps >= 0:
        raise ValueError(f"eps must be a number >= 0, got {eps!r}")

    def project(x):                                          # P x, (..., T, D)
        return x - x.mean(axis=-1, keepdims=True) if center else x

    direction = unembedding[token_ids].astype(np.float64)    # (T, D): U_tau
    readout = direction if gain is None else direction * gain
    scale = np.sqrt(np.mean(project(residual.astype(np.float64)) ** 2, axis=-1) + eps)  # (T,)
    attribution = np.einsum("...td,td->...t", project(components.astype(np.float64)),
                            readout) / scale
    bias = np.zeros(length) if shift is None else direction @ shift
    if output_bias is not None:
        bias = bias + output_bias[token_ids]
    logit = np.einsum("td,td->t", project(residual.astype(np.float64)), readout) / scale + bias
    return DirectLogitAttribution(attribution=attribution, bias=bias, logit=logit,
                                  token_ids=token_ids.astype(np.int64), scale=scale)


def residual_components(trace, *, rtol=1e-3):
    """The terms of a pre-norm model's final residual stream, from its trace.

    Parameters
    ----------
    trace : :class:`attnref.nn.trace.Trace`
        A trace of a pre-norm stack (decoder or pre-LN encoder), one
        sequence: residual states ``(T, D)``.
    rtol : float, keyword-only
        How far (relative to the stream's largest entry) ``h^l + sum_h c^{l,h}
        + b_O^l`` may be from the recorded stream after attention; farther
        means the block is not ``x + attention(norm(x))``.

    Returns
    -------
    dict of str to ndarray
        ``"embedding"`` ``(T, D)`` (the stream entering layer 0), ``"heads"``
        ``(layers, H, T, D)``, ``"attention_bias"`` ``(layers, T, D)`` (the
        bias of W_O broadcast; zeros without one) and ``"mlp"`` ``(layers,
        T, D)`` (the feed-forward output, ``h^{l+1} - h^l_{mid}``). They sum
        to ``trace.layers[-1].residual_out`` up to float rounding.

    Raises
    ------
    ValueError
        For a post-norm block (BERT's), whose stream is normalised after
        each sub-layer and so is no such sum, or a batched trace.
    """
    layers = trace.layers
    if not layers:
        raise ValueError("trace has no layers; run the model with a trace")
    embedding = np.asarray(layers[0].residual_in)
    if embedding.ndim != 2:
        raise ValueError(f"residual_components reads one sequence (T, D); the trace holds "
                         f"{embedding.shape}")
    heads, biases, mlps = [], [], []
    for index, layer in enumerate(layers):
        record = layer.self_attention
        contributions = np.asarray(record.head_contributions)                 # (H, T, D)
        bias = (np.zeros(embedding.shape[-1]) if record.output_bias is None
                else np.asarray(record.output_bias))
        mid = np.asarray(layer.residual_in) + contributions.sum(axis=0) + bias
        size = max(float(np.abs(layer.residual_mid).max()), 1.0)
        if np.abs(mid - layer.residual_mid).max() > rtol * size:
            raise ValueError(f"layer {index} ({layer.name}) is not a pre-norm block: its stream "
                             f"after attention is not the stream before plus its heads' "
                             f"contributions, so the stream is no sum of components "
                             f"(post-norm models such as BERT have no direct logit attribution)")
        heads.append(contributions)
        biases.append(np.broadcast_to(bias, embedding.shape))
        mlps.append(np.asarray(layer.residual_out) - np.asarray(layer.residual_mid))
    return {"embedding": embedding, "heads": np.stack(heads),
            "attention_bias": np.stack(biases), "mlp": np.stack(mlps)}
