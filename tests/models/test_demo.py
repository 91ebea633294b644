"""attnref.models.demo: the constructed heads, and the analysis catalogue
recovering each head's constructed type (issue: "a test proves the analysis
catalogue recovers each head's type")."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from attnref import analysis
from attnref.models.demo import CLASSES, CONTENT, HEAD_TYPES, DemoModel, demo_tokenize
from attnref.report import build_report

SENTENCES = {
    "en": ["The cat chased the mouse because it was hungry.",
           "A storm of the century hit the old harbour, and nobody was ready for it!"],
    "pt": ["O gato perseguiu o rato porque estava com fome.",
           "Ação, coração e órgãos: 123,45 reais para a feira de domingo."],
}
CASES = [(lang, text) for lang, texts in SENTENCES.items() for text in texts]
MODEL = DemoModel()


@pytest.fixture(scope="module")
def model():
    return MODEL


def head_indices(kind):
    return [(layer, head) for layer, kinds in enumerate(HEAD_TYPES)
            for head, name in enumerate(kinds) if name == kind]


def test_tokenizer_adds_specials_and_classes():
    tokens, ids = demo_tokenize("The cat, o gato.", lang="en")
    assert tokens == ["[CLS]", "The", "cat", ",", "o", "gato", ".", "[SEP]"]
    assert [CLASSES[i] for i in ids] == ["[CLS]", "function", "content", "punctuation",
                                         "content", "content", "punctuation", "[SEP]"]
    with pytest.raises(TypeError, match="text must be a str, got bytes"):
        demo_tokenize(b"bytes")


#: The constructed kinds as the report's taxonomy (attnref.analysis.head_taxonomy) names them.
REPORT_TYPES = {"previous_token": "previous-token", "self": "self", "uniform": "broad",
                "cls_sink": "sink", "content_words": "content-focused"}


@pytest.mark.parametrize("lang,text", CASES)
def test_the_report_types_every_constructed_head(model, lang, text):
    output = model.encode(text, lang=lang)
    rows = build_report(output, lang=lang).head_level
    assert {(row["layer"], row["head"]): row["type"] for row in rows} == {
        (layer, head): REPORT_TYPES[kind]
        for layer, kinds in enumerate(HEAD_TYPES) for head, kind in enumerate(kinds)}
    assert all(row["score"] > 0.85 for row in rows)        # each type holds by a wide margin


@pytest.mark.parametrize("lang,text", CASES)
def test_analysis_recovers_every_constructed_head(model, lang, text):
    output = model.encode(text, lang=lang)
    weights = output.attention_weights                       # (layers, H, T, T)
    T = len(output.tokens)
    previous = analysis.detect_head(weights, "previous_token")
    taxonomy = analysis.head_taxonomy(weights, output.tokens, lang=lang)
    diagnosis = analysis.diagnose(weights, output.tokens, lang=lang)
    found = {(f.layer, f.head, f.kind) for f in diagnosis.findings}

    for layer, head in head_indices("previous_token"):
        assert previous[layer, head] > 0.85                  # only row 0 (no previous key) misses
        assert taxonomy.previous_token[layer, head] > 0.999
    for layer, head in head_indices("self"):
        assert analysis.diagonal_score(weights[layer, head]) > 0.999
    for layer, head in head_indices("uniform"):
        assert (layer, head, "uniform") in found
        np.testing.assert_allclose(weights[layer, head], 1.0 / T, rtol=1e-6)
    for layer, head in head_indices("cls_sink"):
        assert (layer, head, "collapse") in found and (layer, head, "sink") in found
        assert diagnosis.collapse_key[layer, head] == 0 and output.tokens[0] == "[CLS]"
        assert analysis.sink_score(weights[layer, head]) > 0.999
    content = output.ids == CONTENT
    for layer, head in head_indices("content_words"):
        share = weights[layer, head][:, content].sum(-1)
        np.testing.assert_allclose(share, 1.0, atol=1e-6)
        expected = np.where(content, 1.0 / content.sum(), 0.0)
        np.testing.assert_allclose(weights[layer, head], np.broadcast_to(expected, (T, T)),
                                   atol=1e-6)
        assert taxonomy.content[layer, head] > 0.999
    # No other head is flagged: each finding is one the construction put there.
    constructed = ({(l, h, "uniform") for l, h in head_indices("uniform")}
                   | {(l, h, k) for l, h in head_indices("cls_sink") for k in ("collapse", "sink")})
    assert found == constructed


def test_layers_get_more_global_with_depth(model):
    profile = analysis.layer_profile(model.encode(SENTENCES["en"][1]).attention_weights)
    assert profile.mean_distance[1] > profile.mean_distance[0]
    assert profile.sink_share[1] > profile.sink_share[0]


@settings(max_examples=20)  # each example runs the whole model (0.1-0.3 s)
@given(st.lists(st.sampled_from(["the", "cat", "gato", "of", ",", ".", "runs", "a"]),
                min_size=0, max_size=40))
def test_constructed_patterns_hold_for_any_text(words):
    output = MODEL.encode(" ".join(words))
    weights = output.attention_weights
    T = len(output.tokens)
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)
    prev = weights[0, 0]
    np.testing.assert_allclose(prev[np.arange(T), np.maximum(np.arange(T) - 1, 0)], 1.0,
                               atol=1e-6)
    np.testing.assert_allclose(weights[1, 0][:, 0], 1.0, atol=1e-6)


def test_residual_stream_and_hidden_states(model):
    output = model.encode("the cat sat")
    assert output.hidden_states.shape == (len(HEAD_TYPES) + 1, 5, model.width)
    stream = output.hidden_states
    # Every token's vector has mean exactly 0 (the mirror half), so pre-LN only rescales.
    np.testing.assert_allclose(stream.mean(-1), 0.0, atol=1e-6)
    untraced = model.encode("the cat sat", trace=False)
    assert untraced.trace is None
    np.testing.assert_allclose(untraced.hidden_states, stream, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="trace=False"):
        untraced.attention_weights


def test_too_long_text_and_bad_sizes_are_refused():
    with pytest.raises(ValueError, match=r"the text is 9 tokens .* reads at most 8"):
        DemoModel(max_positions=8).encode("one two three four five six seven")
    with pytest.raises(ValueError, match="max_length must be at most 8"):
        DemoModel(max_positions=8).encode("one", max_length=9)
    with pytest.raises(ValueError, match="max_positions must be an integer >= 2"):
        DemoModel(max_positions=1)


def test_the_model_language_picks_the_function_words():
    portuguese = DemoModel(lang="pt")
    assert [CLASSES[i] for i in portuguese.encode("o gato").ids[1:3]] == ["function", "content"]
    assert [CLASSES[i] for i in MODEL.encode("o gato").ids[1:3]] == ["content", "content"]
    assert [CLASSES[i] for i in MODEL.encode("o gato", lang="pt").ids[1:3]] == [
        "function", "content"]
    with pytest.raises(ValueError, match="lang must be one of .*, got 'fr'"):
        DemoModel(lang="fr")


def test_a_cut_text_says_so_and_windows_read_it_all():
    model = DemoModel(max_positions=8)
    text = "one two three four five six seven"
    cut = model.encode(text, truncation=True)
    assert cut.tokens == ["[CLS]", "one", "two", "three", "four", "five", "six", "[SEP]"]
    assert cut.tokens_total == 9 and cut.read_text() == "one two three four five six"
    windows = list(model.encode_windows(text, stride=4))
    assert [(w.start, w.stop, w.output.tokens[1:-1]) for w in windows] == [
        (0, 6, text.split()[:6]), (4, 7, ["five", "six", "seven"])]
    for window in windows:
        alone = model.encode(" ".join(window.output.tokens[1:-1]))
        np.testing.assert_array_equal(window.output.hidden_states, alone.hidden_states)
        assert window.output.tokens_total == 9


def test_a_pair_is_read_with_a_sep_between(model):
    pair = model.encode("The cat sat.", "It was hungry.", lang="en")
    assert pair.tokens == ["[CLS]", "The", "cat", "sat", ".", "[SEP]", "It", "was", "hungry",
                           ".", "[SEP]"]
    assert [CLASSES[i] for i in pair.ids[[0, 5, 10]]] == ["[CLS]", "[SEP]", "[SEP]"]
    cut = DemoModel(max_positions=8).encode("a b c d e", "f g", truncation=True)
    assert cut.tokens == ["[CLS]", "a", "b", "c", "[SEP]", "f", "g", "[SEP]"]
    assert cut.tokens_total == 10
    with pytest.raises(TypeError, match="text_pair must be a str or None, got bytes"):
        model.encode("a", b"b")
