"""attnref.nn.layers against each layer's formula written plainly (Python
loops, :mod:`math`), against torch when installed, and every error message."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from attnref.nn import (ACTIVATIONS, Embedding, FeedForward, GatedFeedForward, LayerNorm,
                        LearnedPositions, Linear, RMSNorm, gelu, gelu_tanh, relu, silu,
                        sinusoidal_positions)
from attnref.nn.layers import product_layout, stack_outputs

finite = {"min_value": -8, "max_value": 8, "allow_nan": False, "allow_subnormal": False}


def small_arrays(dtype, max_dims=3):
    return arrays(dtype, st.lists(st.integers(1, 5), min_size=1, max_size=max_dims).map(tuple),
                  elements=finite)


# ---------------------------------------------------------------- plain formulas

def linear_by_hand(x, weight, bias):
    """y[..., o] = sum_k x[..., k] W[o, k] + b[o], one output at a time."""
    rows = x.reshape(-1, x.shape[-1])
    out = np.empty((rows.shape[0], weight.shape[0]), np.float64)
    for r, row in enumerate(rows):
        for o in range(weight.shape[0]):
            total = sum(float(row[k]) * float(weight[o, k]) for k in range(len(row)))
            out[r, o] = total + (0.0 if bias is None else float(bias[o]))
    return out.reshape(*x.shape[:-1], weight.shape[0])


def layer_norm_by_hand(x, gamma, beta, eps):
    rows = x.reshape(-1, x.shape[-1]).astype(np.float64)
    out = np.empty_like(rows)
    for r, row in enumerate(rows):
        mean = sum(row) / len(row)
        variance = sum((v - mean) ** 2 for v in row) / len(row)  # biased, as torch and BERT
        for k, v in enumerate(row):
            out[r, k] = (v - mean) / math.sqrt(variance + eps) * gamma[k] + beta[k]
    return out.reshape(x.shape)


def elementwise(function, x):
    return np.array([function(float(v)) for v in np.ravel(x)], np.float64).reshape(np.shape(x))


def gelu_by_hand(v):
    return 0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0)))


def gelu_tanh_by_hand(v):
    return 0.5 * v * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v ** 3)))


def sinusoidal_by_hand(length, dim, base=10000.0):
    """Vaswani et al. 2017, §3.5: PE(pos, 2i) = sin(pos / base^(2i/d)),
    PE(pos, 2i+1) = cos(pos / base^(2i/d))."""
    table = np.empty((length, dim), np.float64)
    for pos in range(length):
        for column in range(dim):
            two_i = column - column % 2
            angle = pos / base ** (two_i / dim)
            table[pos, column] = math.sin(angle) if column % 2 == 0 else math.cos(angle)
    return table


# ---------------------------------------------------------------- Linear

@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_matches_its_formula(dtype, with_bias, assert_close):
    layer = Linear.init(5, 3, rng=np.random.default_rng(1), bias=with_bias, dtype=dtype)
    x = np.random.default_rng(2).standard_normal((2, 4, 5)).astype(dtype)
    y = layer(x)
    assert y.dtype == dtype
    assert_close(y, linear_by_hand(x, layer.weight, layer.bias).astype(dtype))


def test_linear_init_is_torch_default_and_seeded():
    a = Linear.init(16, 8, rng=np.random.default_rng(7))
    b = Linear.init(16, 8, rng=np.random.default_rng(7))
    assert a.weight.shape == (8, 16) and a.bias.shape == (8,)
    assert np.array_equal(a.weight, b.weight) and np.array_equal(a.bias, b.bias)
    assert np.abs(a.weight).max() <= 1 / math.sqrt(16)
    assert np.abs(a.weight).max() > 0.8 / math.sqrt(16)  # uses the whole range
    assert not np.array_equal(a.weight, Linear.init(16, 8, rng=np.random.default_rng(8)).weight)


@pytest.mark.parametrize("weight, bias, error, match", [
    (np.zeros((2, 3), np.int64), None, TypeError,
     "Linear weight must be float32 or float64, got dtype int64"),
    (np.zeros((2, 3), np.float16), None, TypeError, "Linear weight must be float32 or float64"),
    (np.zeros(3), None, ValueError, r"Linear weight must have 2 dims, got shape \(3,\)"),
    (np.zeros((2, 3)), np.zeros((2, 1)), ValueError, "Linear bias must have 1 dims"),
    (np.zeros((2, 3)), np.zeros(3), ValueError,
     r"Linear bias must have shape \(2,\) and dtype float64, got \(3,\) float64"),
    (np.zeros((2, 3)), np.zeros(2, np.float32), ValueError, r"got \(2,\) float32"),
])
def test_linear_rejects_bad_parameters(weight, bias, error, match):
    with pytest.raises(error, match=match):
        Linear(weight, bias)


def test_linear_rejects_bad_input():
    layer = Linear(np.zeros((2, 3), np.float32))
    with pytest.raises(TypeError, match="Linear input must have the parameters' dtype float32, "
                                        "got float64"):
        layer(np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"Linear input must have shape \(\.\.\., 3\), "
                                         r"got \(4, 2\)"):
        layer(np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match=r"got \(\)"):
        layer(np.float32(1))


# ---------------------------------------------------------------- Embedding and positions

def test_embedding_looks_rows_up():
    table = Embedding.init(7, 4, rng=np.random.default_rng(3), dtype=np.float64)
    ids = np.array([[0, 6, 3], [3, 3, 1]])
    out = table(ids)
    assert out.shape == (2, 3, 4) and out.dtype == np.float64
    for index in np.ndindex(ids.shape):
        assert np.array_equal(out[index], table.weight[ids[index]])
    assert table(np.array([], np.int64)).shape == (0, 4)
    assert np.array_equal(table(np.array(5, np.uint8)), table.weight[5])


@pytest.mark.parametrize("ids, error, match", [
    ([0, 7], ValueError, r"Embedding ids must lie in \[0, 7\), got range \[0, 7\]"),
    ([-1, 2], ValueError, r"Embedding ids must lie in \[0, 7\), got range \[-1, 2\]"),
    ([0.0, 1.0], TypeError, "Embedding ids must be integers, got dtype float64"),
    ([True, False], TypeError, "Embedding ids must be integers, got dtype bool"),
])
def test_embedding_rejects_bad_ids(ids, error, match):
    with pytest.raises(error, match=match):
        Embedding(np.zeros((7, 2), np.float32))(np.array(ids))


def test_embedding_rejects_bad_weight():
    with pytest.raises(TypeError, match="Embedding weight must be float32 or float64, "
                                        "got dtype int"):
        Embedding(np.zeros((3, 2), np.int32))


def test_learned_positions_take_rows_from_offset():
    table = LearnedPositions.init(10, 4, rng=np.random.default_rng(4))
    assert np.array_equal(table(3), table.weight[:3])
    assert np.array_equal(table(4, offset=6), table.weight[6:10])
    assert table(0, offset=10).shape == (0, 4)
    assert 0.01 < table.weight.std() < 0.03  # BERT's initializer_range 0.02


@pytest.mark.parametrize("length, offset, match", [
    (11, 0, r"positions \[0, 11\) do not fit the table of 10 learned positions"),
    (3, 8, r"positions \[8, 11\) do not fit"),
    (2, -1, r"positions \[-1, 1\) do not fit"),
    (-1, 0, r"positions \[0, -1\) do not fit"),
])
def test_learned_positions_reject_overflow(length, offset, match):
    with pytest.raises(ValueError, match=match):
        LearnedPositions(np.zeros((10, 4), np.float32))(length, offset)


@pytest.mark.parametrize("length, dim", [(1, 1), (7, 6), (9, 5), (50, 16), (0, 4), (3, 0)])
def test_sinusoidal_positions_match_the_paper(length, dim, assert_close):
    expected = sinusoidal_by_hand(length, dim)
    assert_close(sinusoidal_positions(length, dim, dtype=np.float64), expected)
    float32 = sinusoidal_positions(length, dim)
    assert float32.dtype == np.float32
    assert np.array_equal(float32, expected.astype(np.float32))  # computed in float64, then cast


def test_sinusoidal_positions_base(assert_close):
    assert_close(sinusoidal_positions(6, 4, base=100.0, dtype=np.float64),
                 sinusoidal_by_hand(6, 4, base=100.0))


@pytest.mark.parametrize("length, dim, match", [
    (-1, 4, "length must be a non-negative integer, got -1"),
    (2.0, 4, "length must be a non-negative integer, got 2.0"),
    (3, True, "dim must be a non-negative integer, got True"),
])
def test_sinusoidal_positions_reject_bad_sizes(length, dim, match):
    with pytest.raises(ValueError, match=match):
        sinusoidal_positions(length, dim)


# ---------------------------------------------------------------- LayerNorm

@given(x=small_arrays(np.float64), eps=st.sampled_from([1e-12, 1e-5, 0.1]))
def test_layer_norm_matches_the_formula(x, eps, assert_close):
    D = x.shape[-1]
    rng = np.random.default_rng(D)
    gamma, beta = rng.standard_normal(D), rng.standard_normal(D)
    expected = layer_norm_by_hand(x, gamma, beta, eps)
    # a constant row has variance 0: its output is beta up to rounding amplified
    # by 1/sqrt(eps), so those rows are compared at that scale
    scale = np.where(np.ptp(x, axis=-1, keepdims=True) > 0, 1.0, 1 / math.sqrt(eps))
    assert_close(LayerNorm(gamma, beta, eps)(x) / scale, expected / scale)


def test_layer_norm_float32_stays_float32(assert_close):
    x = np.random.default_rng(5).standard_normal((3, 8)).astype(np.float32)
    layer = LayerNorm.init(8, dtype=np.float32)
    out = layer(x)
    assert out.dtype == np.float32
    assert_close(out, layer_norm_by_hand(x, np.ones(8), np.zeros(8), 1e-5).astype(np.float32))


def test_layer_norm_accepts_numpy_scalar_eps(assert_close):
    x = np.random.default_rng(6).standard_normal((2, 4))
    layer = LayerNorm(np.ones(4), np.zeros(4), np.float32(1e-3))
    assert_close(layer(x), layer_norm_by_hand(x, np.ones(4), np.zeros(4), float(np.float32(1e-3))))


@pytest.mark.parametrize("eps", [0, -1e-5, float("nan"), float("inf"), "1e-5", None, True])
def test_layer_norm_rejects_bad_eps(eps):
    with pytest.raises(ValueError, match="LayerNorm eps must be a positive finite number, got "
                                         + repr(eps).replace("(", r"\(").replace(")", r"\)")):
        LayerNorm(np.ones(4), np.zeros(4), eps)


def test_layer_norm_rejects_bad_parameters_and_input():
    with pytest.raises(ValueError, match=r"LayerNorm bias must have shape \(4,\), got \(3,\)"):
        LayerNorm(np.ones(4), np.zeros(3))
    with pytest.raises(ValueError, match="LayerNorm weight must have 1 dims"):
        LayerNorm(np.ones((4, 1)), np.zeros(4))
    layer = LayerNorm.init(4)
    with pytest.raises(ValueError, match=r"LayerNorm input must have shape \(\.\.\., 4\), "
                                         r"got \(2, 5\)"):
        layer(np.zeros((2, 5), np.float32))
    with pytest.raises(TypeError, match="LayerNorm input must have the parameters' dtype "
                                        "float32, got float64"):
        layer(np.zeros((2, 4)))


# ---------------------------------------------------------------- activations

@given(x=small_arrays(np.float64))
def test_gelu_is_x_phi_x_with_erf(x):
    # the same float64 operations on the same numbers: bit-for-bit
    assert np.array_equal(gelu(x), elementwise(gelu_by_hand, x))


@given(x=small_arrays(np.float32))
def test_gelu_float32_is_float64_gelu_rounded_once(x):
    out = gelu(x)
    assert out.dtype == np.float32
    assert np.array_equal(out, elementwise(gelu_by_hand, x).astype(np.float32))


@given(x=small_arrays(np.float64))
def test_gelu_odd_part_is_identity(x, assert_close):
    # Phi(x) + Phi(-x) = 1, so gelu(x) - gelu(-x) = x
    assert_close(gelu(x) - gelu(-x), x)


@pytest.mark.parametrize("value", [np.float64(1.5), np.array(-0.5), np.float32(2.0), 0.25])
def test_gelu_of_a_scalar(value):
    out = gelu(value)
    assert out.shape == () and out.dtype == np.asarray(value).dtype
    assert out == np.asarray(gelu_by_hand(float(value))).astype(out.dtype)


@given(x=small_arrays(np.float64))
def test_gelu_tanh_matches_its_formula(x, assert_close):
    assert_close(gelu_tanh(x), elementwise(gelu_tanh_by_hand, x))


def test_gelu_tanh_float32_and_scalars(assert_close):
    x = np.linspace(-6, 6, 101, dtype=np.float32)
    out = gelu_tanh(x)
    assert out.dtype == np.float32
    assert_close(out, elementwise(gelu_tanh_by_hand, x).astype(np.float32))
    assert gelu_tanh(np.float64(1.0)) == pytest.approx(gelu_tanh_by_hand(1.0), rel=1e-15)
    # the approximation is close to, but not, the exact GELU (max gap ~ 5e-4)
    gap = np.abs(gelu_tanh(x.astype(np.float64)) - gelu(x.astype(np.float64))).max()
    assert 1e-5 < gap < 1e-3


def test_relu():
    x = np.array([-2.0, -0.0, 0.0, 3.5], np.float32)
    out = relu(x)
    assert out.dtype == np.float32 and np.array_equal(out, [0, 0, 0, 3.5])


def test_activation_table():
    assert ACTIVATIONS["gelu"] is gelu and ACTIVATIONS["relu"] is relu
    assert ACTIVATIONS["gelu_tanh"] is gelu_tanh and ACTIVATIONS["gelu_new"] is gelu_tanh


@pytest.mark.parametrize("activation, by_hand", [(gelu, gelu_by_hand),
                                                 (gelu_tanh, gelu_tanh_by_hand)])
def test_gelus_widen_integers_instead_of_truncating(activation, by_hand, assert_close):
    x = np.array([-3, -1, 0, 1, 2, 5])
    out = activation(x)
    assert out.dtype == np.float64
    assert_close(out, elementwise(by_hand, x.astype(np.float64)))


@pytest.mark.parametrize("activation", [gelu, gelu_tanh])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gelus_write_into_out_and_into_their_input(activation, dtype):
    x = np.linspace(-5, 5, 64, dtype=dtype).reshape(8, 8)
    expected = activation(x)
    out = np.full_like(x, np.nan)
    assert activation(x, out=out) is out and np.array_equal(out, expected)
    same = x.copy()
    assert activation(same, out=same) is same and np.array_equal(same, expected)
    with pytest.raises(ValueError, match="out must be a numpy array of shape"):
        activation(x, out=np.empty(x.shape, np.float16))


def test_gelu_tanh_rounds_as_its_formula_written_out():
    """One temporary and in-place passes, the same roundings as
    ``0.5 x (1 + tanh(c1 (x + c2 x x x)))`` evaluated left to right."""
    x = np.random.default_rng(3).standard_normal(1000).astype(np.float32) * 4
    c1, c2 = np.float32(math.sqrt(2.0 / math.pi)), np.float32(0.044715)
    written_out = np.float32(0.5) * x * (1 + np.tanh(c1 * (x + c2 * x * x * x)))
    assert np.array_equal(gelu_tanh(x), written_out)


# ---------------------------------------------------------------- FeedForward

@pytest.mark.parametrize("activation, by_hand", [
    ("gelu", gelu_by_hand), ("gelu_tanh", gelu_tanh_by_hand), ("relu", lambda v: max(v, 0.0))])
def test_feed_forward_matches_its_formula(activation, by_hand, dtype, assert_close):
    block = FeedForward.init(4, 10, rng=np.random.default_rng(9), activation=activation,
                             dtype=dtype)
    x = np.random.default_rng(10).standard_normal((2, 3, 4)).astype(dtype)
    hidden = elementwise(by_hand, linear_by_hand(x, block.up.weight, block.up.bias))
    expected = linear_by_hand(hidden, block.down.weight, block.down.bias)
    out = block(x)
    assert out.dtype == dtype
    assert_close(out, expected.astype(dtype))


def test_feed_forward_rejects_bad_activation_and_widths():
    rng = np.random.default_rng(0)
    up, down = Linear.init(4, 8, rng=rng), Linear.init(8, 4, rng=rng)
    with pytest.raises(ValueError, match=r"activation must be one of \['gelu', 'gelu_new', "
                                         r"'gelu_tanh', 'relu', 'silu'\], got 'swish'"):
        FeedForward(up, down, "swish")
    with pytest.raises(ValueError, match="FeedForward up projection gives 8 features but the "
                                         "down projection takes 6"):
        FeedForward(up, Linear.init(6, 4, rng=rng))


# ---------------------------------------------------------------- against torch

def test_layers_agree_with_torch(dtype, assert_close):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    x = (3 * rng.standard_normal((2, 5, 8))).astype(dtype)
    tx = torch.from_numpy(x)
    norm = LayerNorm(rng.standard_normal(8).astype(dtype), rng.standard_normal(8).astype(dtype),
                     1e-6)
    reference = torch.nn.LayerNorm(8, eps=1e-6, dtype=tx.dtype)
    with torch.no_grad():
        reference.weight.copy_(torch.from_numpy(norm.weight))
        reference.bias.copy_(torch.from_numpy(norm.bias))
        assert_close(norm(x), reference(tx).numpy())
        assert_close(gelu(x), torch.nn.GELU(approximate="none")(tx).numpy())
        assert_close(gelu_tanh(x), torch.nn.GELU(approximate="tanh")(tx).numpy())
        assert np.array_equal(relu(x), torch.relu(tx).numpy())
        linear = Linear.init(8, 3, rng=rng, dtype=dtype)
        assert_close(linear(x), torch.nn.functional.linear(
            tx, torch.from_numpy(linear.weight), torch.from_numpy(linear.bias)).numpy())


# ---------------------------------------------------------------- Llama pieces

def rms_norm_by_hand(x, gamma, eps):
    rows = x.reshape(-1, x.shape[-1]).astype(np.float64)
    out = np.empty_like(rows)
    for r, row in enumerate(rows):
        root = math.sqrt(sum(v * v for v in row) / len(row) + eps)
        out[r] = [v / root * g for v, g in zip(row, gamma)]
    return out.reshape(x.shape)


def test_rms_norm_matches_its_formula(dtype, assert_close):
    rng = np.random.default_rng(20)
    x = rng.standard_normal((2, 3, 6)).astype(dtype)
    gamma = rng.standard_normal(6).astype(dtype)
    norm = RMSNorm(gamma, eps=1e-5)
    assert_close(norm(x), rms_norm_by_hand(x, gamma, 1e-5).astype(dtype))
    assert norm(x).dtype == dtype


def test_rms_norm_init_and_errors():
    norm = RMSNorm.init(4, eps=1e-6)
    np.testing.assert_array_equal(norm.weight, np.ones(4, np.float32))
    for eps in (0, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match="RMSNorm eps must be a positive finite number"):
            RMSNorm(np.ones(4, np.float32), eps)
    with pytest.raises(ValueError, match=r"RMSNorm input must have shape \(..., 4\), got \(2, 3\)"):
        norm(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="RMSNorm weight must have 1 dims"):
        RMSNorm(np.ones((2, 2), np.float32))


def test_silu_matches_its_formula_without_overflow(dtype, assert_close):
    x = np.array([-1000.0, -30.0, -2.5, -1e-3, 0.0, 1e-3, 2.5, 30.0, 1000.0], dtype)
    expected = np.array([v / (1 + math.exp(-v)) if v > -700 else 0.0 for v in x.tolist()])
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is fine
        result = silu(x)
    assert result.dtype == dtype
    assert_close(result, expected.astype(dtype))
    assert ACTIVATIONS["silu"] is silu


def test_gated_feed_forward_matches_its_formula(dtype, assert_close):
    rng = np.random.default_rng(21)
    ffn = GatedFeedForward.init(5, 7, rng=rng, dtype=dtype)
    x = rng.standard_normal((3, 5)).astype(dtype)
    gate, up = x @ ffn.gate.weight.T, x @ ffn.up.weight.T                     # (3, 7)
    by_hand = (gate / (1 + np.exp(-gate)) * up) @ ffn.down.weight.T
    assert ffn.gate.bias is None and ffn.down.bias is None
    assert_close(ffn(x), by_hand)


def test_gated_feed_forward_rejects_bad_parts():
    rng = np.random.default_rng(22)
    gate, up, down = (Linear.init(4, 6, rng=rng), Linear.init(4, 6, rng=rng),
                      Linear.init(6, 4, rng=rng))
    with pytest.raises(ValueError, match="activation must be one of"):
        GatedFeedForward(gate, up, down, "swish")
    with pytest.raises(TypeError, match="GatedFeedForward up must be an attnref.nn.Linear, "
                                        "got ndarray"):
        GatedFeedForward(gate, up.weight, down)
    with pytest.raises(ValueError, match=r"gate and up projections must have the same shape "
                                         r"\(F, D\), got \(6, 4\) and \(5, 4\)"):
        GatedFeedForward(gate, Linear.init(4, 5, rng=rng), down)
    with pytest.raises(ValueError, match="up projection gives 6 features but the down "
                                         "projection takes 3"):
        GatedFeedForward(gate, up, Linear.init(3, 4, rng=rng))


def test_llama_pieces_agree_with_torch(assert_close):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(23)
    x = rng.standard_normal((4, 6)).astype(np.float32)
    gamma = rng.standard_normal(6).astype(np.float32)
    torch_norm = torch.nn.RMSNorm(6, eps=1e-5)
    with torch.no_grad():
        torch_norm.weight.copy_(torch.from_numpy(gamma))
        assert_close(RMSNorm(gamma, 1e-5)(x), torch_norm(torch.from_numpy(x)).numpy())
        assert_close(silu(x * 10), torch.nn.functional.silu(torch.from_numpy(x * 10)).numpy())


def test_silu_leaves_its_input_alone_and_widens_integers():
    x = np.array([-3.0, 0.5, 4.0], np.float32)
    kept = x.copy()
    silu(x)
    np.testing.assert_array_equal(x, kept)
    result = silu(np.array([-2, 0, 3]))
    assert result.dtype == np.float64
    np.testing.assert_allclose(result, [-2 / (1 + math.exp(2)), 0.0, 3 / (1 + math.exp(-3))],
                               rtol=1e-15)


def test_stack_outputs_is_one_product_of_views(dtype, assert_close):
    rng = np.random.default_rng(24)
    first, second = Linear.init(5, 3, rng=rng, dtype=dtype), Linear.init(5, 4, rng=rng,
                                                                         bias=False, dtype=dtype)
    stacked, (one, two) = stack_outputs(first, second)
    assert stacked.weight.shape == (7, 5) and stacked.bias.shape == (7,)
    np.testing.assert_array_equal(one.weight, first.weight)
    np.testing.assert_array_equal(one.bias, first.bias)
    np.testing.assert_array_equal(two.weight, second.weight)
    assert two.bias is None and not stacked.bias[3:].any()        # zeros stand for no bias
    assert np.shares_memory(one.weight, stacked.weight)
    assert np.shares_memory(two.weight, stacked.weight)
    assert np.shares_memory(one.bias, stacked.bias)
    x = rng.standard_normal((2, 5)).astype(dtype)
    assert_close(stacked(x), np.concatenate([first(x), second(x)], axis=-1))


def test_stack_outputs_refuses_other_widths_and_dtypes():
    rng = np.random.default_rng(25)
    assert stack_outputs(Linear.init(5, 3, rng=rng), Linear.init(4, 3, rng=rng)) is None
    assert stack_outputs(Linear.init(5, 3, rng=rng),
                         Linear.init(5, 3, rng=rng, dtype=np.float64)) is None


def test_gated_feed_forward_projects_gate_and_up_at_once(dtype):
    ffn = GatedFeedForward.init(5, 7, rng=np.random.default_rng(26), dtype=dtype)
    assert ffn.gate_up.weight.shape == (14, 5)
    np.testing.assert_array_equal(ffn.gate_up.weight, np.concatenate([ffn.gate.weight,
                                                                      ffn.up.weight]))
    assert np.shares_memory(ffn.gate.weight, ffn.gate_up.weight)
    with pytest.raises(AttributeError):
        ffn.gate = ffn.up                # the stacked product would not see the change


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activations_write_into_out(name, dtype):
    x = np.linspace(-6, 6, 13, dtype=dtype).reshape(1, 13)
    expected = ACTIVATIONS[name](x)
    out = np.full_like(x, np.nan)
    assert ACTIVATIONS[name](x, out=out) is out
    np.testing.assert_array_equal(out, expected)


def test_silu_in_place_and_past_the_exp_overflow(dtype):
    """out=x turns x into silu(x), the entries whose exp(-x) overflows included
    (x e^x there, not the -0 of x / inf)."""
    x = np.array([-1000.0, -100.0, -2.0, 0.0, 3.0], dtype)
    expected = silu(x)
    assert expected[1] != 0 and np.signbit(expected[0])
    in_place = x.copy()
    assert silu(in_place, out=in_place) is in_place
    np.testing.assert_array_equal(in_place, expected)
    with pytest.raises(ValueError, match=r"silu out must be a numpy array of shape \(5,\) and "
                                         r"dtype float\d\d, got ndarray \(4,\)"):
        silu(x, out=np.empty(4, dtype))


def test_product_layout_keeps_the_values_and_makes_the_transpose_c_contiguous(dtype):
    rng = np.random.default_rng(27)
    weight = rng.standard_normal((6, 4)).astype(dtype)                          # (out, in)
    stored = product_layout(weight)
    np.testing.assert_array_equal(stored, weight)
    assert stored.T.flags.c_contiguous and product_layout(stored) is stored
    x = rng.standard_normal((3, 4)).astype(dtype)
    np.testing.assert_allclose(Linear(stored)(x), Linear(weight)(x), rtol=1e-6)
    stacked, _ = stack_outputs(Linear(weight[:2]), Linear(weight[2:]))
    assert stacked.weight.T.flags.c_contiguous
    np.testing.assert_array_equal(stacked.weight, weight)


@pytest.mark.parametrize("activation", [gelu, gelu_tanh, silu, relu])
@pytest.mark.parametrize("value", [np.float32(-1.5), np.float64(0.75), np.array(2.0), 3])
def test_activations_return_what_a_ufunc_returns(activation, value):
    """A 0-d input gives a NumPy scalar of the result dtype (float64 for an
    integer, relu keeping it), equal to the one-element array's; ``out=``
    is filled and returned as it is."""
    as_array = np.asarray(value)
    result = activation(value)
    expected = activation(as_array.reshape(1))
    assert isinstance(result, np.generic) and result.dtype == expected.dtype
    assert result == expected[0]
    out = np.zeros((), expected.dtype)
    assert activation(as_array, out=out) is out and out == expected[0]
