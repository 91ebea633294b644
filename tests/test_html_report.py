"""attnref.html_report: the self-contained explorer page, on the demo model
(MiniLM only for the size of a real 128-token page)."""
import base64
import dataclasses
import importlib.resources
import json
import re
import zlib
from html.parser import HTMLParser

import numpy as np
import pytest

import attnref.html_report as html_report
from attnref import analysis
from attnref.html_report import QUANTISATION_STEP, Explorer, pack_weights, render_html
from attnref.models import DemoModel
from attnref.models.demo import demo_tokenize
from attnref.report import build_report, lm_head_of

ATTACK = "<script>alert(1)</script>"
TEXT = "The cat chased the mouse because it was hungry. " + ATTACK
LONG_TEXT = ("Attention lets every token in a sentence look at every other token and decide "
             "how much each one matters. In a trained encoder some heads learn to follow the "
             "previous word, others gather at the separator, and a few track syntax across "
             "long distances. When the model reads that the cat chased the mouse because it "
             "was hungry, one head links the pronoun to the animal it refers to, while another "
             "spreads its weight almost evenly and carries little information. Looking at "
             "these patterns layer by layer shows where the model is local, where it becomes "
             "global, and where attention is wasted on punctuation.")
#: the page's own <script> elements: the error collector, the JSON data, the drawing script
PAGE_SCRIPTS = 3
#: the explorer's CSS and JavaScript, package data in attnref/explorer/: name -> element
ASSETS = {"explorer.css": "style", "errors.js": "script", "explorer.js": "script"}


class Page(HTMLParser):
    """A parsed page: every start tag, the scripts' text, and the tables as
    rows of ``{data-key: cell}`` (a cell: its text, ``data-value`` and the
    ``(data-position, data-value)`` of its spans)."""

    def __init__(self, text):
        super().__init__(convert_charrefs=True)
        self.tags, self.scripts, self.tables, self.findings = [], [], {}, []
        self._table = self._cell = self._script = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "script":
            self._script = [attrs, ""]
            self.scripts.append(self._script)
        elif tag == "table":
            self._table = self.tables.setdefault(attrs["id"], [])
        elif tag == "tr" and self._table is not None:
            self._table.append({})
        elif tag == "td" and "data-key" in attrs:
            self._cell = {"text": "", "value": attrs.get("data-value"), "pairs": []}
            self._table[-1][attrs["data-key"]] = self._cell
        elif tag == "span" and self._cell is not None and "data-position" in attrs:
            self._cell["pairs"].append((int(attrs["data-position"]),
                                        float(attrs["data-value"])))
        elif tag == "li" and "data-kind" in attrs:
            self.findings.append(attrs)

    def handle_endtag(self, tag):
        if tag == "script":
            self._script = None
        elif tag == "td":
            self._cell = None
        elif tag == "table":
            self._table[:] = [row for row in self._table if row]    # drop the heading row
            self._table = None

    def handle_data(self, data):
        if self._script is not None:
            self._script[1] += data
        if self._cell is not None:
            self._cell["text"] += data

    def data(self):
        """The JSON data block."""
        blocks = [text for attrs, text in self.scripts if attrs.get("id") == "attnref-data"]
        assert len(blocks) == 1
        return json.loads(blocks[0])


def unpack(text, shape):
    """What the page's script does: base64, inflate, uint8 levels q, w = (q / 255)^2."""
    levels = np.frombuffer(zlib.decompress(base64.b64decode(text)), np.uint8)
    return (levels.astype(np.float64) / 255).reshape(shape) ** 2


@pytest.fixture(scope="module")
def output():
    return DemoModel().encode(TEXT)


@pytest.fixture(scope="module")
def report(output):
    return build_report(output, text=TEXT)


@pytest.fixture(scope="module")
def page(output, report):
    return render_html(output, report)


def test_page_is_one_document_with_no_external_reference(page):
    assert page.startswith("<!DOCTYPE html>") and page.count("<html") == 1
    assert page.rstrip().endswith("</html>") and page.count("</html>") == 1
    for reference in ("http:", "https:", "//cdn", "<link", "@import", "url(", "fetch(",
                      "XMLHttpRequest", "<iframe", "<img"):
        assert reference not in page
    sources = re.findall(r"""\b(?:src|href)\s*=\s*["']?([^"'\s>]*)""", page)
    assert all(source.startswith("data:") for source in sources)
    parsed = Page(page)
    assert all("src" not in attrs and "href" not in attrs for _, attrs in parsed.tags)
    assert len(parsed.scripts) == PAGE_SCRIPTS


def explorer_assets():
    """The explorer's asset files as an installed attnref holds them: name -> text."""
    folder = importlib.resources.files("attnref").joinpath("explorer")
    return {entry.name: entry.read_text(encoding="utf-8") for entry in folder.iterdir()
            if entry.is_file() and entry.name.endswith((".css", ".js"))}


def test_every_explorer_asset_is_package_data_inlined_in_the_page(page):
    assets = explorer_assets()
    assert set(assets) == set(ASSETS)
    parsed = Page(page)
    scripts = [text for attrs, text in parsed.scripts if not attrs]
    for name, text in assets.items():
        assert text.strip(), name
        # inlined whole, as the element's content, and unable to end that element early
        assert f"<{ASSETS[name]}>\n{text}</{ASSETS[name]}>" in page, name
        assert f"</{ASSETS[name]}" not in text.lower(), name
        if ASSETS[name] == "script":
            assert "\n" + text in scripts, name
    assert page.index("<script>\n" + assets["errors.js"]) < page.index("</head>")
    assert page.index("<script>\n" + assets["explorer.js"]) > page.index("id=\"attnref-data\"")


def test_a_missing_asset_says_the_package_data_is_missing():
    with pytest.raises(FileNotFoundError, match=r"absent\.js is missing .* package data"):
        html_report._asset("absent.js")


def test_the_text_and_every_token_are_escaped(output):
    tokens = list(output.tokens)
    tokens[2] = ATTACK                     # a token as a hostile tokenizer could make it
    hostile = dataclasses.replace(output, tokens=tokens)
    page = render_html(hostile, build_report(hostile, text=TEXT))
    parsed = Page(page)
    # no new element: the markup stays text
    assert len(parsed.scripts) == PAGE_SCRIPTS and page.count("</script") == PAGE_SCRIPTS
    assert ATTACK not in page and "<script>alert" not in page
    assert html_escaped(ATTACK) in page
    cells = [row["token"]["text"] for row in parsed.tables["token-table"]]
    assert cells == tokens
    assert parsed.data()["tokens"] == tokens
    assert f"<q>{html_escaped(TEXT)}</q>" in page


def html_escaped(text):
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;").replace("'", "&#x27;"))


def test_embedded_weights_decode_within_a_quantisation_step(output, page):
    data = Page(page).data()
    weights = output.attention_weights                                 # (layers, H, T, T)
    assert (data["layers"], data["heads"], len(data["tokens"])) == weights.shape[:3]
    decoded = unpack(data["weights"], weights.shape)
    assert np.abs(decoded - weights).max() <= QUANTISATION_STEP
    # the square root is what is rounded: within half a step, which is what
    # keeps small weights apart
    assert np.abs(np.sqrt(decoded) - np.sqrt(weights)).max() <= QUANTISATION_STEP / 2 + 1e-9
    rollout = analysis.attention_rollout(weights)[-1]
    assert np.abs(unpack(data["rollout"], rollout.shape) - rollout).max() <= QUANTISATION_STEP


def test_a_given_rollout_is_the_one_drawn(output, report):
    T = len(output.tokens)
    data = Page(render_html(output, report, rollout=np.eye(T), title="mine")).data()
    assert np.array_equal(unpack(data["rollout"], (T, T)), np.eye(T))


def test_tables_and_findings_carry_the_report_numbers(report, page):
    expected, parsed = report.to_dict(), Page(page)

    def number(cell):
        return None if cell["value"] is None else float(cell["value"])

    tokens = parsed.tables["token-table"]
    assert len(tokens) == len(expected["token_level"]) == len(expected["rollout"])
    for row, want, flow in zip(tokens, expected["token_level"], expected["rollout"]):
        assert int(row["position"]["value"]) == want["position"]
        assert row["token"]["text"] == want["token"]
        assert number(row["entropy"]) == want["entropy"]
        assert number(row["received"]) == want["received"]
        assert row["attends_to"]["pairs"] == [(j, w) for j, _, w in want["attends_to"]]
        assert row["sources"]["pairs"] == [(j, share) for j, _, share in flow["sources"]]
    layers = parsed.tables["layer-table"]
    assert [{key: number(cell) for key, cell in row.items()} for row in layers] == \
        expected["layer_level"]
    heads = parsed.tables["head-table"]
    assert len(heads) == len(expected["head_level"])
    for row, want in zip(heads, expected["head_level"]):
        assert row["type"]["text"] == want["type"]
        for key, cell in row.items():
            if key != "type":
                assert number(cell) == want[key], key
    assert [(int(f["data-layer"]), int(f["data-head"]), f["data-kind"],
             number({"value": f.get("data-value")})) for f in parsed.findings] == \
        [(f["layer"], f["head"], f["kind"], f["evidence"]) for f in expected["findings"]]
    assert html_escaped(report.layer_trend) in page


def test_every_head_type_on_the_page_is_the_taxonomys(output, report, page):
    types = analysis.head_taxonomy(output.attention_weights, output.tokens).type
    parsed = Page(page)
    assert parsed.data()["head_types"] == types.tolist()          # the model view's titles
    assert [row["type"]["text"] for row in parsed.tables["head-table"]] == list(types.ravel())


def test_a_one_layer_report_leaves_the_other_layers_untyped(output):
    report = build_report(output, layer=0, text=TEXT)
    data = Page(render_html(output, report)).data()
    assert all(kind is not None for kind in data["head_types"][0])
    assert data["head_types"][1] == [None] * output.attention_weights.shape[1]
    assert all(layer == 0 for layer, _ in data["flagged"])


def test_mismatched_inputs_are_refused(output, report):
    other = DemoModel().encode("a different text")
    with pytest.raises(ValueError, match="report was built from other tokens"):
        render_html(other, report)
    with pytest.raises(ValueError, match=r"rollout must be \(T, T\) = \(23, 23\), got "
                                         r"shape \(3, 3\)"):
        render_html(output, report, rollout=np.eye(3))


def test_a_128_token_page_stays_small():
    output = DemoModel().encode(LONG_TEXT)
    page = render_html(output, build_report(output, text=LONG_TEXT))
    # the demo's one-hot maps compress far below the one byte per weight a
    # page may spend at most
    assert len(page.encode("utf-8")) < 200_000


def test_minilm_on_128_tokens_stays_under_two_megabytes():
    from attnref.models import find_minilm, load_minilm
    try:
        find_minilm()
    except (ModuleNotFoundError, FileNotFoundError) as missing:
        pytest.skip(f"MiniLM is not installed: {missing}")
    output = load_minilm().encode(LONG_TEXT)
    assert len(output.tokens) >= 120
    page = render_html(output, build_report(output, text=LONG_TEXT))
    assert len(page.encode("utf-8")) < 2_000_000


def test_a_cut_input_shows_only_what_the_model_read(page):
    output = DemoModel(max_positions=16).encode(LONG_TEXT, truncation=True)
    # a report given the whole text: the header still shows only what was read
    cut_page = render_html(output, build_report(output, text=LONG_TEXT))
    read = " ".join(LONG_TEXT.replace(",", " ,").replace(".", " .").split()[:14])
    total = len(demo_tokenize(LONG_TEXT)[0])
    assert output.read_text() == read and output.tokens_total == total
    assert f"the model read <b>16 of {total} tokens</b>" in cut_page
    assert f"text read: <q>{read}</q>" in cut_page
    assert "previous word" not in cut_page        # in LONG_TEXT, after the first 14 tokens
    assert 'id="read"' not in page and "text: <q>The cat chased" in page


def test_packing_in_blocks_gives_the_levels_of_the_formula(monkeypatch):
    weights = np.random.default_rng(3).random((3, 5, 7)).astype(np.float32)
    weights[0, 0, 0], weights[1, 1, 1], weights[2, 2, 2] = np.nan, 1.5, -0.25
    expected = np.rint(np.sqrt(np.clip(np.nan_to_num(weights.astype(np.float64)), 0, 1))
                       * 255).astype(np.uint8)
    monkeypatch.setattr(html_report, "_PACK_BLOCK", 16)          # 105 values: 7 blocks
    assert zlib.decompress(base64.b64decode(pack_weights(weights))) == expected.tobytes()


class TopLevel(HTMLParser):
    """The tags at the top level of an HTML fragment, with their attributes."""

    def __init__(self, text):
        super().__init__(convert_charrefs=True)
        self.depth, self.top = 0, []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        if self.depth == 0:
            self.top.append((tag, dict(attrs)))
        self.depth += 1

    def handle_endtag(self, tag):
        self.depth -= 1


def test_the_explorer_shows_inline_in_a_sandboxed_frame(output, report):
    explorer = Explorer(output, report, height=500)
    assert explorer.html == render_html(output, report)
    fragment = explorer._repr_html_()
    parsed = TopLevel(fragment)
    # one iframe and nothing else: the page's script and CSS stay inside it
    assert [tag for tag, _ in parsed.top] == ["iframe"] and parsed.depth == 0
    attributes = parsed.top[0][1]
    assert attributes["srcdoc"] == explorer.html                  # the page, unescaped
    assert attributes["sandbox"] == "allow-scripts" and "height: 500px" in attributes["style"]
    assert ATTACK not in fragment and "<script" not in fragment


def test_the_explorer_builds_its_report_and_saves(output, tmp_path):
    explorer = Explorer(output)
    assert Page(explorer.html).data()["tokens"] == output.tokens
    path = explorer.save(tmp_path / "explorer.html")
    assert path.read_text(encoding="utf-8") == explorer.html
    for height in (0, 1.5, True):
        with pytest.raises(ValueError, match=f"height must be a positive int .*got {height!r}"):
            Explorer(output, height=height)


def test_docstring_examples():
    import doctest
    failures, tried = doctest.testmod(html_report)
    assert failures == 0 and tried > 0


def test_causal_maps_render_and_say_what_is_normal(induction_decoder):
    output = induction_decoder.encode("the cat sat on the mat and the cat")
    report = build_report(output, lm_head=lm_head_of(induction_decoder))
    page = render_html(output, report)
    assert 'id="causal"' in page and "Xiao et al. 2023" in page
    data = json.loads(re.search(r'id="attnref-data">(.*?)</script>', page, re.S).group(1))
    T = len(output.tokens)
    levels = np.frombuffer(zlib.decompress(base64.b64decode(data["weights"])), np.uint8)
    weights = levels.reshape(2, 2, T, T)
    assert not np.triu(weights, k=1).any()                    # nothing above the diagonal
    assert 'id="causal"' not in render_html(DemoModel().encode("The cat sat."),
                                            build_report(DemoModel().encode("The cat sat.")))
