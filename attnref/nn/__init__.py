"""The transformer pieces around attention, as a readable NumPy reference.

:mod:`~attnref.nn.layers` (Linear, Embedding, positions, LayerNorm, GELU,
FeedForward), :mod:`~attnref.nn.attention` (multi-head and grouped-query
attention), :mod:`~attnref.nn.blocks` (encoder and decoder blocks and
stacks), :mod:`~attnref.nn.rotary` (RoPE), :mod:`~attnref.nn.llama` (the
Llama decoder block and stack), :mod:`~attnref.nn.trace` (what every head did). Seed notes
*transformer-architecture* and *heads-as-information-movers*.
"""
from .attention import KVCache, MultiHeadAttention, merge_heads, split_heads
from .blocks import Decoder, DecoderBlock, Encoder, EncoderBlock, EncoderDecoder
from .layers import (ACTIVATIONS, Embedding, FeedForward, GatedFeedForward, LayerNorm,
                     LearnedPositions, Linear, RMSNorm, gelu, gelu_tanh, relu, silu,
                     sinusoidal_positions)
from .llama import LlamaBlock, LlamaStack
from .rotary import (Rotary, apply_rotary, interleaved_to_rotate_half, rotary_angles,
                     rotate_half_to_interleaved)
from .trace import AttentionRecord, LayerRecord, Trace

__all__ = [
    "Linear", "Embedding", "LearnedPositions", "LayerNorm", "FeedForward", "ACTIVATIONS",
    "RMSNorm", "GatedFeedForward", "silu",
    "gelu", "gelu_tanh", "relu", "sinusoidal_positions",
    "Rotary", "rotary_angles", "apply_rotary", "rotate_half_to_interleaved",
    "interleaved_to_rotate_half",
    "MultiHeadAttention", "KVCache", "split_heads", "merge_heads",
    "LlamaBlock", "LlamaStack",
    "EncoderBlock", "DecoderBlock", "Encoder", "Decoder", "EncoderDecoder",
    "Trace", "LayerRecord", "AttentionRecord",
]
