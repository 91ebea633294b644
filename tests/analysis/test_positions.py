"""Tests for attnref.analysis.positions: hand-computed examples, properties,
and the seed notes' code (ported to NumPy here) as the oracle for the
seed-faithful metrics."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from attnref import analysis
from attnref.analysis import positions as P
from attnref.analysis.tokens import self_attention
from attnref.testing.maps import random_attention_maps

@st.composite
def maps(draw, leading=(), max_len=6, masked=True, square=False):
    length = draw(st.integers(1, max_len))
    n_keys = length if square else draw(st.integers(1, max_len))
    fraction = draw(st.sampled_from([1.0, 0.6, 0.3])) if masked else 1.0
    return random_attention_maps(draw(st.integers(0, 2**32 - 1)), leading + (length, n_keys), fraction)


def causal_uniform(length):
    """Each query i attends uniformly to keys 0..i."""
    weights = np.tril(np.ones((length, length)))
    return weights / weights.sum(-1, keepdims=True)


def previous_token_head(length):
    """Row 0 on itself, every other row on the previous key."""
    return np.eye(length, k=-1) + np.eye(length)[0] * (np.arange(length) == 0)[:, None]


# --- the seed notes' code, ported to NumPy (attention-weights-and-vectors.md,
#     "Positional Attention Patterns") ------------------------------------------

def seed_compute_attention_locality(attention_weights):
    seq_len = attention_weights.shape[-1]
    positions = np.arange(seq_len)
    distance_matrix = np.abs(positions[None, :] - positions[:, None]).astype(float)
    weighted_distance = (attention_weights * distance_matrix).sum() / attention_weights.sum()
    max_distance = seq_len / 2
    return 1 - (weighted_distance / max_distance)


def seed_analyze_positional_attention_patterns(attention_weights):
    position_attention = attention_weights.mean(axis=0)  # mean over queries
    return {
        "first_token_bias": position_attention[0],
        "last_token_bias": position_attention[-1],
        "middle_attention": position_attention[1:-1].mean(),
        "attention_locality": seed_compute_attention_locality(attention_weights),
        "attention_spread": position_attention.std(ddof=1),  # torch.std is unbiased
    }


def loop_relative_position_profile(weights):
    """Mass per offset j - i, summed with a double loop, over non-empty rows."""
    length, n_keys = weights.shape
    profile = np.zeros(length + n_keys - 1)
    for i in range(length):
        for j in range(n_keys):
            profile[j - i + length - 1] += weights[i, j]
    return profile / np.sum(weights.sum(-1) > 0)


PER_MAP = [P.attention_locality, P.mean_attention_distance, P.previous_token_score,
           P.next_token_score, P.diagonal_score,
           lambda w: P.positional_bias(w).attention_spread,
           lambda w: P.relative_position_profile(w).profile]


@pytest.mark.parametrize("metric", PER_MAP)
@settings(max_examples=25)  # a structural check, repeated for every metric
@given(stack=maps(leading=(2, 3)))
def test_leading_dims_give_the_per_map_values(metric, stack):
    table = metric(stack)
    for layer in range(2):
        for head in range(3):
            np.testing.assert_allclose(table[layer, head], metric(stack[layer, head]),
                                       rtol=1e-12, atol=1e-15, equal_nan=True)


def test_maps_without_mass_give_nan():
    empty = np.zeros((3, 3))
    for metric in PER_MAP:
        assert np.all(np.isnan(metric(empty)))
    bias = P.positional_bias(empty)
    assert np.isnan(bias.first_token_bias) and np.isnan(bias.middle_attention)


# --- positional bias ----------------------------------------------------------------

def test_positional_bias_hand_example():
    uniform = P.positional_bias(np.full((4, 4), 0.25))
    assert uniform.to_dict() == pytest.approx({
        "first_token_bias": 0.25, "last_token_bias": 0.25, "middle_attention": 0.25,
        "attention_spread": 0.0})
    weights = np.array([[1.0, 0.0, 0.0],
                        [0.5, 0.5, 0.0],
                        [0.0, 0.0, 0.0]])  # empty row: left out of the mean
    bias = P.positional_bias(weights)
    # p = column sums / 2 non-empty rows = [0.75, 0.25, 0]
    assert bias.first_token_bias == pytest.approx(0.75)
    assert bias.last_token_bias == pytest.approx(0.0)
    assert bias.middle_attention == pytest.approx(0.25)
    # std of [0.75, 0.25, 0] with ddof=1: mean 1/3, squares 0.1736+0.0069+0.1111 = 0.2917, / 2
    assert bias.attention_spread == pytest.approx(np.sqrt(0.2916667 / 2), rel=1e-6)


def test_positional_bias_short_rows():
    two_keys = P.positional_bias(np.array([[0.3, 0.7]]))
    assert np.isnan(two_keys.middle_attention)  # no interior key
    assert two_keys.attention_spread == pytest.approx(np.std([0.3, 0.7], ddof=1))
    one_key = P.positional_bias(np.ones((2, 1)))
    assert one_key.first_token_bias == one_key.last_token_bias == 1.0
    assert np.isnan(one_key.attention_spread)


@given(seed=st.integers(0, 2**32 - 1), length=st.integers(3, 8))
def test_positional_bias_matches_the_notes(seed, length):
    # Square maps: the notes' locality cannot broadcast its S x S distances to L != S.
    weights = random_attention_maps(seed, (length, length))  # no empty rows
    notes = seed_analyze_positional_attention_patterns(weights)
    result = P.positional_bias(weights).to_dict()
    result["attention_locality"] = P.attention_locality(weights)
    assert result == pytest.approx(notes, rel=1e-12, abs=1e-15)


@given(weights=maps(masked=False))
def test_positional_bias_reverses_with_the_keys(weights):
    # Reversing the keys swaps first and last and keeps middle and spread.
    bias, reversed_bias = P.positional_bias(weights), P.positional_bias(weights[:, ::-1])
    assert reversed_bias.first_token_bias == pytest.approx(bias.last_token_bias)
    assert reversed_bias.last_token_bias == pytest.approx(bias.first_token_bias)
    np.testing.assert_allclose(reversed_bias.middle_attention, bias.middle_attention,
                               equal_nan=True)
    np.testing.assert_allclose(reversed_bias.attention_spread, bias.attention_spread,
                               atol=1e-15, equal_nan=True)


# --- locality and distance -------------------------------------------------------------

def test_attention_locality_hand_example():
    assert P.attention_locality(np.eye(4)) == 1.0  # distance 0
    # previous-token head, S = 4: distances 0, 1, 1, 1 -> mean 3/4; 1 - 0.75 / 2 = 0.625
    assert P.attention_locality(previous_token_head(4)) == pytest.approx(0.625)
    # every query on the farthest key of S = 2 (anti-diagonal): 1 - 1 / 1 = 0
    assert P.attention_locality(np.eye(2)[::-1]) == 0.0
    # all on the last key, S = 3: distances 2, 1, 0 -> mean 1; 1 - 1 / 1.5 = 1/3
    assert P.attention_locality(np.tile([0.0, 0.0, 1.0], (3, 1))) == pytest.approx(1 / 3)


def test_attention_locality_on_rectangular_maps_uses_top_left_positions():
    # L = 1, S = 3: query 0 on key 2, distance 2; 1 - 2 / 1.5 = -1/3 (below 0)
    assert P.attention_locality(np.array([[0.0, 0.0, 1.0]])) == pytest.approx(-1 / 3)


@given(seed=st.integers(0, 2**32 - 1), length=st.integers(1, 8),
       fraction=st.sampled_from([1.0, 0.5]))
def test_attention_locality_matches_the_notes(seed, length, fraction):
    weights = random_attention_maps(seed, (length, length), fraction)
    if weights.sum() > 0:
        assert P.attention_locality(weights) == pytest.approx(
            seed_compute_attention_locality(weights), rel=1e-12, abs=1e-15)


@given(weights=maps())
def test_attention_locality_bounds(weights):
    n_keys = weights.shape[-1]
    value = P.attention_locality(weights)
    if np.isfinite(value):
        assert 1 - 2 * (max(weights.shape) - 1) / n_keys - 1e-12 <= value <= 1 + 1e-12


def test_locality_of_uniform_maps():
    # Causal uniform: row i has mean distance i/2, pooled mean (S-1)/4,
    # so the seed score is 1 - (S-1)/(2S) = 1/2 + 1/(2S).
    assert P.attention_locality(causal_uniform(300)) == pytest.approx(0.5 + 1 / 600)
    # Bidirectional uniform: mean |i - j| = (S^2 - 1)/(3S), score 1/3 + 2/(3 S^2).
    assert P.attention_locality(np.full((300, 300), 1 / 300)) == pytest.approx(
        1 / 3 + 2 / (3 * 300**2))
    # Causal sink (every query on key 0): mean distance (S-1)/2, score 1/S.
    sink = np.zeros((300, 300))
    sink[:, 0] = 1.0
    assert P.attention_locality(sink) == pytest.approx(1 / 300)


def test_mean_attention_distance_hand_example():
    # previous-token head: row 0 distance 0, rows 1..3 distance 1 -> 3/4
    assert P.mean_attention_distance(previous_token_head(4)) == pytest.approx(0.75)
    # causal uniform, L = 3: rows give 0, (0+1)/2, (0+1+2)/3 = 1 -> mean 0.5
    assert P.mean_attention_distance(causal_uniform(3)) == pytest.approx(0.5)
    weights = np.array([[0.0, 1.0], [0.0, 0.0]])  # empty row skipped
    assert P.mean_attention_distance(weights) == 1.0


@given(weights=maps(square=True))
def test_mean_attention_distance_is_symmetric_under_reversal(weights):
    # Reversing both axes of a square map keeps every |i - j|.
    np.testing.assert_allclose(P.mean_attention_distance(weights[::-1, ::-1]),
                               P.mean_attention_distance(weights), equal_nan=True)


@given(weights=maps())
def test_mean_attention_distance_is_the_profile_mean_of_abs_offset(weights):
    profile = P.relative_position_profile(weights)
    expected = np.sum(np.abs(profile.offsets) * profile.profile)
    np.testing.assert_allclose(P.mean_attention_distance(weights), expected,
                               rtol=1e-12, atol=1e-15, equal_nan=True)


# --- relative position profile -------------------------------------------------------------

def test_relative_position_profile_hand_example():
    weights = np.array([[0.5, 0.5, 0.0],
                        [0.2, 0.3, 0.5]])  # L = 2, S = 3: offsets -1..2
    profile = P.relative_position_profile(weights)
    np.testing.assert_array_equal(profile.offsets, [-1, 0, 1, 2])
    # offset -1: w10 = 0.2; 0: w00 + w11 = 0.8; 1: w01 + w12 = 1.0; 2: w02 = 0; / 2 rows
    np.testing.assert_allclose(profile.profile, [0.1, 0.4, 0.5, 0.0])
    assert profile.to_dict()["offsets"] == [-1, 0, 1, 2]


@given(weights=maps())
def test_relative_position_profile_matches_a_double_loop_and_sums_to_one(weights):
    profile = P.relative_position_profile(weights).profile
    assert profile.shape == (sum(weights.shape) - 1,)
    if np.any(weights.sum(-1) > 0):
        np.testing.assert_allclose(profile, loop_relative_position_profile(weights), atol=1e-15)
        assert profile.sum() == pytest.approx(1.0)


# --- previous / next / diagonal -------------------------------------------------------------

def test_offset_scores_hand_example():
    weights = np.array([[0.6, 0.4, 0.0],
                        [0.1, 0.2, 0.7],
                        [0.3, 0.5, 0.2]])
    assert P.previous_token_score(weights) == pytest.approx((0.1 + 0.5) / 2)  # w10, w21
    assert P.next_token_score(weights) == pytest.approx((0.4 + 0.7) / 2)      # w01, w12
    assert P.diagonal_score(weights) == pytest.approx((0.6 + 0.2 + 0.2) / 3)  # w00, w11, w22
    assert P.previous_token_score(previous_token_head(5)) == 1.0
    assert P.next_token_score(causal_uniform(4)) == 0.0
    assert np.isnan(P.previous_token_score(np.ones((1, 3)) / 3))  # L = 1: no row has a previous key
    assert np.isnan(P.next_token_score(np.ones((3, 1))))          # S = 1: no next key


def test_offset_scores_skip_empty_rows_and_use_top_left_positions():
    weights = np.array([[1.0, 0.0],
                        [0.0, 0.0],   # empty: skipped
                        [0.0, 1.0]])  # L = 3 > S = 2: row 2's previous key is key 1
    assert P.previous_token_score(weights) == 1.0
    assert P.diagonal_score(weights) == 1.0  # rows 0 and 1 have a diagonal key; row 1 is empty


@given(weights=maps(square=True, masked=False))
def test_next_token_is_previous_token_of_the_reversed_map(weights):
    reversed_map = weights[::-1, ::-1]
    np.testing.assert_allclose(P.previous_token_score(reversed_map), P.next_token_score(weights),
                               equal_nan=True)
    with analysis.skip_distribution_check():  # the transpose's rows are columns: any sums
        transposed = P.previous_token_score(weights.T)
    np.testing.assert_allclose(transposed, P.next_token_score(weights), equal_nan=True)


@given(weights=maps())
def test_diagonal_score_is_the_mean_self_attention(weights):
    diagonal = self_attention(weights)
    expected = np.nan if np.all(np.isnan(diagonal)) else np.nanmean(diagonal)
    np.testing.assert_allclose(P.diagonal_score(weights), expected, equal_nan=True)


@given(weights=maps())
def test_offset_scores_lie_in_unit_interval(weights):
    for score in (P.previous_token_score, P.next_token_score, P.diagonal_score):
        value = score(weights)
        assert np.isnan(value) or 0 <= value <= 1 + 1e-12


def test_is_causal_per_map():
    causal = np.tril(np.ones((4, 4))) / np.arange(1, 5)[:, None]
    full = np.full((4, 4), 0.25)
    np.testing.assert_array_equal(P.is_causal(np.stack([causal, full])), [True, False])
    assert not P.is_causal(np.full((2, 3), 1 / 3))
    assert P.is_causal(np.ones((1, 1)))
    assert analysis.is_causal is P.is_causal
