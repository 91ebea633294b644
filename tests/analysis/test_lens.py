"""Logit lens and direct logit attribution on a small random residual
stream with a known norm and unembedding."""
import numpy as np
import pytest

from attnref import analysis
from attnref.analysis.lens import direct_logit_attribution, logit_lens, residual_components
from attnref.nn import Encoder, Trace

RNG = np.random.default_rng(0)
T, D, V = 4, 8, 11
GAIN = RNG.uniform(0.5, 1.5, D)
SHIFT = RNG.standard_normal(D)
UNEMBEDDING = RNG.standard_normal((V, D))
EPS = 1e-5


def rms_norm(x):
    return GAIN * x / np.sqrt(np.mean(x ** 2, axis=-1, keepdims=True) + EPS)


def layer_norm(x):
    centred = x - x.mean(axis=-1, keepdims=True)
    return GAIN * centred / np.sqrt(np.mean(centred ** 2, axis=-1, keepdims=True) + EPS) + SHIFT


def test_logit_lens_matches_a_brute_force_softmax():
    residual = RNG.standard_normal((3, T, D))                    # (layers + 1, T, D)
    bias = RNG.standard_normal(V)
    lens = logit_lens(residual, rms_norm, UNEMBEDDING, k=3, unembedding_bias=bias)
    logits = rms_norm(residual) @ UNEMBEDDING.T + bias
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    expected = np.argsort(-probs, axis=-1)[..., :3]
    np.testing.assert_array_equal(lens.top_ids, expected)
    np.testing.assert_allclose(lens.top_probs, np.take_along_axis(probs, expected, -1))
    assert lens.top_ids.shape == (3, T, 3)


def test_logit_lens_blocks_give_the_same_answer(monkeypatch):
    residual = RNG.standard_normal((5, T, D))
    whole = logit_lens(residual, rms_norm, UNEMBEDDING, k=2)
    monkeypatch.setattr("attnref.analysis.lens._LENS_BLOCK", 3 * V)  # 3 rows at a time
    blocked = logit_lens(residual, rms_norm, UNEMBEDDING, k=2)
    np.testing.assert_array_equal(whole.top_ids, blocked.top_ids)
    np.testing.assert_allclose(whole.top_probs, blocked.top_probs)


@pytest.mark.parametrize("call, error, match", [
    (lambda: logit_lens(np.zeros((T, D)), rms_norm, np.zeros((V, D + 1))), ValueError,
     r"unembedding must be \(V, D\) with D=8"),
    (lambda: logit_lens(np.zeros((T, D)), "norm", UNEMBEDDING), TypeError,
     "final_norm must be callable"),
    (lambda: logit_lens(np.zeros((T, D)), rms_norm, UNEMBEDDING, k=V + 1), ValueError,
     r"k must be an integer in \[1, 11\]"),
    (lambda: logit_lens(np.zeros((T, D)), lambda x: x[:, :2], UNEMBEDDING), ValueError,
     "final_norm must keep the shape"),
    (lambda: direct_logit_attribution(np.zeros((2, T, D)), np.zeros((T, D)), UNEMBEDDING,
                                      np.full(T, V)), ValueError, "token_ids must be 4"),
    (lambda: direct_logit_attribution(np.zeros((2, T + 1, D)), np.zeros((T, D)), UNEMBEDDING,
                                      np.zeros(T, int)), ValueError, "components must be"),
    (lambda: direct_logit_attribution(np.zeros((T, D)), np.zeros((T, D)), UNEMBEDDING,
                                      np.zeros(T, int), norm_weight=np.ones(3)), ValueError,
     r"norm_weight must have shape \(8,\)"),
])
def test_bad_arguments_are_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("center, norm, shift", [(False, rms_norm, None),
                                                 (True, layer_norm, SHIFT)])
def test_attributions_sum_to_the_logit_minus_the_biases(center, norm, shift):
    components = RNG.standard_normal((6, T, D))
    residual = components.sum(axis=0)
    bias = RNG.standard_normal(V)
    logits = norm(residual) @ UNEMBEDDING.T + bias                # the model's own logits
    predicted = logits.argmax(-1)
    dla = direct_logit_attribution(components, residual, UNEMBEDDING, predicted,
                                   norm_weight=GAIN, norm_bias=shift, eps=EPS, center=center,
                                   unembedding_bias=bias)
    np.testing.assert_allclose(dla.logit, logits[np.arange(T), predicted])
    np.testing.assert_allclose(dla.attribution.sum(axis=0), dla.logit - dla.bias)
    # one component alone: its own projection through the frozen scale
    first = components[0] - (components[0].mean(-1, keepdims=True) if center else 0)
    np.testing.assert_allclose(
        dla.attribution[0], np.einsum("td,td->t", first, GAIN * UNEMBEDDING[predicted])
        / dla.scale)


def test_residual_components_of_a_pre_norm_stack_sum_to_its_stream():
    stack = Encoder.init(2, D, 2, 16, seed=1, norm_first=True, dtype=np.float64)
    trace = Trace()
    stack.states(RNG.standard_normal((T, D)), is_causal=True, trace=trace)
    parts = residual_components(trace)
    assert parts["heads"].shape == (2, 2, T, D) and parts["mlp"].shape == (2, T, D)
    total = (parts["embedding"] + parts["heads"].sum(axis=(0, 1))
             + parts["attention_bias"].sum(0) + parts["mlp"].sum(0))
    np.testing.assert_allclose(total, trace.layers[-1].residual_out, atol=1e-12)


def test_residual_components_refuse_a_post_norm_stack():
    stack = Encoder.init(1, D, 2, 16, seed=1, norm_first=False, dtype=np.float64)
    trace = Trace()
    stack.states(RNG.standard_normal((T, D)), trace=trace)
    with pytest.raises(ValueError, match="not a pre-norm block"):
        residual_components(trace)


def test_exported_from_the_package():
    assert analysis.logit_lens is logit_lens
    assert "direct_logit_attribution" in analysis.__all__
