r"""The Llama decoder block and stack (Touvron et al. 2023, "LLaMA", §2.2):
a pre-norm causal transformer with RMSNorm, rotary positions, grouped-query
attention and a SiLU-gated feed-forward block, no biases::

    x = x + SelfAttention(RMSNorm(x))      # causal, RoPE on q and k, GQA
    x = x + SwiGLU(RMSNorm(x))

(seed note *transformer-architecture*; the residual stream as in seed note
*heads-as-information-movers*). The stack ends with a final RMSNorm, applied
by the model before its LM head. Activations are ``(..., T, D)``; a
:class:`~attnref.nn.trace.Trace` passed as ``trace=`` records every layer as
the encoder does, and a list of :class:`~attnref.nn.attention.KVCache`, one
per block, turns a call into the next step of generation.
"""
from __future__ import annotations

import numpy as np

from .attention import KVCache, MultiHeadAttention
from .layers import GatedFeedForward, RMSNorm
from .rotary import Rotary
from .trace import LayerRecord

__all__ = ["LlamaBlock", "LlamaStack"]


class LlamaBlock:
    """Causal self attention and a gated FFN, each pre-normed in a residual connection."""

    def __init__(self, attention, attention_norm, feed_forward, feed_forward_norm):
        if not isinstance(attention, MultiHeadAttention):
            raise TypeError(f"attention must be an attnref.nn.MultiHeadAttention, got "
                            f"{type(attention).__name__}")
        self.attention, self.attention_norm = attention, attention_norm
        self.feed_forward, self.feed_forward_norm = feed_forward, feed_forward_norm

    @classmethod
    def init(cls, dim, num_heads, hidden, *, rng, num_kv_heads=None, rope_base=10000.0,
             eps=1e-6, dtype=np.float32):
        """Random projections (PyTorch's Linear default), unit norms, no biases."""
        rotary = Rotary(dim // num_heads, base=rope_base)
        return cls(MultiHeadAttention.init(dim, num_heads, rng=rng, num_kv_heads=num_kv_heads,
                                           bias=False, rotary=rotary, dtype=dtype),
                   RMSNorm.init(dim, eps=eps, dtype=dtype),
                   GatedFeedForward.init(dim, hidden, rng=rng, dtype=dtype),
                   RMSNorm.init(dim, eps=eps, dtype=dtype))

    def __call__(self, x, *, cache=None, trace=None, backend="auto", name="decoder",
                 scores="exact", out=None):
        """(..., T, D) -> (..., T, D); ``x`` starts at position ``cache.length`` (0 without).

        ``backend`` and ``scores`` go to the attention (see
        :meth:`MultiHeadAttention.__call__`; a ``trace`` records the weights,
        so its attention runs the NumPy reference). ``out``: an array of
        ``x``'s shape and dtype to write the result into (not ``x``); the
        residual sums are otherwise computed in the sub-layers' new outputs.
        """
        record = trace is not None
        attended = self.attention(self.attention_norm(x), is_causal=True, cache=cache,
                                  record=record, backend=backend, scores=scores)
        if record:
            attended, attention_record = attended
        mid = attended                                            # a new array: add in place
        mid += x
        transformed = self.feed_forward(self.feed_forward_norm(mid))
        if out is None:
            transformed += mid
            out = transformed
        else:
            np.add(mid, transformed, out=out)
        if record:
            trace.layers.append(LayerRecord(name, x, mid, out, attention_record))
        return out


class LlamaStack:
    """:class:`LlamaBlock` s and the final RMSNorm.

    Calling the stack returns the residual stream after the last block,
    *before* the final norm (:meth:`states` gives every layer's); apply
    ``final_norm`` and an LM head for logits.
    """

    def __init__(self, blocks, final_norm):
        self.blocks, self.final_norm = list(blocks), final_norm
        if not all(isinstance(block, LlamaBlock) for block in self.blocks):
            raise TypeError("blocks must be attnref.nn.LlamaBlock instances")

    @classmethod
    def init(cls, num_layers, dim, num_heads, hidden, *, seed=0, num_kv_heads=None,
             rope_base=10000.0, eps=1e-6, dtype=np.float32):
        """Seeded random initialisation."""
        rng = np.random.default_rng(seed)
        blocks = [LlamaBlock.init(dim, num_heads, hidden, rng=rng, num_kv_heads=num_kv_heads,
                                  rope_base=rope_base, eps=eps, dtype=dtype)
                  for _ in range(num_layers)]
        return cls(blocks, RMSNorm.init(dim, eps=eps, dtype=dtype))

    def new_cache(self):
        """One empty :class:`KVCache` per block, for :meth:`__call__`'s ``cache``."""
        return [KVCache() for _ in self.blocks]

    def __call__(self, x, *, cache=None, trace=None, backend="auto", scores="exact"):
        """(..., T, D) -> (..., T, D), the residual stream leaving the last block."""
        self._check_cache(cache)
        for index, block in enumerate(self.blocks):
            x = block(x, cache=None if cache is None else cache[index], trace=trace,
                      backend=backend, name=f"decoder.{index}", scores=scores)
        return x

    def states(self, x, *, cache=None, trace=None, backend="auto", scores="exact"):
        """``(blocks + 1, ..., T, D)``: the residual stream entering each block,
        then leaving the last one (no final norm).

        Each block but the last writes its output straight into the result
        (no stacking copy); the last one is copied in, so a trace's last
        ``residual_out`` is an array of its own.
        """
        self._check_cache(cache)
        x = np.asarray(x)
        states = np.empty((len(self.blocks) + 1,) + x.shape, x.dtype)
        states[0] = x
        for index, block in enumerate(self.blocks):
            last = index == len(self.blocks) - 1
            x = block(states[index], cache=None if cache is None else cache[index],
                      trace=trace, backend=backend, name=f"decoder.{index}", scores=scores,
                      out=None if last else states[index + 1])
        states[-1] = x
        return states

    def _check_cache(self, cache):
        if cache is not None and len(cache) != len(self.blocks):
            raise ValueError(f"cache must hold one KVCache per block ({len(self.blocks)}), "
                             f"got {len(cache)}")
