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


def _attend(attention, x, context, attn_mask, is_causal, recording, backend):
    """``(output, record or None)`` of one attention sub-layer."""
    if recording:
        return attention(x, context, attn_mask=attn_mask, is_causal=is_causal, record=True)
    return attention(x, context, attn_mask=attn_mask, is_causal=is_causal,
                     backend=backend), None


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
        if self.norm_first:
            attended, record = _attend(self.attention, self.attention_norm(x), None,
                                       attn_mask, is_causal, recording, backend)
            mid = x + attended
            out = mid + self.feed_forward(self.feed_forward_norm(mid))
        else:
            attended, record = _attend(self.attention, x, None, attn_mask, is_causal,
                                       recording, backend)
            mid = self.attention_norm(x + attended)
            out = self.feed_forward_norm(mid + self.feed_forward(mid))
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
            if self.norm_first:
                normed = norm(x)
                attended, record = _attend(attention, normed, normed if context is None
                                           else context, mask, causal, recording, backend)
                x = x + attended
            else:
                attended, record = _attend(attention, x, context, mask, causal, recording,
                                           backend)
                x = norm(x + attended)
            records.append(record)
        mid = x
        if self.norm_first:
            out = mid + self.feed_forward(self.feed_forward_norm(mid))
        else:
            out = self.feed_forward_norm(mid + self.feed_forward(mid))
        if recording:
            trace.layers.append(LayerRecord(name, residual_in, mid, out, *records))
        return out


def _init_stack(block_class, num_layers, dim, num_heads, hidden, *, seed, norm_first,
                num_kv_heads, activation, dtype):
    """(blocks, final_norm) of a seeded stack; pre-LN stacks end with a LayerNorm."""
    rng = np.random.default_rng(seed)
    blocks = [block_class.init(dim, num_heads, hidden, rng=rng, num_kv_heads=num_kv_heads,
                               norm_first=norm_first, activation=activation, dtype=dtype)
              for _ in range(num_layers)]
    return blocks, LayerNorm.init(dim, dtype=dtype) if norm_first else None


class Encoder:
    """A stack of :class:`EncoderBlock` and an optional final LayerNorm (pre-LN stacks)."""

    def __init__(self, blocks, final_norm=None):
        self.blocks, self.final_norm = list(blocks), final_norm

    @classmethod
    def init(cls, num_layers, dim, num_heads, hidden, *, seed=0, norm_first=False,
             num_kv_heads=None, activation="gelu", dtype=np.float32):
        """Seeded random initialisation (PyTorch's defaults)."""
        return cls(*_init_stack(EncoderBlock, num_layers, dim, num_heads, hidden, seed=seed,
                                norm_first=norm_first, num_kv_heads=num_kv_heads,
                                activation=activation, dtype=dtype))

    def __call__(self, x, *, attn_mask=None, is_causal=False, trace=None, backend="auto"):
        """(..., T, D) -> (..., T, D)."""
        x = self.states(x, attn_mask=attn_mask, is_causal=is_causal, trace=trace,
                        backend=backend)[-1]
        return x if self.final_norm is None else self.final_norm(x)

    def states(self, x, *, attn_mask=None, is_causal=False, trace=None, backend="auto"):
        """The residual stream entering the first block and leaving each block,
        ``(blocks + 1, ..., T, D)`` (``output_hidden_states`` in transformers;
        without the final LayerNorm)."""
        states = [x]
        for index, block in enumerate(self.blocks):
            states.append(block(states[-1], attn_mask=attn_mask, is_causal=is_causal,
                                trace=trace, backend=backend, name=f"encoder.{index}"))
        return np.stack(states)


class Decoder:
    """A stack of :class:`DecoderBlock` and an optional final LayerNorm."""

    def __init__(self, blocks, final_norm=None):
        self.blocks, self.final_norm = list(blocks), final_norm

    @classmethod
    def init(cls, num_layers, dim, num_heads, hidden, *, seed=0, norm_first=False,
             num_kv_heads=None, activation="gelu", dtype=np.float32):
        """Seeded random initialisation (PyTorch's defaults)."""
        return cls(*_init_stack(DecoderBlock, num_layers, dim, num_heads, hidden, seed=seed,
                                norm_first=norm_first, num_kv_heads=num_kv_heads,
                                activation=activation, dtype=dtype))

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
