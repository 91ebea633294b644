"""Tests for attnref.analysis.diagnostics: a hand-built model whose every head
has one known problem, the threshold interface, and properties (leading dims,
key order, masked rows)."""
import doctest
import json

import numpy as np
import pytest
from hypothesis import given, strategies as st

from attnref.analysis import diagnostics as D
from attnref.numerics import softmax

TOKENS = ["[CLS]", "the", "cat", "sat", "[SEP]"]
TAGS = ["X", "DET", "NOUN", "VERB", "X"]


def repeated_row(row, length=5):
    return np.tile(np.asarray(row, dtype=float), (length, 1))


def hand_model():
    """(layers=2, H=2, 5, 5): every row of a head is the same distribution.

    layer 0 head 0: uniform (1/5 each)
    layer 0 head 1: 0.9 on key 2 "cat"
    layer 1 head 0: 0.6 on key 1 "the" (a function word)
    layer 1 head 1: 0.6 on key 4 "[SEP]", 0.1 on "[CLS]"
    """
    return np.array([
        [repeated_row([0.2] * 5), repeated_row([0.025, 0.025, 0.9, 0.025, 0.025])],
        [repeated_row([0.1, 0.6, 0.1, 0.1, 0.1]), repeated_row([0.1, 0.1, 0.1, 0.1, 0.6])],
    ])


def test_docstring_examples_run():
    failures, tried = doctest.testmod(D)
    assert tried > 0 and failures == 0


def test_each_head_gets_its_one_finding():
    diagnosis = D.diagnose(hand_model(), tokens=TOKENS)
    found = [(f.layer, f.head, f.kind) for f in diagnosis.findings]
    assert found == [(0, 0, "uniform"), (0, 1, "collapse"), (1, 0, "function_words"),
                     (1, 1, "sink")]
    uniform, collapse, function_words, sink = diagnosis.findings
    # Uniform rows: normalised entropy log 5 / log 5 = 1.
    assert uniform.evidence == pytest.approx(1.0)
    # Every row puts 0.9 on key 2, so key 2 holds 0.9 of the head's mass.
    assert collapse.evidence == pytest.approx(0.9)
    assert collapse.keys == (2,) and collapse.key_tokens == ("cat",)
    # "the" gets 0.6 of each row; uniform attention would give it 1/5: lift 3.
    assert function_words.evidence == pytest.approx(3.0)
    assert "60%" in function_words.explanation and "3.0x" in function_words.explanation
    # [SEP] 0.6 + [CLS] 0.1.
    assert sink.evidence == pytest.approx(0.7)
    assert sink.keys == (0, 4) and sink.key_tokens == ("[CLS]", "[SEP]")
    assert "[SEP] 60%" in sink.explanation
    assert diagnosis.skipped == {}
    # The evidence tables hold every head, flagged or not (hand-computed:
    # collapse is the largest key share, sink the [CLS] + [SEP] share).
    np.testing.assert_allclose(diagnosis.evidence["collapse"], [[0.2, 0.9], [0.6, 0.6]])
    np.testing.assert_allclose(diagnosis.evidence["sink"], [[0.4, 0.05], [0.2, 0.7]])
    np.testing.assert_array_equal(diagnosis.collapse_key, [[0, 2], [1, 4]])


def test_pos_tags_drive_the_function_word_check():
    with_tags = D.diagnose(hand_model(), pos_tags=TAGS)
    np.testing.assert_allclose(with_tags.evidence["function_words"], [[1.0, 0.125], [3.0, 0.5]])
    assert [(f.layer, f.head) for f in with_tags.findings if f.kind == "function_words"] == [(1, 0)]


def test_without_tokens_the_sink_is_the_first_key():
    weights = repeated_row([0.6, 0.1, 0.1, 0.1, 0.1])
    diagnosis = D.diagnose(weights)
    (sink,) = diagnosis.findings
    assert (sink.kind, sink.layer, sink.head, sink.keys, sink.key_tokens) == (
        "sink", None, None, (0,), None)
    assert sink.evidence == pytest.approx(0.6)
    assert diagnosis.skipped == {"function_words": "needs pos_tags or tokens"}
    assert diagnosis.summary().splitlines()[0].startswith("map sink: 60% of the attention")


def test_thresholds_can_be_overridden_and_are_checked():
    weights = hand_model()
    assert not any(f.kind == "collapse" for f in D.diagnose(weights, collapse_share=0.95).findings)
    relaxed = D.diagnose(weights, tokens=TOKENS, sink_share=0.35)
    assert [(f.layer, f.head) for f in relaxed.findings if f.kind == "sink"] == [(0, 0), (1, 1)]
    assert relaxed.thresholds["sink_share"] == 0.35
    with pytest.raises(ValueError, match=r"unknown threshold\(s\) \['collapse'\]; valid names "
                                         r"are \['collapse_share', 'function_word_lift'"):
        D.diagnose(weights, collapse=0.5)
    with pytest.raises(ValueError, match="must lie in"):
        D.diagnose(weights, uniform_entropy=1.5)
    with pytest.raises(ValueError, match="positive number"):
        D.diagnose(weights, function_word_lift=0)


def test_summary_and_to_dict():
    diagnosis = D.diagnose(hand_model(), tokens=TOKENS)
    lines = diagnosis.summary().splitlines()
    assert len(lines) == 4
    assert lines[1].startswith("layer 0 head 1 collapse: 90% of the head's attention lands on key 2 'cat'")
    plain = diagnosis.to_dict()
    json.dumps(plain)
    assert plain["findings"][1]["keys"] == [2]
    assert D.diagnose(np.full((3, 4, 4), 0.25), uniform_entropy=1.0 - 1e-9,
                      collapse_share=1.0).summary().count(" uniform: ") == 3
    assert D.diagnose(np.eye(3)[None], tokens=["a", "b", "c"]).summary().startswith(
        "no problems found")


def test_shapes_and_errors():
    weights = hand_model()
    heads = D.diagnose(weights[1], tokens=TOKENS)
    assert [(f.layer, f.head, f.kind) for f in heads.findings] == [
        (None, 0, "function_words"), (None, 1, "sink")]
    with pytest.raises(ValueError, match=r"got shape \(1, 2, 2, 5, 5\)"):
        D.diagnose(weights[None])
    with pytest.raises(ValueError, match="tokens must have 5 entries"):
        D.diagnose(weights, tokens=TOKENS[:4])
    with pytest.raises(ValueError, match="pos_tags must have 5 entries"):
        D.diagnose(weights, pos_tags=TAGS[:4])
    with pytest.raises(ValueError, match="lang must be one of"):
        D.diagnose(weights, tokens=TOKENS, lang="fr")


def test_masked_rows_and_empty_maps():
    # Causal uniform map: row i spreads over i + 1 keys. Row 0 (one key) is left
    # out of the uniform check; the others have normalised entropy 1.
    causal = np.tril(np.ones((4, 4)))
    causal /= causal.sum(-1, keepdims=True)
    assert D.diagnose(causal).evidence["uniform"] == pytest.approx(1.0)
    # A fully masked row adds nothing; an all-zero map gives NaN and no finding.
    padded = np.vstack([hand_model()[0, 1], np.zeros((1, 5))])
    assert D.diagnose(padded).evidence["collapse"] == pytest.approx(0.9)
    empty = D.diagnose(np.zeros((2, 3, 3)), tokens=["[CLS]", "the", "x"])
    assert empty.findings == []
    assert np.all(np.isnan(empty.evidence["collapse"])) and np.all(empty.collapse_key == -1)
    assert "function_words" in empty.skipped


@st.composite
def model_maps(draw):
    """Softmax maps (layers, H, L, S) with sharp or flat rows and some masks."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 5)),
             draw(st.integers(2, 5)))
    scores = rng.normal(scale=draw(st.sampled_from([0.1, 1.0, 6.0])), size=shape)
    return softmax(np.where(rng.random(shape) < 0.2, -np.inf, scores))


@given(model_maps())
def test_findings_per_map_equal_the_whole_model(weights):
    tokens = ["[CLS]", "the", ".", "cat", "[SEP]"][:weights.shape[-1]]
    whole = D.diagnose(weights, tokens=tokens)
    expected = []
    for layer, head in np.ndindex(weights.shape[:2]):
        alone = D.diagnose(weights[layer, head], tokens=tokens)
        for check, values in whole.evidence.items():
            np.testing.assert_allclose(values[layer, head], alone.evidence[check])
        expected += [(layer, head, f.kind, pytest.approx(f.evidence)) for f in alone.findings]
    assert [(f.layer, f.head, f.kind, f.evidence) for f in whole.findings] == expected


@given(model_maps())
def test_evidence_follows_a_key_permutation(weights):
    tokens = ["[CLS]", "the", ".", "cat", "[SEP]"][:weights.shape[-1]]
    order = np.random.default_rng(weights.size).permutation(weights.shape[-1])
    original = D.diagnose(weights, tokens=tokens)
    permuted = D.diagnose(weights[..., order], tokens=[tokens[key] for key in order])
    for check, values in original.evidence.items():
        np.testing.assert_allclose(permuted.evidence[check], values, atol=1e-12)
    unique = np.sum(np.isclose(weights.sum(-2), weights.sum(-2).max(-1, keepdims=True)), -1) == 1
    np.testing.assert_array_equal(order[permuted.collapse_key][unique],
                                  original.collapse_key[unique])
    for check in ("collapse", "sink"):  # shares lie in [0, 1]
        values = original.evidence[check]
        assert np.all((values[~np.isnan(values)] >= -1e-12) & (values[~np.isnan(values)] <= 1 + 1e-12))


def first_token_sink(length, share):
    """(T, T) causal map: every row with a choice puts ``share`` on key 0 and
    the rest evenly on its other visible keys."""
    weights = np.zeros((length, length))
    weights[0, 0] = 1.0
    for i in range(1, length):
        weights[i, 0] = share
        weights[i, 1:i + 1] = (1 - share) / i
    return weights


def test_causal_sink_is_the_first_token_over_rows_with_a_choice():
    weights = first_token_sink(6, 0.7)
    tokens = ["The", "cat", "sat", ".", "It", "purred"]
    causal = D.diagnose(weights, tokens, causal=True)
    assert causal.evidence["sink"] == pytest.approx(0.7)      # row 0's forced 1 left out
    (sink,) = [finding for finding in causal.findings if finding.kind == "sink"]
    assert sink.keys == (0,) and sink.key_tokens == ("The",)
    assert "attention sink of causal decoders" in sink.explanation
    # without the flag the sink is special tokens and punctuation: '.' only here
    assert D.diagnose(weights, tokens).evidence["sink"] < 0.5


def test_causal_collapse_ignores_the_forced_first_row():
    weights = first_token_sink(5, 0.75)
    plain = D.diagnose(weights).evidence["collapse"]
    causal = D.diagnose(weights, causal=True).evidence["collapse"]
    assert causal == pytest.approx(0.75)                      # (4 x 0.75) / 4 rows with a choice
    assert plain == pytest.approx((1 + 4 * 0.75) / 5)
    with pytest.raises(TypeError, match="causal must be True or False"):
        D.diagnose(weights, causal="yes")


def test_causal_uniform_is_uniform_over_the_visible_prefix():
    causal = np.tril(np.ones((5, 5)))
    causal /= causal.sum(-1, keepdims=True)
    assert D.diagnose(causal, causal=True).evidence["uniform"] == pytest.approx(1.0)


def test_causal_function_word_check_reads_the_attention_besides_the_sink():
    # "The" holds the sink: 0.9 of every row; the rest is even over the other keys
    weights = first_token_sink(6, 0.9)
    tokens = ["The", "cat", "sat", "on", "the", "mat"]
    plain = D.diagnose(weights, tokens)
    causal = D.diagnose(weights, tokens, causal=True)
    assert plain.evidence["function_words"] > 1.5             # the sink counted as "The"
    assert causal.evidence["function_words"] == pytest.approx(1.0)   # even over the rest
    assert not [f for f in causal.findings if f.kind == "function_words"]
