"""Induction, duplicate-token and previous-token scores on hand-built maps,
and the repeated-random-tokens probe."""
import numpy as np
import pytest

from attnref import analysis
from attnref.analysis.circuits import (duplicate_token_score, induction_head_scores,
                                       induction_probe_ids, induction_score)


def stripe_map(length, offset):
    """(T, T) causal map: row i puts all its weight on key i + offset when
    that key exists, else on key 0."""
    weights = np.zeros((length, length))
    for i in range(length):
        j = i + offset
        weights[i, j if 0 <= j <= i else 0] = 1.0
    return weights


def probe(period=6, seed=0):
    return induction_probe_ids(np.random.default_rng(seed), 100, period, prefix=(99,))


def test_probe_ids_are_prefix_then_a_block_repeated_without_inner_repeats():
    ids = induction_probe_ids(np.random.default_rng(3), 50, 20, exclude=(0, 1), prefix=(2,))
    assert ids.dtype == np.int64 and ids.shape == (41,)
    assert ids[0] == 2
    np.testing.assert_array_equal(ids[1:21], ids[21:])
    assert len(set(ids[1:21].tolist())) == 20
    assert not set(ids[1:].tolist()) & {0, 1, 2}


def test_probe_ids_depend_on_the_rng_alone():
    first = induction_probe_ids(np.random.default_rng(7), 1000, 10)
    again = induction_probe_ids(np.random.default_rng(7), 1000, 10)
    other = induction_probe_ids(np.random.default_rng(8), 1000, 10)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("kwargs, match", [
    ({"vocab_size": 5, "length": 6}, "length must be at most the 5 ids"),
    ({"vocab_size": 10, "length": 5, "exclude": range(6)}, "at most the 4 ids"),
    ({"vocab_size": 10, "length": 1}, "length must be an integer >= 2"),
    ({"vocab_size": 0, "length": 2}, "vocab_size must be an integer >= 1"),
    ({"vocab_size": 10, "length": 2, "prefix": (10,)}, r"prefix must hold ids in \[0, 10\)"),
    ({"vocab_size": 10, "length": 2, "exclude": (1.5,)}, "exclude must be a sequence of integer"),
])
def test_probe_ids_reject_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        induction_probe_ids(np.random.default_rng(0), **kwargs)
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
        induction_probe_ids(0, 10, 2)


def test_each_score_finds_its_own_stripe_on_the_probe():
    period = 6
    ids = probe(period)
    length = ids.size                                           # 1 + 2 * 6
    induction = stripe_map(length, 1 - period)
    duplicate = stripe_map(length, -period)
    previous = stripe_map(length, -1)
    weights = np.stack([induction, duplicate, previous])        # (3, T, T)
    np.testing.assert_allclose(induction_score(weights, ids), [1, 0, 0])
    np.testing.assert_allclose(duplicate_token_score(weights, ids), [0, 1, 0])
    scores = induction_head_scores(weights[None], ids)          # (layers=1, H=3)
    # rows without their stripe key park on key 0, which is row 1's previous token
    np.testing.assert_allclose(scores.previous_token, [[1 / 12, 1 / 12, 1]])
    np.testing.assert_array_equal(scores.ranking[0], [0, 0])
    assert scores.top(1)[0] == pytest.approx({"layer": 0, "head": 0, "induction": 1.0,
                                              "duplicate_token": 0.0, "previous_token": 1 / 12})
    assert scores.to_dict()["ranking"][0] == [0, 0]


def test_induction_score_is_the_stripe_mean_over_the_second_copy():
    # TransformerLens's induction_score: the diagonal at offset 1 - P, averaged
    period = 5
    ids = probe(period, seed=4)
    rng = np.random.default_rng(1)
    scores = np.where(np.tril(np.ones((ids.size,) * 2)) > 0,
                      rng.standard_normal((3, ids.size, ids.size)), -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    second = np.arange(ids.size - period, ids.size)
    np.testing.assert_allclose(induction_score(weights, ids),
                               weights[:, second, second - period + 1].mean(-1))
    np.testing.assert_allclose(duplicate_token_score(weights, ids),
                               weights[:, second, second - period].mean(-1))


def test_scores_are_nan_without_repeats_and_reject_non_square_maps():
    weights = stripe_map(4, -1)
    assert np.isnan(induction_score(weights, [1, 2, 3, 4]))
    assert np.isnan(duplicate_token_score(weights, [1, 2, 3, 4]))
    with pytest.raises(ValueError, match="square"):
        induction_score(np.full((2, 3), 1 / 3), [1, 2, 3])
    with pytest.raises(ValueError, match="tokens must have 4 entries"):
        induction_score(weights, [1, 2, 3])
    with pytest.raises(ValueError, match="rows must sum to 1"):
        duplicate_token_score(weights * 2, [1, 2, 1, 2])


def test_exported_from_the_package():
    assert analysis.induction_head_scores is induction_head_scores
    assert "induction_probe_ids" in analysis.__all__
