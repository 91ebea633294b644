"""``attnref report``: how a model allocates attention on one text.

The seed note *attention-allocation* reads attention at three levels --
per token ("Alocação por Token"), per layer ("Alocação ao Longo das
Camadas": early layers local, late layers global) and per head
("Especialização das Cabeças") -- and then names what goes wrong ("Problemas
de Má Alocação": collapse, uniform attention, over-attention to function
words). :func:`build_report` computes each level from a model's
:class:`~attnref.nn.trace.Trace` with :mod:`attnref.analysis`, adds the
attention-rollout summary (Abnar & Zuidema 2020), and :meth:`Report.text`
prints it; :meth:`Report.to_dict` gives the same as JSON-ready data.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from . import analysis
from .analysis._common import Record, as_weights, key_share

__all__ = ["Report", "build_report", "head_type", "head_evidence"]
_SPECIALS = frozenset({"[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]", "<s>", "</s>"})


@dataclasses.dataclass
class Report(Record):
    """Everything ``attnref report`` prints. Each section is a list of plain
    records (dicts), one per token, layer or head."""
    model: str
    text: str
    tokens: list
    token_map: str          # which map the token section reads
    token_level: list       # per query token: top keys, entropy, attention received
    content_vs_function: dict
    layer_level: list       # per layer: entropy, distance, locality, sink share
    layer_trend: str
    head_level: list        # per (layer, head): type, detectors, confidence, importance
    findings: list          # diagnose(): collapse, uniform, function words, sinks
    rollout: list           # per token: the input tokens it draws most from, last layer

    def text_report(self):
        """The report as readable text."""
        lines = [f"attnref report -- {self.model}", f"text: {self.text!r}",
                 f"{len(self.tokens)} tokens: {' '.join(self.tokens)}", ""]
        lines += [f"== per token ({self.token_map})",
                  f"{'pos':>4} {'token':<14} {'entropy':>7} {'received':>8}  attends to"]
        for row in self.token_level:
            targets = ", ".join(f"{token} {weight:.2f}" for _, token, weight in row["attends_to"])
            lines.append(f"{row['position']:>4} {_cut(row['token']):<14} {row['entropy']:>7.2f} "
                         f"{row['received']:>8.2f}  {targets}")
        share = self.content_vs_function
        lines += ["", f"content words get {_pct(share['content_attention'])} of the attention "
                      f"({_pct(share['content_tokens'])} of the tokens); function words "
                      f"{_pct(share['function_attention'])} ({_pct(share['function_tokens'])})",
                  "", "== per layer",
                  f"{'layer':>5} {'entropy':>8} {'distance':>8} {'locality':>8} {'sink':>6}"]
        for row in self.layer_level:
            lines.append(f"{row['layer']:>5} {row['mean_entropy']:>8.2f} "
                         f"{row['mean_distance']:>8.2f} {row['locality']:>8.2f} "
                         f"{_pct(row['sink_share']):>6}")
        lines += [self.layer_trend, "", "== per head",
                  f"{'L':>2} {'H':>3} {'type':<28} {'prev':>5} {'dup':>5} {'ind':>5} "
                  f"{'sink':>5} {'conf':>5} {'entropy':>7} {'importance':>10} {'rank':>4}"]
        for row in self.head_level:
            lines.append(
                f"{row['layer']:>2} {row['head']:>3} {row['type']:<28} "
                f"{row['previous_token']:>5.2f} {row['duplicate_token']:>5.2f} "
                f"{row['induction']:>5.2f} {row['sink']:>5.2f} {row['confidence']:>5.2f} "
                f"{row['entropy']:>7.2f} "
                f"{row['importance']:>10.3g} {row['importance_rank']:>4}")
        lines += ["", "== misallocation"]
        lines += [f"layer {f['layer']} head {f['head']} {f['kind']}: {f['explanation']}"
                  for f in self.findings] or ["no problems found"]
        lines += ["", "== attention rollout (last layer): each token draws most from"]
        for row in self.rollout:
            sources = ", ".join(f"{token} {share:.2f}" for _, token, share in row["sources"])
            lines.append(f"{row['position']:>4} {_cut(row['token']):<14} {sources}")
        return "\n".join(lines)

    def _repr_html_(self):
        """The text report in Jupyter, as preformatted text (the tables align)."""
        import html
        return f"<pre>{html.escape(self.text_report())}</pre>"


def _cut(token, width=14):
    return token if len(token) <= width else token[:width - 1] + "~"


def _pct(value):
    return "n/a" if value is None or not np.isfinite(value) else f"{100 * value:.0f}%"


def _number(value):
    value = float(value)
    return value if np.isfinite(value) else None


def _check_index(name, value, size):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not (
            -size <= value < size):
        raise ValueError(f"{name} must be an integer in [{-size}, {size}), got {value!r}")
    return int(value) % size


def build_report(output, *, layer=None, head=None, top_k=3, lang="en",
                 text: Optional[str] = None):
    """The three-level allocation report of one encoded text.

    Parameters
    ----------
    output : :class:`attnref.models.output.ModelOutput`
        A model's ``encode(text)`` with its trace.
    layer, head : int, optional
        Restrict the token section to this layer (default: the last) and this
        head (default: the mean over the layer's heads), and the head section
        to this layer. Negative values count from the end.
    top_k : int
        Keys listed per token, in the token and rollout sections.
    lang : {"en", "pt"}
        Function-word list for the content/function split and the diagnosis.
    text : str, optional
        The text, for the header.
    """
    weights = output.attention_weights                     # (layers, H, T, T)
    n_layers, n_heads, T, _ = weights.shape
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    layer = _check_index("layer", layer, n_layers)
    head = _check_index("head", head, n_heads)
    tokens = list(output.tokens)

    map_layer = n_layers - 1 if layer is None else layer
    token_map = weights[map_layer].mean(axis=0) if head is None else weights[map_layer, head]
    map_name = (f"layer {map_layer}, " +
                ("mean over heads" if head is None else f"head {head}"))
    profile = analysis.layer_profile(weights)
    return Report(
        model=output.model, text=text if text is not None else " ".join(tokens), tokens=tokens,
        token_map=map_name, token_level=_token_level(token_map, tokens, top_k),
        content_vs_function=_content_vs_function(weights, tokens, lang),
        layer_level=_layer_level(profile), layer_trend=_layer_trend(profile),
        head_level=_head_level(output.trace, weights, tokens, layer),
        findings=[_finding(finding) for finding in
                  analysis.diagnose(weights, tokens, lang=lang).findings
                  if layer is None or finding.layer == layer],
        rollout=_rollout(weights, tokens, top_k))


def _token_level(token_map, tokens, top_k):
    """Seed: ``interpret_attention_weights`` and "Alocação em Nível de Token"."""
    top = analysis.top_attended(token_map, k=top_k)
    entropy = analysis.entropy(token_map)
    received = analysis.received_attention(token_map) / token_map.shape[0]
    return [{"position": i, "token": tokens[i],
             "attends_to": [(int(j), tokens[j], float(w))
                            for j, w in zip(top.indices[i], top.weights[i]) if w > 0],
             "entropy": float(entropy[i]), "received": float(received[i])}
            for i in range(len(tokens))]


def _content_vs_function(weights, tokens, lang):
    """Mean share of a row's attention on content vs function words ("Tokens
    de Conteúdo vs. Funcionais"), over every layer and head; specials and
    punctuation are neither."""
    is_function = analysis.function_word_mask(tokens, lang=lang)
    is_word = np.array([token not in _SPECIALS and any(char.isalnum() for char in token)
                        for token in tokens])
    is_content = is_word & ~is_function
    mean_map = weights.mean(axis=(0, 1))                     # (T, T)
    return {"content_attention": float(key_share(mean_map, is_content)),
            "function_attention": float(key_share(mean_map, is_function)),
            "content_tokens": float(is_content.mean()),
            "function_tokens": float(is_function.mean())}


def _layer_level(profile):
    return [{"layer": index, "mean_entropy": _number(profile.mean_entropy[index]),
             "mean_distance": _number(profile.mean_distance[index]),
             "locality": _number(profile.locality[index]),
             "sink_share": _number(profile.sink_share[index])}
            for index in range(profile.mean_distance.shape[0])]


def _layer_trend(profile):
    """One sentence on the notes' claim: early layers local, late layers global."""
    n_layers = profile.mean_distance.shape[0]
    if n_layers < 2:
        return "one layer: no trend across depth"
    first, last = profile.mean_distance[0], profile.mean_distance[-1]
    trend = ("more global with depth" if last > first else
             "more local with depth" if last < first else "flat with depth")
    return (f"mean attention distance {first:.2f} (layer 0) -> {last:.2f} (layer "
            f"{n_layers - 1}): {trend}; sink share {_pct(profile.sink_share[0])} -> "
            f"{_pct(profile.sink_share[-1])}")


def head_evidence(weights, tokens=None):
    """Each head's type and the numbers behind it, as ``attnref report`` names it.

    Parameters
    ----------
    weights : array_like, shape (..., L, S)
    tokens : sequence, length L, optional
        Needed for the duplicate-token and induction detectors.

    Returns
    -------
    dict of ndarray, each shaped (...)
        ``"pattern"``: the seed's pattern (:func:`attnref.analysis.classify_head`,
        ``mode="rows"``); ``"sink"``: the first-token share
        (:func:`attnref.analysis.sink_score`, Xiao et al. 2023); one entry per
        TransformerLens detector that can run (:func:`attnref.analysis.detect_head`:
        square maps only, and only ``previous_token`` without tokens);
        ``"type"``: :func:`head_type` of those.
    """
    weights = as_weights(weights)
    evidence = {"pattern": analysis.classify_head(weights, mode="rows").pattern,
                "sink": analysis.sink_score(weights)}
    square = weights.shape[-1] == weights.shape[-2]
    detectors = (analysis.HEAD_PATTERNS if tokens is not None else
                 analysis.HEAD_PATTERNS[:1]) if square else ()
    for name in detectors:
        evidence[name] = analysis.detect_head(weights, name, tokens)
    types = np.empty(evidence["pattern"].shape, dtype=object)
    for index in np.ndindex(*types.shape):
        scores = {name: _number(evidence[name][index]) if name in evidence else None
                  for name in analysis.HEAD_PATTERNS}
        types[index] = head_type(evidence["pattern"][index], scores,
                                 _number(evidence["sink"][index]))
    evidence["type"] = types.astype(str)
    return evidence


def _head_level(trace, weights, tokens, only_layer):
    """Seed: ``analyze_head_specialization`` / ``classify_attention_pattern``
    (type), TransformerLens detectors, Voita et al. 2019 confidence,
    Kobayashi et al. 2020 norms as importance."""
    evidence = head_evidence(weights, tokens)                          # (layers, H) each
    confidence = analysis.confidence(weights)
    entropy = analysis.mean_entropy(weights)
    records = [layer.self_attention for layer in trace.layers]
    importance = np.stack([analysis.head_importance(record.weights, record.values,
                                                    record.w_o).scores
                           for record in records])                     # (layers, H)
    order = np.argsort(-np.nan_to_num(importance.ravel(), nan=-np.inf), kind="stable")
    rank = np.empty(order.size, int)
    rank[order] = np.arange(1, order.size + 1)
    rank = rank.reshape(importance.shape)
    rows = []
    for layer in range(weights.shape[0]):
        if only_layer is not None and layer != only_layer:
            continue
        for head in range(weights.shape[1]):
            rows.append({"layer": layer, "head": head,
                         "type": str(evidence["type"][layer, head]),
                         "pattern": str(evidence["pattern"][layer, head]),
                         **{name: _number(evidence[name][layer, head])
                            for name in analysis.HEAD_PATTERNS},
                         "sink": _number(evidence["sink"][layer, head]),
                         "confidence": _number(confidence[layer, head]),
                         "entropy": _number(entropy[layer, head]),
                         "importance": _number(importance[layer, head]),
                         "importance_rank": int(rank[layer, head])})
    return rows


def head_type(pattern, detector_scores, sink_share, threshold=0.5):
    """The seed's pattern, sharpened by a TransformerLens detector scoring
    above ``threshold`` (``"local (previous_token)"``), or else by a share of
    attention on the first token above it (``"focused (first-token sink)"``,
    Xiao et al. 2023)."""
    best = max(detector_scores, key=lambda name: detector_scores[name] or 0.0)
    if (detector_scores[best] or 0.0) > threshold:
        return f"{pattern.replace('_attention', '')} ({best})"
    if (sink_share or 0.0) > threshold:
        return f"{pattern.replace('_attention', '')} (first-token sink)"
    return str(pattern)


def _finding(finding):
    return {"layer": finding.layer, "head": finding.head, "kind": finding.kind,
            "evidence": _number(finding.evidence), "threshold": float(finding.threshold),
            "keys": list(finding.keys), "explanation": finding.explanation}


def _rollout(weights, tokens, top_k):
    """Abnar & Zuidema 2020: after the last layer, which input tokens each
    position draws from."""
    joint = analysis.attention_rollout(weights)[-1]                    # (T, T)
    top = analysis.top_attended(joint, k=top_k)
    return [{"position": i, "token": tokens[i],
             "sources": [(int(j), tokens[j], float(share))
                         for j, share in zip(top.indices[i], top.weights[i])]}
            for i in range(len(tokens))]
