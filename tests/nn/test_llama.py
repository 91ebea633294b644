"""attnref.nn.llama: the block against its two equations, the KV cache
against full recomputation at every step, GQA against repeated kv heads, and
the trace it records."""
import numpy as np
import pytest

from attnref.nn import (GatedFeedForward, Linear, LlamaBlock, LlamaStack, MultiHeadAttention,
                        RMSNorm, Trace)


def stack(dtype, layers=2, kv_heads=2, seed=0):
    return LlamaStack.init(layers, 16, 4, 24, seed=seed, num_kv_heads=kv_heads,
                           rope_base=1000.0, dtype=dtype)


def inputs(dtype, T=6, seed=1):
    return np.random.default_rng(seed).standard_normal((T, 16)).astype(dtype)


def test_block_follows_its_two_equations(dtype, backend, assert_close):
    block = stack(dtype).blocks[0]
    block.attention_norm.weight = np.linspace(0.5, 1.5, 16).astype(dtype)
    x = inputs(dtype)
    mid = x + block.attention(block.attention_norm(x), is_causal=True, backend="numpy")
    out = mid + block.feed_forward(block.feed_forward_norm(mid))
    assert_close(block(x, backend=backend), out)


def test_stack_chains_its_blocks(dtype, assert_close):
    layers = stack(dtype, layers=3)
    x = inputs(dtype)
    states = layers.states(x)
    assert states.shape == (4, 6, 16)
    assert_close(states[0], x)
    for index, block in enumerate(layers.blocks):
        assert_close(states[index + 1], block(states[index]))
    assert_close(layers(x), states[-1])


@pytest.mark.parametrize("prompt", [1, 4])
def test_kv_cache_equals_full_forward_at_every_step(prompt, dtype, backend, assert_close):
    layers, x = stack(dtype), inputs(dtype, T=9)
    full = layers(x)
    cache = layers.new_cache()
    assert_close(layers(x[:prompt], cache=cache, backend=backend), full[:prompt])
    for t in range(prompt, 9):
        assert_close(layers(x[t:t + 1], cache=cache, backend=backend), full[t:t + 1])
    assert [layer_cache.length for layer_cache in cache] == [9, 9]


def repeated_kv_heads(block, times):
    """The same block with every kv head stored ``times`` times (plain MHA when
    ``times`` = Hq / Hkv)."""
    attention = block.attention
    E = attention.w_k.out_features // attention.num_kv_heads

    def repeat(linear):
        rows = linear.weight.reshape(attention.num_kv_heads, E, -1)
        return Linear(np.repeat(rows, times, axis=0).reshape(-1, linear.in_features))
    wider = MultiHeadAttention(attention.w_q, repeat(attention.w_k), repeat(attention.w_v),
                               attention.w_o, attention.num_heads,
                               attention.num_kv_heads * times, rotary=attention.rotary)
    return LlamaBlock(wider, block.attention_norm, block.feed_forward, block.feed_forward_norm)


def test_gqa_equals_attention_with_repeated_kv_heads(dtype, backend, assert_close):
    block = stack(dtype, kv_heads=1).blocks[0]
    plain = repeated_kv_heads(block, 4)
    assert plain.attention.num_kv_heads == plain.attention.num_heads == 4
    x = inputs(dtype)
    assert_close(block(x, backend=backend), plain(x, backend=backend))
    gqa_trace, plain_trace = Trace(), Trace()
    block(x, trace=gqa_trace)
    plain(x, trace=plain_trace)
    assert_close(gqa_trace.attention_weights(), plain_trace.attention_weights())


def test_trace_is_consistent(dtype, assert_close):
    layers, x = stack(dtype, layers=3), inputs(dtype)
    trace = Trace()
    out = layers(x, trace=trace)
    assert_close(out, layers(x))
    assert [layer.name for layer in trace.layers] == ["decoder.0", "decoder.1", "decoder.2"]
    assert_close(trace.residual_stream(), layers.states(x))
    for layer in trace.layers:
        record = layer.self_attention
        assert record.weights.shape == (4, 6, 6)
        assert_close(np.triu(record.weights, 1), np.zeros((4, 6, 6), dtype))
        assert_close(record.weights.sum(-1), np.ones((4, 6), dtype))
        assert_close(record.head_outputs, record.weights @ record.values)
        # the heads' contributions through W_O sum to the attention sub-layer's output
        assert_close(record.head_contributions.sum(0), layer.residual_mid - layer.residual_in)
        assert record.output_bias is None


def test_init_is_seeded_and_unbiased():
    first, second = stack(np.float32, seed=3), stack(np.float32, seed=3)
    block = first.blocks[0]
    np.testing.assert_array_equal(block.attention.w_q.weight, second.blocks[0].attention.w_q.weight)
    assert block.attention.w_q.bias is None and block.feed_forward.gate.bias is None
    assert isinstance(block.feed_forward, GatedFeedForward)
    assert isinstance(first.final_norm, RMSNorm)
    assert block.attention.rotary.base == 1000.0


def test_rejects_bad_parts():
    layers = stack(np.float64)
    with pytest.raises(TypeError, match="attention must be an attnref.nn.MultiHeadAttention, "
                                        "got str"):
        LlamaBlock("attention", None, None, None)
    with pytest.raises(TypeError, match="blocks must be attnref.nn.LlamaBlock instances"):
        LlamaStack(["block"], layers.final_norm)
    with pytest.raises(ValueError, match=r"cache must hold one KVCache per block \(2\), got 1"):
        layers(inputs(np.float64), cache=layers.new_cache()[:1])


def test_block_writes_into_out(dtype, assert_close):
    block, x = stack(dtype).blocks[0], inputs(dtype)
    out = np.empty_like(x)
    assert block(x, out=out) is out
    assert_close(out, block(x))


def test_states_are_the_stacked_outputs_and_the_trace_keeps_its_own(dtype):
    layers, x = stack(dtype, layers=3), inputs(dtype)
    trace = Trace()
    states = layers.states(x, trace=trace, backend="numpy")
    np.testing.assert_array_equal(states[-1], trace.layers[-1].residual_out)
    assert not np.shares_memory(states, trace.layers[-1].residual_out)
    for index, layer in enumerate(trace.layers):
        np.testing.assert_array_equal(states[index], layer.residual_in)
