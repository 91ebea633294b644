r"""Induction and duplicate-token heads, and the repeated-random-tokens probe
that finds them.

Olsson et al. 2022 ("In-context Learning and Induction Heads") call a head
an *induction head* when, at a token ``A`` that occurred earlier as
``... A B ...``, it attends to the ``B`` after that earlier occurrence (and
copies it: ``[A][B] ... [A] -> [B]``). It is the second half of a two-layer
circuit whose first half is a *previous-token head* (Elhage et al. 2021, "A
Mathematical Framework for Transformer Circuits"): the seed note
*heads-as-information-movers* reads both as heads that move information from
one token's residual stream to another's ("Movimentação de Informação").
A *duplicate-token head* attends to earlier occurrences of the current token.

The standard probe (Olsson et al. 2022; TransformerLens's induction demo) is
a block of ``P`` random tokens repeated twice: in the second copy every token
has exactly one earlier occurrence, so the three patterns are three stripes
of the map -- offset ``-1`` (previous token), ``-P`` (duplicate) and
``-P + 1`` (induction) -- and a trained model's induction heads light up
while nothing in the text can be predicted from its meaning.

Shape letters: ``T`` positions (queries and keys are the same sequence),
``H`` heads; ``weights`` are ``(..., T, T)`` maps.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from ._common import Record, as_weights, check_tokens, mean_over_rows
from .heads import _detection_pattern
from .positions import previous_token_score

__all__ = ["InductionScores", "duplicate_token_score", "induction_head_scores",
           "induction_probe_ids", "induction_score"]


@dataclass
class InductionScores(Record):
    """:func:`induction_head_scores`: three scores per head and the heads
    ranked by the induction score.

    Attributes
    ----------
    induction, duplicate_token, previous_token : ndarray, shape (...)
        :func:`induction_score`, :func:`duplicate_token_score` and
        :func:`~attnref.analysis.positions.previous_token_score` of every map.
    ranking : ndarray of int, shape (N, ndim)
        Index tuples into the leading dims (``(layer, head)`` for
        ``(layers, H, T, T)`` weights), by decreasing induction score; NaN
        scores last, ties in index order.
    """

    induction: np.ndarray
    duplicate_token: np.ndarray
    previous_token: np.ndarray
    ranking: np.ndarray

    def top(self, count):
        """The first ``count`` entries of ``ranking``, each a dict with its
        index (``layer``/``head`` for 2 leading dims, else ``index``) and
        its three scores."""
        rows = []
        for index in self.ranking[:count]:
            where = tuple(int(i) for i in index)
            row = ({"layer": where[0], "head": where[1]} if len(where) == 2
                   else {"index": list(where)})
            row.update({name: float(getattr(self, name)[where])
                        for name in ("induction", "duplicate_token", "previous_token")})
            rows.append(row)
        return rows


def _pattern_share(weights, tokens, pattern):
    """(...): per row, the weight on the keys ``pattern`` marks for it,
    averaged over the non-empty rows that have such a key (NaN if none)."""
    weights = as_weights(weights)
    length = weights.shape[-1]
    if weights.shape[-2] != length:
        raise ValueError(f"weights must be square (..., T, T) over one sequence, got shape "
                         f"{weights.shape}")
    detection = _detection_pattern(pattern, check_tokens(tokens, length), length)  # (T, T)
    per_row = np.sum(weights * detection, axis=-1)                              # (..., T)
    has_target = detection.any(axis=-1) & (weights.sum(axis=-1) > 0)
    return mean_over_rows(np.where(has_target, per_row, np.nan))


def induction_score(weights, tokens):
    r"""Mean attention a token pays to the token right after an earlier
    occurrence of itself: the induction-head score.

    Parameters
    ----------
    weights : array_like, shape (..., T, T)
        Attention maps over one sequence.
    tokens : sequence, length T
        The sequence (ids or strings, compared for equality).

    Returns
    -------
    ndarray, shape (...)
        In [0, 1]; NaN when no row has an earlier occurrence.

    Notes
    -----
    With :math:`K_i = \{j : 1 \le j \le i,\ t_{j-1} = t_i,\ j - 1 < i\}`
    (TransformerLens's induction detection pattern,
    :func:`attnref.analysis.heads.detect_head`) and :math:`R` the rows with
    :math:`K_i \ne \emptyset`,

    .. math:: \text{induction} = \frac{1}{|R|} \sum_{i \in R} \sum_{j \in K_i} w_{ij}.

    On a block of ``P`` distinct tokens repeated twice (after a prefix whose
    tokens are not in the block, :func:`induction_probe_ids`), ``R`` is the
    second copy and :math:`K_i = \{i - P + 1\}`, so this is the mean of the
    stripe :math:`w_{i, i-P+1}` over the second copy: TransformerLens's
    ``induction_score`` (``attention_pattern.diagonal(offset=1 - P)``
    averaged; Olsson et al. 2022, "In-context Learning and Induction
    Heads", Sec. 2). Unlike ``detect_head(..., "induction")``, which divides
    by all the attention of the map, rows with nothing to induct from do not
    dilute the score.
    """
    return _pattern_share(weights, tokens, "induction")


def duplicate_token_score(weights, tokens):
    r"""Mean attention a token pays to the earlier occurrences of itself:
    the duplicate-token-head score.

    Parameters
    ----------
    weights : array_like, shape (..., T, T)
        Attention maps over one sequence.
    tokens : sequence, length T
        The sequence (ids or strings, compared for equality).

    Returns
    -------
    ndarray, shape (...)
        In [0, 1]; NaN when no token repeats.

    Notes
    -----
    With :math:`K_i = \{j < i : t_j = t_i\}` (TransformerLens's duplicate
    detection pattern) and :math:`R` the rows with :math:`K_i \ne \emptyset`,

    .. math:: \text{duplicate} = \frac{1}{|R|} \sum_{i \in R} \sum_{j \in K_i} w_{ij};

    on the repeated probe it is the mean of the stripe :math:`w_{i, i-P}`
    over the second copy (Olsson et al. 2022; Wang et al. 2022,
    "Interpretability in the Wild", Sec. 3, name these heads).
    """
    return _pattern_share(weights, tokens, "duplicate_token")


def induction_head_scores(weights, tokens):
    """Score every head on the three probe patterns and rank the heads by
    the induction score.

    Parameters
    ----------
    weights : array_like, shape (..., T, T)
        Attention maps over one sequence, e.g. ``(layers, H, T, T)``.
    tokens : sequence, length T
        The sequence, typically :func:`induction_probe_ids`.

    Returns
    -------
    InductionScores
        :func:`induction_score`, :func:`duplicate_token_score` and
        :func:`~attnref.analysis.positions.previous_token_score` (``mean_i
        w_{i,i-1}``), each shaped ``(...)``, and the ranking.

    Notes
    -----
    The three columns side by side read the circuit of Olsson et al. 2022:
    a previous-token head in an early layer and an induction head after it.
    """
    weights = as_weights(weights)
    induction = induction_score(weights, tokens)
    duplicate = duplicate_token_score(weights, tokens)
    previous = previous_token_score(weights)
    order = np.argsort(-np.nan_to_num(induction.ravel(), nan=-np.inf), kind="stable")
    ranking = np.stack(np.unravel_index(order, induction.shape), axis=-1).reshape(
        order.size, induction.ndim)
    return InductionScores(induction=induction, duplicate_token=duplicate,
                           previous_token=previous, ranking=ranking)


def induction_probe_ids(rng, vocab_size, length, *, exclude=(), prefix=()):
    """The induction probe: ``prefix`` then ``length`` random token ids,
    then the same ``length`` ids again.

    Parameters
    ----------
    rng : numpy.random.Generator
        The source of randomness (``np.random.default_rng(seed)``).
    vocab_size : int >= 1
        Ids are drawn from ``[0, vocab_size)``.
    length : int >= 2
        ``P``, the length of the repeated block.
    exclude : collection of int, keyword-only
        Ids never drawn (special tokens: BOS, EOS, padding, chat markers).
        The ``prefix`` ids are excluded too.
    prefix : sequence of int, keyword-only
        Ids put first, as given: ``(bos_id,)`` for a model trained with a
        BOS token (TransformerLens prepends it), ``()`` otherwise.

    Returns
    -------
    ndarray of int64, shape (len(prefix) + 2 P,)

    Notes
    -----
    The block is drawn *without* replacement, uniformly among the allowed
    ids, so each token of the second copy has exactly one earlier
    occurrence and :func:`induction_score` and
    :func:`duplicate_token_score` are the stripes ``w_{i,i-P+1}`` and
    ``w_{i,i-P}`` of Olsson et al. 2022 (TransformerLens draws with
    replacement, which makes a repeat inside a block possible, e.g. 1 in 4
    for ``P = 50`` among 50,000 ids).
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), "
                        f"got {type(rng).__name__}")
    for name, value, minimum in (("vocab_size", vocab_size, 1), ("length", length, 2)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    prefix = _ids("prefix", prefix, vocab_size)
    banned = np.union1d(_ids("exclude", exclude, vocab_size), prefix)
    allowed = np.setdiff1d(np.arange(vocab_size, dtype=np.int64), banned)
    if allowed.size < length:
        raise ValueError(f"length must be at most the {allowed.size} ids left after excluding "
                         f"{banned.size} of vocab_size {vocab_size}, got {length}")
    block = rng.choice(allowed, size=length, replace=False)
    return np.concatenate([prefix, block, block]).astype(np.int64)


def _ids(name, ids, vocab_size):
    """``ids`` as a 1-D int64 array of ids in [0, vocab_size), or a ValueError."""
    array = np.asarray(list(ids))
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must be a sequence of integer ids, got {list(ids)!r}")
    if array.min() < 0 or array.max() >= vocab_size:
        raise ValueError(f"{name} must hold ids in [0, {vocab_size}), got values from "
                         f"{array.min()} to {array.max()}")
    return array.astype(np.int64)
