"""attnref.nn.trace: what a Trace records is the block equations' own
quantities (seed note *heads-as-information-movers*), recording changes
nothing, and the stacking helpers say clearly when nothing matches."""
import numpy as np
import pytest

from attnref.masks import padding_mask
from attnref.nn import Decoder, Encoder, EncoderDecoder, Trace


def inputs(dtype, *shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


norm_orders = pytest.mark.parametrize("norm_first", [False, True], ids=["post_ln", "pre_ln"])


def attention_output(record):
    """The attention sub-layer's output rebuilt from the heads: the sum of
    their contributions plus the bias of W_O (Elhage et al. 2021)."""
    return record.head_contributions.sum(-3) + record.output_bias


@norm_orders
def test_encoder_trace_follows_the_block_equations(norm_first, dtype, assert_close):
    encoder = Encoder.init(2, 8, 2, 16, seed=1, norm_first=norm_first, dtype=dtype)
    x = inputs(dtype, 2, 5, 8)
    mask = padding_mask([5, 3], 5)
    trace = Trace()
    out = encoder(x, attn_mask=mask, trace=trace)
    assert [layer.name for layer in trace.layers] == ["encoder.0", "encoder.1"]
    assert np.array_equal(trace.layers[0].residual_in, x)
    for layer, block in zip(trace.layers, encoder.blocks):
        h, mid, after = layer.residual_in, layer.residual_mid, layer.residual_out
        attended = attention_output(layer.self_attention)
        assert layer.cross_attention is None
        if norm_first:
            assert_close(mid, h + attended)
            assert_close(after, mid + block.feed_forward(block.feed_forward_norm(mid)))
        else:
            assert_close(mid, block.attention_norm(h + attended))
            assert_close(after, block.feed_forward_norm(mid + block.feed_forward(mid)))
        # the attention saw the normalised stream in pre-LN, the stream itself in post-LN
        seen = block.attention_norm(h) if norm_first else h
        assert_close(attended, block.attention(seen, attn_mask=mask))
    assert np.array_equal(trace.layers[0].residual_out, trace.layers[1].residual_in)
    last = trace.layers[-1].residual_out
    assert_close(out, encoder.final_norm(last) if norm_first else last)


@norm_orders
def test_decoder_trace_follows_the_block_equations(norm_first, dtype, assert_close):
    decoder = Decoder.init(1, 8, 4, 16, seed=2, norm_first=norm_first, num_kv_heads=2,
                           dtype=dtype)
    block = decoder.blocks[0]
    x, memory = inputs(dtype, 2, 4, 8), inputs(dtype, 2, 6, 8, seed=2)
    trace = Trace()
    decoder(x, memory, trace=trace)
    (layer,) = trace.layers
    assert layer.name == "decoder.0"
    self_out = attention_output(layer.self_attention)
    cross_out = attention_output(layer.cross_attention)
    assert layer.cross_attention.weights.shape == (2, 4, 4, 6)
    assert not np.triu(layer.self_attention.weights, 1).any()  # causal: no future key
    if norm_first:
        after_self = x + self_out
        assert_close(self_out, block.self_attention(block.self_attention_norm(x),
                                                    is_causal=True))
        assert_close(layer.residual_mid, after_self + cross_out)
        assert_close(cross_out, block.cross_attention(block.cross_attention_norm(after_self),
                                                      memory))
        mid = layer.residual_mid
        assert_close(layer.residual_out, mid + block.feed_forward(block.feed_forward_norm(mid)))
    else:
        after_self = block.self_attention_norm(x + self_out)
        assert_close(cross_out, block.cross_attention(after_self, memory))
        assert_close(layer.residual_mid, block.cross_attention_norm(after_self + cross_out))
        mid = layer.residual_mid
        assert_close(layer.residual_out, block.feed_forward_norm(mid + block.feed_forward(mid)))


def test_trace_weights_are_distributions(assert_close):
    model = EncoderDecoder.init(2, 8, 2, 16, seed=3, dtype=np.float64)
    source, target = inputs(np.float64, 2, 6, 8), inputs(np.float64, 2, 3, 8, seed=2)
    trace = Trace()
    model(source, target, source_mask=padding_mask([6, 2], 6), trace=trace)
    for weights, over_source in ((trace.attention_weights("encoder"), True),
                                 (trace.attention_weights("decoder"), False),
                                 (trace.attention_weights("decoder", cross=True), True)):
        assert (weights >= 0).all()
        assert_close(weights.sum(-1), np.ones(weights.shape[:-1]))
        if over_source:
            assert not weights[:, 1, ..., 2:].any()  # sequence 1's padded source keys


def test_recording_changes_nothing(backend, assert_close):
    model = EncoderDecoder.init(2, 8, 2, 16, seed=4, norm_first=True, dtype=np.float64)
    source, target = inputs(np.float64, 2, 5, 8), inputs(np.float64, 2, 4, 8, seed=2)
    plain = model(source, target, backend=backend)
    recorded = model(source, target, trace=Trace(), backend=backend)
    if backend == "numpy":
        assert np.array_equal(recorded, plain)  # the same NumPy operations
    assert_close(recorded, plain)


def test_stacks_and_selection():
    model = EncoderDecoder.init(3, 8, 2, 16, seed=5, dtype=np.float32)
    source, target = inputs(np.float32, 2, 5, 8), inputs(np.float32, 2, 4, 8, seed=2)
    trace = Trace()
    model(source, target, trace=trace)
    assert [layer.name for layer in trace.select("decoder")] == [
        "decoder.0", "decoder.1", "decoder.2"]
    assert trace.attention_weights("encoder").shape == (3, 2, 2, 5, 5)
    assert trace.attention_weights("decoder", cross=True).shape == (3, 2, 2, 4, 5)
    assert trace.attention_weights("decoder").shape == (3, 2, 2, 4, 4)
    assert trace.head_contributions("encoder").shape == (3, 2, 2, 5, 8)
    assert trace.attention_weights("encoder.1").shape == (1, 2, 2, 5, 5)
    stream = trace.residual_stream("encoder")
    assert stream.shape == (4, 2, 5, 8) and stream.dtype == np.float32
    assert np.array_equal(stream[0], source)
    for index, layer in enumerate(trace.select("encoder")):
        assert np.array_equal(stream[index + 1], layer.residual_out)
    assert np.array_equal(trace.residual_stream("decoder")[0], target)
    assert np.array_equal(trace.head_contributions("decoder", cross=True)[2],
                          trace.layers[5].cross_attention.head_contributions)


def test_an_empty_trace_records_nothing_until_used():
    assert Trace().layers == [] and Trace().layers is not Trace().layers


def test_trace_with_no_matching_layer():
    trace = Trace()
    Encoder.init(2, 8, 2, 16, seed=6)(inputs(np.float32, 1, 3, 8), trace=trace)
    with pytest.raises(ValueError, match=r"the trace has no layer named 'decoder'\.\.\.; it has "
                                         r"\['encoder\.0', 'encoder\.1'\]"):
        trace.residual_stream("decoder")
    with pytest.raises(ValueError, match=r"the trace has no cross-attention record under ''; "
                                         r"layers: \['encoder\.0', 'encoder\.1'\]"):
        trace.attention_weights(cross=True)
    with pytest.raises(ValueError, match=r"the trace has no self-attention record under "
                                         r"'decoder'; layers: \['encoder\.0', 'encoder\.1'\]"):
        trace.head_contributions("decoder")
    with pytest.raises(ValueError, match=r"no layer named 'encoder'\.\.\.; it has \[\]"):
        Trace().residual_stream("encoder")


def test_stacking_layers_of_different_lengths_names_the_fix():
    model = EncoderDecoder.init(1, 16, 2, 32, seed=0)
    source = np.zeros((7, 16), np.float32)
    trace = Trace()
    model(source, source[:5], trace=trace)
    with pytest.raises(ValueError, match="different shapes .* select 'encoder' or 'decoder'"):
        trace.attention_weights()
    assert trace.attention_weights("decoder").shape == (1, 2, 5, 5)
