"""``attnref report``: how a model allocates attention on one text.

The seed note *attention-allocation* reads attention at three levels --
per token ("Alocação por Token"), per layer ("Alocação ao Longo das
Camadas": early layers local, late layers global) and per head
("Especialização das Cabeças") -- and then names what goes wrong ("Problemas
de Má Alocação": collapse, uniform attention, over-attention to function
words). :func:`build_report` computes each level from a model's
:class:`~attnref.nn.trace.Trace` with :mod:`attnref.analysis`, adds the
attention-rollout summary (Abnar & Zuidema 2020) and a short summary on
top: what the model read, the heads worth a look, what the typical head
does, the layer trend and the findings grouped by kind.
:meth:`Report.text_report` prints the summary (and the tables with
``full=True``); :meth:`Report.to_dict` gives everything as JSON-ready data.

Every head has one type, :func:`attnref.analysis.head_taxonomy`'s, in the
summary, the head table, the HTML explorer and :mod:`attnref.viz` alike.

On a causal decoder (detected from the maps, :func:`attnref.analysis.is_causal`)
the report reads the metrics the way a causal mask requires: row ``i`` sees
``i + 1`` keys, so its entropy is at most ``ln(i + 1)`` and "uniform" means
uniform over the prefix; no head can attend to the next token; and a head
that parks its attention on the first token is the attention sink that is
the default pattern of a decoder (Xiao et al. 2023), said once in the
summary rather than flagged head by head. Given the model's LM head
(:func:`lm_head_of`), the report adds the logit lens and
the per-head direct logit attribution of the predicted token
(:mod:`attnref.analysis.lens`). :func:`induction_probe` runs the
repeated-random-tokens probe (:mod:`attnref.analysis.circuits`).
"""
from __future__ import annotations

import collections
import dataclasses
import textwrap
from typing import Optional

import numpy as np

from . import analysis
from .analysis._common import Record, key_share, mean_over_rows
from .analysis.diagnostics import _without_first_key

__all__ = ["Report", "build_report", "PRONOUNS", "InductionProbe", "induction_probe", "LMHead",
           "lm_head_of", "is_decoder"]

#: Third-person pronouns whose attention the summary follows to the earlier
#: words (the coreference-like behaviour Clark et al. 2019, Sec. 4.3, find in
#: some of BERT's heads), by language.
PRONOUNS = {
    "en": frozenset("it its itself he him his himself she her hers herself they them their "
                    "theirs themselves".split()),
    "pt": frozenset("ele ela eles elas dele dela deles delas nele nela neles nelas lhe lhes "
                    "seu sua seus suas".split()),
}

#: The types the summary names head by head, with what their score measures.
_NAMED_TYPES = {"previous-token": "on the token before", "next-token": "on the token after",
                "self": "on itself", "local": "within {window} positions",
                "content-focused": "on content words"}
#: Evidence columns of the per-head table: (key in a head_level row, heading). The
#: type's own evidence is among them; "score" repeats it and "entropy" (nats) is in the
#: JSON only.
_HEAD_COLUMNS = (("previous_token", "prev"), ("next_token", "next"), ("self", "self"),
                 ("sink", "sink"), ("uniformity", "unif"), ("content", "cont"),
                 ("local", "local"), ("duplicate_token", "dup"), ("induction", "ind"),
                 ("confidence", "conf"))
#: Head types whose links the summary does not report as word-to-word links.
_NOT_LINKS = ("previous-token", "next-token", "self", "sink")
_KIND_NAMES = {"collapse": "collapse", "uniform": "uniform", "function_words": "function words",
               "sink": "sink"}
_SCREEN = 100   # characters: a text or token line is cut to this in the summary


@dataclasses.dataclass
class Report(Record):
    """Everything ``attnref report`` prints.

    ``summary`` is the short overview (a dict of plain values, see
    :func:`build_report`); the sections after it are lists of plain records
    (dicts), one per token, layer, head or finding. ``tokens_total`` is the
    number of tokens the whole input has (None: the model read all of it).
    """
    model: str
    text: str
    tokens: list
    tokens_total: Optional[int]
    summary: dict
    token_map: str          # which map the token section reads
    token_level: list       # per query token: top keys, entropy, attention received
    content_vs_function: dict
    layer_level: list       # per layer: entropy, distance, locality, sink share
    layer_trend: str
    head_level: list        # per (layer, head): type, its evidence, detectors, importance
    findings: list          # diagnose(): collapse, uniform, function words, sinks
    rollout: list           # per token: the input tokens it draws most from, last layer
    causal: bool = False    # a decoder's causal self-attention
    logit_lens: Optional[list] = None          # per layer: top tokens at the last position
    logit_attribution: Optional[dict] = None   # the predicted token's logit, term by term

    def text_report(self, full=False):
        """The report as readable text: the summary, then with ``full`` the
        per-token, per-layer and per-head tables, every finding and the
        rollout."""
        lines = _summary_lines(self)
        if self.logit_lens is not None:
            lines += [""] + _lens_lines(self)
        if full:
            lines += [""] + _table_lines(self)
        return "\n".join(lines)

    def _repr_html_(self):
        """The text report in Jupyter, as preformatted text (the tables align)."""
        import html
        return f"<pre>{html.escape(self.text_report())}</pre>"


def _summary_lines(report):
    summary = report.summary
    shape, read = summary["shape"], summary["read"]
    lines = [f"attnref report -- {report.model} ({shape['layers']} layers x "
             f"{shape['heads']} heads)", _fit(f"text: {report.text!r}")]
    if read["unread"]:
        lines += _wrap(f"read: ONLY THE FIRST {read['tokens']} OF {read['tokens_total']} TOKENS "
                       f"-- the model did NOT read the other {read['unread']}; everything below "
                       "is about the part it read", indent=4)
    else:
        # | between tokens: a byte-level token's own leading space stays visible
        lines.append(_fit(f"read: all {read['tokens']} tokens: {'|'.join(report.tokens)}"))
    if summary["layer"] is not None:
        lines.append(f"heads: layer {summary['layer']} only ({shape['typed']} heads)")
    decoder = summary.get("decoder")
    if decoder is not None:
        lines += _wrap(
            f"causal decoder: each token sees only itself and the tokens before it, so "
            f"token i's entropy is at most ln(i+1), uniform means uniform over that prefix "
            f"and no head can attend to the next token. First-token sink: "
            f"{decoder['sink_heads']} of {shape['typed']} heads put >= "
            f"{_pct(decoder['sink_threshold'])} of their attention on the first token "
            f"{decoder['first_token']!r} (mean over all heads {_pct(decoder['first_token_share'])})"
            f": the attention sink, the default pattern of a decoder, where a head with "
            f"nothing to read parks its attention (Xiao et al. 2023); a no-op, not "
            f"misallocation", indent=4)
    lines += ["", "heads worth a look (shares are of each token's attention):"]
    for kind, phrase in _NAMED_TYPES.items():
        if kind == "next-token" and decoder is not None:
            continue                                   # impossible under a causal mask
        heads = summary["by_type"].get(kind)
        phrase = phrase.format(window=summary["window"])
        if heads:
            best = heads[0]
            share = (f"{_pct(best['score'])} {phrase}" if len(heads) == 1 else
                     f"up to {_pct(best['score'])} {phrase} ({_where(best)})")
            lines.append(f"  {kind:<16} {_head_list(heads)}: {share}")
        elif kind in summary["closest"]:
            best = summary["closest"][kind]
            lines.append(f"  {kind:<16} none (closest: {_where(best)}, {_pct(best['score'])} "
                         f"{phrase})")
    for row in summary["detectors"]:
        lines.append(f"  {row['detector'].replace('_', '-'):<16} {_where(row)}: detector score "
                     f"{row['score']:.2f} (TransformerLens)")
    if summary["most_important"]:
        important = ", ".join(f"{_where(row)} {row['type']}"
                              for row in summary["most_important"])
        lines.append(f"  {'moves the most':<16} {important} (Kobayashi norms)")
    for row in summary["pronouns"]:
        (word, count), *rest = row["most_weight"]
        runner_up = f", {rest[0][0]!r} ({rest[0][1]})" if rest else ""
        label = f"{row['token']!r} ({row['position']})"
        lines += _wrap(f"  {label:<16} looks back most at {word!r} ({count} heads){runner_up}; "
                       f"peak {row['peak_word']!r} {row['peak_weight']:.2f} in {_where(row)}")
    link = summary["strongest_link"]
    if link is not None:
        lines += _wrap(f"  {'strongest link':<16} {link['query']!r} -> {link['key']!r}: "
                       f"{link['weight']:.2f} in {_where(link)} {link['type']}")
    typical = summary["typical"]
    description = f": {analysis.HEAD_TYPE_DESCRIPTIONS[typical['type']]}"
    if typical["type"] == "sink" and decoder is not None:
        description = ", parked on the first token: the decoder default described above"
    elif typical["type"] == "sink":
        description = ", a no-op (Clark et al. 2019): " + ", ".join(
            f"{key} {_pct(share)}" for key, share in summary["sinks_park_on"].items())
    lines += _wrap(f"typical head: {typical['type']} ({typical['count']} of {shape['typed']})"
                   f"{description}", indent=4)
    lines.append("head types: " + ", ".join(f"{count} {kind}"
                                            for kind, count in summary["type_counts"].items()))
    lines += _wrap(report.layer_trend, indent=4)
    share = report.content_vs_function
    besides = " besides the first token" if share.get("besides_first_token") else ""
    lines += _wrap(f"words: content words get {_pct(share['content_attention'])} of the "
                   f"attention{besides} ({_pct(share['content_tokens'])} of the tokens), function "
                   f"words {_pct(share['function_attention'])} "
                   f"({_pct(share['function_tokens'])})", indent=4)
    lines.append("misallocation (attnref.analysis.diagnose):")
    absent = []
    for group in summary["findings"]:
        name = _KIND_NAMES[group["kind"]]
        if not group["heads"]:
            absent.append(name)
            continue
        lines += _wrap(f"  {name} ({_threshold_text(group, decoder is not None)}): "
                       f"{_group_heads(group, summary)}")
    if absent:
        lines.append("  not found: " + ", ".join(absent))
    lines.append("tables per token, layer and head: --full (text_report(full=True)); "
                 "everything: --json (to_dict())")
    return lines


def _threshold_text(group, causal=False):
    kind, threshold = group["kind"], group["threshold"]
    return {"collapse": f">= {_pct(threshold)} of the head's attention on one key",
            "uniform": f"mean normalised entropy >= {threshold:.2f}"
                       + (" (over each prefix)" if causal else ""),
            "function_words": f">= {threshold:.1f}x the uniform share on function words",
            "sink": f">= {_pct(threshold)} on " + ("the first token" if causal else
                                                    "[CLS]/[SEP]/punctuation")}[kind]


def _group_heads(group, summary):
    """The heads of one kind of finding, compactly; a sink group refers to the
    sink-typed heads instead of listing them again."""
    heads = [{"layer": layer, "head": head} for layer, head in group["heads"]]
    if summary.get("decoder") is not None and group["kind"] in ("collapse", "sink"):
        return _decoder_group_heads(group, heads)
    if group["kind"] == "sink" and summary["typical"]["type"] == "sink":
        sinks = {(row["layer"], row["head"]) for row in summary["by_type"].get("sink", [])}
        others = [row for row in heads if (row["layer"], row["head"]) not in sinks]
        text = f"the {len(heads) - len(others)} sink heads above"
        return text + (f", and {_head_list(others)} (typed otherwise: a larger share on one "
                       "position)" if others else "")
    text = _head_list(heads)
    if group["keys"]:
        text += " onto " + ", ".join(f"{token!r}" + (f" ({count})" if len(group["keys"]) > 1
                                                     else "")
                                     for token, count in group["keys"])
    return text


def _decoder_group_heads(group, heads):
    """A decoder's sink and collapse heads: the ones on the first token are
    the default (said in the summary's causal line), the others listed."""
    if group["kind"] == "sink":
        return f"{len(heads)} heads, the first-token sink (the decoder default, see above)"
    on_first = [row for row, key in zip(heads, group["key_positions"]) if key == 0]
    others = [row for row, key in zip(heads, group["key_positions"]) if key != 0]
    parts = []
    if on_first:
        parts.append(f"{len(on_first)} heads onto the first token (the sink, see above)")
    if others:
        parts.append(f"{_head_list(others)} onto another token (worth a look)")
    return "; ".join(parts)


def _where(row):
    return f"L{row['layer']} H{row['head']}"


def _head_list(rows):
    """``"L0 H1-H5 H7, L2 H0"``: heads grouped by layer, runs as ranges."""
    by_layer = collections.defaultdict(list)
    for row in rows:
        by_layer[row["layer"]].append(row["head"])
    parts = []
    for layer in sorted(by_layer):
        heads = sorted(set(by_layer[layer]))
        runs, start = [], heads[0]
        for previous, current in zip(heads, heads[1:] + [None]):
            if current != previous + 1:
                runs.append(f"H{start}" if start == previous else f"H{start}-H{previous}")
                start = current
        parts.append(f"L{layer} " + " ".join(runs))
    return ", ".join(parts)


def _fit(line, width=_SCREEN):
    """An echo of the input (text, tokens), cut to one line."""
    return line if len(line) <= width else line[:width - 3] + "..."


def _wrap(line, indent=19, width=_SCREEN):
    """A summary line, wrapped (continuation lines indented by ``indent``:
    under the label of a head line) rather than cut."""
    return textwrap.wrap(line, width, subsequent_indent=" " * indent, break_on_hyphens=False)


def _table_lines(report):
    bound = report.causal   # a causal row i has its own bound ln(i + 1): show it
    lines = [f"== per token ({report.token_map})"
             + (": entropy in nats, at most max = ln(i+1) under the causal mask" if bound
                else ""),
             f"{'pos':>4} {'token':<14} {'entropy':>7}" + (f" {'max':>5}" if bound else "")
             + f" {'received':>8}  attends to"]
    for row in report.token_level:
        targets = ", ".join(f"{token} {weight:.2f}" for _, token, weight in row["attends_to"])
        lines.append(f"{row['position']:>4} {_cut(row['token']):<14} {row['entropy']:>7.2f}"
                     + (f" {row['max_entropy']:>5.2f}" if bound else "")
                     + f" {row['received']:>8.2f}  {targets}")
    lines += ["", "== per layer",
              f"{'layer':>5} {'entropy':>8} {'distance':>8} {'locality':>8} {'sink':>6}"]
    for row in report.layer_level:
        lines.append(f"{row['layer']:>5} {_fixed(row['mean_entropy'], 8)} "
                     f"{_fixed(row['mean_distance'], 8)} {_fixed(row['locality'], 8)} "
                     f"{_pct(row['sink_share']):>6}")
    lines += ["", "== per head (type: attnref.analysis.head_taxonomy; importance: Kobayashi norm)",
              f"{'L':>2} {'H':>3} {'type':<15} "
              + " ".join(f"{heading:>{max(len(heading), 5)}}" for _, heading in _HEAD_COLUMNS)
              + f" {'importance':>10} {'rank':>4}"]
    for row in report.head_level:
        lines.append(f"{row['layer']:>2} {row['head']:>3} {row['type']:<15} "
                     + " ".join(_fixed(row[key], max(len(heading), 5))
                                for key, heading in _HEAD_COLUMNS)
                     + f" {_fixed(row['importance'], 10, '.3g')} {row['importance_rank']:>4}")
    lines += ["", "== misallocation (every finding; --json has each one's explanation)",
              f"{'L':>2} {'H':>3} {'kind':<15} {'evidence':>8} {'threshold':>9}  on"]
    lines += [f"{f['layer']:>2} {f['head']:>3} {_KIND_NAMES[f['kind']]:<15} "
              f"{_evidence(f['kind'], f['evidence']):>8} "
              f"{_evidence(f['kind'], f['threshold']):>9}  "
              f"{' '.join(f['key_tokens'] or ())}".rstrip()
              for f in report.findings] or ["no problems found"]
    lines += ["", "== attention rollout (last layer): each token draws most from"]
    for row in report.rollout:
        sources = ", ".join(f"{token} {share:.2f}" for _, token, share in row["sources"])
        lines.append(f"{row['position']:>4} {_cut(row['token']):<14} {sources}")
    return lines


def _evidence(kind, value):
    """A finding's evidence or threshold as diagnose states it: a share, a
    normalised entropy or a lift."""
    if value is None:
        return "n/a"
    return {"uniform": f"{value:.2f}", "function_words": f"{value:.1f}x"}.get(kind, _pct(value))


def _fixed(value, width, spec=".2f"):
    return f"{'n/a':>{width}}" if value is None else f"{value:>{width}{spec}}"



def _cut(token, width=14):
    return token if len(token) <= width else token[:width - 1] + "~"


def _pct(value):
    return "n/a" if value is None or not np.isfinite(value) else f"{100 * value:.0f}%"


def _number(value):
    value = float(value)
    return value if np.isfinite(value) else None


def check_index(name, value, size):
    """``value`` as an index in ``[0, size)`` (negative counts from the end);
    None stays None. ValueError naming ``name`` when out of range."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not (
            -size <= value < size):
        raise ValueError(f"{name} must be an integer in [{-size}, {size}), got {value!r}")
    return int(value) % size


def build_report(output, *, layer=None, head=None, top_k=3, lang="en",
                 text: Optional[str] = None, causal: Optional[bool] = None, lm_head=None):
    """The allocation report of one encoded text: a summary, then the token,
    layer and head levels, the findings and the rollout.

    Parameters
    ----------
    output : :class:`attnref.models.output.ModelOutput`
        A model's ``encode(text)`` with its trace. Its ``tokens_total``
        (when set and larger than the tokens read) is reported as text the
        model did not read.
    layer, head : int, optional
        Restrict the token section to this layer (default: the last) and this
        head (default: the mean over the layer's heads), and the head section,
        the findings and the summary's heads to this layer. Negative values
        count from the end.
    top_k : int
        Keys listed per token, in the token and rollout sections.
    lang : {"en", "pt"}
        Function-word list (content/function split, head types, diagnosis)
        and pronoun list (:data:`PRONOUNS`).
    text : str, optional
        The text, for the header.
    causal : bool, optional
        Whether the model is a causal decoder; None (default): when every
        map is causal (:func:`attnref.analysis.is_causal`) and T >= 2. Then
        :func:`attnref.analysis.head_taxonomy` and
        :func:`attnref.analysis.diagnose` run with ``causal=True`` and the
        summary says what is normal for a decoder (``summary["decoder"]``:
        ``first_token``, ``first_token_share``, the mean share of every
        head's rows on the first token, and ``sink_heads``, the heads at or
        above the sink threshold).
    lm_head : LMHead, optional
        The model's final norm and LM head (:func:`lm_head_of`), for the
        logit-lens and direct-logit-attribution sections. Needs
        ``output.logits`` ``(T, V)`` and a pre-norm trace.

    Returns
    -------
    Report
        ``summary`` holds ``read`` (tokens read, ``tokens_total``,
        ``unread``), ``shape``, ``layer``, ``window``, ``type_counts``,
        ``typical`` (the most common type and its count), ``sinks_park_on``
        (the sink heads' mean share on [CLS], [SEP] and punctuation; None
        without sink heads), ``by_type`` (the
        heads of each type, best first), ``closest`` (for the previous- and
        next-token types when no head has them: the best candidate),
        ``detectors`` (duplicate-token and induction scores >= 0.5),
        ``most_important`` (top 3 by Kobayashi norm), ``pronouns`` (what
        each pronoun of :data:`PRONOUNS` attends to among the earlier
        content words), ``strongest_link`` (the largest weight between two
        non-adjacent content words) and ``findings`` (one group per kind of
        :func:`attnref.analysis.diagnose`, with its heads). Every head's
        type is :func:`attnref.analysis.head_taxonomy`'s.
    """
    weights = output.attention_weights                     # (layers, H, T, T)
    n_layers, n_heads, T, _ = weights.shape
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    if lang not in PRONOUNS:
        raise ValueError(f"lang must be one of {sorted(PRONOUNS)}, got {lang!r}")
    layer = check_index("layer", layer, n_layers)
    head = check_index("head", head, n_heads)
    tokens = list(output.tokens)
    tokens_total = getattr(output, "tokens_total", None)

    map_layer = n_layers - 1 if layer is None else layer
    token_map = weights[map_layer].mean(axis=0) if head is None else weights[map_layer, head]
    map_name = (f"layer {map_layer}, " +
                ("mean over heads" if head is None else f"head {head}"))
    if causal is None:
        causal = T >= 2 and bool(np.all(analysis.is_causal(weights)))
    elif not isinstance(causal, (bool, np.bool_)):
        raise TypeError(f"causal must be True, False or None, got {causal!r}")
    causal = bool(causal)
    profile = analysis.layer_profile(weights)
    taxonomy = analysis.head_taxonomy(weights, tokens, lang=lang, causal=causal)
    head_level = _head_level(output.trace, weights, tokens, taxonomy, layer)
    diagnosis = analysis.diagnose(weights, tokens, lang=lang, causal=causal)
    findings = [_finding(finding) for finding in diagnosis.findings
                if layer is None or finding.layer == layer]
    layers = range(n_layers) if layer is None else [layer]
    summary = {
        "read": {"tokens": T, "tokens_total": T if tokens_total is None else int(tokens_total),
                 "unread": 0 if tokens_total is None else max(int(tokens_total) - T, 0)},
        "shape": {"layers": n_layers, "heads": n_heads, "typed": len(head_level)},
        "layer": layer, "window": taxonomy.thresholds["window"],
        **_head_overview(head_level, weights, tokens),
        "pronouns": _pronouns(weights, tokens, layers, taxonomy.type, lang),
        "strongest_link": _strongest_link(weights, tokens, layers, taxonomy.type, lang),
        "findings": _finding_groups(findings, diagnosis.thresholds),
        "decoder": (_decoder_summary(taxonomy, diagnosis, tokens, layers) if causal
                    else None),
    }
    lens = attribution = None
    if lm_head is not None:
        lens, attribution = _lm_head_sections(output, lm_head, top_k)
    return Report(
        model=output.model, text=text if text is not None else " ".join(tokens), tokens=tokens,
        tokens_total=summary["read"]["tokens_total"], summary=summary,
        token_map=map_name, token_level=_token_level(token_map, tokens, top_k),
        content_vs_function=_content_vs_function(weights, tokens, lang, causal),
        layer_level=_layer_level(profile), layer_trend=_layer_trend(profile),
        head_level=head_level, findings=findings, rollout=_rollout(weights, tokens, top_k),
        causal=causal, logit_lens=lens, logit_attribution=attribution)


def _decoder_summary(taxonomy, diagnosis, tokens, layers):
    """What is normal for a decoder: the first-token sink, over ``layers``."""
    share = taxonomy.sink[list(layers)]                      # (layers, H), rows with a choice
    threshold = diagnosis.thresholds["sink_share"]
    return {"first_token": tokens[0],
            "first_token_share": _number(mean_over_rows(share.ravel())),
            "sink_heads": int(np.sum(share >= threshold)), "sink_threshold": threshold}


def _head_overview(head_level, weights, tokens):
    """The summary's head entries, read from the head table so the two agree;
    for sink heads, the mean share they park on each special token and on
    punctuation (:func:`attnref.analysis.special_token_attention`)."""
    counts = collections.Counter(row["type"] for row in head_level)
    by_type = collections.defaultdict(list)
    for row in sorted(head_level, key=lambda row: -(row["score"] or 0.0)):
        by_type[row["type"]].append({"layer": row["layer"], "head": row["head"],
                                     "score": row["score"]})
    closest = {}
    for kind, key in (("previous-token", "previous_token"), ("next-token", "next_token")):
        candidates = [row for row in head_level if row[key] is not None]
        if kind not in by_type and candidates:
            best = max(candidates, key=lambda row: row[key])
            closest[kind] = {"layer": best["layer"], "head": best["head"], "score": best[key]}
    detectors = [{"detector": name, "layer": row["layer"], "head": row["head"],
                  "score": row[name]}
                 for name in ("duplicate_token", "induction") for row in head_level
                 if row[name] is not None and row[name] >= 0.5]
    ranked = sorted((row for row in head_level if row["importance"] is not None),
                    key=lambda row: row["importance_rank"])
    typical, count = counts.most_common(1)[0]
    sinks = tuple(np.array([(row["layer"], row["head"]) for row in head_level
                            if row["type"] == "sink"]).reshape(-1, 2).T)   # (layers, heads)
    parks_on = None
    if counts["sink"]:
        parts = analysis.special_token_attention(weights, tokens)
        parks_on = {key: float(np.mean(share[sinks])) for key, share in
                    {**parts.by_special, "punctuation": parts.punctuation}.items()}
    return {"type_counts": dict(counts.most_common()),
            "typical": {"type": typical, "count": count}, "sinks_park_on": parks_on,
            "by_type": dict(by_type), "closest": closest, "detectors": detectors,
            "most_important": [{"layer": row["layer"], "head": row["head"],
                                "importance": row["importance"], "type": row["type"]}
                               for row in ranked[:3]]}


def _words(tokens):
    """(word index per token, the whole word per token): a WordPiece
    continuation ("##ing") belongs to the word before it."""
    index, starts = [], []
    for position, token in enumerate(tokens):
        if not (token.startswith("##") and index):
            starts.append(position)
        index.append(len(starts) - 1)
    ends = starts[1:] + [len(tokens)]
    text = [tokens[start] + "".join(token[2:] for token in tokens[start + 1:end])
            for start, end in zip(starts, ends)]
    return np.array(index), [text[word] for word in index]


def _pronouns(weights, tokens, layers, types, lang, limit=2):
    """For the first ``limit`` pronouns with earlier content words that are
    not the word just before: which of those words gets the most weight in
    how many heads, and the largest single weight (Clark et al. 2019, Sec. 4.3:
    coreference-like heads). A word split into pieces ("el ##a") is read
    from its first piece."""
    content = analysis.content_word_mask(tokens, lang=lang)
    word_index, words = _words(tokens)
    layers = list(layers)
    found = []
    for position, token in enumerate(tokens):
        earlier = np.flatnonzero(content & (word_index < word_index[position] - 1))
        if (token.startswith("##") or words[position].casefold() not in PRONOUNS[lang]
                or earlier.size == 0):
            continue
        rows = weights[:, :, position][layers][..., earlier]              # (layers, H, K)
        winners = collections.Counter(words[key] for key in earlier[rows.argmax(-1)].ravel())
        layer, head, key = np.unravel_index(np.argmax(rows), rows.shape)
        found.append({"position": position, "token": words[position],
                      "most_weight": winners.most_common(),
                      "layer": layers[layer], "head": int(head),
                      "type": str(types[layers[layer], head]),
                      "peak_position": int(earlier[key]), "peak_word": words[earlier[key]],
                      "peak_weight": float(rows.max())})
        if len(found) == limit:
            break
    return found


def _strongest_link(weights, tokens, layers, types, lang):
    """The largest weight from a content word to a content word of another
    word at least two words away, over the heads of ``layers`` whose type
    is not positional or a sink (those are named already); None without
    such pairs or heads. Tokens are shown as their whole words."""
    content = analysis.content_word_mask(tokens, lang=lang)
    word_index, words = _words(tokens)
    apart = np.abs(word_index[None, :] - word_index[:, None]) > 1
    pairs = content[:, None] & content[None, :] & apart                    # (T, T)
    if not pairs.any():
        return None
    best = None
    for layer in layers:                                  # one layer at a time: (H, T, T)
        free = ~np.isin(types[layer], _NOT_LINKS)[:, None, None]                # (H, 1, 1)
        linked = np.where(pairs & free, weights[layer], -np.inf)
        head, query, key = np.unravel_index(np.argmax(linked), linked.shape)
        if np.isfinite(linked[head, query, key]) and (
                best is None or linked[head, query, key] > best["weight"]):
            best = {"layer": int(layer), "head": int(head), "type": str(types[layer, head]),
                    "query_position": int(query), "query": words[query],
                    "key_position": int(key), "key": words[key],
                    "weight": float(linked[head, query, key])}
    return best


def _finding_groups(findings, thresholds):
    """One group per kind of finding, in diagnose's order: its heads, its
    threshold and (collapse, sink) the tokens the heads land on."""
    groups = []
    for kind, threshold_name in (("collapse", "collapse_share"), ("uniform", "uniform_entropy"),
                                 ("function_words", "function_word_lift"),
                                 ("sink", "sink_share")):
        of_kind = [finding for finding in findings if finding["kind"] == kind]
        keys = collections.Counter(token for finding in of_kind if kind == "collapse"
                                   for token in finding["key_tokens"] or ())
        groups.append({"kind": kind, "threshold": thresholds[threshold_name],
                       "heads": [[finding["layer"], finding["head"]] for finding in of_kind],
                       "key_positions": [finding["keys"][0] if finding["keys"] else None
                                         for finding in of_kind],
                       "keys": keys.most_common()})
    return groups


def _token_level(token_map, tokens, top_k):
    """Seed: ``interpret_attention_weights`` and "Alocação em Nível de Token"."""
    top = analysis.top_attended(token_map, k=top_k)
    entropy = analysis.entropy(token_map)
    visible = np.maximum(np.sum(token_map > 0, axis=-1), 1)   # keys row i sees: ln n_i bounds it
    received = analysis.received_attention(token_map) / token_map.shape[0]
    return [{"position": i, "token": tokens[i],
             "attends_to": [(int(j), tokens[j], float(w))
                            for j, w in zip(top.indices[i], top.weights[i]) if w > 0],
             "entropy": float(entropy[i]), "max_entropy": float(np.log(visible[i])),
             "received": float(received[i])}
            for i in range(len(tokens))]


def _content_vs_function(weights, tokens, lang, causal=False):
    """Mean share of a row's attention on content vs function words ("Tokens
    de Conteúdo vs. Funcionais"), over every layer and head; specials and
    punctuation are neither. ``causal``: of the attention besides the
    first token (the sink), over the tokens after it."""
    is_function = analysis.function_word_mask(tokens, lang=lang)
    is_content = analysis.content_word_mask(tokens, lang=lang)
    mean_map = weights.mean(axis=(0, 1))                     # (T, T)
    causal = causal and len(tokens) > 1          # one token: nothing besides the first
    if causal:
        mean_map, is_function, is_content = (_without_first_key(mean_map), is_function[1:],
                                             is_content[1:])
    return {"content_attention": float(key_share(mean_map, is_content)),
            "function_attention": float(key_share(mean_map, is_function)),
            "content_tokens": float(is_content.mean()),
            "function_tokens": float(is_function.mean()), "besides_first_token": causal}


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
    return (f"layers 0 -> {n_layers - 1}: mean attention distance {first:.2f} -> {last:.2f} "
            f"({trend}), sink share {_pct(profile.sink_share[0])} -> "
            f"{_pct(profile.sink_share[-1])}")


def _head_level(trace, weights, tokens, taxonomy, only_layer):
    """One row per head: its type and evidence
    (:func:`attnref.analysis.head_taxonomy`), the TransformerLens
    duplicate-token and induction detectors, Voita et al. 2019 confidence,
    the mean row entropy and Kobayashi et al. 2020 norms as importance."""
    detectors = {name: analysis.detect_head(weights, name, tokens)
                 for name in ("duplicate_token", "induction")}            # (layers, H) each
    evidence = {"score": taxonomy.score, "previous_token": taxonomy.previous_token,
                "next_token": taxonomy.next_token, "self": taxonomy.diagonal,
                "sink": taxonomy.sink, "uniformity": taxonomy.uniformity,
                "content": taxonomy.content, "local": taxonomy.local, **detectors,
                "confidence": analysis.confidence(weights),
                "entropy": analysis.mean_entropy(weights)}
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
            rows.append({"layer": layer, "head": head, "type": str(taxonomy.type[layer, head]),
                         **{name: _number(values[layer, head])
                            for name, values in evidence.items()},
                         "importance": _number(importance[layer, head]),
                         "importance_rank": int(rank[layer, head])})
    return rows


def _finding(finding):
    return {"layer": finding.layer, "head": finding.head, "kind": finding.kind,
            "evidence": _number(finding.evidence), "threshold": float(finding.threshold),
            "keys": list(finding.keys),
            "key_tokens": None if finding.key_tokens is None else list(finding.key_tokens),
            "explanation": finding.explanation}


def _rollout(weights, tokens, top_k):
    """Abnar & Zuidema 2020: after the last layer, which input tokens each
    position draws from."""
    joint = analysis.attention_rollout(weights)[-1]                    # (T, T)
    top = analysis.top_attended(joint, k=top_k)
    return [{"position": i, "token": tokens[i],
             "sources": [(int(j), tokens[j], float(share))
                         for j, share in zip(top.indices[i], top.weights[i])]}
            for i in range(len(tokens))]


def _lens_lines(report):
    """The logit lens at the last position, and the predicted token's logit
    split into heads, feed-forward blocks and the embedding."""
    attribution = report.logit_attribution
    lines = _wrap(f"logit lens at the last token {report.tokens[-1]!r} (nostalgebraist 2020: "
                  f"the stream after each layer through the final norm and the LM head):",
                  indent=4)
    for row in report.logit_lens:
        top = ", ".join(f"{token!r} {probability:.2f}" for token, probability in row["top"])
        lines.append(f"  {row['stage']:<9} {top}")
    if not attribution["lens_matches_logits"]:
        lines += _wrap("  WARNING: the last layer's lens disagrees with the model's logits; the "
                       "LM head given is not the one the model used", indent=4)
    lines += _wrap(f"direct logit attribution of the prediction {attribution['token']!r} "
                   f"(logit {attribution['logit']:.2f}; final norm's scale frozen at the final "
                   f"stream, Elhage et al. 2021; terms sum to the logit minus its biases, "
                   f"{attribution['bias']:.2f}):", indent=4)
    heads = ", ".join(f"{_where(row)} {row['logit']:+.2f}" for row in attribution["top_heads"])
    lines += _wrap(f"  heads: {heads}; all heads {attribution['heads_total']:+.2f}, "
                   f"attention biases {attribution['attention_bias']:+.2f}", indent=4)
    blocks = ", ".join(f"L{row['layer']} {row['logit']:+.2f}" for row in attribution["top_mlp"])
    lines += _wrap(f"  feed-forward: {blocks}; all {attribution['mlp_total']:+.2f}; embedding "
                   f"{attribution['embedding']:+.2f}", indent=4)
    return lines


def _norm_form(final_norm, residual):
    """(weight, bias, eps, center) of ``final_norm``, an RMSNorm or a
    LayerNorm: the form whose formula reproduces ``final_norm(residual)``."""
    try:
        weight = np.asarray(final_norm.weight, dtype=np.float64)
        eps = float(final_norm.eps)
    except (AttributeError, TypeError, ValueError):
        raise ValueError("lm_head.final_norm must have a weight (D,) and an eps (RMSNorm or "
                         "LayerNorm)") from None
    bias = getattr(final_norm, "bias", None)
    bias = None if bias is None else np.asarray(bias, dtype=np.float64)
    expected = np.asarray(final_norm(residual), dtype=np.float64)
    stream = residual.astype(np.float64)
    for center in (False, True):
        centred = stream - stream.mean(-1, keepdims=True) if center else stream
        formula = weight * centred / np.sqrt(np.mean(centred ** 2, -1, keepdims=True) + eps)
        if bias is not None:
            formula = formula + bias
        size = max(float(np.abs(expected).max()), 1.0)
        if np.abs(formula - expected).max() <= 1e-3 * size:
            return weight, bias, eps, center
    raise ValueError("lm_head.final_norm is neither an RMSNorm nor a LayerNorm with its weight, "
                     "bias and eps: the logit attribution needs one of those forms")


@dataclasses.dataclass(frozen=True)
class LMHead:
    """What turns a decoder's final residual stream into next-token logits,
    and names the tokens: the report's logit lens and attribution read it.

    Attributes
    ----------
    final_norm : callable
        ``(N, D) -> (N, D)``, an RMSNorm or a LayerNorm with attributes
        ``weight`` ``(D,)``, ``eps`` and (LayerNorm) ``bias`` ``(D,)``;
        which of the two it is, is found by reproducing its output.
    unembedding : ndarray, shape (V, D)
        The LM head's weight (the embedding matrix when tied).
    decode : callable
        ``decode(list of ids) -> str``, the tokenizer's.
    unembedding_bias : ndarray, shape (V,), optional
    """
    final_norm: object
    unembedding: np.ndarray
    decode: object
    unembedding_bias: Optional[np.ndarray] = None


def lm_head_of(model):
    """The :class:`LMHead` of a decoder model, or None when it has none.

    Reads ``model.final_norm`` (else ``model.stack.final_norm``),
    ``model.unembedding`` ``(V, D)`` (else ``model.lm_head.weight``, with
    ``model.lm_head.bias``; else ``model.unembedding_bias``) and
    ``model.tokenizer.decode``.
    """
    final_norm = getattr(model, "final_norm", None)
    if final_norm is None:
        final_norm = getattr(getattr(model, "stack", None), "final_norm", None)
    unembedding = getattr(model, "unembedding", None)
    bias = getattr(model, "unembedding_bias", None)
    if unembedding is None and hasattr(model, "lm_head"):
        unembedding = getattr(model.lm_head, "weight", None)
        bias = getattr(model.lm_head, "bias", None)
    decode = getattr(getattr(model, "tokenizer", None), "decode", None)
    if final_norm is None or unembedding is None or decode is None:
        return None
    return LMHead(final_norm=final_norm, unembedding=np.asarray(unembedding), decode=decode,
                  unembedding_bias=None if bias is None else np.asarray(bias))


def is_decoder(model):
    """Whether ``model`` is a causal decoder: its ``causal`` attribute, else
    whether it can generate (``stream`` or ``generate``)."""
    causal = getattr(model, "causal", None)
    if causal is not None:
        return bool(causal)
    return any(callable(getattr(model, name, None)) for name in ("stream", "generate"))


def _lm_head_sections(output, lm_head, top_k):
    """(logit lens rows, attribution dict) at the last position."""
    logits = getattr(output, "logits", None)
    if logits is None:
        raise ValueError("lm_head needs output.logits (T, V); encode with a decoder model")
    if not isinstance(lm_head, LMHead):
        raise TypeError(f"lm_head must be an attnref.report.LMHead (lm_head_of(model)), got "
                        f"{type(lm_head).__name__}")
    decode = lm_head.decode
    unembedding = lm_head.unembedding
    unembedding_bias = lm_head.unembedding_bias
    stream = output.trace.residual_stream()[:, -1:, :]              # (layers + 1, 1, D)
    lens = analysis.logit_lens(stream, lm_head.final_norm, unembedding, k=top_k,
                               unembedding_bias=unembedding_bias)
    rows = [{"stage": "embedding" if index == 0 else f"after L{index - 1}",
             "top": [(decode([int(token)]), float(probability))
                     for token, probability in zip(ids[0], probabilities[0])]}
            for index, (ids, probabilities) in enumerate(zip(lens.top_ids, lens.top_probs))]
    predicted = int(np.argmax(logits[-1]))
    parts = analysis.residual_components(output.trace)
    final = output.trace.layers[-1].residual_out[-1:]                # (1, D)
    weight, bias, eps, center = _norm_form(lm_head.final_norm, final)

    def attribute(component):                                       # (..., T, D) -> (...)
        return analysis.direct_logit_attribution(
            component[..., -1:, :], final, unembedding, [predicted], norm_weight=weight,
            norm_bias=bias, eps=eps, center=center,
            unembedding_bias=unembedding_bias).attribution[..., 0]

    heads = attribute(parts["heads"])                                 # (layers, H)
    mlp = attribute(parts["mlp"])                                     # (layers,)
    whole = analysis.direct_logit_attribution(
        final, final, unembedding, [predicted], norm_weight=weight, norm_bias=bias, eps=eps,
        center=center, unembedding_bias=unembedding_bias)
    order = np.argsort(-np.abs(heads).ravel(), kind="stable")[:5]
    return rows, {
        "token": decode([predicted]), "token_id": predicted,
        "logit": float(whole.logit[0]), "model_logit": float(logits[-1, predicted]),
        "bias": float(whole.bias[0]),
        "lens_matches_logits": int(lens.top_ids[-1, 0, 0]) == predicted,
        "heads": heads.tolist(), "mlp": mlp.tolist(),
        "top_heads": [{"layer": int(index // heads.shape[1]), "head": int(index % heads.shape[1]),
                       "logit": float(heads.ravel()[index])} for index in order],
        "top_mlp": [{"layer": int(index), "logit": float(mlp[index])}
                    for index in np.argsort(-np.abs(mlp), kind="stable")[:3]],
        "heads_total": float(heads.sum()), "mlp_total": float(mlp.sum()),
        "attention_bias": float(attribute(parts["attention_bias"]).sum()),
        "embedding": float(attribute(parts["embedding"]))}


@dataclasses.dataclass
class InductionProbe(Record):
    """:func:`induction_probe`'s result: the probe, the three scores of every
    head and the top heads by induction score."""
    model: str
    length: int
    seed: int
    ids: list
    induction: list          # (layers, H)
    duplicate_token: list    # (layers, H)
    previous_token: list     # (layers, H)
    top: list                # the best heads: layer, head and the three scores

    def text_report(self):
        """The top heads as a table, with what the scores mean."""
        lines = [f"attnref induction probe -- {self.model}: {self.length} random tokens "
                 f"repeated twice (seed {self.seed}, {len(self.ids)} tokens)",
                 *_wrap("induction: mean attention from a token of the second copy to the "
                        "token after its first occurrence (TransformerLens; Olsson et al. "
                        "2022); duplicate: to that first occurrence; previous: to the token "
                        "before", indent=0),
                 f"{'rank':>4} {'L':>3} {'H':>3} {'induction':>9} {'duplicate':>9} "
                 f"{'previous':>8}"]
        for rank, row in enumerate(self.top, 1):
            lines.append(f"{rank:>4} {row['layer']:>3} {row['head']:>3} "
                         f"{row['induction']:>9.2f} {row['duplicate_token']:>9.2f} "
                         f"{row['previous_token']:>8.2f}")
        previous = np.asarray(self.previous_token)
        layer, head = np.unravel_index(np.nanargmax(previous), previous.shape)
        lines.append(f"best previous-token head: L{layer} H{head} "
                     f"({previous[layer, head]:.2f}); an induction head reads one in an "
                     f"earlier layer (Olsson et al. 2022)")
        duplicate = np.asarray(self.duplicate_token)
        layer, head = np.unravel_index(np.nanargmax(duplicate), duplicate.shape)
        lines.append(f"best duplicate-token head: L{layer} H{head} ({duplicate[layer, head]:.2f})")
        return "\n".join(lines)


def induction_probe(model, *, length=50, seed=0, top=5):
    """Run the induction probe on a model: ``length`` random tokens repeated
    twice, heads ranked by induction score next to the duplicate- and
    previous-token scores (:func:`attnref.analysis.induction_head_scores`).

    Parameters
    ----------
    model : object
        A causal model: ``encode(ids)`` with a 1-D int array of ids, used as
        they are, returning a :class:`~attnref.models.output.ModelOutput`
        with its trace; the vocabulary size as ``vocab_size`` or the rows of
        its LM head (:func:`lm_head_of`); optionally ``bos_id`` (prepended;
        else the tokenizer's ``bos_id`` when its ``add_bos`` is true) and
        ``special_ids`` (never drawn; else the tokenizer's).
    length : int >= 2, keyword-only
        Tokens in the repeated block (50, as in TransformerLens's demo).
    seed : int, keyword-only
        Seeds the draw (``np.random.default_rng(seed)``).
    top : int >= 1, keyword-only
        Heads listed.

    Returns
    -------
    InductionProbe
    """
    head = lm_head_of(model)
    vocab_size = getattr(model, "vocab_size", None)
    if vocab_size is None and head is not None:
        vocab_size = head.unembedding.shape[0]
    if vocab_size is None:
        raise ValueError(f"the induction probe needs a decoder model with a vocabulary; "
                         f"{getattr(model, 'name', type(model).__name__)} has neither "
                         f"vocab_size nor an LM head")
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
        raise ValueError(f"top must be a positive integer, got {top!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    tokenizer = getattr(model, "tokenizer", None)
    bos = getattr(model, "bos_id", None)
    if bos is None and getattr(tokenizer, "add_bos", False):
        bos = tokenizer.bos_id                     # the model's own inputs start with it
    special = tuple(getattr(model, "special_ids", None)
                    or getattr(tokenizer, "special_ids", None) or ())
    ids = analysis.induction_probe_ids(np.random.default_rng(seed), int(vocab_size), length,
                                       exclude=special, prefix=() if bos is None else (bos,))
    output = model.encode(ids)
    scores = analysis.induction_head_scores(output.attention_weights, ids)
    return InductionProbe(model=output.model, length=int(length), seed=int(seed),
                          ids=ids.tolist(), induction=scores.induction.tolist(),
                          duplicate_token=scores.duplicate_token.tolist(),
                          previous_token=scores.previous_token.tolist(),
                          top=scores.top(min(top, scores.ranking.shape[0])))
