"""Tests for attnref.analysis.heads: hand-computed examples, properties, and
oracles ported to NumPy from the seed notes (``classify_attention_pattern``),
TransformerLens (``head_detector.py``) and Clark et al. (``head_distances.py``)."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from attnref.analysis.diagnostics import diagnose
from attnref.analysis.heads import (HEAD_PATTERNS, HEAD_TYPE_DESCRIPTIONS, HEAD_TYPES,
                                    classify_head, detect_head, head_diversity, head_importance,
                                    head_output_norms, head_similarity, head_specialization,
                                    head_taxonomy)
from attnref.analysis.positions import attention_locality
from attnref.testing.maps import random_attention_maps

seeds = st.integers(0, 2**32 - 1)
lengths = st.integers(1, 7)

def uniform(length):
    return np.full((length, length), 1 / length)


def previous_token_map(length):
    """Row 0 on itself, every other row on the previous position."""
    weights = np.eye(length, k=-1)
    weights[0, 0] = 1
    return weights


def first_column_map(length):
    weights = np.zeros((length, length))
    weights[:, 0] = 1
    return weights


# --- classify_head -------------------------------------------------------------------------

def seed_locality(attention):
    """compute_attention_locality (attention-weights-and-vectors.md), in NumPy."""
    seq_len = attention.shape[-1]
    distance = np.abs(np.arange(seq_len)[None, :] - np.arange(seq_len)[:, None]).astype(float)
    weighted_distance = (attention * distance).sum() / attention.sum()
    return 1 - weighted_distance / (seq_len / 2)


def seed_classify(attention):
    """classify_attention_pattern with compute_attention_entropy, in NumPy (2-D map)."""
    diagonal_strength = np.diag(attention).mean()
    locality = seed_locality(attention)
    shifted = attention.flatten() + 1e-10
    entropy = -np.sum(shifted * np.log(shifted))
    if diagonal_strength > 0.5:
        label = "self_attention_dominant"
    elif locality > 0.7:
        label = "local_attention"
    elif entropy > 3.0:
        label = "distributed_attention"
    else:
        label = "focused_attention"
    return label, diagonal_strength, locality, entropy


EXAMPLE_MAPS = np.stack([np.eye(8), previous_token_map(8), uniform(8), first_column_map(8)])


def test_classify_head_hand_examples():
    result = classify_head(EXAMPLE_MAPS)
    assert result.pattern.tolist() == [
        "self_attention_dominant", "local_attention", "distributed_attention", "focused_attention"]
    # Diagonals: 8/8, 1/8 (row 0 only), 8 * (1/8) / 8, 1/8 (row 0 only).
    np.testing.assert_allclose(result.diagonal_strength, [1, 1 / 8, 1 / 8, 1 / 8])
    # Mean distances 0, 7/8, 2 * sum_d (8 - d) d / 64 = 2.625, (0 + ... + 7) / 8 = 3.5; S/2 = 4.
    np.testing.assert_allclose(result.locality, [1, 1 - 7 / 32, 1 - 2.625 / 4, 1 - 3.5 / 4])
    # The flattened uniform map: 64 * (1/8) log 8 = 8 log 8 = 16.64 nats (sum of 8 rows).
    np.testing.assert_allclose(result.entropy[2], 8 * np.log(8), rtol=1e-8)

    rows = classify_head(EXAMPLE_MAPS, mode="rows")
    # Per query the uniform map has only log 8 = 2.08 nats < 3: not "distributed".
    assert rows.pattern.tolist() == [
        "self_attention_dominant", "local_attention", "focused_attention", "focused_attention"]
    np.testing.assert_allclose(rows.entropy, [0, 0, np.log(8), 0], atol=1e-12)


@given(seeds, st.integers(2, 7))
def test_classify_head_seed_mode_reproduces_the_notes(seed, length):
    rng = np.random.default_rng(seed)
    maps = np.concatenate([random_attention_maps(rng, (3, length, length), scale=3.0),
                           random_attention_maps(rng, (2, length, length), causal=True, scale=3.0),
                           np.eye(length)[None], previous_token_map(length)[None]])
    result = classify_head(maps)
    for index, attention in enumerate(maps):
        label, diagonal_strength, locality, entropy = seed_classify(attention)
        assert result.pattern[index] == label
        np.testing.assert_allclose(result.diagonal_strength[index], diagonal_strength, rtol=1e-12)
        np.testing.assert_allclose(result.locality[index], locality, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(result.entropy[index], entropy, rtol=1e-12, atol=1e-15)


@given(seeds, lengths, st.sampled_from(["seed", "rows"]))
def test_classify_head_keeps_leading_dims(seed, length, mode):
    maps = random_attention_maps(np.random.default_rng(seed), (2, 3, length, length + 1), scale=3.0)
    result = classify_head(maps, mode=mode)
    assert result.pattern.shape == (2, 3)
    for layer in range(2):
        for head in range(3):
            alone = classify_head(maps[layer, head], mode=mode)
            assert result.pattern[layer, head] == alone.pattern
            for field in ("diagonal_strength", "locality", "entropy"):
                np.testing.assert_allclose(getattr(result, field)[layer, head],
                                           getattr(alone, field))


def test_classify_head_rows_mode_skips_masked_rows():
    weights = np.eye(4)
    weights[1] = 0  # a query with no visible key
    result = classify_head(weights, mode="rows")
    assert result.diagonal_strength == 1  # 3 visible rows, all on the diagonal
    assert classify_head(weights).diagonal_strength == 0.75  # the notes count it as 0
    assert result.to_dict()["pattern"] == "self_attention_dominant"


def test_classify_head_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mode"):
        classify_head(np.eye(3), mode="columns")


# --- head_taxonomy -------------------------------------------------------------------------

CLS_SENTENCE = ["[CLS]", "the", "cat", "chased", "the", "mouse", "because", "it", "was", "hungry",
            ".", "[SEP]"]                                  # content: cat chased mouse hungry


def next_token_map(length):
    """Every row on the next position, the last one on itself."""
    weights = np.eye(length, k=1)
    weights[-1, -1] = 1
    return weights


def offset_map(length, offset):
    """Every row i on key (i + offset) mod length."""
    return np.eye(length)[(np.arange(length) + offset) % length]


def window_map(length, window):
    """Every row uniform over the keys within ``window`` positions."""
    band = np.abs(np.subtract.outer(np.arange(length), np.arange(length))) <= window
    return band / band.sum(-1, keepdims=True)


def columns_map(length, columns):
    """Every row uniform over ``columns``."""
    weights = np.zeros((length, length))
    weights[:, columns] = 1 / len(columns)
    return weights


def leaky(weights, leak=0.1):
    """``weights`` with ``leak`` of every row spread over all keys, as softmax
    leaves it: every key stays visible, so a row over a few keys is not
    uniform over its visible keys."""
    return (1 - leak) * weights + leak / weights.shape[-1]


def test_head_taxonomy_gives_each_constructed_map_its_type():
    T = len(CLS_SENTENCE)
    content = [2, 3, 5, 9]
    maps = {"previous-token": previous_token_map(T), "next-token": next_token_map(T),
            "self": np.eye(T), "sink": columns_map(T, [0, 11]), "broad": uniform(T),
            "content-focused": columns_map(T, content), "local": window_map(T, 2),
            "other": offset_map(T, 5)}
    result = head_taxonomy(leaky(np.stack(list(maps.values()))), CLS_SENTENCE)
    assert result.type.tolist() == list(maps) == list(HEAD_TYPES)
    assert set(HEAD_TYPE_DESCRIPTIONS) == set(HEAD_TYPES)
    # the evidence behind each verdict, by hand: 0.9 on the target, 0.1 / 12 on every key
    leak = 0.1 / T
    np.testing.assert_allclose(result.score[:6], [0.9 + leak, 0.9 + leak, 0.9 + leak,
                                                  0.9 + 3 * leak,      # [CLS], [SEP] and "."
                                                  1.0, 0.9 + 4 * leak])
    # the window rows hold 3, 4 or 5 keys (edges, next to edges, middle)
    np.testing.assert_allclose(result.score[6], 0.9 + leak * (2 * 3 + 2 * 4 + 8 * 5) / T)
    assert np.isnan(result.score[7])
    np.testing.assert_allclose(result.content_lift[5], (0.9 + 4 * leak) / (4 / 12))
    # a window row spreads over 3 to 5 keys: no single offset holds a majority
    assert result.previous_token[6] < 0.5 and result.diagonal[6] < 0.5
    assert result.thresholds == {"share": 0.5, "uniform_entropy": 0.9, "lift": 1.5, "window": 2}


def test_a_head_even_over_its_only_visible_keys_is_broad():
    # exact zeros read as masked keys, as in diagnose's uniform check: each row is even
    # over the two keys it can see
    assert head_taxonomy(columns_map(12, [0, 11]), CLS_SENTENCE).type == "broad"
    assert head_taxonomy(np.tril(np.ones((4, 4))) / np.arange(1, 5)[:, None]).type == "broad"


def test_head_taxonomy_without_tokens_reads_the_first_key_as_the_sink():
    result = head_taxonomy(leaky(np.stack([first_column_map(8), columns_map(8, [2, 3, 5])])))
    assert result.type.tolist() == ["sink", "other"]
    assert np.isnan(result.content).all()       # no tokens: content words unknown
    # with tokens the sink is [CLS]/[SEP]/punctuation wherever they stand
    tokens = ["a", "b", ".", "[SEP]", "c", "d", "e", "f"]
    assert head_taxonomy(leaky(columns_map(8, [2, 3])), tokens).type == "sink"
    assert head_taxonomy(leaky(columns_map(8, [2, 3]))).type == "other"


def test_head_taxonomy_ties_go_to_the_earlier_type():
    # rows alternate next / previous, the last one two back: 0.5 each, exactly
    weights = np.zeros((5, 5))
    weights[[0, 1, 2, 3, 4], [1, 0, 3, 2, 2]] = 1
    result = head_taxonomy(weights)
    assert result.previous_token == result.next_token == 0.5
    assert result.type == "previous-token"
    # [CLS] [SEP] on themselves: the diagonal and the specials share all of it
    both = head_taxonomy(np.eye(2), ["[CLS]", "[SEP]"])
    assert both.diagonal == both.sink == 1 and both.type == "self"
    # row 1 on [CLS] is both its previous token and the sink
    overlap = head_taxonomy(np.array([[1.0, 0.0], [1.0, 0.0]]))
    assert overlap.previous_token == overlap.sink == 1 and overlap.type == "previous-token"
    # float32 rounding does not break a tie: the sink share a hair above still loses
    rounded = np.array([[1.0, 0.0], [1.0 - 1e-7, 1e-7]], dtype=np.float32)
    result = head_taxonomy(rounded, ["[CLS]", "[SEP]"])
    assert result.sink > result.previous_token and result.type == "previous-token"


def test_head_taxonomy_on_one_to_three_tokens():
    assert head_taxonomy(np.ones((1, 1))).type == "self"
    assert head_taxonomy(np.ones((1, 1)), ["[CLS]"]).type == "self"
    assert head_taxonomy(uniform(2)).type == "broad"
    assert head_taxonomy(uniform(3), ["[CLS]", "hi", "[SEP]"]).type == "broad"
    assert head_taxonomy(previous_token_map(3)).type == "previous-token"
    assert head_taxonomy(next_token_map(2)).type == "next-token"
    assert head_taxonomy(first_column_map(3), ["[CLS]", "hi", "[SEP]"]).type == "sink"
    # no visible key at all: nothing to type
    empty = head_taxonomy(np.zeros((3, 3)))
    assert empty.type == "other" and np.isnan(empty.score) and np.isnan(empty.sink)


@given(seeds, st.integers(1, 5))
def test_head_taxonomy_is_never_local_when_the_window_is_most_of_the_keys(seed, length):
    maps = random_attention_maps(np.random.default_rng(seed), (6, length, length), scale=4.0)
    assert "local" not in head_taxonomy(np.concatenate([maps, window_map(length, 2)[None]])).type


@given(seeds, st.integers(1, 7), st.booleans())
def test_head_taxonomy_keeps_leading_dims(seed, length, causal):
    maps = random_attention_maps(np.random.default_rng(seed), (2, 3, length, length),
                                 causal=causal, scale=3.0)
    tokens = ["[CLS]", "cat", "the", ",", "runs", "[SEP]", "mouse"][:length]
    result = head_taxonomy(maps, tokens)
    assert result.type.shape == result.score.shape == (2, 3)
    assert set(result.type.ravel()) <= set(HEAD_TYPES)
    for layer in range(2):
        for head in range(3):
            alone = head_taxonomy(maps[layer, head], tokens)
            assert result.type[layer, head] == alone.type
            np.testing.assert_allclose(result.score[layer, head], alone.score)


@given(seeds, st.integers(2, 12))
def test_head_taxonomy_agrees_with_diagnose(seed, length):
    """broad <=> diagnose's uniform finding; sink => diagnose's sink finding."""
    rng = np.random.default_rng(seed)
    maps = np.concatenate([random_attention_maps(rng, (2, 4, length, length), scale=scale)
                           for scale in (0.1, 3.0)])                  # near-uniform and peaked
    tokens = (CLS_SENTENCE * 2)[:length]
    types = head_taxonomy(maps, tokens).type
    found = {(f.layer, f.head, f.kind) for f in diagnose(maps, tokens).findings}
    for layer, head in np.ndindex(types.shape):
        assert (types[layer, head] == "broad") == ((layer, head, "uniform") in found)
        if types[layer, head] == "sink":
            assert (layer, head, "sink") in found


def test_head_taxonomy_types_a_short_uniform_head_broad_where_the_seed_rule_cannot():
    # ln 12 = 2.48 < 3 nats: classify_head's rows rule calls the uniform head focused
    assert classify_head(uniform(12), mode="rows").pattern == "focused_attention"
    assert head_taxonomy(uniform(12)).type == "broad"


@pytest.mark.parametrize("options,message", [
    ({"share": 0}, r"share must be a number in \(0, 1\], got 0"),
    ({"share": 1.5}, r"share must be a number in \(0, 1\], got 1.5"),
    ({"share": "0.5"}, r"share must be a number in \(0, 1\], got '0.5'"),
    ({"uniform_entropy": True}, r"uniform_entropy must be a number in \(0, 1\], got True"),
    ({"lift": 0}, "lift must be a positive number, got 0"),
    ({"window": 0}, "window must be an integer >= 1, got 0"),
    ({"window": 1.5}, "window must be an integer >= 1, got 1.5"),
    ({"tokens": ["a", "b"]}, "tokens must have 3 entries"),
    ({"lang": "fr"}, r"lang must be one of \['en', 'pt'\], got 'fr'"),
])
def test_head_taxonomy_rejects_bad_arguments(options, message):
    with pytest.raises(ValueError, match=message):
        head_taxonomy(uniform(3), **options)


# --- head_specialization -------------------------------------------------------------------

SENTENCE = ["the", "cat", "sat"]
ARCS = [(1, 0), (2, 1)]  # (head, dependent): det cat -> the, nsubj sat -> cat
SENTENCE_MAP = np.array([[0.2, 0.7, 0.1],
                         [0.1, 0.3, 0.6],
                         [0.3, 0.5, 0.2]])


def test_head_specialization_hand_example():
    embeddings = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    table = head_specialization(SENTENCE_MAP, tokens=SENTENCE, arcs=ARCS, embeddings=embeddings)
    # Dependents "the" -> head "cat" (0.7) and "cat" -> "sat" (0.6), over 2 rows of mass 1.
    np.testing.assert_allclose(table.syntactic_score, 0.65)
    # Only "the" is a function word: column 0 mean (0.2 + 0.1 + 0.3) / 3.
    np.testing.assert_allclose(table.function_word_bias, 0.2)
    cosine = np.array([[1, 0, 2**-0.5], [0, 1, 2**-0.5], [2**-0.5, 2**-0.5, 1]])
    np.testing.assert_allclose(table.semantic_score,
                               np.corrcoef(cosine.ravel(), SENTENCE_MAP.ravel())[0, 1])
    np.testing.assert_allclose(table.locality, attention_locality(SENTENCE_MAP))
    assert table.pattern == classify_head(SENTENCE_MAP).pattern

    # Heads attending to their dependents: "cat" -> "the" (0.1), "sat" -> "cat" (0.5).
    backwards = head_specialization(SENTENCE_MAP, arcs=ARCS, arc_direction="head_to_dependent")
    np.testing.assert_allclose(backwards.syntactic_score, 0.3)
    # Either way: rows 0, 1, 2 hold 0.7, 0.1 + 0.6, 0.5.
    both = head_specialization(SENTENCE_MAP, arcs=ARCS, arc_direction="both")
    np.testing.assert_allclose(both.syntactic_score, 1.9 / 3)


def test_head_specialization_pos_tags_and_missing_inputs():
    tagged = head_specialization(SENTENCE_MAP, tokens=["x", "y", "z"], pos_tags=["det", "NOUN", "VERB"])
    np.testing.assert_allclose(tagged.function_word_bias, 0.2)  # tags win over tokens
    bare = head_specialization(np.stack([SENTENCE_MAP, np.eye(3)]))
    for field in ("syntactic_score", "semantic_score", "function_word_bias"):
        assert getattr(bare, field).shape == (2,)
        assert np.isnan(getattr(bare, field)).all()
    assert np.isnan(head_specialization(SENTENCE_MAP, arcs=[]).syntactic_score)
    # SENTENCE_MAP: diagonal 0.7 / 3, locality 1 - 0.9 / 1.5 = 0.4, flattened entropy
    # 0.80 + 0.90 + 1.03 = 2.73 nats < 3.
    assert bare.to_dict()["pattern"] == ["focused_attention", "self_attention_dominant"]


@given(seeds, st.integers(2, 7))
def test_head_specialization_scores_follow_a_relabelling_of_positions(seed, length):
    rng = np.random.default_rng(seed)
    weights = random_attention_maps(rng, (2, length, length), scale=3.0)
    words = rng.choice(["the", "of", "cat", "dog", "and", "ran"], size=length).tolist()
    arcs = [(int(rng.integers(length)), dependent) for dependent in range(1, length)]
    embeddings = rng.normal(size=(length, 3))
    order = rng.permutation(length)
    position_of = np.argsort(order)  # new index of old position p
    table = head_specialization(weights, tokens=words, arcs=arcs, embeddings=embeddings)
    permuted = head_specialization(
        weights[:, order][:, :, order], tokens=[words[p] for p in order],
        arcs=[(position_of[h], position_of[d]) for h, d in arcs], embeddings=embeddings[order])
    for field in ("syntactic_score", "semantic_score", "function_word_bias"):
        np.testing.assert_allclose(getattr(permuted, field), getattr(table, field), atol=1e-12)
    assert np.all((table.syntactic_score >= 0) & (table.syntactic_score <= 1 + 1e-12))


def test_head_specialization_rejects_bad_arcs():
    with pytest.raises(ValueError, match="arcs"):
        head_specialization(SENTENCE_MAP, arcs=[(0, 3)])
    with pytest.raises(ValueError, match="arcs"):
        head_specialization(SENTENCE_MAP, arcs=[(0.5, 1)])
    with pytest.raises(ValueError, match="arc_direction"):
        head_specialization(SENTENCE_MAP, arcs=ARCS, arc_direction="up")
    with pytest.raises(ValueError, match="embeddings"):
        head_specialization(SENTENCE_MAP, embeddings=np.ones((2, 4)))


# --- detect_head ---------------------------------------------------------------------------

def tl_previous_token_pattern(tokens):
    """get_previous_token_head_detection_pattern, in NumPy."""
    length = len(tokens)
    pattern = np.zeros((length, length))
    pattern[1:, :-1] = np.eye(length - 1)
    return np.tril(pattern)


def tl_duplicate_token_pattern(tokens):
    """get_duplicate_token_head_detection_pattern, in NumPy."""
    token_pattern = np.tile(np.asarray(tokens), (len(tokens), 1))
    eq_mask = np.equal(token_pattern, token_pattern.T).astype(int)
    np.fill_diagonal(eq_mask, 0)
    return np.tril(eq_mask.astype(float))


def tl_induction_pattern(tokens):
    """get_induction_head_detection_pattern, in NumPy."""
    duplicate = tl_duplicate_token_pattern(tokens)
    shifted = np.roll(duplicate, shift=1, axis=1)
    result = np.concatenate([np.zeros((len(tokens), 1)), shifted[:, 1:]], axis=1)
    return np.tril(result)


TL_PATTERNS = {"previous_token": tl_previous_token_pattern,
               "duplicate_token": tl_duplicate_token_pattern,
               "induction": tl_induction_pattern}


def tl_score(attention, detection, exclude_bos, exclude_current_token, error_measure):
    """compute_head_attention_similarity_score, in NumPy."""
    attention = attention.copy()
    if error_measure == "mul":
        if exclude_bos:
            attention[:, 0] = 0
        if exclude_current_token:
            np.fill_diagonal(attention, 0)
        with np.errstate(invalid="ignore"):  # nothing kept: 0/0 = NaN, as in torch
            return (attention * detection).sum() / attention.sum()
    abs_diff = np.abs(attention - detection)
    assert (abs_diff - np.tril(abs_diff)).sum() == 0
    size = len(abs_diff)
    if exclude_bos:
        abs_diff[:, 0] = 0
    if exclude_current_token:
        np.fill_diagonal(abs_diff, 0)
    return 1 - round(float(abs_diff.mean() * size), 3)


BOS_SEQUENCE = [0, 5, 7, 5]
BOS_MAP = np.array([[1.0, 0.0, 0.0, 0.0],
                    [0.5, 0.5, 0.0, 0.0],
                    [0.2, 0.6, 0.2, 0.0],
                    [0.1, 0.2, 0.3, 0.4]])


def test_detect_head_hand_example():
    # Previous token: (1,0) + (2,1) + (3,2) = 0.5 + 0.6 + 0.3 over a total of 4.
    assert detect_head(BOS_MAP, "previous_token") == pytest.approx(1.4 / 4)
    # Duplicate: token 5 at 3 repeats position 1 -> A[3,1] = 0.2.
    assert detect_head(BOS_MAP, "duplicate_token", BOS_SEQUENCE) == pytest.approx(0.2 / 4)
    # Induction: after the earlier 5 (position 1) comes position 2 -> A[3,2] = 0.3.
    assert detect_head(BOS_MAP, "induction", BOS_SEQUENCE) == pytest.approx(0.3 / 4)
    # Without column 0 the kept mass is 4 - 1.8 = 2.2, and (1,0) drops out: 0.9 / 2.2.
    assert detect_head(BOS_MAP, "previous_token", exclude_bos=True) == pytest.approx(0.9 / 2.2)
    # Without the diagonal the kept mass is 4 - 2.1 = 1.9.
    assert detect_head(BOS_MAP, "previous_token", exclude_current_token=True) \
        == pytest.approx(1.4 / 1.9)
    # abs: row mismatches 1 + 1 + 0.8 + 1.4 = 4.2, / L = 1.05 -> 1 - 1.05.
    assert detect_head(BOS_MAP, "previous_token", error_measure="abs") == pytest.approx(-0.05)
    # A perfect previous-token head, row 0 aside (it can only attend to itself).
    assert detect_head(previous_token_map(5), "previous_token", exclude_bos=True) == 1
    pattern = tl_induction_pattern(BOS_SEQUENCE)
    assert detect_head(BOS_MAP, pattern) == detect_head(BOS_MAP, "induction", BOS_SEQUENCE)


@given(seeds, st.integers(2, 8), st.sampled_from(HEAD_PATTERNS), st.sampled_from(["mul", "abs"]),
       st.booleans(), st.booleans())
def test_detect_head_equals_transformer_lens(seed, length, name, error_measure, exclude_bos,
                                             exclude_current_token):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 3, size=length).tolist()  # small vocabulary: many repeats
    maps = random_attention_maps(rng, (2, 3, length, length), causal=True, scale=3.0)
    scores = detect_head(maps, name, tokens, error_measure=error_measure, exclude_bos=exclude_bos,
                         exclude_current_token=exclude_current_token)
    assert scores.shape == (2, 3)
    detection = TL_PATTERNS[name](tokens)
    for layer in range(2):
        for head in range(3):
            expected = tl_score(maps[layer, head], detection, exclude_bos,
                                exclude_current_token, error_measure)
            np.testing.assert_allclose(scores[layer, head], expected, rtol=1e-12, atol=1e-15)
    if error_measure == "mul":  # NaN where the exclusions leave no mass (L = 2, both on)
        finite = scores[np.isfinite(scores)]
        assert np.all((finite >= 0) & (finite <= 1 + 1e-12))
    else:
        # Row i mismatches by at most 1 + (ones in pattern row i).
        assert np.all((scores >= -detection.sum() / length - 0.0005) & (scores <= 1))
        exact = detect_head(maps, name, tokens, error_measure="abs", exclude_bos=exclude_bos,
                            exclude_current_token=exclude_current_token, decimals=None)
        assert np.all(np.abs(exact - scores) <= 0.0005 + 1e-12)


def test_detect_head_errors():
    with pytest.raises(ValueError, match="square"):
        detect_head(np.ones((2, 3)) / 3, "previous_token")
    with pytest.raises(ValueError, match="tokens"):
        detect_head(BOS_MAP, "induction")
    with pytest.raises(ValueError, match="pattern"):
        detect_head(BOS_MAP, "copy")
    with pytest.raises(ValueError, match="pattern"):
        detect_head(BOS_MAP, np.eye(3))
    with pytest.raises(ValueError, match="error_measure"):
        detect_head(BOS_MAP, "previous_token", error_measure="sq")


# --- head_similarity and head_diversity ----------------------------------------------------

def clark_head_distances(attns_flat):
    """The per-document loop of head_distances.py (clarkkev/attention-analysis), in NumPy:
    summed over tokens."""
    distances = np.zeros((len(attns_flat), len(attns_flat)))
    for head in range(len(attns_flat)):
        head_attns = np.expand_dims(attns_flat[head], 0)
        head_attns_smoothed = (0.001 / head_attns.shape[1]) + (head_attns * 0.999)
        attns_flat_smoothed = (0.001 / attns_flat.shape[1]) + (attns_flat * 0.999)
        m = (head_attns_smoothed + attns_flat_smoothed) / 2
        js = -head_attns_smoothed * np.log(m / head_attns_smoothed)
        js += -attns_flat_smoothed * np.log(m / attns_flat_smoothed)
        js /= 2
        distances[head] += js.sum(-1).sum(-1)
    return distances


OPPOSITE_HEADS = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])  # (H=2, L=1, S=2)


def test_head_similarity_hand_example():
    # Disjoint supports: JS = log 2 without smoothing.
    np.testing.assert_allclose(head_similarity(OPPOSITE_HEADS, smoothing=0),
                               [[0, np.log(2)], [np.log(2), 0]])
    # Smoothed rows (0.9995, 0.0005) and (0.0005, 0.9995), m = (0.5, 0.5):
    # 0.9995 log(0.9995 / 0.5) + 0.0005 log(0.0005 / 0.5) = 0.688846854...
    np.testing.assert_allclose(head_similarity(OPPOSITE_HEADS)[0, 1], 0.6888468543510129,
                               rtol=1e-12)


@given(seeds, st.integers(1, 4), st.integers(1, 6))
def test_head_similarity_equals_clark_et_al(seed, heads, length):
    maps = random_attention_maps(np.random.default_rng(seed), (heads, length, length), scale=3.0)
    # Clark et al. sum over the L tokens; head_similarity takes the mean.
    np.testing.assert_allclose(head_similarity(maps) * length, clark_head_distances(maps),
                               atol=1e-12)


@given(seeds, st.integers(1, 4), lengths, st.booleans())
def test_head_similarity_properties(seed, heads, length, causal):
    rng = np.random.default_rng(seed)
    maps = random_attention_maps(rng, (2, heads, length, length), causal=causal, scale=3.0)
    divergence = head_similarity(maps)
    assert divergence.shape == (2, heads, heads)
    np.testing.assert_allclose(divergence, np.swapaxes(divergence, -1, -2), atol=1e-15)
    assert np.all(np.diagonal(divergence, axis1=-2, axis2=-1) == 0)
    assert np.all((divergence >= 0) & (divergence <= np.log(2)))
    order = rng.permutation(heads)
    np.testing.assert_allclose(head_similarity(maps[:, order]), divergence[:, order][:, :, order],
                               atol=1e-15)
    np.testing.assert_allclose(head_similarity(maps[1]), divergence[1])
    diversity = head_diversity(maps)
    if heads == 1:
        assert np.isnan(diversity).all()
    else:
        off_diagonal = ~np.eye(heads, dtype=bool)
        np.testing.assert_allclose(diversity, divergence[:, off_diagonal].mean(axis=-1))
        np.testing.assert_allclose(head_diversity(maps[:, order]), diversity)
        assert np.all((diversity >= 0) & (diversity <= np.log(2)))


def test_head_similarity_skips_masked_rows():
    maps = random_attention_maps(np.random.default_rng(0), (3, 4, 4), scale=3.0)
    padded = np.concatenate([maps, np.zeros((3, 1, 4))], axis=1)  # a fifth, fully masked query
    np.testing.assert_allclose(head_similarity(padded), head_similarity(maps))


def test_head_diversity_hand_example():
    assert head_diversity(OPPOSITE_HEADS, smoothing=0) == pytest.approx(np.log(2))
    assert head_diversity(np.stack([uniform(3)] * 3)) == 0  # identical heads


# --- head_output_norms and head_importance -------------------------------------------------

def test_head_output_norms_hand_example():
    weights = np.array([[[0.5, 0.5], [1.0, 0.0]]])  # H=1, L=S=2
    values = np.array([[[3.0, 4.0], [0.0, 1.0]]])  # ||v_0|| = 5, ||v_1|| = 1
    norms = head_output_norms(weights, values)
    np.testing.assert_allclose(norms.per_head, [[[2.5, 0.5], [5.0, 0.0]]])
    np.testing.assert_allclose(norms.combined, [[2.5, 0.5], [5.0, 0.0]])

    # Two heads that W_O maps onto opposite directions cancel: the norm of the
    # sum is 0 while each head alone contributes 0.5.
    weights = np.full((2, 1, 1), 1.0)
    values = np.full((2, 1, 1), 0.5)
    w_o = np.array([[[1.0]], [[-1.0]]])  # (H=2, Dv=1, D=1)
    norms = head_output_norms(weights, values, w_o)
    np.testing.assert_allclose(norms.per_head, [[[0.5]], [[0.5]]])
    np.testing.assert_allclose(norms.combined, [[0.0]], atol=1e-15)


@given(seeds, st.integers(1, 3), lengths, lengths, st.booleans())
def test_head_output_norms_equal_the_explicit_vectors(seed, heads, length, keys, flat_w_o):
    rng = np.random.default_rng(seed)
    weights = random_attention_maps(rng, (2, heads, length, keys), scale=3.0)
    values = rng.normal(size=(2, heads, keys, 3))
    w_o = rng.normal(size=(heads, 3, 5))
    norms = head_output_norms(weights, values, w_o.reshape(heads * 3, 5) if flat_w_o else w_o)
    # Every alpha^h_ij f^h(x_j) spelled out: (2, H, L, S, D).
    pieces = weights[..., None] * np.einsum("bhsv,hvd->bhsd", values, w_o)[:, :, None]
    np.testing.assert_allclose(norms.per_head, np.linalg.norm(pieces, axis=-1), atol=1e-12)
    np.testing.assert_allclose(norms.combined, np.linalg.norm(pieces.sum(axis=1), axis=-1),
                               atol=1e-9)
    # The norm of the sum is at most the sum of the norms.
    assert np.all(norms.combined <= norms.per_head.sum(axis=1) + 1e-9)
    # Without W_O the heads stay in their own blocks: the combined vector is the concatenation.
    plain = head_output_norms(weights, values)
    concatenated = (weights[..., None] * values[:, :, None]).transpose(0, 2, 3, 1, 4)
    np.testing.assert_allclose(plain.combined,
                               np.linalg.norm(concatenated.reshape(2, length, keys, -1), axis=-1),
                               atol=1e-12)


def test_head_output_norms_shape_errors():
    weights = np.ones((2, 3, 3)) / 3
    with pytest.raises(ValueError, match="values"):
        head_output_norms(weights, np.ones((3, 3, 4)))
    with pytest.raises(ValueError, match="w_o"):
        head_output_norms(weights, np.ones((2, 3, 4)), np.ones((7, 5)))


def test_head_importance_hand_example():
    values = np.tile([[3.0, 4.0], [0.0, 1.0]], (2, 1, 1))  # both heads: ||v_0|| = 5, ||v_1|| = 1
    weights = np.stack([np.eye(2), np.eye(2)[::-1]])  # head 0 stays, head 1 swaps
    importance = head_importance(weights, values)
    # Head 1 moves ||v_1|| = 1 into query 0 and ||v_0|| = 5 into query 1: mean 3.
    np.testing.assert_allclose(importance.scores, [0.0, 3.0])
    assert importance.ranking.tolist() == [1, 0]


@given(seeds, st.integers(1, 4), st.integers(2, 6))
def test_head_importance_properties(seed, heads, length):
    rng = np.random.default_rng(seed)
    weights = random_attention_maps(rng, (2, heads, length, length), causal=True, scale=3.0)
    values = rng.normal(size=(2, heads, length, 3))
    importance = head_importance(weights, values)
    assert importance.scores.shape == importance.ranking.shape == (2, heads)
    assert np.all(importance.scores >= 0)
    ordered = np.take_along_axis(importance.scores, importance.ranking, axis=-1)
    assert np.all(np.diff(ordered, axis=-1) <= 0)
    # Scaling one head's value vectors by c scales its score by c alone.
    scaled = values.copy()
    scaled[:, 0] *= 3
    rescored = head_importance(weights, scaled).scores
    np.testing.assert_allclose(rescored[:, 0], 3 * importance.scores[:, 0], atol=1e-12)
    np.testing.assert_allclose(rescored[:, 1:], importance.scores[:, 1:], atol=1e-12)
    np.testing.assert_allclose(head_importance(weights[1], values[1]).scores, importance.scores[1])
    # A fully masked query is skipped, not averaged in as zero.
    padded = np.concatenate([weights, np.zeros((2, heads, 1, length))], axis=2)
    np.testing.assert_allclose(head_importance(padded, values).scores, importance.scores)


def test_head_taxonomy_causal_types_first_token_parking_as_sink():
    length = 6
    sink = np.zeros((length, length))
    sink[:, 0] = 0.8
    sink[0, 0] = 1.0
    for i in range(1, length):
        sink[i, 1:i + 1] = 0.2 / i
    tokens = ["Once", "upon", "a", "time", "there", "lived"]
    causal = head_taxonomy(sink, tokens, causal=True)
    assert causal.type == "sink" and causal.sink == pytest.approx(0.8)
    assert np.isnan(causal.next_token)                        # impossible under the mask
    assert head_taxonomy(sink, tokens).type != "sink"         # no [CLS]/[SEP]/punctuation
    with pytest.raises(TypeError, match="causal must be True or False"):
        head_taxonomy(sink, causal=1)


def test_head_taxonomy_causal_content_share_leaves_the_first_token_out():
    # rows 1..: 0.3 on the first token "dogs", 0.7 on "the" (key 1) once visible
    length = 5
    weights = np.zeros((length, length))
    weights[0, 0], weights[1, :2] = 1.0, (0.3, 0.7)
    weights[2:, 0], weights[2:, 1] = 0.3, 0.7
    tokens = ["dogs", "the", "cats", "mice", "birds"]
    causal = head_taxonomy(weights, tokens, causal=True)
    assert causal.content == pytest.approx(0.0)               # "the" is all it reads
    assert head_taxonomy(weights, tokens).content == pytest.approx((1 + 4 * 0.3) / 5)  # sink in
