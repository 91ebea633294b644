"""``attnref report TEXT --html PATH``: one self-contained HTML attention explorer.

The seed notes read attention by looking at it ("Visualização e
Interpretação", "Análise e Visualização"). :func:`render_html` writes one
page -- inline CSS and JavaScript, no network, works from ``file://`` --
with

* a head view in the manner of bertviz (Vig 2019): the tokens in two
  columns, a line from each query (left) to each key (right) it attends to,
  opacity = weight, one colour per head, a layer selector, per-head toggles
  and hover to focus one token;
* a model view: a grid of every layer x head map as a small heatmap
  (misallocated heads outlined, a click opens the head in the head view);
* the attention-rollout map (Abnar & Zuidema 2020) as a heatmap;
* the tables and findings of :class:`attnref.report.Report`, with every
  number as in :meth:`~attnref.report.Report.to_dict`.

The page's CSS and JavaScript live in their own files, shipped as package
data in ``attnref/explorer/``: ``explorer.css``, ``errors.js`` (in the
``<head>``, it records every error and rejection the page meets) and
``explorer.js`` (decodes the weights and draws). :func:`render_html` reads
them once through :mod:`importlib.resources` and inlines them, so the page
stays one file.

The header names the model and shows the text; when the model read only
part of its input (``output.tokens_total`` set: ``encode(...,
truncation=True)`` or a window of ``encode_windows``), it says how many
tokens were read of how many and shows only the text read. In Jupyter,
:class:`Explorer` shows the page inline, in a sandboxed ``<iframe>``.

Shapes: ``layers`` layers, ``H`` heads, ``T`` tokens; the weights are
``(layers, H, T, T)``, queries on rows, keys on columns.

Encoding
--------
Weights in ``[0, 1]`` are stored as uint8 levels ``q = round(255 sqrt(w))``
in C order, zlib-compressed and base64-encoded in a JSON block; the page
decodes them with the browser's ``DecompressionStream("deflate")`` and reads
``w = (q / 255)^2``. The square root spends the 256 levels where attention
lives: over 128 tokens a typical weight is near 1/128, which a linear
``round(255 w)`` would store as level 2 of 255, and this as level 23. A
decoded weight is within :data:`QUANTISATION_STEP` (``1/255``) of the true
one, and its square root within half a step. MiniLM on 124 tokens (6 x 12 x
124 x 124 weights) gives a page of about 1.1 MB. Everything drawn from
the weights is on ``<canvas>``, and the head view skips lines under a weight
threshold (a slider), so 256 tokens stay responsive.

Untrusted text
--------------
Tokens and the text are user input. In HTML they pass through
:func:`html.escape`; in the JSON block ``<``, ``>`` and ``&`` are written as
``\\u`` escapes, so no token can close the block; the script draws tokens
with ``fillText`` and sets ``textContent``, never ``innerHTML``.

When the page has drawn, its script sets ``document.body.dataset.rendered``
to ``JSON.stringify({layers, heads, thumbnails, tokens, errors})`` -- the
layers and heads it drew thumbnails for, the thumbnail count, the token
count and every error it saw -- and shows the same in its status line.
"""
from __future__ import annotations

import base64
import functools
import html
import importlib.resources
import json
import math
import zlib

import numpy as np

from . import analysis
from .report import _HEAD_COLUMNS, _pct

__all__ = ["render_html", "Explorer", "pack_weights", "QUANTISATION_STEP"]

#: The gap between two stored levels, ``sqrt(w)`` in steps of 1/255: a decoded
#: weight is within this of the true one, its square root within half of it.
QUANTISATION_STEP = 1.0 / 255

#: Head-view lines under this weight are not drawn until the slider says so.
DEFAULT_LINE_THRESHOLD = 0.02

#: Values per float64 block in :func:`pack_weights` (8 MB).
_PACK_BLOCK = 1 << 20

#: The package-data folder of the page's CSS and JavaScript.
_ASSET_FOLDER = "explorer"


@functools.lru_cache(maxsize=None)
def _asset(name):
    """The text of ``attnref/explorer/<name>``, read once through
    :mod:`importlib.resources` (so it works from a checkout, a wheel or a zip)."""
    resource = importlib.resources.files(__package__).joinpath(_ASSET_FOLDER).joinpath(name)
    try:
        return resource.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(
            f"the explorer's {name} is missing from {resource}: this attnref installation "
            f"lacks its package data (attnref/{_ASSET_FOLDER}/); reinstall attnref") from None


def pack_weights(weights):
    """Weights in ``[0, 1]`` as the page stores them: ``round(255 sqrt(w))``
    as uint8 in C order, zlib-compressed, base64-encoded.

    Parameters
    ----------
    weights : array_like of float
        Attention weights or rollout shares. Values are clipped to ``[0,
        1]``; NaN (a fully masked row) is stored as 0.

    Returns
    -------
    str
        ASCII base64 text. ``(np.frombuffer(zlib.decompress(base64.b64decode(s)),
        np.uint8) / 255) ** 2`` gives the values back, within ``QUANTISATION_STEP``.

    Notes
    -----
    The levels are computed in float64 blocks of :data:`_PACK_BLOCK` values,
    so packing ``(layers, H, T, T)`` weights needs one uint8 copy of them,
    not several float64 ones.
    """
    values = np.ascontiguousarray(weights).reshape(-1)
    levels = np.empty(values.shape, np.uint8)
    for start in range(0, values.size, _PACK_BLOCK):
        block = np.nan_to_num(values[start:start + _PACK_BLOCK].astype(np.float64), nan=0.0)
        np.clip(block, 0.0, 1.0, out=block)
        np.sqrt(block, out=block)
        block *= 255
        levels[start:start + _PACK_BLOCK] = np.rint(block, out=block)
    return base64.b64encode(zlib.compress(levels.tobytes(), 9)).decode("ascii")


def render_html(output, report, *, rollout=None, title=None):
    """The attention explorer of one encoded text as a self-contained HTML page.

    Parameters
    ----------
    output : :class:`attnref.models.output.ModelOutput`
        A model's ``encode(text)`` with its trace: ``.tokens`` (T strings),
        ``.attention_weights`` ``(layers, H, T, T)`` and ``.model``.
    report : :class:`attnref.report.Report`
        ``build_report(output, ...)`` of the same output; its tables and
        findings go into the page as they are.
    rollout : array_like, shape (T, T), keyword-only, optional
        The rollout map to draw, rows summing to at most 1. None means
        ``attnref.analysis.attention_rollout(weights)[-1]``, the map after
        the last layer.
    title : str, keyword-only, optional
        The page title. None means ``"attnref explorer -- MODEL"``.

    Returns
    -------
    str
        The HTML document.

    Raises
    ------
    ValueError
        When the weights are not ``(layers, H, T, T)``, when the report was
        built from other tokens, or when ``rollout`` is not ``(T, T)``.
    """
    weights, tokens, rollout = _check_inputs(output, report, rollout)
    n_layers, n_heads, T, _ = weights.shape
    title = f"attnref explorer -- {output.model}" if title is None else str(title)
    flagged = sorted({(f["layer"], f["head"]) for f in report.findings
                      if f["layer"] is not None and f["head"] is not None})
    head_types = [[None] * n_heads for _ in range(n_layers)]
    for row in report.head_level:
        head_types[row["layer"]][row["head"]] = row["type"]
    data = {"model": output.model, "tokens": tokens, "layers": n_layers, "heads": n_heads,
            "weights": pack_weights(weights), "rollout": pack_weights(rollout),
            "head_types": head_types, "flagged": flagged,
            "threshold": DEFAULT_LINE_THRESHOLD}
    # "<", ">" and "&" as \u escapes: no token can end the block or open a tag
    payload = (json.dumps(data, ensure_ascii=False, allow_nan=False)
               .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))
    body = "\n".join([
        f"<header><h1>{_e(title)}</h1>",
        f"<p class=\"meta\">model <b>{_e(report.model)}</b> &middot; {T} tokens &middot; "
        f"{n_layers} layers &times; {n_heads} heads</p>",
        _text_line(output, report), _causal_line(report),
        "<p id=\"status\" class=\"status\">rendering&hellip; (needs JavaScript)</p></header>",
        _VIEWS,
        "<section><h2>Per token <small>(" + _e(report.token_map) + ")</small></h2>",
        _content_sentence(report.content_vs_function),
        _token_table(report), "</section>",
        "<section><h2>Per layer</h2>", _layer_table(report),
        f"<p>{_e(report.layer_trend)}</p></section>",
        "<section><h2>Per head</h2>", _head_table(report), "</section>",
        "<section><h2>Misallocation</h2>", _findings(report.findings), "</section>",
    ])
    return "\n".join([
        "<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
        f"<title>{_e(title)}</title>", f"<style>\n{_asset('explorer.css')}</style>",
        f"<script>\n{_asset('errors.js')}</script>", "</head><body>", body,
        f"<script type=\"application/json\" id=\"attnref-data\">{payload}</script>",
        f"<script>\n{_asset('explorer.js')}</script>", "</body></html>", ""])


class Explorer:
    """The attention explorer of one encoded text, for notebooks and files.

    In Jupyter (or anything that calls ``_repr_html_``) the explorer shows
    inline, in an ``<iframe srcdoc>`` sandboxed to run scripts only: the
    page's CSS and JavaScript stay inside the frame and never touch the
    notebook.

    Parameters
    ----------
    output : :class:`attnref.models.output.ModelOutput`
        A model's ``encode(text)`` with its trace.
    report : :class:`attnref.report.Report`, optional
        None means ``build_report(output)``.
    rollout, title
        As in :func:`render_html`.
    height : int, keyword-only, default 900
        Height of the inline frame in CSS pixels (it scrolls inside).

    Attributes
    ----------
    html : str
        The self-contained page, :func:`render_html`'s.

    Examples
    --------
    >>> from attnref.models import DemoModel
    >>> explorer = Explorer(DemoModel().encode("The cat sat on the mat."))
    >>> explorer.html.startswith("<!DOCTYPE html>")
    True
    >>> explorer._repr_html_().startswith("<iframe")
    True
    """

    def __init__(self, output, report=None, *, rollout=None, title=None, height=900):
        if isinstance(height, bool) or not isinstance(height, int) or height < 1:
            raise ValueError(f"height must be a positive int (CSS pixels), got {height!r}")
        if report is None:
            from .report import build_report
            report = build_report(output)
        self.html = render_html(output, report, rollout=rollout, title=title)
        self.height = height
        self.title = f"attnref explorer -- {output.model}" if title is None else str(title)

    def save(self, path):
        """Write the page to ``path`` (UTF-8); returns the path."""
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(self.html)
        return path

    def _repr_html_(self):
        # srcdoc holds the page as an attribute value: html.escape(quote=True)
        # escapes &, <, >, " and ', so the page cannot end the attribute.
        return (f"<iframe srcdoc=\"{_e(self.html)}\" sandbox=\"allow-scripts\" "
                f"title=\"{_e(self.title)}\" style=\"width: 100%; height: {self.height}px; "
                f"border: 1px solid #dde;\"></iframe>")


def _text_line(output, report):
    """The header's text: the report's text when the model read it all; when
    the input was cut, only what the model read, and how much that was."""
    if output.tokens_total is None:
        return f"<p class=\"meta\">text: <q>{_e(report.text)}</q></p>"
    return (f"<p class=\"meta\" id=\"read\">the model read <b>{len(output.tokens)} of "
            f"{output.tokens_total} tokens</b> of the input ([CLS] and [SEP] included); "
            f"this page shows only those.</p>\n"
            f"<p class=\"meta\">text read: <q>{_e(output.read_text())}</q></p>")


def _causal_line(report):
    """For a causal decoder, what is normal there (the report's summary
    line): the first-token sink and the per-prefix meaning of the metrics;
    nothing for an encoder."""
    decoder = report.summary.get("decoder")
    if decoder is None:
        return ""
    return (f"<p class=\"meta\" id=\"causal\">causal decoder: token i sees only itself and "
            f"the tokens before it (its entropy is at most ln(i+1); no head can attend to the "
            f"next token). {decoder['sink_heads']} heads put most of their attention on the "
            f"first token <q>{_e(decoder['first_token'])}</q> (mean over all heads "
            f"{_pct(decoder['first_token_share'])}): the attention sink, the default pattern "
            f"of a decoder (Xiao et al. 2023), not misallocation.</p>")


def _check_inputs(output, report, rollout):
    """The weights (layers, H, T, T), the tokens and the rollout (T, T),
    checked against each other."""
    weights = np.asarray(output.attention_weights)
    if not np.issubdtype(weights.dtype, np.floating):
        raise ValueError(f"output.attention_weights must be floating point, got {weights.dtype}")
    if weights.ndim != 4 or weights.shape[-1] != weights.shape[-2]:
        raise ValueError(f"output.attention_weights must be (layers, H, T, T), "
                         f"got shape {weights.shape}")
    tokens = [str(token) for token in output.tokens]
    if len(tokens) != weights.shape[-1]:
        raise ValueError(f"output.tokens must have T = {weights.shape[-1]} entries, "
                         f"got {len(tokens)}")
    if list(report.tokens) != tokens:
        raise ValueError("report was built from other tokens than output: build it with "
                         "build_report(output)")
    if rollout is None:
        rollout = analysis.attention_rollout(weights)[-1]
    rollout = np.asarray(rollout, dtype=np.float64)
    if rollout.shape != weights.shape[-2:]:
        raise ValueError(f"rollout must be (T, T) = {weights.shape[-2:]}, got shape "
                         f"{rollout.shape}")
    return weights, tokens, rollout


def _e(text):
    return html.escape(str(text), quote=True)


def _cell(key, value, digits=2):
    """A numeric cell: ``value`` exactly in ``data-value``, rounded in the text."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return f"<td class=\"num\" data-key=\"{key}\">n/a</td>"
    text = f"{value:.3g}" if digits is None else f"{value:.{digits}f}"
    return f"<td class=\"num\" data-key=\"{key}\" data-value=\"{value!r}\">{text}</td>"


def _pairs(key, pairs):
    """``[(position, token, weight), ...]`` as one cell of spans."""
    spans = "".join(f"<span class=\"pair\" data-position=\"{position}\" "
                    f"data-value=\"{float(weight)!r}\">{_e(token)} <i>{weight:.2f}</i></span>"
                    for position, token, weight in pairs)
    return f"<td data-key=\"{key}\">{spans}</td>"


def _table(table_id, headings, rows):
    head = "".join(f"<th>{_e(heading)}</th>" for heading in headings)
    return (f"<div class=\"scroll\"><table id=\"{table_id}\"><thead><tr>{head}</tr></thead>"
            f"<tbody>\n" + "\n".join(rows) + "\n</tbody></table></div>")


def _token_table(report):
    sources = {row["position"]: row["sources"] for row in report.rollout}
    rows = [f"<tr><td class=\"num\" data-key=\"position\" data-value=\"{row['position']}\">"
            f"{row['position']}</td><td class=\"tok\" data-key=\"token\">{_e(row['token'])}</td>"
            + _cell("entropy", row["entropy"]) + _cell("received", row["received"])
            + _pairs("attends_to", row["attends_to"])
            + _pairs("sources", sources[row["position"]]) + "</tr>"
            for row in report.token_level]
    return _table("token-table", ("pos", "token", "entropy", "received", "attends to",
                                  "rollout: draws from"), rows)


def _content_sentence(share):
    besides = " besides the first token" if share.get("besides_first_token") else ""
    return (f"<p>Content words get <b>{_pct(share['content_attention'])}</b> of the attention"
            f"{besides} "
            f"({_pct(share['content_tokens'])} of the tokens); function words "
            f"<b>{_pct(share['function_attention'])}</b> ({_pct(share['function_tokens'])}).</p>")


def _layer_table(report):
    rows = [f"<tr><td class=\"num\" data-key=\"layer\" data-value=\"{row['layer']}\">"
            f"{row['layer']}</td>" + _cell("mean_entropy", row["mean_entropy"])
            + _cell("mean_distance", row["mean_distance"]) + _cell("locality", row["locality"])
            + _cell("sink_share", row["sink_share"]) + "</tr>"
            for row in report.layer_level]
    return _table("layer-table", ("layer", "entropy", "distance", "locality", "sink share"),
                  rows)


def _head_table(report):
    rows = []
    for row in report.head_level:
        cells = [f"<td class=\"num\" data-key=\"layer\" data-value=\"{row['layer']}\">"
                 f"{row['layer']}</td>",
                 f"<td class=\"num\" data-key=\"head\" data-value=\"{row['head']}\">"
                 f"{row['head']}</td>",
                 f"<td data-key=\"type\">{_e(row['type'])}</td>"]
        cells += [_cell(key, row[key]) for key, _ in _HEAD_COLUMNS]
        cells += [_cell("importance", row["importance"], digits=None),
                  f"<td class=\"num\" data-key=\"importance_rank\" "
                  f"data-value=\"{row['importance_rank']}\">{row['importance_rank']}</td>"]
        rows.append(f"<tr data-layer=\"{row['layer']}\" data-head=\"{row['head']}\">"
                    + "".join(cells) + "</tr>")
    headings = ("L", "H", "type") + tuple(short for _, short in _HEAD_COLUMNS) + (
        "importance", "rank")
    return _table("head-table", headings, rows)


def _findings(findings):
    if not findings:
        return "<p id=\"findings\">No problems found.</p>"
    items = []
    for finding in findings:
        evidence = finding["evidence"]
        shown = "n/a" if evidence is None else f"{evidence:.3g}"
        value = "" if evidence is None else f" data-value=\"{evidence!r}\""
        items.append(
            f"<li data-layer=\"{finding['layer']}\" data-head=\"{finding['head']}\" "
            f"data-kind=\"{_e(finding['kind'])}\"{value}><b>layer {finding['layer']} head "
            f"{finding['head']} {_e(finding['kind'])}</b>: {_e(finding['explanation'])} "
            f"<small>(evidence {shown}, threshold {finding['threshold']:.3g})</small></li>")
    return "<ul id=\"findings\">\n" + "\n".join(items) + "\n</ul>"


_VIEWS = """<div class="views">
<section class="panel head"><h2>Head view</h2>
<div class="controls"><label>layer <select id="layer"></select></label>
<label>hide lines below <input id="threshold" type="range" min="0" max="0.5" step="0.01">
<output id="threshold-value"></output></label>
<button id="all-heads" type="button">all heads</button>
<button id="no-heads" type="button">none</button></div>
<div id="head-toggles" class="toggles"></div>
<p class="hint">Left: queries, right: keys; opacity = weight. Hover a token to focus it.</p>
<div class="scroll tall"><canvas id="head-view"></canvas></div>
<p id="head-readout" class="readout">&nbsp;</p></section>
<section class="panel"><h2>Model view <small>(layers &times; heads; click a map)</small></h2>
<div id="model-view" class="grid"></div>
<p class="hint">Colour: weight<sup>1/3</sup> (white 0, dark blue 1), queries on rows, keys on
columns. Red outline: a misallocation finding.</p>
<h2>Attention rollout <small>(after the last layer)</small></h2>
<div class="scroll"><canvas id="rollout"></canvas></div>
<p id="rollout-readout" class="readout">&nbsp;</p></section>
</div>"""
