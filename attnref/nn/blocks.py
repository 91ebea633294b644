r"""Encoder and decoder blocks and their stacks (Vaswani et al. 2017, §3.1;
seed note *transformer-architecture*, "Stack de Encoders e Decoders").

Post-LN, as the original paper and BERT (``norm_first=False``)::

    x = LN(x + SelfAttention(x))
    x = LN(x + FFN(x))

Pre-LN, as GPT-2 and Xiong et al. 2020 (``norm_first=True``)::

    x = x + SelfAttention(LN(x))
    x = x + FFN(LN(x))

A decoder block puts masked (causal) self attention, then cross attention to
the encoder's output ("memory"), then the FFN, each with its residual and
LayerNorm. Activations are ``(..., T, D)``; every call takes ``trace=`` (a
:class:`~attnref.nn.trace.Trace`) to record what its heads do.
"""
from __future__ import annotations

import numpy as np

from .attention import MultiHeadAttention
from .layers import FeedForward, LayerNorm
from .trace import LayerRecord

__all__ = ["EncoderBlock", "DecoderBlock", "Encoder", "Decoder", "EncoderDecoder"]


def _attention_sublayer(block, attention, norm, x, context, attn_mask, is_causal, recording,
                        backend):
    """``(x after the sub-layer, record or None)``: attention with its residual
    and LayerNorm, pre-LN or post-LN as ``block.norm_first`` says."""
    attend_from = norm(x) if block.norm_first else x
    if recording:
        attended, record = attention(attend_from, context, attn_mask=attn_mask,
                                     is_causal=is_causal, record=True)
    else:
        attended, record = attention(attend_from, context, attn_mask=attn_mask,
                                     is_causal=is_causal, backend=backend), None
    return (x + attended if block.norm_first else norm(x + attended)), record


def _feed_forward_sublayer(block, x):
    """The feed-forward sub-layer with its residual and LayerNorm."""
    if block.norm_first:
        return x + block.feed_forward(block.feed_forward_norm(x))
    return block.feed_forward_norm(x + block.feed_forward(x))


class EncoderBlock:
    """Self attention and FFN, each in a residual connection with a LayerNorm."""

    def __init__(self, attention, attention_norm, feed_forward, feed_forward_norm, *,
                 norm_first=False):
        self.attention, self.attention_norm = attention, attention_norm
        self.feed_forward, self.feed_forward_norm = feed_forward, feed_forward_norm
        self.norm_first = bool(norm_first)

    @classmethod
    def init(cls, dim, num_heads, hidden, *, rng, num_kv_heads=None, norm_first=False,
             activation="gelu", eps=1e-5, dtype=np.float32):
        return cls(MultiHeadAttention.init(dim, num_heads, rng=rng, num_kv_heads=num_kv_heads,
                                           dtype=dtype),
                   LayerNorm.init(dim, eps=eps, dtype=dtype),
                   FeedForward.init(dim, hidden, rng=rng, activation=activation, dtype=dtype),
                   LayerNorm.init(dim, eps=eps, dtype=dtype), norm_first=norm_first)

    def __call__(self, x, *, attn_mask=None, is_causal=False, trace=None, backend="auto",
                 name="encoder"):
        """(..., T, D) -> (..., T, D)."""
        recording = trace is not None
        mid, record = _attention_sublayer(self, self.attention, self.attention_norm, x, None,
                                          attn_mask, is_causal, recording, backend)
        out = _feed_forward_sublayer(self, mid)
        if recording:
            trace.layers.append(LayerRecord(name, x, mid, out, record))
        return out


class DecoderBlock:
    """Causal self attention, cross attention to the memory, FFN; each in a
    residual connection with a LayerNorm."""

    def __init__(self, self_attention, self_attention_norm, cross_attention,
                 cross_attention_norm, feed_forward, feed_forward_norm, *, norm_first=False):
        self.self_attention, self.self_attention_norm = self_attention, self_attention_norm
        self.cross_attention, self.cross_attention_norm = cross_attention, cross_attention_norm
        self.feed_forward, self.feed_forward_norm = feed_forward, feed_forward_norm
        self.norm_first = bool(norm_first)

    @classmethod
    def init(cls, dim, num_heads, hidden, *, rng, num_kv_heads=None, norm_first=False,
             activation="gelu", eps=1e-5, dtype=np.float32):
        def norm():
            return LayerNorm.init(dim, eps=eps, dtype=dtype)
        return cls(MultiHeadAttention.init(dim, num_heads, rng=rng, num_kv_heads=num_kv_heads,
                                           dtype=dtype), norm(),
                   MultiHeadAttention.init(dim, num_heads, rng=rng, num_kv_heads=num_kv_heads,
                                           dtype=dtype), norm(),
                   FeedForward.init(dim, hidden, rng=rng, activation=activation, dtype=dtype),
                   norm(), norm_first=norm_first)

    def __call__(self, x, memory, *, attn_mask=None, memory_mask=None, trace=None,
                 backend="auto", name="decoder"):
        """``x`` (..., L, D) attends causally to itself and to ``memory`` (..., S, D).

        ``attn_mask`` is added to the causal mask of the self attention
        (e.g. target padding); ``memory_mask`` masks the cross attention
        (e.g. source padding, ``(..., 1, 1, S)``).
        """
        recording, residual_in = trace is not None, x
        sublayers = ((self.self_attention, self.self_attention_norm, None, attn_mask, True),
                     (self.cross_attention, self.cross_attention_norm, memory, memory_mask,
                      False))
        records = []
        for attention, norm, context, mask, causal in sublayers:
            x, record = _attention_sublayer(self, attention, norm, x, context, mask, causal,
                                            recording, backend)
            records.append(record)
        mid = x
        out = _feed_forward_sublayer(self, mid)
        if recording:
            trace.layers.append(LayerRecord(name, residual_in, mid, out, *records))
        return out


class _Stack:
    """Blocks of one kind and an optional final LayerNorm (pre-LN stacks)."""
    block_class = None

    def __init__(self, blocks, final_norm=None):
        self.blocks, self.final_norm = list(blocks), final_norm

    @classmethod
    def init(cls, num_layers, dim, num_heads, hidden, *, seed=0, norm_first=False,
             num_kv_heads=None, activation="gelu", dtype=np.float32):
        """Seeded random initialisation (PyTorch's defaults); pre-LN stacks end
        with a LayerNorm."""
        rng = np.random.default_rng(seed)
        blocks = [cls.block_class.init(dim, num_heads, hidden, rng=rng, num_kv_heads=num_kv_heads,
                                       norm_first=norm_first, activation=activation,
                                       dtype=dtype)
                  for _ in range(num_layers)]
        return cls(blocks, LayerNorm.init(dim, dtype=dtype) if norm_first else None)


class Encoder(_Stack):
    """A stack of :class:`EncoderBlock` and an optional final LayerNorm (pre-LN stacks)."""
    block_class = EncoderBlock

    def __call__(self, x, *, attn_mask=None, is_causal=False, trace=None, backend="auto"):
        """(..., T, D) -> (..., T, D)."""
        for x in self._states(x, attn_mask, is_causal, trace, backend):
            pass  # run every block; unlike states(), keep only the last state
        return x if self.final_norm is None else self.final_norm(x)

    def states(self, x, *, attn_mask=None, is_causal=False, trace=None, backend="auto"):
        """The residual stream entering the first block and leaving each block,
        ``(blocks + 1, ..., T, D)`` (``output_hidden_states`` in transformers;
        without the final LayerNorm)."""
        return np.stack(list(self._states(x, attn_mask, is_causal, trace, backend)))

    def _states(self, x, attn_mask, is_causal, trace, backend):
        yield x
        for index, block in enumerate(self.blocks):
            x = block(x, attn_mask=attn_mask, is_causal=is_causal, trace=trace,
                      backend=backend, name=f"encoder.{index}")
            yield x


class Decoder(_Stack):
    """A stack of :class:`DecoderBlock` and an optional final LayerNorm."""
    block_class = DecoderBlock

    def __call__(self, x, memory, *, attn_mask=None, memory_mask=None, trace=None,
                 backend="auto"):
        """(..., L, D) and memory (..., S, D) -> (..., L, D)."""
        for index, block in enumerate(self.blocks):
            x = block(x, memory, attn_mask=attn_mask, memory_mask=memory_mask, trace=trace,
                      backend=backend, name=f"decoder.{index}")
        return x if self.final_norm is None else self.final_norm(x)


class EncoderDecoder:
    """The original Transformer's two stacks (Vaswani et al. 2017, Figure 1),
    from embedded inputs to the decoder's output vectors."""

    def __init__(self, encoder, decoder):
        self.encoder, self.decoder = encoder, decoder

    @classmethod
    def init(cls, num_layers, dim, num_heads, hidden, *, seed=0, norm_first=False,
             activation="relu", dtype=np.float32):
        options = dict(norm_first=norm_first, activation=activation, dtype=dtype)
        return cls(Encoder.init(num_layers, dim, num_heads, hidden, seed=seed, **options),
                   Decoder.init(num_layers, dim, num_heads, hidden, seed=seed + 1, **options))

    def __call__(self, source, target, *, source_mask=None, target_mask=None, trace=None,
                 backend="auto"):
        """``source`` (..., S, D), ``target`` (..., L, D) -> (..., L, D).

        ``source_mask`` (e.g. source padding, ``(..., 1, 1, S)``) masks the
        encoder's self attention and the decoder's cross attention;
        ``target_mask`` is added to the decoder's causal self attention.
        """
        memory = self.encoder(source, attn_mask=source_mask, trace=trace, backend=backend)
        return self.decoder(target, memory, attn_mask=target_mask, memory_mask=source_mask,
                            trace=trace, backend=backend)
