"""Diagnose misallocated attention: collapsed, uniform, function-word-bound
and sink heads, each finding with its evidence and a one-line explanation.

Seed note *attention-allocation*, "Problemas de Má Alocação": attention
collapse (a head puts almost all its weight on one token, often [CLS] or
[SEP]), uniform attention (weights spread almost evenly, nothing singled
out), over-attention to function words; and "Alocação em Nível de Token"
(special tokens and punctuation as aggregators). Literature: Clark et al.
2019 for [CLS]/[SEP]/punctuation sinks, Xiao et al. 2023 for first-token
sinks.
"""
from __future__ import annotations

import dataclasses
import numbers
from typing import Optional

import numpy as np

from ._common import (Record, as_weights, check_tokens, key_share, mean_over_rows,
                      support)
from .tokens import (FUNCTION_POS, entropy, function_word_mask, received_attention,
                     sink_score, special_token_attention)

__all__ = ["Finding", "Diagnosis", "diagnose", "DEFAULT_THRESHOLDS"]

#: Default thresholds of :func:`diagnose`; the rationale for each value is in
#: its docstring.
DEFAULT_THRESHOLDS = {
    "collapse_share": 0.8,
    "uniform_entropy": 0.9,
    "function_word_lift": 1.5,
    "sink_share": 0.5,
}

#: Each check, in report order, with the name of its threshold.
_CHECKS = {
    "collapse": "collapse_share",
    "uniform": "uniform_entropy",
    "function_words": "function_word_lift",
    "sink": "sink_share",
}


@dataclasses.dataclass
class Finding(Record):
    """One problem found in one head.

    Attributes
    ----------
    kind : str
        ``"collapse"``, ``"uniform"``, ``"function_words"`` or ``"sink"``.
    layer, head : int or None
        Where: indices into the layer and head dims of the weights (None when
        the weights have no such dim).
    evidence : float
        The measured number that crossed the threshold (see :func:`diagnose`).
    threshold : float
        The threshold it was compared with (``evidence >= threshold``).
    keys : tuple of int
        Key positions the finding is about: the collapse target, the sink
        tokens; empty for ``"uniform"`` and ``"function_words"``.
    key_tokens : tuple of str or None
        The tokens at ``keys`` when tokens were given.
    explanation : str
        One line saying what was measured and why it is a problem.
    """
    kind: str
    layer: Optional[int]
    head: Optional[int]
    evidence: float
    threshold: float
    keys: tuple
    key_tokens: Optional[tuple]
    explanation: str


@dataclasses.dataclass
class Diagnosis(Record):
    """What :func:`diagnose` found, and the numbers behind it.

    Attributes
    ----------
    findings : list of Finding
        Ordered by layer, head, then check.
    evidence : dict of str to ndarray
        Per check (``"collapse"``, ``"uniform"``, ``"function_words"``,
        ``"sink"``), the evidence of every head, shape ``weights.shape[:-2]``,
        NaN where it is undefined; checks that could not run are absent.
    collapse_key : ndarray of int
        Per head, the key with the largest share of attention (the collapse
        target when it collapses); -1 for a map with no attention at all.
    thresholds : dict of str to float
        The thresholds used.
    skipped : dict of str to str
        Checks that could not run, with the reason.
    """
    findings: list
    evidence: dict
    collapse_key: np.ndarray
    thresholds: dict
    skipped: dict

    def summary(self):
        """The findings as readable text, one line each, then the skipped
        checks (``"no problems found"`` when there are no findings)."""
        lines = [f"{_location(finding)} {finding.kind}: {finding.explanation}"
                 for finding in self.findings] or ["no problems found"]
        lines += [f"{check} not checked: {reason}" for check, reason in self.skipped.items()]
        return "\n".join(lines)


def _location(finding):
    parts = [f"{name} {index}" for name, index in (("layer", finding.layer), ("head", finding.head))
             if index is not None]
    return " ".join(parts) if parts else "map"


def _thresholds(overrides):
    """The defaults updated with ``overrides``, each checked."""
    unknown = sorted(set(overrides) - set(DEFAULT_THRESHOLDS))
    if unknown:
        raise ValueError(
            f"unknown threshold(s) {unknown}; valid names are {sorted(DEFAULT_THRESHOLDS)}")
    thresholds = {**DEFAULT_THRESHOLDS, **overrides}
    for name, value in thresholds.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
            raise ValueError(f"threshold {name} must be a positive number, got {value!r}")
        if name != "function_word_lift" and value > 1:
            raise ValueError(f"threshold {name} is a share and must lie in (0, 1], got {value!r}")
    return {name: float(value) for name, value in thresholds.items()}


def _share_and_lift(weights, key_mask):
    """(share, lift), each (...): the mean share of a row's attention on the
    keys in ``key_mask`` ((S,) or broadcastable to (..., L, S)), and that
    share over the share uniform attention on each row's visible keys would
    give them (NaN when no such key is visible)."""
    visible = support(weights)
    share = key_share(weights, key_mask)
    uniform = visible / np.maximum(np.sum(visible, axis=-1, keepdims=True), 1)
    baseline = key_share(uniform, key_mask)
    with np.errstate(invalid="ignore", divide="ignore"):  # no such key visible -> NaN
        lift = np.where(baseline > 0, share / baseline, np.nan)
    return share, lift


def _uniformity(weights):
    """(...): the ``uniform`` check's evidence, the mean normalised entropy
    over the rows with at least 2 visible keys."""
    several_keys = np.sum(support(weights), axis=-1) >= 2
    return mean_over_rows(np.where(several_keys, entropy(weights, normalize=True), np.nan))


def _choice_rows(weights):
    """``weights`` with the rows that see fewer than 2 keys zeroed: such a
    row (row 0 of a causal map) has no choice to make."""
    return np.where((np.sum(support(weights), axis=-1) >= 2)[..., None], weights, 0)


def _without_first_key(weights):
    """(..., L - 1, S - 1): a causal map's rows 1.. over keys 1.., each
    renormalised: what the head reads besides the first-token sink (a row
    that gave the first token everything becomes empty, skipped by means)."""
    rest = weights[..., 1:, 1:]
    mass = rest.sum(axis=-1, keepdims=True)
    return np.divide(rest, mass, out=np.zeros(rest.shape), where=mass > 0)


def _sink_share(weights, tokens, causal=False):
    """(share, parts): the ``sink`` check's evidence (...). ``causal``: the
    share on the first key over the rows that see at least 2 keys (row 0
    of a causal map sees only itself), ``parts`` None. Otherwise the share
    on special tokens and punctuation with tokens (``parts`` is their
    :class:`~attnref.analysis.tokens.SpecialTokenAttention`), on the first
    key without (``parts`` is None)."""
    if causal:
        return key_share(_choice_rows(weights), np.arange(weights.shape[-1]) == 0), None
    if tokens is None:
        return sink_score(weights, k=1), None
    parts = special_token_attention(weights, tokens)
    return parts.total, parts


def _token_text(tokens, keys):
    return None if tokens is None else tuple(tokens[key] for key in keys)


def _quoted(tokens, key):
    return "" if tokens is None else f" {tokens[key]!r}"


def diagnose(weights, tokens=None, pos_tags=None, *, lang="en", causal=False, **thresholds):
    r"""Find heads whose attention is collapsed, uniform, bound to function
    words or parked on sink tokens.

    Each check measures one number per head (its *evidence*) and reports a
    :class:`Finding` when ``evidence >= threshold``:

    ``collapse`` (threshold ``collapse_share``, default 0.8)
        The largest share of the head's attention that lands on one key,
        :math:`\max_j \sum_i w_{ij} / \sum_{i,j} w_{ij}`; the finding names
        that key (and its token). Seed: "Colapso da Atenção", a head that
        focuses "quase toda a sua importância em um único token". Default
        0.8: "almost all", and the cap the seed's own
        ``clip_attention_weights`` puts on a single weight to avoid "extreme
        dominance"; any value above 0.5 makes the target unique.
    ``uniform`` (threshold ``uniform_entropy``, default 0.9)
        The mean over rows of the normalised entropy
        :math:`H_i / \log n_i` (:func:`attnref.analysis.tokens.entropy`,
        ``normalize=True``; :math:`n_i` visible keys), over the rows with at
        least 2 visible keys (a row with one key has no choice to make). Seed:
        "Atenção Uniforme". Default 0.9: a typical row's effective support
        :math:`e^{H_i}` is at least :math:`n_i^{0.9}` keys (12 of 16, 63 of
        100), close to the value 1 of untrained heads whose scores are all
        near 0, and well above a head whose scores have unit spread
        (:math:`\approx 1 - 1/(2 \log n)`, 0.82 for 16 keys).
    ``function_words`` (threshold ``function_word_lift``, default 1.5)
        How many times more attention function words get than uniform
        attention would give them: the mean share of a row's attention on
        function-word keys divided by the mean share of function words among
        each row's visible keys. Needs ``pos_tags`` (a key is a function word
        when its tag is in :data:`attnref.analysis.tokens.FUNCTION_POS`) or
        else ``tokens`` (:func:`attnref.analysis.tokens.function_word_mask`
        with ``lang``). Seed: "Super-atenção a Tokens Funcionais". The seed
        gives no number; a lift compares with the head's own visible keys, so
        a sentence that is mostly function words is not flagged for it.
        Default 1.5: half again as much as an indiscriminate head; the notes
        expect trained heads to favour content words (lift below 1).
    ``sink`` (threshold ``sink_share``, default 0.5)
        With ``tokens``: the mean share of a row's attention on special
        tokens ([CLS], [SEP]) and punctuation,
        :func:`attnref.analysis.tokens.special_token_attention` ``.total``
        (Clark, Khandelwal, Levy & Manning 2019, "What Does BERT Look At?";
        the finding's ``keys`` are the special-token positions, punctuation
        counts in the evidence and is named in the explanation). Without
        tokens: the share on the first key,
        :func:`attnref.analysis.tokens.sink_score` with k = 1 (Xiao et al.
        2023, "Efficient Streaming Language Models with Attention Sinks"),
        which in most models holds [CLS], <s> or BOS. Seed: "Tokens
        Especiais ... atuam como agregadores". Default 0.5: Clark et al.
        report that over half of BERT's attention in layers 6-10 goes to
        [SEP], the pattern they read as a no-op.

    Causal maps (``causal=True``, a decoder's self-attention: row ``i``
    sees keys ``0..i``). Row 0 sees only itself and row ``i`` has
    :math:`n_i = i + 1` keys, so:

    * ``uniform`` already normalises each row by :math:`\log(i + 1)`, the
      bound of a row over its visible prefix, and skips row 0: uniform means
      uniform over the prefix, as without the flag;
    * ``collapse`` and ``sink`` read only the rows with at least 2 visible
      keys: row 0's weight 1 on key 0 is forced, not chosen;
    * ``function_words`` reads the attention *besides* the first token
      (rows 1.. over keys 1.., renormalised): the sink's share says nothing
      about word classes, and a first token such as "The" would otherwise
      make every sink head look bound to function words;
    * ``sink`` is the share on the *first key*, whatever its token: the
      attention sink of causal decoders (Xiao et al. 2023), where a head
      with nothing to read parks its attention, the default pattern of a
      trained decoder and a no-op, not a fault. A ``collapse`` onto key 0
      is the same thing seen as one key.

    Collapse and sink may both fire on one head (a head collapsed onto
    [SEP] is also a sink); they answer different questions (one key vs a
    class of keys).

    Parameters
    ----------
    weights : array_like, (L, S), (H, L, S) or (layers, H, L, S)
        Attention maps; findings carry the layer and head indices.
    tokens : sequence of str, length S, optional
        Key tokens: names collapse targets, enables the special-token sink
        check and (without ``pos_tags``) the function-word check.
    pos_tags : sequence of str, length S, optional
        Universal POS tag of each key, for the function-word check.
    lang : {"en", "pt"}
        Function-word list used when only ``tokens`` are given.
    causal : bool, keyword-only
        The maps are causal (see above); :func:`attnref.analysis.positions.is_causal`
        tells. Default False.
    **thresholds : float
        Overrides of :data:`DEFAULT_THRESHOLDS` by name: ``collapse_share``,
        ``uniform_entropy``, ``sink_share`` (in (0, 1]) and
        ``function_word_lift`` (> 0). An unknown name is a ValueError listing
        the valid ones.

    Returns
    -------
    Diagnosis
        ``findings``, the per-head ``evidence`` tables, ``collapse_key``,
        ``thresholds``, ``skipped``; ``summary()`` gives readable lines.

    Examples
    --------
    >>> weights = np.full((2, 3, 3), 1 / 3)  # two uniform heads
    >>> weights[1] = [[1, 0, 0], [1, 0, 0], [1, 0, 0]]  # head 1: all on key 0
    >>> print(diagnose(weights, tokens=["[CLS]", "the", "cat"]).summary())
    head 0 uniform: mean normalised entropy 1.00 (1 = uniform): rows spread attention almost evenly over their keys, so the head singles nothing out (threshold 0.90)
    head 1 collapse: 100% of the head's attention lands on key 0 '[CLS]': queries read the same token whatever their context (threshold 80%)
    head 1 sink: 100% of the attention goes to special tokens and punctuation ([CLS] 100%, [SEP] 0%, punctuation 0%), typical of a no-op head (Clark et al. 2019; threshold 50%)
    """
    weights = as_weights(weights)
    if weights.ndim > 4:
        raise ValueError(
            f"weights must be (L, S), (H, L, S) or (layers, H, L, S), got shape {weights.shape}; "
            "select or average the extra leading dims first")
    limits = _thresholds(thresholds)
    if not isinstance(causal, (bool, np.bool_)):
        raise TypeError(f"causal must be True or False, got {causal!r}")
    key_count = weights.shape[-1]
    if tokens is not None:
        tokens = check_tokens(tokens, key_count)
    evidence, skipped, extra = {}, {}, {}

    chosen = _choice_rows(weights) if causal else weights
    total = np.sum(chosen, axis=(-2, -1))[..., None]
    key_share = np.divide(received_attention(chosen), total,
                          out=np.full(weights.shape[:-2] + (key_count,), np.nan), where=total > 0)
    evidence["collapse"] = np.max(key_share, axis=-1)
    collapse_key = np.where(np.isnan(evidence["collapse"]), -1,
                            np.argmax(np.nan_to_num(key_share, nan=-1.0), axis=-1))

    evidence["uniform"] = _uniformity(weights)

    if pos_tags is not None:
        tags = check_tokens(pos_tags, key_count, "pos_tags")
        is_function = np.isin([tag.upper() for tag in tags], list(FUNCTION_POS))
    elif tokens is not None:
        is_function = function_word_mask(tokens, lang=lang)
    else:
        is_function = None
        skipped["function_words"] = "needs pos_tags or tokens"
    if is_function is not None:
        # causal: the first token holds the sink whatever its word class; read the rest
        extra["function_word_share"], evidence["function_words"] = (
            _share_and_lift(_without_first_key(weights), is_function[1:]) if causal
            else _share_and_lift(weights, is_function))

    evidence["sink"], extra["sink_parts"] = _sink_share(weights, tokens, causal)
    extra["causal"] = causal
    sink_keys = ((0,) if extra["sink_parts"] is None else
                 tuple(key for key, token in enumerate(tokens)
                       if token in extra["sink_parts"].by_special))

    findings = []
    for check, threshold_name in _CHECKS.items():
        if check not in evidence:
            continue
        threshold = limits[threshold_name]
        for index in map(tuple, np.argwhere(evidence[check] >= threshold)):  # NaN: never
            value = float(evidence[check][index])
            keys, explanation = _explain(check, index, value, threshold, tokens,
                                         collapse_key, sink_keys, extra)
            findings.append(Finding(
                kind=check,
                layer=int(index[-2]) if len(index) == 2 else None,
                head=int(index[-1]) if index else None,
                evidence=value, threshold=threshold, keys=keys,
                key_tokens=_token_text(tokens, keys), explanation=explanation))
    if "function_words" in evidence and np.all(np.isnan(evidence["function_words"])):
        skipped["function_words"] = "no function words among the keys"
    order = list(_CHECKS)
    findings.sort(key=lambda finding: (finding.layer or 0, finding.head or 0,
                                       order.index(finding.kind)))
    return Diagnosis(findings=findings, evidence=evidence, collapse_key=collapse_key,
                     thresholds=limits, skipped=skipped)


def _explain(check, index, value, threshold, tokens, collapse_key, sink_keys, extra):
    """(keys, one-line explanation) of one finding."""
    if check == "collapse":
        key = int(collapse_key[index])
        return (key,), (f"{value:.0%} of the head's attention lands on key {key}"
                        f"{_quoted(tokens, key)}: queries read the same token whatever "
                        f"their context (threshold {threshold:.0%})")
    if check == "uniform":
        return (), (f"mean normalised entropy {value:.2f} (1 = uniform): rows spread "
                    "attention almost evenly over their keys, so the head singles nothing "
                    f"out (threshold {threshold:.2f})")
    if check == "function_words":
        share = float(extra["function_word_share"][index])
        besides = " besides the first-token sink" if extra["causal"] else ""
        return (), (f"function words get {share:.0%} of the attention{besides}, {value:.1f}x "
                    f"what uniform attention would give them (threshold {threshold:.1f}x)")
    if extra["causal"]:
        return sink_keys, (f"{value:.0%} of the attention goes to the first token"
                           f"{_quoted(tokens, 0)}, the attention sink of causal decoders "
                           f"(Xiao et al. 2023): a head with nothing to read parks there, the "
                           f"default of a decoder and a no-op (threshold {threshold:.0%})")
    if tokens is None:
        return sink_keys, (f"{value:.0%} of the attention goes to the first key, an attention "
                           f"sink (Xiao et al. 2023; threshold {threshold:.0%})")
    parts = extra["sink_parts"]
    breakdown = [f"{special} {float(share[index]):.0%}" for special, share in parts.by_special.items()]
    breakdown.append(f"punctuation {float(parts.punctuation[index]):.0%}")
    return sink_keys, (f"{value:.0%} of the attention goes to special tokens and punctuation "
                       f"({', '.join(breakdown)}), typical of a no-op head "
                       f"(Clark et al. 2019; threshold {threshold:.0%})")
