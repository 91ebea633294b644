"""The transformer pieces around attention, as a readable NumPy reference.

:mod:`~attnref.nn.layers` (Linear, Embedding, positions, LayerNorm, GELU,
FeedForward), :mod:`~attnref.nn.attention` (multi-head and grouped-query
attention), :mod:`~attnref.nn.blocks` (encoder and decoder blocks and
stacks), :mod:`~attnref.nn.trace` (what every head did). Seed notes
*transformer-architecture* and *heads-as-information-movers*.
"""
from .attention import MultiHeadAttention, merge_heads, split_heads
from .blocks import Decoder, DecoderBlock, Encoder, EncoderBlock, EncoderDecoder
from .layers import (ACTIVATIONS, Embedding, FeedForward, LayerNorm, LearnedPositions, Linear,
                     gelu, gelu_tanh, relu, sinusoidal_positions)
from .trace import AttentionRecord, LayerRecord, Trace

__all__ = [
    "Linear", "Embedding", "LearnedPositions", "LayerNorm", "FeedForward", "ACTIVATIONS",
    "gelu", "gelu_tanh", "relu", "sinusoidal_positions",
    "MultiHeadAttention", "split_heads", "merge_heads",
    "EncoderBlock", "DecoderBlock", "Encoder", "Decoder", "EncoderDecoder",
    "Trace", "LayerRecord", "AttentionRecord",
]
