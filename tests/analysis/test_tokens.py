"""Tests for attnref.analysis.tokens: hand-computed examples, properties, and
the seed notes' own code (ported to NumPy here, loops and all) as the oracle
for the seed-faithful modes."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from attnref import analysis
from attnref.analysis import tokens as T
from attnref.testing.maps import random_attention_maps

EPS_SEED = 1e-10  # the notes' epsilon in compute_attention_entropy

@st.composite
def maps(draw, leading=(), max_len=6, masked=True):
    """A stack of attention maps (leading..., L, S), possibly with masked keys
    and fully masked rows."""
    length = draw(st.integers(1, max_len))
    n_keys = draw(st.integers(1, max_len))
    fraction = draw(st.sampled_from([1.0, 0.6, 0.3])) if masked else 1.0
    return random_attention_maps(draw(st.integers(0, 2**32 - 1)), leading + (length, n_keys), fraction)


# --- the seed notes' code, ported to NumPy (attention-weights-and-vectors.md) ---

def seed_compute_attention_entropy(weights):
    """compute_attention_entropy: weights + 1e-10, then -sum w log w."""
    weights = weights + 1e-10
    return float(-np.sum(weights * np.log(weights)))


def seed_interpret_attention_weights(attention_weights, tokens):
    """interpret_attention_weights, with torch.topk as a stable descending sort."""
    seq_len = len(tokens)
    interpretations = {}
    for i, query_token in enumerate(tokens):
        outgoing_weights = attention_weights[i, :]
        top = np.argsort(-outgoing_weights, kind="stable")[:min(5, seq_len)]
        top_tokens = [(tokens[idx], float(outgoing_weights[idx])) for idx in top]
        interpretations[query_token] = {
            "attends_to": top_tokens,
            "attention_entropy": seed_compute_attention_entropy(outgoing_weights),
            "self_attention": float(outgoing_weights[i]),
        }
    return interpretations


def seed_compute_attention_sparsity(attention_weights, threshold=0.1):
    return float((attention_weights < threshold).astype(float).mean())


def seed_analyze_content_function_attention(attention_weights, tokens, pos_tags):
    content_pos = {"NOUN", "VERB", "ADJ", "ADV"}
    function_pos = {"DET", "PREP", "CONJ", "PRON"}
    content_indices = [i for i, pos in enumerate(pos_tags) if pos in content_pos]
    function_indices = [i for i, pos in enumerate(pos_tags) if pos in function_pos]
    content_attention = attention_weights[:, content_indices].sum()
    function_attention = attention_weights[:, function_indices].sum()
    total_attention = content_attention + function_attention
    with np.errstate(invalid="ignore"):  # the notes divide 0 by 0 when neither class is seen
        return {
            "content_attention_ratio": content_attention / total_attention,
            "function_attention_ratio": function_attention / total_attention,
            "content_bias": content_attention > function_attention,
        }


def seed_analyze_attention_flow_incoming(layer_attention, token_idx):
    return layer_attention[:, token_idx].mean()


# --- shared properties -------------------------------------------------------

# Means over query rows of a per-row quantity: the order of the rows is irrelevant.
ROW_ORDER_FREE = [
    T.mean_entropy,
    lambda w: T.mean_entropy(w, normalize=True),
    T.confidence,
    T.sparsity,
    T.sink_score,
]
PER_MAP = ROW_ORDER_FREE + [lambda w: T.confidence(w, exclude=[0])]
PER_ROW = [T.entropy, lambda w: T.entropy(w, seed_epsilon=1e-10), T.effective_support,
           T.self_attention]


@pytest.mark.parametrize("metric", PER_MAP + PER_ROW + [T.received_attention])
@settings(max_examples=25)  # a structural check, repeated for every metric
@given(stack=maps(leading=(2, 3)))
def test_leading_dims_give_the_per_map_values(metric, stack):
    # (layers, heads, L, S) in one call equals each map on its own.
    table = metric(stack)
    for layer in range(2):
        for head in range(3):
            np.testing.assert_array_equal(table[layer, head], metric(stack[layer, head]))


@pytest.mark.parametrize("metric", ROW_ORDER_FREE)
@settings(max_examples=25)  # a structural check, repeated for every metric
@given(weights=maps())
def test_per_map_means_ignore_query_order(metric, weights):
    order = np.random.default_rng(weights.size).permutation(weights.shape[0])
    np.testing.assert_allclose(metric(weights[order]), metric(weights), equal_nan=True)


def test_empty_rows_are_nan_and_skipped():
    weights = np.array([[0.5, 0.5], [0.0, 0.0]])
    assert np.isnan(T.entropy(weights)[1])
    assert np.isnan(T.effective_support(weights)[1])
    assert np.isnan(T.self_attention(weights)[1])
    assert T.mean_entropy(weights) == pytest.approx(math.log(2))  # the empty row is skipped
    assert T.confidence(weights) == pytest.approx(0.5)
    assert T.sparsity(weights) == 0.0
    assert T.sink_score(weights) == pytest.approx(0.5)
    all_empty = np.zeros((3, 3))
    for metric in PER_MAP:
        assert np.isnan(metric(all_empty))


# --- entropy -----------------------------------------------------------------

def test_entropy_hand_example():
    weights = np.array([[0.5, 0.5, 0.0, 0.0],      # log 2, normalised by log 2 -> 1
                        [1.0, 0.0, 0.0, 0.0],      # one-hot -> 0 (one visible key)
                        [0.25, 0.25, 0.25, 0.25],  # log 4 -> 1
                        [0.0, 0.0, 0.0, 0.0]])     # no visible key -> NaN
    np.testing.assert_allclose(T.entropy(weights), [math.log(2), 0.0, math.log(4), np.nan])
    np.testing.assert_allclose(T.entropy(weights, normalize=True), [1.0, 0.0, 1.0, np.nan])
    assert str(T.entropy(weights)[1]) == "0.0"  # not -0.0
    # (log 2 + 0 + log 4) / 3 = log 2; the empty row is skipped
    assert T.mean_entropy(weights) == pytest.approx(math.log(2))


def test_entropy_of_a_float32_stack_holds_one_float64_map_at_a_time():
    """Memory stays proportionate (issue 13: 1,506 words took 1.1 GB): the
    entropy of (layers, H, T, T) float32 weights allocates one float64 array of
    that shape (x log x) and a bool mask, not float64 copies of the input."""
    import tracemalloc
    rng = np.random.default_rng(0)
    weights = rng.random((2, 4, 128, 128)).astype(np.float32)
    weights /= weights.sum(-1, keepdims=True)
    expected = -(weights.astype(np.float64) * np.log(weights.astype(np.float64))).sum(-1)
    tracemalloc.start()
    try:
        entropy = T.entropy(weights)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_allclose(entropy, expected, rtol=1e-12)
    assert peak < 1.5 * 8 * weights.size          # the float64 map and the mask: 9 bytes/weight


def test_entropy_seed_epsilon_matches_the_notes():
    weights = random_attention_maps(1, (7, 9), visible_fraction=0.5)
    expected = [seed_compute_attention_entropy(row) for row in weights]
    got = T.entropy(weights, seed_epsilon=EPS_SEED)
    non_empty = weights.sum(-1) > 0
    np.testing.assert_allclose(got[non_empty], np.array(expected)[non_empty], rtol=1e-12, atol=0)
    assert np.all(np.isnan(got[~non_empty]))


def test_seed_epsilon_bias_on_a_one_hot_row():
    # Exact entropy is 0. The notes' form gives -(1+e)log(1+e) - 3 e log e
    # ~= -e + 3 e log(1/e) = 1e-10 * (3 * 23.02585 - 1) = 6.8078e-9.
    row = np.array([[1.0, 0.0, 0.0, 0.0]])
    assert T.entropy(row)[0] == 0.0
    expected = -(1 + EPS_SEED) * math.log1p(EPS_SEED) - 3 * EPS_SEED * math.log(EPS_SEED)
    assert T.entropy(row, seed_epsilon=EPS_SEED)[0] == pytest.approx(expected, rel=1e-9)
    assert expected == pytest.approx(6.8078e-9, rel=1e-4)


@given(weights=maps())
def test_entropy_bounds_and_key_permutation(weights):
    entropy_per_row = T.entropy(weights)
    visible = (weights > 0).sum(-1)
    non_empty = visible > 0
    assert np.all(entropy_per_row[non_empty] >= 0)
    assert np.all(entropy_per_row[non_empty] <= np.log(visible[non_empty]) + 1e-12)
    normalized = T.entropy(weights, normalize=True)[non_empty]
    assert np.all((normalized >= 0) & (normalized <= 1 + 1e-12))
    keys = np.random.default_rng(weights.size).permutation(weights.shape[-1])
    np.testing.assert_allclose(T.entropy(weights[:, keys]), entropy_per_row, atol=1e-12)


def test_entropy_argument_errors():
    with pytest.raises(ValueError, match="seed_epsilon"):
        T.entropy(np.eye(2), normalize=True, seed_epsilon=1e-10)
    with pytest.raises(ValueError, match="seed_epsilon"):
        T.entropy(np.eye(2), seed_epsilon=0.0)
    with pytest.raises(ValueError, match="weights"):
        T.entropy(np.ones(3))
    with pytest.raises(TypeError, match="weights"):
        T.entropy(np.array([["a"]]))


@given(weights=maps())
def test_mean_entropy_is_the_nan_skipping_row_mean(weights):
    entropy_per_row = T.entropy(weights)
    if np.all(np.isnan(entropy_per_row)):
        assert np.isnan(T.mean_entropy(weights))
    else:
        assert T.mean_entropy(weights) == pytest.approx(np.nanmean(entropy_per_row))


# --- effective support ---------------------------------------------------------

def test_effective_support_hand_example():
    weights = np.array([[1 / 3, 1 / 3, 1 / 3, 0.0],  # uniform over 3 visible keys -> 3
                        [0.0, 1.0, 0.0, 0.0]])       # one-hot -> 1
    np.testing.assert_allclose(T.effective_support(weights), [3.0, 1.0])


@given(weights=maps())
def test_effective_support_lies_between_one_and_visible_keys(weights):
    support = T.effective_support(weights)
    visible = (weights > 0).sum(-1)
    non_empty = visible > 0
    assert np.all(support[non_empty] >= 1 - 1e-12)
    assert np.all(support[non_empty] <= visible[non_empty] * (1 + 1e-12))


# --- confidence ----------------------------------------------------------------

def test_confidence_hand_example():
    weights = np.array([[0.7, 0.3],
                        [0.4, 0.6]])
    assert T.confidence(weights) == pytest.approx((0.7 + 0.6) / 2)
    # exclude position 1: key 1 leaves the max (row 0 -> 0.7) and row 1 leaves the mean.
    assert T.confidence(weights, exclude=[1]) == pytest.approx(0.7)
    assert T.confidence(weights, exclude=np.array([False, True])) == pytest.approx(0.7)
    assert T.confidence(weights, exclude=[-1]) == pytest.approx(0.7)
    # exclude position 0: row 1's max over key 1 is 0.6; row 0 is dropped.
    assert T.confidence(weights, exclude=[0]) == pytest.approx(0.6)


def test_confidence_row_with_all_mass_on_excluded_keys_scores_zero():
    weights = np.array([[0.0, 0.0, 1.0],  # everything on the excluded [SEP]
                        [0.0, 0.5, 0.5],  # max over keys 0, 1 -> 0.5
                        [0.2, 0.2, 0.6]])  # row 2 itself excluded
    assert T.confidence(weights, exclude=[2]) == pytest.approx((0.0 + 0.5) / 2)


@given(weights=maps(masked=False))
def test_confidence_bounds_and_key_permutation(weights):
    # A softmax row over S keys has its maximum in [1/S, 1].
    value = T.confidence(weights)
    assert 1 / weights.shape[-1] - 1e-12 <= value <= 1 + 1e-12
    keys = np.random.default_rng(weights.size).permutation(weights.shape[-1])
    assert T.confidence(weights[:, keys]) == pytest.approx(value)


def test_confidence_exclude_errors():
    with pytest.raises(ValueError, match="exclude"):
        T.confidence(np.eye(3), exclude=np.array([True, False]))
    with pytest.raises(TypeError, match="exclude"):
        T.confidence(np.eye(3), exclude=[0.5])
    with pytest.raises(ValueError, match="exclude"):
        T.confidence(np.eye(3), exclude=[3])


# --- sparsity ------------------------------------------------------------------

def test_sparsity_hand_example():
    weights = np.array([[0.05, 0.95],   # one of two below 0.1 -> 1/2
                        [0.5, 0.5]])    # none -> 0
    assert T.sparsity(weights) == pytest.approx(0.25)
    assert T.sparsity(weights, threshold=0.6) == pytest.approx((0.5 + 1.0) / 2)


@given(seed=st.integers(0, 2**32 - 1), threshold=st.sampled_from([0.05, 0.1, 0.3]))
def test_sparsity_matches_the_notes(seed, threshold):
    weights = random_attention_maps(seed, (5, 7), visible_fraction=0.7)
    weights = weights[weights.sum(-1) > 0]  # the notes have no empty-row rule
    if weights.size:
        assert T.sparsity(weights, threshold) == pytest.approx(
            seed_compute_attention_sparsity(weights, threshold))


@given(weights=maps())
def test_sparsity_bounds_and_key_permutation(weights):
    value = T.sparsity(weights)
    if not np.isnan(value):
        assert 0 <= value <= 1
    keys = np.random.default_rng(weights.size).permutation(weights.shape[-1])
    np.testing.assert_allclose(T.sparsity(weights[:, keys]), value, equal_nan=True)


# --- self attention / received attention ---------------------------------------------

def test_self_attention_hand_example_and_rectangular_maps():
    square = np.array([[0.9, 0.1], [0.3, 0.7]])
    np.testing.assert_allclose(T.self_attention(square), [0.9, 0.7])
    tall = np.array([[0.9, 0.1], [0.3, 0.7], [0.5, 0.5]])  # L=3 > S=2: row 2 has no key 2
    np.testing.assert_allclose(T.self_attention(tall), [0.9, 0.7, np.nan])
    wide = np.array([[0.2, 0.3, 0.5]])  # L=1 < S=3: top-left diagonal, w_00
    np.testing.assert_allclose(T.self_attention(wide), [0.2])


@given(weights=maps())
def test_self_attention_is_equivariant_under_a_joint_permutation(weights):
    size = min(weights.shape)
    weights = weights[:size, :size]  # the first keys only: rows need not sum to 1
    order = np.random.default_rng(weights.size).permutation(size)
    permuted = weights[order][:, order]
    with analysis.skip_distribution_check():
        np.testing.assert_array_equal(T.self_attention(permuted), T.self_attention(weights)[order])


def test_received_attention_hand_example():
    weights = np.array([[0.5, 0.5, 0.0],
                        [0.2, 0.2, 0.6],
                        [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(T.received_attention(weights), [0.7, 0.7, 0.6])


@given(weights=maps())
def test_received_attention_matches_the_notes_flow_and_sums_to_rows(weights):
    received = T.received_attention(weights)
    length = weights.shape[0]
    incoming = [seed_analyze_attention_flow_incoming(weights, j) for j in range(weights.shape[1])]
    np.testing.assert_allclose(received / length, incoming, atol=1e-15)
    assert received.sum() == pytest.approx(np.sum(weights.sum(-1) > 0))


# --- sink score -------------------------------------------------------------------

def test_sink_score_hand_example():
    weights = np.array([[1.0, 0.0, 0.0],
                        [0.5, 0.5, 0.0],
                        [0.2, 0.3, 0.5]])
    assert T.sink_score(weights) == pytest.approx((1.0 + 0.5 + 0.2) / 3)
    assert T.sink_score(weights, k=2) == pytest.approx((1.0 + 1.0 + 0.5) / 3)
    assert T.sink_score(np.full((4, 5), 0.2), k=2) == pytest.approx(2 / 5)  # uniform: k/S


@given(weights=maps(masked=False))
def test_sink_score_grows_with_k_to_one(weights):
    scores = [T.sink_score(weights, k=k) for k in range(1, weights.shape[-1] + 1)]
    assert np.all(np.diff(scores) >= -1e-12)
    assert scores[-1] == pytest.approx(1.0)


def test_sink_score_k_errors():
    for bad_k in (0, 4, True, 1.5):
        with pytest.raises(ValueError, match="k must"):
            T.sink_score(np.eye(3), k=bad_k)


# --- top attended / interpret weights ------------------------------------------------

def test_top_attended_hand_example():
    weights = np.array([[0.1, 0.6, 0.3],
                        [0.5, 0.0, 0.5]])  # tie: the lower index first
    top = T.top_attended(weights, k=2, tokens=["a", "b", "c"])
    np.testing.assert_array_equal(top.indices, [[1, 2], [0, 2]])
    np.testing.assert_allclose(top.weights, [[0.6, 0.3], [0.5, 0.5]])
    assert top.tokens.tolist() == [["b", "c"], ["a", "c"]]
    assert T.top_attended(weights, k=10).indices.shape == (2, 3)  # k clamps to S
    assert T.top_attended(weights).tokens is None
    assert T.top_attended(weights, k=1).to_dict()["indices"] == [[1], [0]]


@given(weights=maps(leading=(2,)), k=st.integers(1, 7))
def test_top_attended_weights_are_the_sorted_row_tops(weights, k):
    top = T.top_attended(weights, k=k)
    expected = -np.sort(-weights, axis=-1)[..., :min(k, weights.shape[-1])]
    np.testing.assert_array_equal(top.weights, expected)
    np.testing.assert_array_equal(np.take_along_axis(weights, top.indices, -1), top.weights)


def test_top_attended_errors():
    with pytest.raises(ValueError, match="k must"):
        T.top_attended(np.eye(2), k=0)
    with pytest.raises(ValueError, match="tokens"):
        T.top_attended(np.eye(2), tokens=["only one"])


def test_interpret_weights_keeps_repeated_tokens():
    # "the cat the": the notes' dict keeps one "the" record; here every position has one.
    weights = np.array([[1.0, 0.0, 0.0],
                        [0.5, 0.5, 0.0],
                        [0.2, 0.3, 0.5]])
    tokens = ["the", "cat", "the"]
    records = T.interpret_weights(weights, tokens, k=2)
    assert len(seed_interpret_attention_weights(weights, tokens)) == 2
    assert [(r.position, r.token) for r in records] == [(0, "the"), (1, "cat"), (2, "the")]
    assert records[0].attends_to == [(0, "the", 1.0)]  # masked keys (weight 0) are not listed
    assert records[1].attends_to == [(0, "the", 0.5), (1, "cat", 0.5)]
    assert records[2].attends_to == [(2, "the", 0.5), (1, "cat", 0.3)]
    assert records[2].self_attention == 0.5
    assert records[1].entropy == pytest.approx(math.log(2))
    assert records[2].to_dict() == {
        "position": 2, "token": "the", "attends_to": [[2, "the", 0.5], [1, "cat", 0.3]],
        "entropy": pytest.approx(
            -(0.2 * math.log(0.2) + 0.3 * math.log(0.3) + 0.5 * math.log(0.5))),
        "self_attention": 0.5}


@given(seed=st.integers(0, 2**32 - 1), length=st.integers(1, 8))
def test_interpret_weights_matches_the_notes_on_distinct_tokens(seed, length):
    weights = random_attention_maps(seed, (length, length))
    tokens = [f"t{i}" for i in range(length)]
    notes = seed_interpret_attention_weights(weights, tokens)
    for record in T.interpret_weights(weights, tokens):
        expected = notes[record.token]
        assert [(token, weight) for _, token, weight in record.attends_to] == expected["attends_to"]
        assert record.self_attention == expected["self_attention"]
        # The notes' epsilon shifts the entropy by less than S * 2.4e-9.
        assert record.entropy == pytest.approx(expected["attention_entropy"], abs=length * 2.4e-9)


def test_interpret_weights_needs_one_square_map():
    with pytest.raises(ValueError, match="one square"):
        T.interpret_weights(np.ones((2, 2, 2)) / 2, ["a", "b"])
    with pytest.raises(ValueError, match="one square"):
        T.interpret_weights(np.ones((2, 3)) / 3, ["a", "b", "c"])
    with pytest.raises(ValueError, match="tokens"):
        T.interpret_weights(np.eye(2), ["a"])


# --- function words ---------------------------------------------------------------

def test_function_word_mask_english_hand_example():
    tokens = ["The", "cat", "##s", "sat", "on", "THE", "mat", "because", "it", "was", "\u2581of",
              "\u0120and", "don't", "."]
    expected = [True, False, False, False, True, True, False, True, True, True, True,
                True, True, False]
    assert T.function_word_mask(tokens).tolist() == expected


def test_function_word_mask_portuguese_hand_example():
    tokens = ["O", "gato", "perseguiu", "o", "rato", "porque", "estava", "com", "fome", "no",
              "jardim", "da", "casa", "ao", "Pelo", "À", "##s", "Naquele", "dele", "é"]
    expected = [True, False, False, True, False, True, True, True, False, True,
                False, True, False, True, True, True, False, True, True, True]
    assert T.function_word_mask(tokens, lang="pt").tolist() == expected
    # NFD input ("a" + combining grave) is normalised before the lookup.
    assert T.function_word_mask(["a\u0300s"], lang="pt").tolist() == [True]


@given(lang=st.sampled_from(["en", "pt"]), data=st.data())
def test_function_words_match_in_any_case_but_never_as_continuations(lang, data):
    word = data.draw(st.sampled_from(sorted(T.FUNCTION_WORDS[lang])))
    mask = T.function_word_mask([word, word.upper(), word.title(), "##" + word], lang=lang)
    assert mask.tolist() == [True, True, True, False]


def test_function_word_mask_unknown_language():
    with pytest.raises(ValueError, match="lang"):
        T.function_word_mask(["the"], lang="fr")


# --- special tokens ---------------------------------------------------------------

def test_special_token_attention_hand_example():
    tokens = ["[CLS]", "a", ",", "b", "[SEP]"]
    weights = np.full((5, 5), 0.2)  # uniform: every key gets 0.2 of every row
    result = T.special_token_attention(weights, tokens)
    assert result.by_special["[CLS]"] == pytest.approx(0.2)
    assert result.by_special["[SEP]"] == pytest.approx(0.2)
    assert result.special == pytest.approx(0.4)
    assert result.punctuation == pytest.approx(0.2)  # ","
    assert result.total == pytest.approx(0.6)
    no_punctuation = T.special_token_attention(weights, tokens, punctuation=False)
    assert no_punctuation.punctuation is None
    assert no_punctuation.total == pytest.approx(0.4)
    assert set(no_punctuation.to_dict()) == {"by_special", "special", "punctuation", "total"}


def test_special_token_attention_counts_each_special_string_over_all_its_positions():
    tokens = ["[CLS]", "x", "[SEP]", "y", "[SEP]", "...", "##!"]
    weights = np.array([[0.1, 0.1, 0.3, 0.1, 0.2, 0.1, 0.1]])
    result = T.special_token_attention(weights, tokens)
    assert result.by_special["[SEP]"] == pytest.approx(0.5)   # 0.3 + 0.2
    assert result.punctuation == pytest.approx(0.2)           # "..." and "##!"
    assert result.total == pytest.approx(0.8)


@given(weights=maps(masked=False), data=st.data())
def test_special_token_attention_bounds_and_key_permutation(weights, data):
    pool = ["[CLS]", "[SEP]", ".", "word", "##s"]
    tokens = data.draw(st.lists(st.sampled_from(pool), min_size=weights.shape[-1],
                                max_size=weights.shape[-1]))
    result = T.special_token_attention(weights, tokens)
    assert 0 <= result.total <= 1 + 1e-12
    keys = np.random.default_rng(weights.size).permutation(weights.shape[-1])
    permuted = T.special_token_attention(weights[:, keys], [tokens[j] for j in keys])
    assert permuted.total == pytest.approx(result.total)
    assert permuted.special == pytest.approx(result.special)


def test_special_token_attention_keeps_leading_dims():
    stack = random_attention_maps(3, (2, 3, 4, 4))
    tokens = ["[CLS]", "a", ".", "[SEP]"]
    table = T.special_token_attention(stack, tokens)
    assert table.special.shape == (2, 3)
    single = T.special_token_attention(stack[1, 2], tokens)
    assert table.special[1, 2] == pytest.approx(single.special)


# --- content vs function ------------------------------------------------------------

def test_content_function_attention_hand_example():
    weights = np.array([[0.6, 0.3, 0.1],
                        [0.2, 0.2, 0.6]])
    tags = ["NOUN", "DET", "PUNCT"]
    result = T.content_function_attention(weights, tags)
    # content mass 0.8, function mass 0.5 (PUNCT in neither)
    assert result.content_attention_ratio == pytest.approx(0.8 / 1.3)
    assert result.function_attention_ratio == pytest.approx(0.5 / 1.3)
    assert bool(result.content_bias)
    assert result.content_share == pytest.approx(0.4)    # 0.8 over 2 rows
    assert result.function_share == pytest.approx(0.25)
    # Universal Dependencies v2 tags the notes' sets miss, lower case accepted.
    extended = T.content_function_attention(weights, ["propn", "ADP", "AUX"])
    assert extended.content_attention_ratio == pytest.approx(0.8 / 2.0)


def test_content_function_attention_without_either_class_is_nan():
    result = T.content_function_attention(np.eye(2), ["PUNCT", "X"])
    assert np.isnan(result.content_attention_ratio) and np.isnan(result.function_attention_ratio)
    assert not bool(result.content_bias)


@given(seed=st.integers(0, 2**32 - 1), data=st.data())
def test_content_function_attention_matches_the_notes(seed, data):
    tags = data.draw(st.lists(st.sampled_from(["NOUN", "VERB", "ADJ", "ADV", "DET", "PREP", "CONJ",
                                               "PRON", "PUNCT"]), min_size=6, max_size=6))
    weights = random_attention_maps(seed, (4, 6), visible_fraction=0.7)
    notes = seed_analyze_content_function_attention(weights, None, tags)
    result = T.content_function_attention(weights, tags)
    if np.isfinite(notes["content_attention_ratio"]):
        assert result.content_attention_ratio == pytest.approx(notes["content_attention_ratio"])
        assert result.function_attention_ratio == pytest.approx(notes["function_attention_ratio"])
        assert bool(result.content_bias) == bool(notes["content_bias"])


@given(stack=maps(leading=(2,), masked=False), data=st.data())
def test_content_function_ratios_sum_to_one_and_keep_leading_dims(stack, data):
    tags = data.draw(st.lists(st.sampled_from(["NOUN", "DET", "PUNCT", "PROPN", "CCONJ"]),
                              min_size=stack.shape[-1], max_size=stack.shape[-1]))
    result = T.content_function_attention(stack, tags)
    assert result.content_attention_ratio.shape == (2,)
    finite = np.isfinite(result.content_attention_ratio)
    np.testing.assert_allclose((result.content_attention_ratio
                                + result.function_attention_ratio)[finite], 1.0)
    single = T.content_function_attention(stack[1], tags)
    np.testing.assert_allclose(result.content_share[1], single.content_share)


def test_decoded_byte_level_tokens_keep_their_word_class():
    # a decoder's tokens decoded one by one carry their leading space
    from attnref.analysis.tokens import content_word_mask, function_word_mask
    tokens = [" the", "\u0120the", " cat", "cat", " ."]
    np.testing.assert_array_equal(function_word_mask(tokens), [True, True, False, False, False])
    np.testing.assert_array_equal(content_word_mask(tokens), [False, False, True, True, False])
