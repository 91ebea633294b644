r"""Multi-head attention with separate :math:`W^Q, W^K, W^V, W^O`.

.. math::
    \mathrm{MultiHead}(X, C) = \mathrm{Concat}(\mathrm{head}_1, \dots, \mathrm{head}_H) W^O,
    \quad \mathrm{head}_h = \mathrm{Attention}(X W_h^Q, C W_h^K, C W_h^V)

(Vaswani et al. 2017, §3.2.2; seed note *attention-math-foundations*,
"Variantes e Extensões": "Atenção Multi-Cabeça"). ``C = X`` for self
attention; for cross attention ``C`` is the encoder output. With
``num_kv_heads < num_heads`` the key/value heads are shared in groups
(grouped-query attention, Ainslie et al. 2023): query head ``h`` reads kv
head ``h // (Hq // Hkv)``.

Shapes: ``x`` ``(..., L, D)``, ``context`` ``(..., S, Dc)``, per-head
``E = W^Q.out / Hq``, ``Ev = W^V.out / Hkv``; the output is ``(..., L, D)``.
"""
from __future__ import annotations

import numpy as np

from ..core import scaled_dot_product_attention
from .layers import Linear
from .trace import AttentionRecord

__all__ = ["MultiHeadAttention", "split_heads", "merge_heads"]


def split_heads(x, num_heads):
    """(..., T, H*E) -> (..., H, T, E)."""
    *lead, T, width = x.shape
    return np.moveaxis(x.reshape(*lead, T, num_heads, width // num_heads), -2, -3)


def merge_heads(x):
    """(..., H, T, E) -> (..., T, H*E)."""
    *lead, H, T, E = x.shape
    return np.moveaxis(x, -3, -2).reshape(*lead, T, H * E)


class MultiHeadAttention:
    """Multi-head (or grouped-query) attention on top of
    :func:`attnref.scaled_dot_product_attention`."""

    def __init__(self, w_q, w_k, w_v, w_o, num_heads, num_kv_heads=None):
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        for name, value in (("num_heads", num_heads), ("num_kv_heads", num_kv_heads)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads "
                             f"({num_kv_heads})")
        for name, projection, heads in (("w_q", w_q, num_heads), ("w_k", w_k, num_kv_heads),
                                        ("w_v", w_v, num_kv_heads)):
            if not isinstance(projection, Linear):
                raise TypeError(f"{name} must be an attnref.nn.Linear, got {type(projection)}")
            if projection.out_features % heads:
                raise ValueError(f"{name} has {projection.out_features} outputs, not a multiple "
                                 f"of its {heads} heads")
        if w_k.out_features // num_kv_heads != w_q.out_features // num_heads:
            raise ValueError(f"query and key head sizes differ: w_q gives "
                             f"{w_q.out_features // num_heads} per head, w_k "
                             f"{w_k.out_features // num_kv_heads}")
        if w_k.in_features != w_v.in_features:
            raise ValueError(f"w_k and w_v must read the same context width, got "
                             f"{w_k.in_features} and {w_v.in_features}")
        value_width = num_heads * (w_v.out_features // num_kv_heads)
        if not isinstance(w_o, Linear) or w_o.in_features != value_width:
            raise ValueError(f"w_o must be a Linear taking {value_width} = num_heads x Ev "
                             f"features, got {getattr(w_o, 'in_features', type(w_o))}")
        self.w_q, self.w_k, self.w_v, self.w_o = w_q, w_k, w_v, w_o
        self.num_heads, self.num_kv_heads = int(num_heads), int(num_kv_heads)

    @classmethod
    def init(cls, dim, num_heads, *, rng, num_kv_heads=None, context_dim=None, bias=True,
             dtype=np.float32):
        """Square projections of width ``dim`` (kv width ``dim * Hkv / Hq``)."""
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        context_dim = dim if context_dim is None else context_dim
        kv_width = dim // num_heads * num_kv_heads
        return cls(Linear.init(dim, dim, rng=rng, bias=bias, dtype=dtype),
                   Linear.init(context_dim, kv_width, rng=rng, bias=bias, dtype=dtype),
                   Linear.init(context_dim, kv_width, rng=rng, bias=bias, dtype=dtype),
                   Linear.init(dim, dim, rng=rng, bias=bias, dtype=dtype),
                   num_heads, num_kv_heads)

    def __call__(self, x, context=None, *, attn_mask=None, is_causal=False, record=False,
                 backend="auto"):
        """Attend from ``x`` (..., L, D) to ``context`` (..., S, Dc), default ``x``.

        ``attn_mask`` broadcasts to ``(..., H, L, S)`` (bool: True = may
        attend), e.g. :func:`attnref.masks.padding_mask`. With ``record=True``
        returns ``(output, AttentionRecord)``; the weights then come from the
        NumPy backend, which is the only one that materialises them.
        """
        context = x if context is None else context
        query = split_heads(self.w_q(x), self.num_heads)           # (..., Hq, L, E)
        key = split_heads(self.w_k(context), self.num_kv_heads)    # (..., Hkv, S, E)
        value = split_heads(self.w_v(context), self.num_kv_heads)  # (..., Hkv, S, Ev)
        result = scaled_dot_product_attention(
            query, key, value, attn_mask, 0.0, is_causal,
            enable_gqa=self.num_kv_heads != self.num_heads, return_weights=bool(record),
            backend="numpy" if record else backend)
        if not record:
            return self.w_o(merge_heads(result))
        heads = result.output                                     # (..., Hq, L, Ev)
        output = self.w_o(merge_heads(heads))                     # (..., L, D)
        D, Ev = self.w_o.out_features, heads.shape[-1]
        w_o = self.w_o.weight.reshape(D, self.num_heads, Ev).transpose(1, 2, 0)  # (Hq, Ev, D)
        contributions = np.einsum("...hle,hed->...hld", heads, w_o)  # (..., Hq, L, D)
        values = np.repeat(value, self.num_heads // self.num_kv_heads, axis=-3)
        return output, AttentionRecord(result.weights, values, heads, contributions, w_o,
                                       self.w_o.bias)
