"""attnref.report: the three-level allocation report, on the demo model
(whose heads' types are known by construction)."""
import json

import numpy as np
import pytest

from attnref.models.demo import HEAD_TYPES, DemoModel
from attnref.report import build_report

TEXT = "The cat chased the mouse because it was hungry."


@pytest.fixture(scope="module")
def output():
    return DemoModel().encode(TEXT)


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
    assert build_report(output, layer=-1).token_map == "layer 1, mean over heads"


def test_head_level_names_the_constructed_types(output):
    rows = {(row["layer"], row["head"]): row for row in build_report(output).head_level}
    assert len(rows) == sum(map(len, HEAD_TYPES))
    assert rows[0, 0]["type"] == "local (previous_token)"
    assert rows[1, 2]["type"] == "local (previous_token)"
    assert rows[0, 1]["type"] == "self_attention_dominant"
    assert rows[1, 0]["confidence"] == pytest.approx(1.0)
    assert rows[1, 0]["type"] == "focused (first-token sink)" and rows[1, 0]["sink"] > 0.999
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


def test_text_and_json_forms(output):
    report = build_report(output, text=TEXT)
    text = report.text_report()
    for heading in ("== per token", "== per layer", "== per head", "== misallocation",
                    "== attention rollout"):
        assert heading in text
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["tokens"] == output.tokens and data["model"] == output.model


@pytest.mark.parametrize("options,message", [
    ({"layer": 2}, r"layer must be an integer in \[-2, 2\), got 2"),
    ({"head": True}, r"head must be an integer in \[-3, 3\), got True"),
    ({"top_k": 0}, "top_k must be a positive integer, got 0"),
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
