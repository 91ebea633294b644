"""attnref.report: the summary and the three-level allocation report, on the
demo model (whose heads' types are known by construction) and on MiniLM."""
import dataclasses
import json
import re

import numpy as np
import pytest

from attnref import analysis
from attnref.models.demo import HEAD_TYPES, DemoModel
from attnref.report import build_report, is_decoder, lm_head_of

TEXT = "The cat chased the mouse because it was hungry."
PORTUGUESE = "O gato perseguiu o rato porque estava com fome."
#: (lang, text, the pronouns the summary follows: those with an earlier content word that
#: is not the word just before; "ela" is split into "el ##a" by MiniLM's WordPiece)
MORE_TEXTS = [
    ("pt", PORTUGUESE, []),
    ("en", "The committee said that it would review the proposal after the engineers had "
           "tested their prototype in the harbour.", ["it", "their"]),
    ("en", "She gave him the keys, but he left them on the train to Lisbon.", ["he", "them"]),
    ("pt", "A professora explicou a lição e os alunos fizeram perguntas sobre ela.", ["ela"]),
]
SCREEN = 40                          # lines: the summary must fit one screen

#: The demo's constructed kinds (attnref.models.demo.HEAD_TYPES) as the
#: report's taxonomy names them.
CONSTRUCTED = {"previous_token": "previous-token", "self": "self", "uniform": "broad",
               "cls_sink": "sink", "content_words": "content-focused"}


@pytest.fixture(scope="module")
def output():
    return DemoModel().encode(TEXT)


@pytest.fixture(scope="module")
def minilm():
    from attnref.models import find_minilm, load_minilm
    try:
        find_minilm()
    except (ModuleNotFoundError, FileNotFoundError) as missing:
        pytest.skip(f"MiniLM is not installed: {missing}")
    return load_minilm()


def test_token_level_reads_the_last_layer_mean_by_default(output):
    report = build_report(output, text=TEXT)
    assert report.token_map == "layer 1, mean over heads"
    weights = output.attention_weights[1].mean(0)
    for row in report.token_level:
        i = row["position"]
        assert row["token"] == output.tokens[i]
        best = [j for j, _, _ in row["attends_to"]]
        assert best == list(np.argsort(-weights[i], kind="stable")[:3])
        assert row["attends_to"][0][2] == pytest.approx(weights[i].max())
        assert row["received"] == pytest.approx(weights[:, i].sum() / len(output.tokens))


def test_one_head_and_layer_selection(output):
    report = build_report(output, layer=0, head=0, top_k=1, text=TEXT)
    assert report.token_map == "layer 0, head 0"
    # head L0 H0 is the constructed previous-token head
    assert [row["attends_to"][0][0] for row in report.token_level] == \
        [0] + list(range(len(output.tokens) - 1))
    assert {row["layer"] for row in report.head_level} == {0}
    assert all(f["layer"] == 0 for f in report.findings)
    # the summary speaks of the same layer only
    assert report.summary["layer"] == 0 and report.summary["shape"]["typed"] == 3
    assert sum(report.summary["type_counts"].values()) == 3
    assert "heads: layer 0 only (3 heads)" in report.text_report()
    assert build_report(output, layer=-1).token_map == "layer 1, mean over heads"


def test_head_level_names_the_constructed_types(output):
    rows = {(row["layer"], row["head"]): row for row in build_report(output).head_level}
    assert len(rows) == sum(map(len, HEAD_TYPES))
    for layer, kinds in enumerate(HEAD_TYPES):
        for head, kind in enumerate(kinds):
            assert rows[layer, head]["type"] == CONSTRUCTED[kind], (layer, head, kind)
    assert rows[0, 0]["previous_token"] == pytest.approx(1.0)
    assert rows[0, 1]["self"] == pytest.approx(1.0)
    assert rows[0, 2]["uniformity"] == pytest.approx(1.0)
    assert rows[1, 0]["confidence"] == pytest.approx(1.0)
    assert rows[1, 0]["sink"] > 0.999 and rows[1, 0]["score"] == rows[1, 0]["sink"]
    ranks = sorted(row["importance_rank"] for row in rows.values())
    assert ranks == list(range(1, len(rows) + 1))
    # the self head moves nothing between positions: it ranks last
    assert rows[0, 1]["importance_rank"] == len(rows)


def test_findings_layers_and_rollout(output):
    report = build_report(output)
    kinds = {(f["layer"], f["head"], f["kind"]) for f in report.findings}
    assert kinds == {(0, 2, "uniform"), (1, 0, "collapse"), (1, 0, "sink")}
    assert [row["layer"] for row in report.layer_level] == [0, 1]
    assert "more global with depth" in report.layer_trend
    for row in report.rollout:
        shares = [share for _, _, share in row["sources"]]
        assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1 + 1e-6
    share = report.content_vs_function
    assert share["content_tokens"] == pytest.approx(4 / 12)     # cat chased mouse hungry
    assert share["function_tokens"] == pytest.approx(5 / 12)    # the the because it was


def test_summary_of_the_demo_model(output):
    report = build_report(output, text=TEXT)
    summary = report.summary
    assert summary["read"] == {"tokens": 12, "tokens_total": 12, "unread": 0}
    assert summary["type_counts"] == {"previous-token": 2, "self": 1, "broad": 1, "sink": 1,
                                      "content-focused": 1}
    assert summary["typical"] == {"type": "previous-token", "count": 2}
    assert summary["sinks_park_on"]["[CLS]"] > 0.999           # the constructed [CLS] sink
    assert [(row["layer"], row["head"]) for row in summary["by_type"]["previous-token"]] == [
        (0, 0), (1, 2)]
    assert summary["closest"]["next-token"]["score"] < 0.5     # no constructed next-token head
    # "it" looks back at the content words: the content-focused head weighs them equally
    (pronoun,) = summary["pronouns"]
    assert pronoun["token"] == "it" and pronoun["position"] == 7
    assert {word for word, _ in pronoun["most_weight"]} <= {"cat", "chased", "mouse"}
    groups = {group["kind"]: group for group in summary["findings"]}
    assert groups["uniform"]["heads"] == [[0, 2]] and groups["collapse"]["keys"] == [("[CLS]", 1)]
    text = report.text_report()
    assert "  previous-token   L0 H0, L1 H2: up to 100% on the token before (L0 H0)" in text
    assert "  self             L0 H1: 100% on itself" in text
    assert "  next-token       none (closest: " in text
    assert "  uniform (mean normalised entropy >= 0.90): L0 H2" in text
    assert "== per head" not in text


def test_text_json_and_full_forms(output):
    report = build_report(output, text=TEXT)
    short, full = report.text_report(), report.text_report(full=True)
    assert full.startswith(short + "\n")
    for heading in ("== per token", "== per layer", "== per head", "== misallocation",
                    "== attention rollout"):
        assert heading in full and heading not in short
    lines = full.splitlines()
    table = lines[lines.index(next(line for line in lines if line.startswith("== misall"))) + 2:]
    assert table[:3] == [" 0   2 uniform             1.00      0.90",
                         " 1   0 collapse            100%       80%  [CLS]",
                         " 1   0 sink                100%       50%  [CLS] [SEP]"]
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["tokens"] == output.tokens and data["model"] == output.model
    assert data["summary"]["typical"]["type"] == "previous-token"
    assert data["head_level"] and data["findings"] and data["rollout"]


def test_unread_tokens_are_said_loudly(output):
    cut = dataclasses.replace(output, tokens_total=40)
    report = build_report(cut, text=TEXT)
    assert report.tokens_total == 40
    assert report.summary["read"] == {"tokens": 12, "tokens_total": 40, "unread": 28}
    lines = report.text_report().splitlines()
    assert lines[2].startswith("read: ONLY THE FIRST 12 OF 40 TOKENS")
    assert "did NOT read the other 28" in " ".join(lines[2:4])
    assert max(map(len, lines)) <= 100
    assert build_report(dataclasses.replace(output, tokens_total=12)).summary["read"][
        "unread"] == 0


@pytest.mark.parametrize("options,message", [
    ({"layer": 2}, r"layer must be an integer in \[-2, 2\), got 2"),
    ({"head": True}, r"head must be an integer in \[-3, 3\), got True"),
    ({"top_k": 0}, "top_k must be a positive integer, got 0"),
    ({"lang": "fr"}, r"lang must be one of \['en', 'pt'\], got 'fr'"),
])
def test_bad_options(output, options, message):
    with pytest.raises(ValueError, match=message):
        build_report(output, **options)


def test_a_report_shows_in_a_notebook_as_its_text(output):
    import html
    report = build_report(output, text=TEXT + " <b>&")
    shown = report._repr_html_()
    assert shown.startswith("<pre>") and shown.endswith("</pre>")
    assert html.unescape(shown[len("<pre>"):-len("</pre>")]) == report.text_report()
    assert "<b>" not in shown


# --- the summary never contradicts the tables ------------------------------------------------

HEAD = re.compile(r"L(\d+) ((?:H\d+(?:-H\d+)?\s?)+)")


def named_heads(text):
    """Every (layer, head) a compact head list such as "L0 H1-H3 H5, L2 H0" names."""
    heads = set()
    for layer, runs in HEAD.findall(text):
        for run in runs.split():
            first, _, last = run.partition("-")
            heads.update((int(layer), head)
                         for head in range(int(first[1:]), int((last or first)[1:]) + 1))
    return heads


def assert_summary_agrees_with_the_tables(report):
    rows = {(row["layer"], row["head"]): row for row in report.head_level}
    summary = report.summary
    assert sum(summary["type_counts"].values()) == len(rows)
    for kind, count in summary["type_counts"].items():
        assert count == sum(row["type"] == kind for row in rows.values())
    for kind, heads in summary["by_type"].items():
        assert {(h["layer"], h["head"]) for h in heads} == {
            key for key, row in rows.items() if row["type"] == kind}
    for entry in (summary["most_important"] + summary["pronouns"]
                  + [summary["strongest_link"] or {}]):
        if entry:
            assert rows[entry["layer"], entry["head"]]["type"] == entry.get(
                "type", rows[entry["layer"], entry["head"]]["type"])
    link = summary["strongest_link"]                     # positional and sink heads are named
    assert link is None or link["type"] not in ("previous-token", "next-token", "self", "sink")
    lines = report.text_report().splitlines()
    for line in lines:                       # each type line names exactly that type's heads
        label = line[2:19].strip()
        if line.startswith("  ") and label in summary["by_type"]:
            listed = named_heads(line.split(":")[0])
            assert listed == {key for key, row in rows.items() if row["type"] == label}, line
    groups = {group["kind"]: group for group in summary["findings"]}
    findings = {(f["layer"], f["head"], f["kind"]) for f in report.findings}
    for kind, group in groups.items():
        assert {tuple(head) for head in group["heads"]} == {
            (layer, head) for layer, head, found in findings if found == kind}
    # uniform finding <=> broad type; sink type => sink finding
    uniform = {tuple(head) for head in groups["uniform"]["heads"]}
    assert uniform == {key for key, row in rows.items() if row["type"] == "broad"}
    sinks = {tuple(head) for head in groups["sink"]["heads"]}
    assert {key for key, row in rows.items() if row["type"] == "sink"} <= sinks
    # a head the summary names under a finding is never typed against it
    for key in sinks:
        assert rows[key]["type"] == "sink" or rows[key]["score"] >= rows[key]["sink"]


def test_the_demo_summary_agrees_with_its_tables(output):
    assert_summary_agrees_with_the_tables(build_report(output, text=TEXT))


def test_minilm_summary_fits_a_screen_and_names_the_positional_heads(minilm):
    output = minilm.encode(TEXT)
    report = build_report(output, text=TEXT)
    text = report.text_report()
    lines = text.splitlines()
    assert len(lines) <= SCREEN and max(map(len, lines)) <= 100
    assert lines[2] == "read: all 12 tokens: [CLS]|the|cat|chased|the|mouse|because|it|was|" \
                       "hungry|.|[SEP]"
    rows = {(row["layer"], row["head"]): row for row in report.head_level}
    previous = [key for key, row in rows.items() if row["type"] == "previous-token"]
    following = [key for key, row in rows.items() if row["type"] == "next-token"]
    assert previous and following
    assert all(rows[key]["previous_token"] >= 0.5 for key in previous)
    assert all(rows[key]["next_token"] >= 0.5 for key in following)
    previous_line = next(line for line in lines if line.startswith("  previous-token "))
    next_line = next(line for line in lines if line.startswith("  next-token "))
    assert named_heads(previous_line) == set(previous)
    assert named_heads(next_line) == set(following)
    # the [CLS]-parking majority, said once, with its count
    sinks = sum(row["type"] == "sink" for row in rows.values())
    assert sinks > len(rows) / 2
    assert report.summary["typical"] == {"type": "sink", "count": sinks}
    assert text.count("no-op") == 1
    parks_on = report.summary["sinks_park_on"]
    assert parks_on["[CLS]"] > 0.5 > parks_on["[SEP]"] + parks_on["punctuation"]
    assert (f"typical head: sink ({sinks} of {len(rows)}), a no-op (Clark et al. 2019): "
            f"[CLS] {parks_on['[CLS]']:.0%}, [SEP] {parks_on['[SEP]']:.0%}, "
            f"punctuation {parks_on['punctuation']:.0%}") in text
    assert text.count("sink heads above") == 1
    # what the pronoun looks at, among the earlier content words
    (pronoun,) = report.summary["pronouns"]
    assert pronoun["token"] == "it"
    assert {word for word, _ in pronoun["most_weight"]} <= {"cat", "chased", "mouse"}
    assert_summary_agrees_with_the_tables(report)
    full = report.text_report(full=True).splitlines()
    assert len(full) > len(lines) + len(rows)
    table = full[full.index(next(line for line in full if line.startswith("== per head"))) + 2:]
    for line, row in zip(table, report.head_level):
        assert line.split()[:3] == [str(row["layer"]), str(row["head"]), row["type"]]


@pytest.mark.parametrize("lang,text,pronouns", MORE_TEXTS)
def test_minilm_summary_on_other_texts(minilm, lang, text, pronouns):
    report = build_report(minilm.encode(text), text=text, lang=lang)
    assert [row["token"] for row in report.summary["pronouns"]] == pronouns
    lines = report.text_report().splitlines()
    assert len(lines) <= SCREEN and max(map(len, lines)) <= 100
    assert_summary_agrees_with_the_tables(report)
    types = analysis.head_taxonomy(minilm.encode(text).attention_weights,
                                   report.tokens, lang=lang).type
    assert [row["type"] for row in report.head_level] == list(types.ravel())
    link = report.summary["strongest_link"]
    # whole words, never a piece ("##to") and never two pieces of one word
    assert not link["query"].startswith("##") and not link["key"].startswith("##")
    assert abs(link["key_position"] - link["query_position"]) > 1
    assert link["query"] in text.lower() and link["key"] in text.lower()


# -- causal decoders (tests/conftest.py: InductionDecoder, RandomDecoder)

REPEATED = "the cat sat on the mat and the cat"


def test_decoder_report_says_what_is_normal_for_a_causal_model(induction_decoder):
    report = build_report(induction_decoder.encode(REPEATED), lm_head=lm_head_of(induction_decoder))
    assert report.causal and report.summary["decoder"]["first_token"] == "<s>"
    text = report.text_report()
    # tokens are shown edge to edge, | between them, so a token's own leading space shows
    assert text.splitlines()[2].startswith(f"read: all {len(report.tokens)} tokens: "
                                           + "|".join(report.tokens)[:40])
    assert text.count("Xiao et al. 2023") == 1
    assert "no head can attend to the next token" in text
    assert "next-token" not in text.split("heads worth a look")[1].split("typical head")[0]
    # row i's entropy bound is ln(i + 1), and the full table shows it
    bounds = [row["max_entropy"] for row in report.token_level]
    np.testing.assert_allclose(bounds, np.log(np.arange(1, len(bounds) + 1)))
    assert "at most max = ln(i+1)" in report.text_report(full=True)
    assert all(len(line) <= 100 for line in text.splitlines())


def test_encoder_reports_are_not_causal(output):
    report = build_report(output)
    assert not report.causal and report.summary["decoder"] is None
    assert report.logit_lens is None and "causal decoder" not in report.text_report()


def test_decoder_report_sink_heads_are_named_as_the_default(induction_decoder):
    # a sink head: every row with a choice puts 0.9 on the first token
    output = induction_decoder.encode(REPEATED)
    weights = output.trace.layers[0].self_attention.weights
    T = weights.shape[-1]
    sink = np.zeros((T, T))
    sink[0, 0] = 1.0
    for i in range(1, T):
        sink[i, 0], sink[i, 1:i + 1] = 0.9, 0.1 / i
    weights[1] = sink
    report = build_report(output, lm_head=lm_head_of(induction_decoder))
    decoder = report.summary["decoder"]
    assert decoder["sink_heads"] == 1
    text = " ".join(report.text_report().split())      # the summary wraps its lines
    assert "1 of 4 heads put >= 50% of their attention on the first token '<s>'" in text
    assert "heads onto the first token (the sink, see above)" in text
    assert "the first-token sink (the decoder default, see above)" in text


def test_logit_lens_and_attribution_find_the_induction_head(induction_decoder):
    output = induction_decoder.encode(REPEATED)
    report = build_report(output, lm_head=lm_head_of(induction_decoder), top_k=2)
    attribution = report.logit_attribution
    assert attribution["token"] == "sat"                       # copied after "the cat"
    assert attribution["lens_matches_logits"]
    assert attribution["top_heads"][0] == {"layer": 1, "head": 0,
                                           "logit": pytest.approx(attribution["logit"])}
    assert attribution["logit"] == pytest.approx(attribution["model_logit"])
    assert [row["stage"] for row in report.logit_lens] == ["embedding", "after L0", "after L1"]
    assert report.logit_lens[-1]["top"][0][0] == "sat"
    json.dumps(report.to_dict())


def test_decoders_are_told_from_encoders(induction_decoder, random_decoder):
    assert is_decoder(induction_decoder) and is_decoder(random_decoder)   # causal; stream
    assert not is_decoder(DemoModel())
    head = lm_head_of(random_decoder)            # stack.final_norm and lm_head.weight
    assert head.final_norm is random_decoder.stack.final_norm
    assert head.unembedding.shape == (40, 16)


def test_attribution_sums_to_the_logit_on_a_random_layernorm_decoder(random_decoder):
    output = random_decoder.encode("a b c d e f g h")
    attribution = build_report(output, lm_head=lm_head_of(random_decoder)).logit_attribution
    total = (attribution["heads_total"] + attribution["mlp_total"] + attribution["embedding"]
             + attribution["attention_bias"] + attribution["bias"])
    assert total == pytest.approx(attribution["logit"], rel=1e-9)
    assert attribution["logit"] == pytest.approx(attribution["model_logit"], rel=1e-9)
    assert attribution["lens_matches_logits"]


def test_lm_head_errors_are_clear(induction_decoder, output):
    decoder_output = induction_decoder.encode(REPEATED)
    with pytest.raises(ValueError, match="lm_head needs output.logits"):
        build_report(output, lm_head=lm_head_of(induction_decoder))
    with pytest.raises(TypeError, match="lm_head must be an attnref.report.LMHead"):
        build_report(decoder_output, lm_head=induction_decoder)
    assert lm_head_of(type("NoTokenizer", (), {
        "final_norm": induction_decoder.final_norm,
        "unembedding": induction_decoder.unembedding})()) is None
    assert lm_head_of(DemoModel()) is None
    with pytest.raises(TypeError, match="causal must be True, False or None"):
        build_report(decoder_output, causal="yes")


def test_induction_probe_names_the_constructed_induction_head(induction_decoder):
    from attnref.report import induction_probe
    probe = induction_probe(induction_decoder, length=25, seed=3, top=2)
    assert probe.ids[0] == induction_decoder.bos_id and len(probe.ids) == 51
    assert (probe.top[0]["layer"], probe.top[0]["head"]) == (1, 0)
    assert probe.top[0]["induction"] > 0.99 and probe.induction[0][0] < 0.01
    assert probe.previous_token[0][0] > 0.99                  # the circuit's first half
    text = probe.text_report()
    assert "best previous-token head: L0 H0" in text
    assert json.loads(json.dumps(probe.to_dict()))["top"][0]["head"] == 0
    with pytest.raises(ValueError, match="top must be a positive integer"):
        induction_probe(induction_decoder, top=0)


def test_one_token_decoder_report(random_decoder, recwarn):
    report = build_report(random_decoder.encode("a"), lm_head=lm_head_of(random_decoder),
                          causal=True)
    assert report.summary["decoder"]["first_token_share"] is None   # no row has a choice
    assert "mean over all heads n/a" in " ".join(report.text_report().split())
    assert not [warning for warning in recwarn if issubclass(warning.category, RuntimeWarning)]
