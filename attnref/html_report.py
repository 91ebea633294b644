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
import html
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
        f"<title>{_e(title)}</title>", f"<style>{_STYLE}</style>",
        f"<script>{_ERROR_COLLECTOR}</script>", "</head><body>", body,
        f"<script type=\"application/json\" id=\"attnref-data\">{payload}</script>",
        f"<script>{_SCRIPT}</script>", "</body></html>", ""])


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

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 16px 24px; color: #1d2330; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 12px 0 6px; }
h2 small { font-weight: normal; color: #667; }
.meta { margin: 2px 0; color: #445; } q { font-style: italic; }
.status { font: 12px monospace; background: #eef3f8; padding: 3px 6px; display: inline-block; }
.status.bad { background: #fbe3e3; color: #900; }
.views { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
.panel { flex: 0 1 auto; min-width: 0; }
.panel.head { flex: 0 0 560px; }
.controls label { margin-right: 12px; } .controls button { margin-right: 4px; }
.toggles { margin: 6px 0; display: flex; flex-wrap: wrap; gap: 4px; }
.toggles label { font: 12px monospace; padding: 1px 5px; border-radius: 3px; color: #fff;
  cursor: pointer; user-select: none; }
.toggles label.off { opacity: 0.3; }
.toggles input { display: none; }
.hint { color: #667; font-size: 12px; margin: 4px 0; max-width: 560px; }
.scroll { overflow: auto; max-width: 100%; }
.scroll.tall { max-height: 720px; border: 1px solid #dde; }
.readout { font: 12px monospace; min-height: 1.4em; margin: 4px 0; max-width: 560px; }
.grid { display: grid; gap: 3px; align-items: center; justify-content: start; }
.grid .label { font: 11px monospace; color: #556; text-align: center; }
.grid canvas { border: 1px solid #ccd; cursor: pointer; display: block; }
.grid canvas.flagged { border: 2px solid #d62728; }
.grid canvas.current { outline: 2px solid #1f77b4; outline-offset: 1px; }
table { border-collapse: collapse; font-size: 12px; margin: 4px 0; }
th, td { border-bottom: 1px solid #e3e6ee; padding: 2px 8px; text-align: left;
  vertical-align: top; }
th { background: #f3f5f9; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.tok { font-family: monospace; white-space: pre; }
.pair { font-family: monospace; margin-right: 10px; white-space: pre; }
.pair i { color: #667; font-style: normal; }
section > .scroll { max-height: 480px; }
#findings li { margin: 3px 0; }
"""

_ERROR_COLLECTOR = """
window.attnrefErrors = [];
window.addEventListener("error", function (event) {
  window.attnrefErrors.push("error: " + event.message);
  if (window.attnrefStatus) window.attnrefStatus();
});
window.addEventListener("unhandledrejection", function (event) {
  window.attnrefErrors.push("unhandled rejection: " + event.reason);
  if (window.attnrefStatus) window.attnrefStatus();
});
(function () {
  var original = console.error;
  console.error = function () {
    window.attnrefErrors.push("console.error: " + Array.prototype.join.call(arguments, " "));
    if (window.attnrefStatus) window.attnrefStatus();
    return original.apply(console, arguments);
  };
})();
"""

_SCRIPT = r"""
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("attnref-data").textContent);
  const tokens = data.tokens, T = tokens.length, L = data.layers, H = data.heads;
  const drawn = {layers: new Set(), heads: new Set(), thumbnails: 0, done: false};
  const state = {layer: L - 1, shown: new Array(H).fill(true), focus: null,
                 threshold: data.threshold};
  let weights = null, rollout = null;   // Uint8Array (L, H, T, T) and (T, T): 255 sqrt(w)
  const WEIGHT = Float64Array.from({length: 256}, (_, q) => (q / 255) ** 2);   // level -> w

  // the status line and document.body.dataset.rendered, for people and the browser test
  window.attnrefStatus = function () {
    if (!drawn.done) return;
    const result = {layers: drawn.layers.size, heads: drawn.heads.size,
                    thumbnails: drawn.thumbnails, tokens: T, errors: window.attnrefErrors};
    document.body.dataset.rendered = JSON.stringify(result);
    const status = document.getElementById("status");
    status.textContent = "rendered " + result.layers + " layers x " + result.heads +
      " heads (" + result.thumbnails + " maps), " + T + " tokens; " +
      (result.errors.length ? result.errors.length + " error(s): " + result.errors.join("; ")
                            : "no errors");
    status.classList.toggle("bad", result.errors.length > 0);
  };

  async function unpack(text, count) {
    if (typeof DecompressionStream === "undefined")
      throw new Error("this browser has no DecompressionStream: cannot read the weights");
    const binary = atob(text), bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
    const levels = new Uint8Array(await new Response(stream).arrayBuffer());
    if (levels.length !== count)
      throw new Error("expected " + count + " weights, decoded " + levels.length);
    return levels;
  }

  // colour of a level: w^(1/3) on a white-to-dark-blue ramp, so that the 1/T of a
  // uniform row over 128 tokens is still visibly blue
  const STOPS = [[247, 251, 255], [198, 219, 239], [107, 174, 214], [33, 113, 181],
                 [8, 48, 107]];
  const RAMP = new Uint8ClampedArray(256 * 3);
  for (let q = 0; q < 256; q++) {
    const t = Math.cbrt(WEIGHT[q]) * (STOPS.length - 1), k = Math.min(Math.floor(t),
                                                                    STOPS.length - 2);
    for (let c = 0; c < 3; c++)
      RAMP[3 * q + c] = STOPS[k][c] + (STOPS[k + 1][c] - STOPS[k][c]) * (t - k);
  }
  const headColour = h => "hsl(" + Math.round(360 * h / H) + ", 75%, 42%)";

  // a T x T map (offset into levels) as a T x T-pixel canvas
  function mapImage(levels, offset) {
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = T;
    const context = canvas.getContext("2d"), image = context.createImageData(T, T);
    for (let i = 0; i < T * T; i++) {
      const q = levels[offset + i];
      image.data[4 * i] = RAMP[3 * q]; image.data[4 * i + 1] = RAMP[3 * q + 1];
      image.data[4 * i + 2] = RAMP[3 * q + 2]; image.data[4 * i + 3] = 255;
    }
    context.putImageData(image, 0, 0);
    return canvas;
  }

  function shorten(context, text, width) {
    if (context.measureText(text).width <= width) return text;
    while (text.length > 1 && context.measureText(text + "\u2026").width > width)
      text = text.slice(0, -1);
    return text + "\u2026";
  }

  // ---- head view: queries left, keys right, one line per (head, query, key)
  const headCanvas = document.getElementById("head-view");
  const ROW = 16, FONT = "12px monospace", GAP = 260;
  let labelWidth = 0;

  function layoutHeadView() {
    const context = headCanvas.getContext("2d");
    context.font = FONT;
    labelWidth = Math.min(130, 8 + Math.max(...tokens.map(t => context.measureText(t).width)));
    const width = 2 * labelWidth + GAP, height = T * ROW + 8, ratio = window.devicePixelRatio || 1;
    headCanvas.width = width * ratio; headCanvas.height = height * ratio;
    headCanvas.style.width = width + "px"; headCanvas.style.height = height + "px";
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
  }

  function drawHeadView() {
    const context = headCanvas.getContext("2d");
    const width = 2 * labelWidth + GAP, y = i => 4 + ROW * i + ROW / 2;
    const x0 = labelWidth + 2, x1 = labelWidth + GAP - 2;
    const focus = state.focus;
    const BUCKETS = 16;
    context.clearRect(0, 0, width, T * ROW + 8);
    context.lineWidth = focus ? 2 : 1.5;
    for (let h = 0; h < H; h++) {
      if (!state.shown[h]) continue;
      // lines grouped by opacity: one stroke per (head, opacity bucket)
      const paths = Array.from({length: BUCKETS}, () => new Path2D());
      const base = (state.layer * H + h) * T * T;
      const iFrom = focus && focus.side === "query" ? focus.index : 0;
      const iTo = focus && focus.side === "query" ? focus.index + 1 : T;
      for (let i = iFrom; i < iTo; i++) {
        const jFrom = focus && focus.side === "key" ? focus.index : 0;
        const jTo = focus && focus.side === "key" ? focus.index + 1 : T;
        for (let j = jFrom; j < jTo; j++) {
          const w = WEIGHT[weights[base + i * T + j]];
          if (w === 0 || w < state.threshold) continue;
          const path = paths[Math.min(BUCKETS - 1, Math.floor(w * BUCKETS))];
          path.moveTo(x0, y(i)); path.lineTo(x1, y(j));
        }
      }
      context.strokeStyle = headColour(h);
      for (let b = 0; b < BUCKETS; b++) {
        context.globalAlpha = (b + 0.5) / BUCKETS;
        context.stroke(paths[b]);
      }
    }
    context.globalAlpha = 1;
    context.font = FONT; context.textBaseline = "middle";
    for (let i = 0; i < T; i++) {
      for (const side of ["query", "key"]) {
        const focused = focus && focus.side === side && focus.index === i;
        if (focused) {
          context.fillStyle = "#ffe9a8";
          context.fillRect(side === "query" ? 0 : x1, y(i) - ROW / 2, labelWidth, ROW);
        }
        context.fillStyle = focused ? "#000" : "#333";
        context.textAlign = side === "query" ? "right" : "left";
        context.fillText(shorten(context, tokens[i], labelWidth - 8),
                         side === "query" ? x0 - 4 : x1 + 4, y(i));
      }
    }
    readHeadFocus();
  }

  function readHeadFocus() {
    const readout = document.getElementById("head-readout"), focus = state.focus;
    const heads = state.shown.map((on, h) => on ? h : -1).filter(h => h >= 0);
    if (!focus || heads.length === 0) { readout.textContent = "\u00a0"; return; }
    const mean = new Float64Array(T);
    for (const h of heads) {
      const base = (state.layer * H + h) * T * T;
      for (let k = 0; k < T; k++) {
        mean[k] += WEIGHT[focus.side === "query" ? weights[base + focus.index * T + k]
                                                 : weights[base + k * T + focus.index]];
      }
    }
    const top = Array.from(mean.keys()).sort((a, b) => mean[b] - mean[a]).slice(0, 5);
    readout.textContent = (focus.side === "query" ? "query " : "key ") +
      JSON.stringify(tokens[focus.index]) + " (" + focus.index + "), mean of " + heads.length +
      " head(s): " + (focus.side === "query" ? "attends to " : "attended by ") +
      top.map(k => tokens[k] + " (" + k + ") " + (mean[k] / heads.length).toFixed(2)).join(", ");
  }

  headCanvas.addEventListener("mousemove", event => {
    const box = headCanvas.getBoundingClientRect();
    const x = event.clientX - box.left, i = Math.floor((event.clientY - box.top - 4) / ROW);
    const side = x < labelWidth + GAP / 2 ? "query" : "key";
    const focus = i >= 0 && i < T ? {side: side, index: i} : null;
    const same = focus && state.focus && focus.side === state.focus.side &&
                 focus.index === state.focus.index;
    if (!same && (focus || state.focus)) { state.focus = focus; drawHeadView(); }
  });
  headCanvas.addEventListener("mouseleave", () => { state.focus = null; drawHeadView(); });

  function buildControls() {
    const select = document.getElementById("layer");
    for (let l = 0; l < L; l++) select.add(new Option("layer " + l, String(l)));
    select.value = String(state.layer);
    select.addEventListener("change", () => { state.layer = Number(select.value); refresh(); });
    const slider = document.getElementById("threshold");
    const shown = document.getElementById("threshold-value");
    slider.value = String(state.threshold); shown.textContent = state.threshold.toFixed(2);
    slider.addEventListener("input", () => {
      state.threshold = Number(slider.value); shown.textContent = state.threshold.toFixed(2);
      drawHeadView();
    });
    const toggles = document.getElementById("head-toggles");
    for (let h = 0; h < H; h++) {
      const label = document.createElement("label"), box = document.createElement("input");
      box.type = "checkbox"; box.checked = true; box.dataset.head = String(h);
      box.addEventListener("change", () => { state.shown[h] = box.checked; refresh(); });
      label.style.background = headColour(h);
      label.append(box, "H" + h);
      toggles.append(label);
    }
    const setAll = on => { state.shown.fill(on); refresh(); };
    document.getElementById("all-heads").addEventListener("click", () => setAll(true));
    document.getElementById("no-heads").addEventListener("click", () => setAll(false));
  }

  function refresh() {
    document.getElementById("layer").value = String(state.layer);
    for (const box of document.querySelectorAll("#head-toggles input")) {
      box.checked = state.shown[Number(box.dataset.head)];
      box.parentElement.classList.toggle("off", !box.checked);
    }
    for (const canvas of document.querySelectorAll("#model-view canvas")) {
      canvas.classList.toggle("current", Number(canvas.dataset.layer) === state.layer &&
                                         state.shown[Number(canvas.dataset.head)]);
    }
    drawHeadView();
  }

  // ---- model view: every layer x head map as a thumbnail
  function drawModelView() {
    const grid = document.getElementById("model-view");
    const size = Math.max(40, Math.min(96, Math.floor(600 / H) - 4));
    const flagged = new Set(data.flagged.map(([l, h]) => l + "," + h));
    grid.style.gridTemplateColumns = "auto repeat(" + H + ", " + (size + 2) + "px)";
    const label = text => {
      const cell = document.createElement("div");
      cell.className = "label"; cell.textContent = text; grid.append(cell);
    };
    label("");
    for (let h = 0; h < H; h++) label("H" + h);
    for (let l = 0; l < L; l++) {
      label("L" + l);
      for (let h = 0; h < H; h++) {
        const canvas = mapImage(weights, (l * H + h) * T * T);
        canvas.style.width = canvas.style.height = size + "px";
        if (T < size) canvas.style.imageRendering = "pixelated";
        canvas.dataset.layer = String(l); canvas.dataset.head = String(h);
        canvas.title = "layer " + l + " head " + h +
          (data.head_types[l][h] ? ": " + data.head_types[l][h] : "");
        if (flagged.has(l + "," + h)) canvas.classList.add("flagged");
        canvas.addEventListener("click", () => {
          state.layer = l; state.shown = state.shown.map((_, k) => k === h); refresh();
        });
        grid.append(canvas);
        drawn.layers.add(l); drawn.heads.add(h); drawn.thumbnails += 1;
      }
    }
  }

  // ---- rollout map, with thinned labels on both axes
  function drawRollout() {
    const canvas = document.getElementById("rollout");
    const cell = Math.max(3, Math.min(22, Math.floor(560 / T)));
    const every = Math.ceil(13 / cell), context = canvas.getContext("2d");
    context.font = "11px monospace";
    const margin = Math.min(110, 10 + Math.max(...tokens.map(t => context.measureText(t).width)));
    const side = margin + cell * T + 4, ratio = window.devicePixelRatio || 1;
    canvas.width = side * ratio; canvas.height = side * ratio;
    canvas.style.width = canvas.style.height = side + "px";
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    context.imageSmoothingEnabled = false;
    context.drawImage(mapImage(rollout, 0), margin, margin, cell * T, cell * T);
    context.strokeStyle = "#ccd"; context.strokeRect(margin, margin, cell * T, cell * T);
    context.font = "11px monospace"; context.fillStyle = "#333"; context.textBaseline = "middle";
    for (let i = 0; i < T; i += every) {
      const text = shorten(context, tokens[i], margin - 8), at = margin + cell * (i + 0.5);
      context.textAlign = "right"; context.fillText(text, margin - 4, at);
      context.save(); context.translate(at, margin - 4); context.rotate(-Math.PI / 2);
      context.textAlign = "left"; context.fillText(text, 0, 0); context.restore();
    }
    canvas.addEventListener("mousemove", event => {
      const box = canvas.getBoundingClientRect();
      const j = Math.floor((event.clientX - box.left - margin) / cell);
      const i = Math.floor((event.clientY - box.top - margin) / cell);
      const readout = document.getElementById("rollout-readout");
      readout.textContent = i >= 0 && i < T && j >= 0 && j < T
        ? JSON.stringify(tokens[i]) + " (" + i + ") draws " +
          WEIGHT[rollout[i * T + j]].toFixed(3) + " from " + JSON.stringify(tokens[j]) +
          " (" + j + ")"
        : "\u00a0";
    });
  }

  async function main() {
    weights = await unpack(data.weights, L * H * T * T);
    rollout = await unpack(data.rollout, T * T);
    buildControls();
    drawModelView();
    layoutHeadView();
    refresh();
    drawRollout();
  }

  main().catch(error => window.attnrefErrors.push("render: " + (error && error.stack || error)))
        .finally(() => { drawn.done = true; window.attnrefStatus(); });
})();
"""
