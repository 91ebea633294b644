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

Two hooks serve decoder LLMs: ``rotary`` (a :class:`~attnref.nn.rotary.Rotary`)
turns query and key heads by their positions before the scores, and a
:class:`KVCache` keeps the keys and values of the positions already seen, so
that generating token ``t`` attends from one query (``L = 1``) to all ``t + 1``
keys with the causal diagonal at the bottom right.
"""
from __future__ import annotations

import numpy as np

from ..core import scaled_dot_product_attention
from .layers import Linear, stack_outputs
from .rotary import Rotary
from .trace import AttentionRecord

__all__ = ["MultiHeadAttention", "KVCache", "split_heads", "merge_heads"]


def split_heads(x, num_heads):
    """(..., T, H*E) -> (..., H, T, E)."""
    *lead, T, width = x.shape
    return np.moveaxis(x.reshape(*lead, T, num_heads, width // num_heads), -2, -3)


def merge_heads(x):
    """(..., H, T, E) -> (..., T, H*E): a view when ``x`` is ``(..., T, H, E)``
    in memory (the C kernel's output for query heads cut from one
    projection, see :func:`attnref.kernel.attention`), else a copy."""
    *lead, H, T, E = x.shape
    return np.moveaxis(x, -3, -2).reshape(*lead, T, H * E)


class KVCache:
    """The keys and values (after RoPE) one self-attention layer has seen.

    :meth:`extend` appends ``(..., Hkv, L, E)`` keys and ``(..., Hkv, L, Ev)``
    values along the position axis and returns all of them so far; the
    buffers double when full, so ``T`` single-token steps copy O(T) rows in
    all, not O(T^2). ``length`` is how many positions are stored.
    """

    def __init__(self):
        self.length = 0
        self._key = self._value = None  # (..., Hkv, capacity, E), (..., Hkv, capacity, Ev)

    def extend(self, key, value):
        """Append ``key`` (..., Hkv, L, E) and ``value`` (..., Hkv, L, Ev); return
        the stored ``(..., Hkv, length, E)`` keys and ``(..., Hkv, length, Ev)`` values."""
        needed = self.length + key.shape[-2]
        if value.shape[:-1] != key.shape[:-1] or value.dtype != key.dtype:
            raise ValueError(f"KVCache needs keys (..., Hkv, L, E) and values (..., Hkv, L, Ev) "
                             f"of one dtype, got {key.shape} {key.dtype} and {value.shape} "
                             f"{value.dtype}")
        if self._key is not None and (key.shape[:-2] != self._key.shape[:-2]
                                      or key.shape[-1] != self._key.shape[-1]
                                      or value.shape[-1] != self._value.shape[-1]
                                      or key.dtype != self._key.dtype):
            raise ValueError(f"KVCache holds keys {self._key.shape[:-2]} x (S, "
                             f"{self._key.shape[-1]}) of {self._key.dtype}; cannot append "
                             f"{key.shape} of {key.dtype}")
        if self._key is None or needed > self._key.shape[-2]:
            capacity = max(needed, 2 * (0 if self._key is None else self._key.shape[-2]))
            self._key = self._grown(self._key, key, capacity)
            self._value = self._grown(self._value, value, capacity)
        self._key[..., self.length:needed, :] = key
        self._value[..., self.length:needed, :] = value
        self.length = needed
        return self._key[..., :needed, :], self._value[..., :needed, :]

    def _grown(self, buffer, new, capacity):
        grown = np.empty(new.shape[:-2] + (capacity, new.shape[-1]), new.dtype)
        if buffer is not None:
            grown[..., :self.length, :] = buffer[..., :self.length, :]
        return grown


class MultiHeadAttention:
    """Multi-head (or grouped-query) attention on top of
    :func:`attnref.scaled_dot_product_attention`."""

    def __init__(self, w_q, w_k, w_v, w_o, num_heads, num_kv_heads=None, *, rotary=None):
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
        head_dim = w_q.out_features // num_heads
        if rotary is not None and not (isinstance(rotary, Rotary) and rotary.head_dim == head_dim):
            raise ValueError(f"rotary must be an attnref.nn.Rotary for head_dim {head_dim}, "
                             f"got {rotary!r}")
        stacked = stack_outputs(w_q, w_k, w_v)
        self.w_qkv = None if stacked is None else stacked[0]  # (Dq + Dk + Dv, D): one product
        self._w_q, self._w_k, self._w_v = (w_q, w_k, w_v) if stacked is None else stacked[1]
        self.w_o, self.rotary = w_o, rotary
        self.num_heads, self.num_kv_heads = int(num_heads), int(num_kv_heads)

    @property
    def w_q(self):
        """W^Q, ``(Hq*E, D)`` (rows of ``w_qkv`` when that is set)."""
        return self._w_q

    @property
    def w_k(self):
        """W^K, ``(Hkv*E, Dc)`` (rows of ``w_qkv`` when that is set)."""
        return self._w_k

    @property
    def w_v(self):
        """W^V, ``(Hkv*Ev, Dc)`` (rows of ``w_qkv`` when that is set)."""
        return self._w_v

    @classmethod
    def init(cls, dim, num_heads, *, rng, num_kv_heads=None, context_dim=None, bias=True,
             rotary=None, dtype=np.float32):
        """Square projections of width ``dim`` (kv width ``dim * Hkv / Hq``)."""
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        context_dim = dim if context_dim is None else context_dim
        kv_width = dim // num_heads * num_kv_heads
        return cls(Linear.init(dim, dim, rng=rng, bias=bias, dtype=dtype),
                   Linear.init(context_dim, kv_width, rng=rng, bias=bias, dtype=dtype),
                   Linear.init(context_dim, kv_width, rng=rng, bias=bias, dtype=dtype),
                   Linear.init(dim, dim, rng=rng, bias=bias, dtype=dtype),
                   num_heads, num_kv_heads, rotary=rotary)

    def __call__(self, x, context=None, *, attn_mask=None, is_causal=False, record=False,
                 backend="auto", cache=None, scores="exact"):
        """Attend from ``x`` (..., L, D) to ``context`` (..., S, Dc), default ``x``.

        ``attn_mask`` broadcasts to ``(..., H, L, S)`` (bool: True = may
        attend), e.g. :func:`attnref.masks.padding_mask`. With ``record=True``
        returns ``(output, AttentionRecord)``; the weights then come from the
        NumPy backend, which is the only one that materialises them.

        ``cache`` (a :class:`KVCache`, self attention only): ``x`` holds the
        positions ``cache.length .. cache.length + L - 1``; its keys and
        values are appended and the queries attend to all stored ones
        (``S = cache.length`` after the call), the causal diagonal aligned
        bottom-right. Without a cache the positions start at 0.

        ``scores`` is :func:`attnref.scaled_dot_product_attention`'s, for
        the C kernel (``"fast"``: plain float sums of the score dot
        products); a recording call runs the NumPy reference, which has one
        mode.

        Self attention projects Q, K and V with one matrix product
        (``w_qkv``); the heads are views of it, and ``rotary`` turns the
        query and key heads in place.
        """
        if cache is not None and context is not None:
            raise ValueError("cache is for self attention; it cannot be used with a context")
        context = x if context is None else context
        offset = 0 if cache is None else cache.length
        if context is x and self.w_qkv is not None:
            projected = self.w_qkv(x)                              # (..., L, Dq + Dk + Dv)
            ends = np.cumsum([self.w_q.out_features, self.w_k.out_features])
            query, key, value = (projected[..., :ends[0]], projected[..., ends[0]:ends[1]],
                                 projected[..., ends[1]:])
        else:
            query, key, value = self.w_q(x), self.w_k(context), self.w_v(context)
        query = split_heads(query, self.num_heads)                # (..., Hq, L, E)
        key = split_heads(key, self.num_kv_heads)                 # (..., Hkv, S, E)
        value = split_heads(value, self.num_kv_heads)             # (..., Hkv, S, Ev)
        if self.rotary is not None:      # the projections are new arrays: turn them in place
            self.rotary(query, offset, out=query)
            self.rotary(key, offset, out=key)
        if cache is not None:
            key, value = cache.extend(key, value)                  # (..., Hkv, offset + L, E)
        result = scaled_dot_product_attention(
            query, key, value, attn_mask, 0.0, is_causal,
            enable_gqa=self.num_kv_heads != self.num_heads, return_weights=bool(record),
            backend="numpy" if record else backend,
            causal_alignment="top_left" if cache is None else "bottom_right", scores=scores)
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
