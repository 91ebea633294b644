"""attnref.nn.blocks against the block equations written out (post-LN and
pre-LN), against torch.nn.TransformerEncoderLayer / TransformerDecoderLayer
when installed, and the stacks' invariants (causal prefix stability, padding,
dtype, seeding)."""
import numpy as np
import pytest

from attnref.masks import causal_mask, padding_mask
from attnref.nn import Decoder, DecoderBlock, Encoder, EncoderBlock, EncoderDecoder


def inputs(dtype, *shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def encoder_block_by_hand(block, x, mask=None):
    """Vaswani et al. 2017 (post-LN) or Xiong et al. 2020 (pre-LN), from the
    block's own sub-layers (each tested on its own in test_layers/test_attention)."""
    attention, ffn = block.attention, block.feed_forward
    ln1, ln2 = block.attention_norm, block.feed_forward_norm
    if block.norm_first:
        mid = x + attention(ln1(x), attn_mask=mask)
        return mid, mid + ffn(ln2(mid))
    mid = ln1(x + attention(x, attn_mask=mask))
    return mid, ln2(mid + ffn(mid))


def decoder_block_by_hand(block, x, memory, mask=None, memory_mask=None):
    L = x.shape[-2]
    allowed = causal_mask(L) if mask is None else causal_mask(L) & mask
    if block.norm_first:
        h = block.self_attention_norm(x)
        x = x + block.self_attention(h, attn_mask=allowed)
        x = x + block.cross_attention(block.cross_attention_norm(x), memory,
                                      attn_mask=memory_mask)
        return x, x + block.feed_forward(block.feed_forward_norm(x))
    x = block.self_attention_norm(x + block.self_attention(x, attn_mask=allowed))
    x = block.cross_attention_norm(x + block.cross_attention(x, memory, attn_mask=memory_mask))
    return x, block.feed_forward_norm(x + block.feed_forward(x))


norm_orders = pytest.mark.parametrize("norm_first", [False, True], ids=["post_ln", "pre_ln"])


# ---------------------------------------------------------------- block equations

@norm_orders
@pytest.mark.parametrize("kv_heads", [None, 1])
def test_encoder_block_follows_its_equations(norm_first, kv_heads, dtype, backend, assert_close):
    block = EncoderBlock.init(8, 2, 16, rng=np.random.default_rng(0), num_kv_heads=kv_heads,
                              norm_first=norm_first, dtype=dtype)
    x = inputs(dtype, 2, 5, 8)
    mask = padding_mask([5, 3], 5)
    out = block(x, attn_mask=mask, backend=backend)
    assert out.dtype == dtype and out.shape == x.shape
    assert_close(out, encoder_block_by_hand(block, x, mask)[1])


@norm_orders
def test_decoder_block_follows_its_equations(norm_first, dtype, backend, assert_close):
    block = DecoderBlock.init(8, 4, 16, rng=np.random.default_rng(1), norm_first=norm_first,
                              activation="relu", dtype=dtype)
    x, memory = inputs(dtype, 2, 4, 8), inputs(dtype, 2, 6, 8, seed=2)
    mask, memory_mask = padding_mask([4, 3], 4), padding_mask([6, 2], 6)
    out = block(x, memory, attn_mask=mask, memory_mask=memory_mask, backend=backend)
    assert out.dtype == dtype
    assert_close(out, decoder_block_by_hand(block, x, memory, mask, memory_mask)[1])


@norm_orders
def test_stacks_chain_their_blocks(norm_first, assert_close):
    encoder = Encoder.init(3, 8, 2, 16, seed=4, norm_first=norm_first, dtype=np.float64)
    decoder = Decoder.init(2, 8, 2, 16, seed=5, norm_first=norm_first, dtype=np.float64)
    assert (encoder.final_norm is not None) == norm_first  # pre-LN stacks end with a LayerNorm
    source, target = inputs(np.float64, 2, 5, 8), inputs(np.float64, 2, 3, 8, seed=2)
    memory = source
    for block in encoder.blocks:
        memory = encoder_block_by_hand(block, memory)[1]
    if norm_first:
        memory = encoder.final_norm(memory)
    assert_close(encoder(source), memory)
    y = target
    for block in decoder.blocks:
        y = decoder_block_by_hand(block, y, memory)[1]
    if norm_first:
        y = decoder.final_norm(y)
    assert_close(decoder(target, memory), y)


def test_encoder_decoder_is_decoder_of_encoder(assert_close):
    model = EncoderDecoder.init(2, 8, 2, 16, seed=3, dtype=np.float64)
    source, target = inputs(np.float64, 2, 6, 8), inputs(np.float64, 2, 4, 8, seed=2)
    source_mask, target_mask = padding_mask([6, 4], 6), padding_mask([4, 2], 4)
    memory = model.encoder(source, attn_mask=source_mask)
    expected = model.decoder(target, memory, attn_mask=target_mask, memory_mask=source_mask)
    assert_close(model(source, target, source_mask=source_mask, target_mask=target_mask),
                 expected)
    assert model.encoder.blocks[0].feed_forward.activation == "relu"  # the original paper's


# ---------------------------------------------------------------- invariants

@norm_orders
def test_decoder_prefix_is_stable(norm_first, backend, assert_close):
    """Appending target tokens never changes earlier outputs (causal self
    attention; cross attention and FFN act per position)."""
    model = EncoderDecoder.init(2, 8, 2, 16, seed=6, norm_first=norm_first, dtype=np.float64)
    source, target = inputs(np.float64, 2, 5, 8), inputs(np.float64, 2, 6, 8, seed=2)
    full = model(source, target, backend=backend)
    for length in range(1, 6):
        assert_close(model(source, target[:, :length], backend=backend), full[:, :length])
    changed = target.copy()
    # a random change: a constant shift of a row is invisible through LayerNorms
    changed[:, 4:] += 3 * inputs(np.float64, 2, 2, 8, seed=3)
    assert_close(model(source, changed, backend=backend)[:, :4], full[:, :4])
    assert np.abs(model(source, changed, backend=backend)[:, 4:] - full[:, 4:]).max() > 1e-3


@norm_orders
def test_encoder_ignores_padding(norm_first, backend, assert_close):
    """A padded sequence's real positions equal the unpadded sequence's output."""
    encoder = Encoder.init(2, 8, 4, 16, seed=7, norm_first=norm_first, dtype=np.float64)
    x = inputs(np.float64, 2, 6, 8)
    out = encoder(x, attn_mask=padding_mask([6, 4], 6), backend=backend)
    assert_close(out[1, :4], encoder(x[1:, :4], backend=backend)[0])
    assert_close(out[0], encoder(x[:1], backend=backend)[0])


def test_float64_parameters_give_float64_outputs():
    model = EncoderDecoder.init(1, 8, 2, 16, seed=0, dtype=np.float64)
    assert model.encoder.blocks[0].attention.w_q.weight.dtype == np.float64
    out = model(inputs(np.float64, 1, 3, 8), inputs(np.float64, 1, 2, 8))
    assert out.dtype == np.float64
    with pytest.raises(TypeError, match="input must have the parameters' dtype float64, "
                                        "got float32"):
        model(inputs(np.float32, 1, 3, 8), inputs(np.float32, 1, 2, 8))


def test_init_is_seeded():
    a = Encoder.init(2, 8, 2, 16, seed=11)
    b = Encoder.init(2, 8, 2, 16, seed=11)
    c = Encoder.init(2, 8, 2, 16, seed=12)
    x = inputs(np.float32, 1, 4, 8)
    assert np.array_equal(a(x), b(x))
    for block_a, block_b in zip(a.blocks, b.blocks):
        assert np.array_equal(block_a.attention.w_v.weight, block_b.attention.w_v.weight)
        assert np.array_equal(block_a.feed_forward.down.bias, block_b.feed_forward.down.bias)
    assert not np.array_equal(a.blocks[0].attention.w_q.weight, c.blocks[0].attention.w_q.weight)
    assert not np.array_equal(a.blocks[0].attention.w_q.weight, a.blocks[1].attention.w_q.weight)
    assert not np.allclose(a(x), c(x))


def test_init_rejects_bad_options():
    with pytest.raises(ValueError, match=r"activation must be one of .*got 'tanh'"):
        Encoder.init(1, 8, 2, 16, activation="tanh")
    with pytest.raises(ValueError, match="LayerNorm eps must be a positive finite number, got 0"):
        EncoderBlock.init(8, 2, 16, rng=np.random.default_rng(0), eps=0)
    with pytest.raises(ValueError, match=r"num_heads \(4\) must be a multiple of num_kv_heads "
                                         r"\(3\)"):
        Decoder.init(1, 8, 4, 16, num_kv_heads=3)


# ---------------------------------------------------------------- against torch

def torch_encoder_layer(torch, block, activation, copy_into_torch, dtype):
    D, F = block.feed_forward.up.in_features, block.feed_forward.up.out_features
    layer = torch.nn.TransformerEncoderLayer(
        D, block.attention.num_heads, F, dropout=0.0, activation=activation,
        layer_norm_eps=block.attention_norm.eps, batch_first=True, norm_first=block.norm_first,
        dtype=dtype)
    copy_into_torch(layer.self_attn, block.attention)
    copy_into_torch(layer.linear1, block.feed_forward.up)
    copy_into_torch(layer.linear2, block.feed_forward.down)
    copy_into_torch(layer.norm1, block.attention_norm)
    copy_into_torch(layer.norm2, block.feed_forward_norm)
    return layer.eval()


@norm_orders
@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_encoder_block_agrees_with_torch(norm_first, activation, dtype, backend, assert_close,
                                         copy_into_torch):
    torch = pytest.importorskip("torch")
    block = EncoderBlock.init(12, 3, 20, rng=np.random.default_rng(8), norm_first=norm_first,
                              activation=activation, dtype=dtype)
    x = inputs(dtype, 2, 5, 12)
    tx = torch.from_numpy(x)
    layer = torch_encoder_layer(torch, block, activation, copy_into_torch, tx.dtype)
    padding = padding_mask([5, 3], 5)
    with torch.no_grad():
        # torch's key padding mask marks padding with True; attnref marks what may be attended
        expected = layer(tx, src_key_padding_mask=torch.from_numpy(~padding[:, 0, 0])).numpy()
    out = block(x, attn_mask=padding, backend=backend)
    # torch's fast path leaves padded query rows at 0; compare the real positions
    assert_close(out[0], expected[0])
    assert_close(out[1, :3], expected[1, :3])
    with torch.no_grad():
        causal = layer(tx, src_mask=torch.nn.Transformer.generate_square_subsequent_mask(
            5, dtype=tx.dtype), is_causal=True).numpy()
    assert_close(block(x, is_causal=True, backend=backend), causal)


@norm_orders
def test_encoder_stack_agrees_with_torch(norm_first, assert_close, copy_into_torch):
    torch = pytest.importorskip("torch")
    encoder = Encoder.init(2, 8, 2, 16, seed=9, norm_first=norm_first, dtype=np.float64)
    layers = [torch_encoder_layer(torch, block, "gelu", copy_into_torch, torch.float64)
              for block in encoder.blocks]
    final = (None if encoder.final_norm is None else
             copy_into_torch(torch.nn.LayerNorm(8, dtype=torch.float64), encoder.final_norm))
    x = inputs(np.float64, 2, 5, 8)
    with torch.no_grad():
        h = torch.from_numpy(x)
        for layer in layers:
            h = layer(h)
        expected = (h if final is None else final(h)).numpy()
    assert_close(encoder(x), expected)


@norm_orders
@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_decoder_block_agrees_with_torch(norm_first, activation, dtype, backend, assert_close,
                                         copy_into_torch):
    torch = pytest.importorskip("torch")
    block = DecoderBlock.init(12, 4, 24, rng=np.random.default_rng(10), norm_first=norm_first,
                              activation=activation, dtype=dtype)
    layer = torch.nn.TransformerDecoderLayer(
        12, 4, 24, dropout=0.0, activation=activation, layer_norm_eps=1e-5, batch_first=True,
        norm_first=norm_first, dtype=torch.from_numpy(np.zeros(0, dtype)).dtype)
    for module, part in ((layer.self_attn, block.self_attention),
                         (layer.multihead_attn, block.cross_attention),
                         (layer.linear1, block.feed_forward.up),
                         (layer.linear2, block.feed_forward.down),
                         (layer.norm1, block.self_attention_norm),
                         (layer.norm2, block.cross_attention_norm),
                         (layer.norm3, block.feed_forward_norm)):
        copy_into_torch(module, part)
    layer.eval()
    x, memory = inputs(dtype, 2, 4, 12), inputs(dtype, 2, 6, 12, seed=2)
    memory_padding = padding_mask([6, 2], 6)
    with torch.no_grad():
        expected = layer(torch.from_numpy(x), torch.from_numpy(memory),
                         tgt_mask=torch.from_numpy(~causal_mask(4)),  # True = masked out
                         memory_key_padding_mask=torch.from_numpy(~memory_padding[:, 0, 0]),
                         tgt_is_causal=True).numpy()
    assert_close(block(x, memory, memory_mask=memory_padding, backend=backend), expected)
