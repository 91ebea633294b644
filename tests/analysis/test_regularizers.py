"""Tests for attnref.analysis.regularizers: hand-computed losses, every
gradient against central finite differences, the seed notes' code (ported to
NumPy here) as the oracle for the seed-faithful modes, and the capped-simplex
projection against a brute-force solver."""
import doctest
import itertools
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

from attnref import analysis
from attnref.analysis import regularizers as R
from attnref.numerics import softmax

FD_STEP = 1e-6
# Central differences have error O(h^2 * f''') plus rounding O(eps * f / h);
# with h = 1e-6, O(1) losses and scores in [-3, 3] both stay below 1e-7.
FD_TOLERANCE = 1e-7


def numeric_gradient(loss_of, scores):
    """Central finite differences of ``loss_of(scores)``; 0 at masked (-inf)
    entries, which cannot be perturbed."""
    gradient = np.zeros_like(scores)
    for index in zip(*np.nonzero(np.isfinite(scores))):
        step = np.zeros_like(scores)
        step[index] = FD_STEP
        gradient[index] = (loss_of(scores + step) - loss_of(scores - step)) / (2 * FD_STEP)
    return gradient


@st.composite
def score_arrays(draw, min_heads=None):
    """Scores (leading..., L, S) in [-3, 3] with some keys masked (-inf),
    possibly whole rows. ``min_heads`` forces a head dim of at least that size."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    leading = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    if min_heads is not None:
        leading += (draw(st.integers(min_heads, 3)),)
    shape = leading + (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    scores = rng.uniform(-3, 3, size=shape)
    masked = rng.random(shape) < draw(st.sampled_from([0.0, 0.3]))
    return np.where(masked, -np.inf, scores)


def check_gradient(regularizer, scores):
    result = regularizer(scores)
    assert result.grad.shape == scores.shape
    assert np.all(result.grad[np.isneginf(scores)] == 0)
    expected = numeric_gradient(lambda s: regularizer(s).loss, scores)
    np.testing.assert_allclose(result.grad, expected, rtol=0, atol=FD_TOLERANCE)


# --- the seed notes' code, ported to NumPy (attention-weights-and-vectors.md,
# "Attention Regularization" and "Attention Weight Clipping") ---

class SeedAttentionWeightRegularizer:
    def __init__(self, entropy_weight=0.1, sparsity_weight=0.1):
        self.entropy_weight = entropy_weight
        self.sparsity_weight = sparsity_weight

    def compute_regularization_loss(self, attention_weights):
        entropy_loss = self.entropy_regularization(attention_weights)
        sparsity_loss = self.sparsity_regularization(attention_weights)
        return self.entropy_weight * entropy_loss + self.sparsity_weight * sparsity_loss

    def entropy_regularization(self, attention_weights):
        probs = attention_weights + 1e-10
        entropy = -np.sum(probs * np.log(probs), axis=-1)
        seq_len = attention_weights.shape[-1]
        target_entropy = np.log(seq_len / 4.0)
        return np.mean((entropy - target_entropy) ** 2)

    def sparsity_regularization(self, attention_weights):
        return np.mean(np.abs(attention_weights))


def seed_clip_attention_weights(attention_weights, min_val=1e-6, max_val=0.8):
    clipped = np.clip(attention_weights, min_val, max_val)
    return clipped / clipped.sum(axis=-1, keepdims=True)


def test_docstring_examples_run():
    failures, tried = doctest.testmod(R)
    assert tried > 0 and failures == 0


# --- entropy_regularizer ---

def test_entropy_regularizer_by_hand():
    # Row [0, 0]: w = (1/2, 1/2), H = log 2, default target log(2/4) = -log 2,
    # loss = (2 log 2)^2; a uniform row is a stationary point of H.
    result = R.entropy_regularizer(scores=np.zeros((1, 2)))
    assert result.loss == pytest.approx((2 * math.log(2)) ** 2, rel=1e-14)
    np.testing.assert_array_equal(result.grad, 0.0)
    # Row [log 3, 0]: w = (3/4, 1/4), H = -(3/4 log 3/4 + 1/4 log 1/4) = 0.5623351,
    # target 0, loss = H^2; closed form grad_j = -2 H w_j (log w_j + H):
    # -2 * 0.5623351 * 0.75 * (-0.2876821 + 0.5623351) = -0.2316706, and its negative.
    result = R.entropy_regularizer(scores=np.array([[math.log(3), 0.0]]), target=0.0)
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert result.loss == pytest.approx(entropy ** 2, rel=1e-14)
    np.testing.assert_allclose(result.grad, [[-0.2316706, 0.2316706]], atol=1e-7)


@given(score_arrays(), st.sampled_from([None, 0.5]))
def test_entropy_regularizer_gradient_matches_finite_differences(scores, target):
    check_gradient(lambda s: R.entropy_regularizer(scores=s, target=target), scores)


@given(st.integers(0, 2**32 - 1))
def test_entropy_regularizer_matches_the_seed(seed):
    # The seed adds 1e-10 before the log; the values differ by ~1e-8 at most.
    scores = np.random.default_rng(seed).normal(scale=2.0, size=(2, 3, 5, 6))
    expected = SeedAttentionWeightRegularizer().entropy_regularization(softmax(scores))
    assert R.entropy_regularizer(scores=scores).loss == pytest.approx(expected, rel=1e-7)


def test_entropy_regularizer_mask_equals_minus_inf_and_skips_empty_rows(rng):
    scores = rng.normal(size=(3, 4))
    mask = np.array([True, True, False, True])
    with_mask = R.entropy_regularizer(scores=scores, mask=mask)
    with_inf = R.entropy_regularizer(scores=np.where(mask, scores, -np.inf))
    assert with_mask.loss == with_inf.loss
    np.testing.assert_array_equal(with_mask.grad, with_inf.grad)
    # A fully masked row changes neither the loss nor the other gradients.
    padded = np.vstack([scores, np.full((1, 4), -np.inf)])
    result, plain = R.entropy_regularizer(scores=padded), R.entropy_regularizer(scores=scores)
    assert result.loss == pytest.approx(plain.loss, rel=1e-15)
    np.testing.assert_allclose(result.grad[:3], plain.grad, rtol=1e-15)
    np.testing.assert_array_equal(result.grad[3], 0.0)
    assert math.isnan(R.entropy_regularizer(scores=np.full((2, 3), -np.inf)).loss)


@given(score_arrays())
def test_entropy_regularizer_ignores_row_shifts_and_leading_dims(scores):
    result = R.entropy_regularizer(scores=scores)
    shifted = R.entropy_regularizer(scores=scores + np.arange(scores.shape[-2])[:, None])
    assert shifted.loss == pytest.approx(result.loss, rel=1e-12, abs=1e-12, nan_ok=True)
    flat = R.entropy_regularizer(scores=scores.reshape((-1,) + scores.shape[-1:]))
    assert flat.loss == pytest.approx(result.loss, rel=1e-12, abs=1e-12, nan_ok=True)
    np.testing.assert_allclose(flat.grad.reshape(scores.shape), result.grad, atol=1e-15)
    # Gradients of a softmax input sum to 0 along each row.
    np.testing.assert_allclose(result.grad.sum(axis=-1), 0.0, atol=1e-15)


# --- sparsity_regularizer ---

def test_sparsity_regularizer_by_hand():
    one_hot = np.array([[0.0, -np.inf, -np.inf]])  # w = (1, 0, 0)
    uniform = np.zeros((1, 4))  # w = 1/4 each
    # lp: sum_j w_j^p; one-hot gives 1, uniform over 4 gives 4 * (1/4)^0.5 = 2.
    assert R.sparsity_regularizer(scores=one_hot, epsilon=0.0).loss == 1.0
    assert R.sparsity_regularizer(scores=uniform, epsilon=0.0).loss == pytest.approx(2.0, rel=1e-15)
    # p = 0.25: 4 * (1/4)^0.25 = 4^0.75 = 2.828427.
    assert R.sparsity_regularizer(scores=uniform, p=0.25, epsilon=0.0).loss == pytest.approx(
        4 ** 0.75, rel=1e-15)
    # entropy: log 4 for the uniform row, 0 for the one-hot one.
    assert R.sparsity_regularizer(scores=uniform, method="entropy").loss == pytest.approx(math.log(4))
    assert R.sparsity_regularizer(scores=one_hot, method="entropy").loss == 0.0
    # l1, the seed: mean |w| = 1/S whatever the scores, and gradient exactly 0.
    assert R.sparsity_regularizer(scores=uniform, method="l1").loss == 0.25


@given(score_arrays(), st.sampled_from([("lp", 0.5), ("lp", 0.3), ("entropy", 0.5)]))
def test_sparsity_regularizer_gradient_matches_finite_differences(scores, method_and_p):
    method, p = method_and_p
    check_gradient(lambda s: R.sparsity_regularizer(scores=s, method=method, p=p), scores)


@given(score_arrays())
def test_seed_l1_is_constant_with_zero_gradient(scores):
    weights = softmax(scores)
    result = R.sparsity_regularizer(scores=scores, method="l1")
    assert result.loss == SeedAttentionWeightRegularizer().sparsity_regularization(weights)
    np.testing.assert_array_equal(result.grad, 0.0)
    if np.all(np.isfinite(scores)):  # no masks: exactly the constant 1/S
        assert result.loss == pytest.approx(1 / scores.shape[-1], rel=1e-14)


@given(score_arrays())
def test_seed_total_loss_is_reproduced(scores):
    # The seed's compute_regularization_loss = 0.1 * entropy term + 0.1 * L1 term.
    scores = np.where(np.isfinite(scores), scores, 0.0)  # the seed has no masks
    expected = SeedAttentionWeightRegularizer().compute_regularization_loss(softmax(scores))
    total = (0.1 * R.entropy_regularizer(scores=scores).loss
             + 0.1 * R.sparsity_regularizer(scores=scores, method="l1").loss)
    assert total == pytest.approx(expected, rel=1e-7)


@given(score_arrays(), st.sampled_from([0.2, 0.5, 0.8]))
def test_lp_penalty_lies_between_one_hot_and_uniform(scores, p):
    for row in scores.reshape(-1, scores.shape[-1]):
        visible = np.count_nonzero(np.isfinite(row))
        if visible:
            value = R.sparsity_regularizer(scores=row[None], p=p, epsilon=0.0).loss
            assert 1 - 1e-12 <= value <= visible ** (1 - p) + 1e-12


@pytest.mark.parametrize("method", ["lp", "entropy"])
def test_a_gradient_step_sharpens_attention(rng, method):
    scores = rng.normal(size=(4, 6))
    result = R.sparsity_regularizer(scores=scores, method=method)
    stepped = scores - 0.5 * result.grad / np.abs(result.grad).max()
    assert R.sparsity_regularizer(scores=stepped, method=method).loss < result.loss
    assert np.all(softmax(stepped).max(-1) > softmax(scores).max(-1))


def test_sparsity_regularizer_rejects_bad_options():
    with pytest.raises(ValueError, match="method must be one of"):
        R.sparsity_regularizer(scores=np.zeros((2, 2)), method="l2")
    with pytest.raises(ValueError, match="p must lie in"):
        R.sparsity_regularizer(scores=np.zeros((2, 2)), p=1.0)
    with pytest.raises(ValueError, match="epsilon"):
        R.sparsity_regularizer(scores=np.zeros((2, 2)), epsilon=-1.0)


def test_scores_and_mask_are_validated():
    with pytest.raises(ValueError, match="finite or -inf"):
        R.entropy_regularizer(scores=np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="finite or -inf"):
        R.entropy_regularizer(scores=np.array([[0.0, np.inf]]))
    with pytest.raises(TypeError, match="mask must be a bool"):
        R.entropy_regularizer(scores=np.zeros((2, 2)), mask=np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"mask must broadcast to the scores shape \(2, 2\)"):
        R.entropy_regularizer(scores=np.zeros((2, 2)), mask=np.ones((3, 2), dtype=bool))
    with pytest.raises(ValueError, match="scores must have at least 2 dims"):
        R.entropy_regularizer(scores=np.zeros(3))
    with pytest.raises(ValueError, match=r"target must broadcast .* \(2,\), got shape \(3,\)"):
        R.entropy_regularizer(scores=np.zeros((2, 2)), target=np.zeros(3))


# --- head_diversity_regularizer ---

def test_head_diversity_regularizer_by_hand():
    # Head 0 uniform over 2 keys, head 1 all on key 0: A0 = (1/2, 1/2), A1 = (1, 0).
    scores = np.array([[[0.0, 0.0]], [[0.0, -np.inf]]])
    # cosine = (1/2) / (sqrt(1/2) * 1) = 1/sqrt 2; overlap = 1/2 * 1 = 1/2.
    assert R.head_diversity_regularizer(scores=scores).loss == pytest.approx(1 / math.sqrt(2))
    assert R.head_diversity_regularizer(scores=scores, method="overlap").loss == pytest.approx(0.5)
    # Identical heads: cosine 1. Disjoint heads: 0 for both methods.
    assert R.head_diversity_regularizer(scores=np.zeros((3, 2, 2))).loss == pytest.approx(1.0)
    disjoint = np.array([[[0.0, -np.inf]], [[-np.inf, 0.0]]])
    for method in R.DIVERSITY_METHODS:
        assert R.head_diversity_regularizer(scores=disjoint, method=method).loss == 0.0


@given(score_arrays(min_heads=2), st.sampled_from(R.DIVERSITY_METHODS))
def test_head_diversity_gradient_matches_finite_differences(scores, method):
    check_gradient(lambda s: R.head_diversity_regularizer(scores=s, method=method), scores)


@given(score_arrays(min_heads=2), st.sampled_from(R.DIVERSITY_METHODS))
def test_head_diversity_bounds_head_order_and_groups(scores, method):
    result = R.head_diversity_regularizer(scores=scores, method=method)
    assert -1e-12 <= result.loss <= 1 + 1e-12
    order = np.random.default_rng(0).permutation(scores.shape[-3])
    permuted = R.head_diversity_regularizer(scores=scores[..., order, :, :], method=method)
    assert permuted.loss == pytest.approx(result.loss, abs=1e-12)
    np.testing.assert_allclose(permuted.grad, result.grad[..., order, :, :], atol=1e-15)
    # The loss is the mean over head groups (one group per leading index).
    groups = scores.reshape((-1,) + scores.shape[-3:])
    per_group = [R.head_diversity_regularizer(scores=group, method=method).loss for group in groups]
    assert result.loss == pytest.approx(np.mean(per_group), abs=1e-12)


def test_head_diversity_needs_two_heads():
    with pytest.raises(ValueError, match="H >= 2 heads"):
        R.head_diversity_regularizer(scores=np.zeros((1, 3, 3)))
    with pytest.raises(ValueError, match="H >= 2 heads"):
        R.head_diversity_regularizer(scores=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="method must be one of"):
        R.head_diversity_regularizer(scores=np.zeros((2, 3, 3)), method="js")


# --- the weights input (the API: regulariser(weights), as the seed's class takes) ---

REGULARIZERS = [
    ("entropy", lambda x=None, **kw: R.entropy_regularizer(x, **kw)),
    ("entropy, target 0.5", lambda x=None, **kw: R.entropy_regularizer(x, target=0.5, **kw)),
    ("lp", lambda x=None, **kw: R.sparsity_regularizer(x, **kw)),
    ("neg-entropy", lambda x=None, **kw: R.sparsity_regularizer(x, method="entropy", **kw)),
    ("l1", lambda x=None, **kw: R.sparsity_regularizer(x, method="l1", **kw)),
    ("cosine", lambda x=None, **kw: R.head_diversity_regularizer(x, **kw)),
    ("overlap", lambda x=None, **kw: R.head_diversity_regularizer(x, method="overlap", **kw)),
]


def test_weights_by_hand():
    # The hand example of test_entropy_regularizer_by_hand, given as w = (3/4, 1/4).
    result = R.entropy_regularizer(np.array([[0.75, 0.25]]), target=0.0)
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert result.loss == pytest.approx(entropy ** 2, rel=1e-14)
    np.testing.assert_allclose(result.grad, [[-0.2316706, 0.2316706]], atol=1e-7)
    # A 0 weight is a masked key: (1, 0, 0) is one-hot, lp = 1, gradient 0 there.
    one_hot = R.sparsity_regularizer(np.array([[1.0, 0.0, 0.0]]), epsilon=0.0)
    assert one_hot.loss == 1.0
    np.testing.assert_array_equal(one_hot.grad, 0.0)
    # Head 0 uniform over 2 keys, head 1 all on key 0: cosine 1/sqrt 2, overlap 1/2.
    heads = np.array([[[0.5, 0.5]], [[1.0, 0.0]]])
    assert R.head_diversity_regularizer(heads).loss == pytest.approx(1 / math.sqrt(2))
    assert R.head_diversity_regularizer(heads, method="overlap").loss == pytest.approx(0.5)


@pytest.mark.parametrize("name, regularizer", REGULARIZERS, ids=[n for n, _ in REGULARIZERS])
@given(scores=score_arrays(min_heads=2))
def test_weights_give_the_gradient_with_respect_to_the_scores(name, regularizer, scores):
    # From the weights alone: the same loss and gradient as from the scores, and
    # the gradient is that of loss(softmax(scores)) by finite differences.
    from_weights = regularizer(softmax(scores))
    from_scores = regularizer(scores=scores)
    assert from_weights.loss == pytest.approx(from_scores.loss, rel=1e-12, abs=1e-15, nan_ok=True)
    np.testing.assert_allclose(from_weights.grad, from_scores.grad, rtol=0, atol=1e-12)
    check_gradient(lambda s: regularizer(softmax(s)), scores)
    # A mask means the same for both inputs.
    mask = np.random.default_rng(scores.size).random(scores.shape) < 0.7
    masked = regularizer(softmax(scores), mask=mask)
    assert masked.loss == pytest.approx(regularizer(scores=scores, mask=mask).loss,
                                        rel=1e-12, abs=1e-15, nan_ok=True)
    np.testing.assert_allclose(masked.grad, regularizer(scores=scores, mask=mask).grad,
                               rtol=0, atol=1e-12)


@given(st.integers(0, 2**32 - 1))
def test_weights_reproduce_the_seed_class(seed):
    # The seed's AttentionWeightRegularizer on the very weights it is given.
    weights = softmax(np.random.default_rng(seed).normal(scale=2.0, size=(2, 3, 5, 6)))
    seed_regularizer = SeedAttentionWeightRegularizer()
    assert R.entropy_regularizer(weights).loss == pytest.approx(
        seed_regularizer.entropy_regularization(weights), rel=1e-7)
    assert R.sparsity_regularizer(weights, method="l1").loss == pytest.approx(
        seed_regularizer.sparsity_regularization(weights), rel=1e-14)
    total = 0.1 * R.entropy_regularizer(weights).loss \
        + 0.1 * R.sparsity_regularizer(weights, method="l1").loss
    assert total == pytest.approx(seed_regularizer.compute_regularization_loss(weights), rel=1e-7)


def test_weights_input_is_checked():
    # Scores passed as weights: the message says where they go.
    with pytest.raises(ValueError, match="sum to 1 .* scores="):
        R.entropy_regularizer(np.array([[2.0, 1.0, 0.5]]))
    with pytest.raises(ValueError, match=">= 0 .* scores="):
        R.entropy_regularizer(np.array([[2.0, -1.0, 0.5]]))
    with pytest.raises(ValueError, match="sum to 1"):
        R.sparsity_regularizer(np.array([[0.5, 0.3]]))
    with pytest.raises(ValueError, match=">= 0"):
        R.head_diversity_regularizer(np.array([[[1.5, -0.5]], [[0.5, 0.5]]]))
    with pytest.raises(TypeError, match="exactly one of weights .* got both"):
        R.entropy_regularizer(np.full((1, 2), 0.5), scores=np.zeros((1, 2)))
    with pytest.raises(TypeError, match="got neither"):
        R.sparsity_regularizer()
    with pytest.raises(ValueError, match=r"mask must broadcast to the weights shape \(1, 2\)"):
        R.entropy_regularizer(np.full((1, 2), 0.5), mask=np.ones(3, dtype=bool))
    # Rows within the tolerance (a float32 softmax) are accepted and renormalised.
    rows = softmax(np.random.default_rng(1).normal(size=(3, 50))).astype(np.float32)
    np.testing.assert_allclose(R.entropy_regularizer(rows).grad,
                               R.entropy_regularizer(rows / rows.sum(-1, keepdims=True,
                                                                     dtype=np.float64)).grad,
                               rtol=0, atol=1e-15)


# --- clip_attention_weights ---

def brute_force_projection(row, min_val, max_val):
    """The closest point of {x: sum x = 1, min_val <= x <= max_val} to ``row``,
    by trying every face: each coordinate at min_val, at max_val or free (free
    coordinates are row - tau, tau fixed by the sum). The minimiser is the
    optimum of its own face, so it is among the feasible candidates."""
    best, best_distance = None, np.inf
    for pattern in itertools.product((0, 1, 2), repeat=row.size):
        pattern = np.array(pattern)
        candidate = np.where(pattern == 0, min_val, max_val).astype(float)
        free = pattern == 2
        fixed_total = candidate[~free].sum()
        if free.any():
            tau = (row[free].sum() - (1 - fixed_total)) / free.sum()
            candidate[free] = row[free] - tau
        elif abs(fixed_total - 1) > 1e-12:
            continue
        if np.all(candidate >= min_val - 1e-12) and np.all(candidate <= max_val + 1e-12):
            distance = np.linalg.norm(candidate - row)
            if distance < best_distance:
                best, best_distance = candidate, distance
    return best


@st.composite
def rows_and_bounds(draw):
    """Non-negative rows (R, n) with n <= 4 and feasible bounds for n keys."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.integers(1, 4))
    rows = rng.dirichlet(np.full(n, draw(st.sampled_from([0.2, 1.0, 5.0]))), size=3)
    rows = rows * draw(st.sampled_from([1.0, 0.5, 3.0]))  # need not sum to 1
    min_val = draw(st.floats(0, 1 / n))
    max_val = draw(st.floats(1 / n, 1))
    return np.maximum(rows, 1e-300), min_val, max_val


def test_clip_by_hand():
    row = np.array([[0.9, 0.1]])
    # The seed: clamp to [0.8, 0.1], divide by 0.9 -> [0.889, 0.111]: max_val broken.
    renormalized = R.clip_attention_weights(row)
    np.testing.assert_allclose(renormalized, [[0.8 / 0.9, 0.1 / 0.9]], rtol=1e-15)
    assert renormalized.max() > 0.8
    # The projection: clip(w - tau) with tau = 0.1 -> [0.8, 0.2].
    np.testing.assert_allclose(R.clip_attention_weights(row, method="project"), [[0.8, 0.2]],
                               atol=1e-15)
    # [0.7, 0.2, 0.1] into [0.15, 0.5]: x0 capped at 0.5, x1 and x2 free,
    # 0.5 + (0.2 - tau) + (0.1 - tau) = 1 -> tau = -0.1 -> [0.5, 0.3, 0.2].
    projected = R.clip_attention_weights(np.array([[0.7, 0.2, 0.1]]), 0.15, 0.5, method="project")
    np.testing.assert_allclose(projected, [[0.5, 0.3, 0.2]], atol=1e-15)


@given(st.integers(0, 2**32 - 1), st.floats(1e-6, 0.1), st.floats(0.3, 1.0))
def test_renormalize_matches_the_seed(seed, min_val, max_val):
    weights = softmax(np.random.default_rng(seed).normal(scale=3.0, size=(2, 4, 5)))
    np.testing.assert_allclose(
        R.clip_attention_weights(weights, min_val, max_val),
        seed_clip_attention_weights(weights, min_val, max_val), rtol=1e-15, atol=0)


@given(rows_and_bounds())
def test_projection_is_feasible_idempotent_and_closest(case):
    rows, min_val, max_val = case
    with analysis.skip_distribution_check():  # the projection is defined for any row >= 0
        projected = R.clip_attention_weights(rows, min_val, max_val, method="project")
    assert np.all(projected >= min_val) and np.all(projected <= max_val)
    np.testing.assert_allclose(projected.sum(axis=-1), 1.0, rtol=0, atol=1e-14)
    again = R.clip_attention_weights(projected, min_val, max_val, method="project")
    np.testing.assert_allclose(again, projected, rtol=0, atol=1e-14)
    for row, result in zip(rows, projected):
        np.testing.assert_allclose(result, brute_force_projection(row, min_val, max_val),
                                   rtol=0, atol=1e-10)


@pytest.mark.parametrize("method", R.CLIP_METHODS)
def test_clip_keeps_masked_keys_and_rows_at_zero(rng, method):
    weights = softmax(np.where(rng.random((5, 6)) < 0.3, -np.inf, rng.normal(size=(5, 6))))
    weights[0] = 0.0  # a fully masked row
    weights[1, :3] = [0.5, 0.5, 0.0]
    weights[1, 3:] = 0.0
    clipped = R.clip_attention_weights(weights, 0.01, 1.0, method=method)
    np.testing.assert_array_equal(clipped[weights == 0], 0.0)
    visible_rows = weights.sum(-1) > 0
    np.testing.assert_allclose(clipped[visible_rows].sum(-1), 1.0, atol=1e-14)
    assert np.all(clipped[weights > 0] >= 0.01 - 1e-15)


@pytest.mark.parametrize("method", R.CLIP_METHODS)
@given(st.integers(0, 2**32 - 1))
def test_clip_is_key_permutation_equivariant_and_keeps_leading_dims(method, seed):
    rng = np.random.default_rng(seed)
    weights = softmax(rng.normal(scale=3.0, size=(2, 3, 4, 6)))
    clipped = R.clip_attention_weights(weights, 0.02, 0.5, method=method)
    order = rng.permutation(6)
    np.testing.assert_allclose(
        R.clip_attention_weights(weights[..., order], 0.02, 0.5, method=method),
        clipped[..., order], atol=1e-15)
    np.testing.assert_array_equal(
        R.clip_attention_weights(weights[1, 2], 0.02, 0.5, method=method), clipped[1, 2])


def test_clip_rejects_bad_bounds_and_weights():
    with pytest.raises(ValueError, match=r"n in \[1\]"):  # one visible key cannot stay <= 0.8
        R.clip_attention_weights(np.array([[1.0, 0.0], [0.5, 0.5]]), method="project")
    with pytest.raises(ValueError, match=r"n \* min_val <= 1"):
        R.clip_attention_weights(np.full((1, 4), 0.25), min_val=0.3, method="project")
    with pytest.raises(ValueError, match="min_val <= max_val"):
        R.clip_attention_weights(np.full((1, 4), 0.25), min_val=0.5, max_val=0.4)
    with pytest.raises(ValueError, match=">= 0"):
        R.clip_attention_weights(np.array([[1.2, -0.2]]))
    with pytest.raises(ValueError, match="method must be one of"):
        R.clip_attention_weights(np.full((1, 4), 0.25), method="softmax")
    # Bounds that are exactly tight are feasible: min_val = 1/3 with 3 keys.
    np.testing.assert_allclose(
        R.clip_attention_weights(np.array([[0.6, 0.3, 0.1]]), 1 / 3, 1.0, method="project"),
        np.full((1, 3), 1 / 3), atol=1e-15)
