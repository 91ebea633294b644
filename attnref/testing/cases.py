"""Named, reproducible conformance cases.

A :class:`Case` describes shapes and conditions; :meth:`Case.inputs` turns it
into arrays from ``(name, seed)`` alone, so any case of any suite can be
rebuilt anywhere: ``SUITES[suite][name].inputs(seed, dtype)``.

Masks are built here in attnref's polarity (bool ``True`` = may attend); a
semantics profile (:mod:`attnref.testing.semantics`) translates them for the
implementation under test.

Capabilities a case needs (an implementation that does not claim one has the
case skipped, and listed, rather than failed):

``l_ne_s``            query and key lengths differ
``e_ne_ev``           value head dim differs from query/key head dim
``gqa``               fewer key/value heads than query heads (``enable_gqa``)
``bool_mask``         a boolean ``attn_mask``
``float_mask``        an additive float ``attn_mask``
``causal``            ``is_causal=True``
``mask_with_causal``  ``attn_mask`` and ``is_causal`` together
``fully_masked_rows`` query rows with no visible key
``empty``             L = 0 or S = 0
``scale``             an explicit ``scale``
``per_head_mask``     a mask with its own entries per head, (B, Hq, L, S)
``query_longer``      more queries than keys (L > S)
``odd_head_dim``      E or Ev not a multiple of 8
``softcap``           a ``softcap=c`` keyword (scores become ``c tanh(s / c)``)
``window``            a ``window=(left, right)`` keyword (sliding window)
``float16``           float16 inputs (asked for by the run's dtype, not the case)
``bfloat16``          bfloat16 inputs (``ml_dtypes.bfloat16``)
``float64``           float64 inputs

A case passes ``softcap`` and ``window`` to the implementation only when it
sets them, so a function with the plain torch SDPA signature runs every case
that does not.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np

from .. import masks

DTYPE_CAPABILITIES = frozenset({"float16", "bfloat16", "float64"})
CAPABILITIES = frozenset({
    "l_ne_s", "e_ne_ev", "gqa", "bool_mask", "float_mask", "causal", "mask_with_causal",
    "fully_masked_rows", "empty", "scale", "per_head_mask", "query_longer", "odd_head_dim",
    "softcap", "window"}) | DTYPE_CAPABILITIES
MASK_KINDS = ("none", "bool", "float", "float_neg_inf", "padding", "padding_with_empty",
              "per_head", "window", "fully_masked_rows", "fully_masked_neg_inf",
              "finfo_min_rows")
CONTENTS = ("normal", "huge_scores", "near_ties", "nan_behind_mask", "big_behind_mask")


@dataclass(frozen=True)
class Case:
    """One conformance case. Shapes: query (B, Hq, L, E), key (B, Hkv, S, E),
    value (B, Hkv, S, Ev); the mask is (L, S), for padding (B, 1, 1, S) and
    for per_head (B, Hq, L, S). ``softcap`` and ``window`` are attnref's
    keywords of the same names."""
    name: str
    L: int = 32
    S: int = 32
    E: int = 64
    Ev: Optional[int] = None
    B: int = 1
    Hq: int = 2
    Hkv: Optional[int] = None
    mask: str = "none"
    is_causal: bool = False
    scale: Optional[float] = None
    content: str = "normal"
    softcap: Optional[float] = None
    window: Optional[tuple] = None
    description: str = ""
    requires: frozenset = field(default=frozenset())

    def __post_init__(self):
        if self.mask not in MASK_KINDS:
            raise ValueError(f"mask must be one of {MASK_KINDS}, got {self.mask!r}")
        if self.content not in CONTENTS:
            raise ValueError(f"content must be one of {CONTENTS}, got {self.content!r}")
        object.__setattr__(self, "requires", frozenset(self.requires) | self._implied())

    def _implied(self):
        implied = set()
        implied |= {"l_ne_s"} if self.L != self.S else set()
        implied |= {"e_ne_ev"} if self.Ev not in (None, self.E) else set()
        implied |= {"gqa"} if self.Hkv not in (None, self.Hq) else set()
        implied |= {"empty"} if 0 in (self.L, self.S) else set()
        implied |= {"causal"} if self.is_causal else set()
        implied |= {"scale"} if self.scale is not None else set()
        implied |= {"query_longer"} if self.L > self.S else set()
        implied |= {"odd_head_dim"} if self.E % 8 or self.value_dim % 8 else set()
        implied |= {"softcap"} if self.softcap is not None else set()
        implied |= {"window"} if self.window is not None else set()
        implied |= {"per_head_mask"} if self.mask == "per_head" else set()
        if self.mask in ("bool", "padding", "padding_with_empty", "per_head", "window",
                         "fully_masked_rows"):
            implied.add("bool_mask")
        if self.mask in ("float", "float_neg_inf", "fully_masked_neg_inf", "finfo_min_rows"):
            implied.add("float_mask")
        if self.mask != "none" and self.is_causal:
            implied.add("mask_with_causal")
        # causal with L > S leaves the first L - S rows empty under bottom-right profiles
        if (self.mask in ("fully_masked_rows", "fully_masked_neg_inf", "padding_with_empty")
                or self.S == 0
                or (self.is_causal and self.L > self.S)):
            implied.add("fully_masked_rows")
        return implied

    @property
    def heads_kv(self):
        return self.Hq if self.Hkv is None else self.Hkv

    @property
    def value_dim(self):
        return self.E if self.Ev is None else self.Ev

    def inputs(self, seed=0, dtype=np.float32):
        """The case's arrays and flags, in attnref's conventions.

        Returns a dict with ``query``, ``key``, ``value`` (``dtype``),
        ``attn_mask`` (None, bool True = may attend, or float in ``dtype``),
        ``is_causal``, ``scale``, ``enable_gqa``, ``softcap``, ``window``
        (None when the case sets none). ``dtype`` may be any float dtype
        NumPy knows, ``ml_dtypes.bfloat16`` included. The same ``(name, seed)``
        gives the same numbers on every machine (NumPy's PCG64 seeded with the
        seed and the CRC-32 of the name).
        """
        rng = np.random.default_rng([seed, zlib.crc32(self.name.encode())])
        dtype = np.dtype(dtype)
        query = rng.standard_normal((self.B, self.Hq, self.L, self.E))
        key = rng.standard_normal((self.B, self.heads_kv, self.S, self.E))
        value = rng.standard_normal((self.B, self.heads_kv, self.S, self.value_dim))
        if self.content == "huge_scores":
            query, key = query * 30.0, key * 30.0       # scores in the thousands
        elif self.content == "near_ties":
            key = key[..., :1, :] + 1e-4 * key          # every key nearly the same
        mask = self._mask(rng, dtype)
        if self.content in ("nan_behind_mask", "big_behind_mask"):
            mask[..., 3 * self.S // 4:] = False         # the last quarter of keys is hidden
            hidden = ~_visible_keys(mask, self.L, self.S)  # keys no query may see
            # 1e30, or the largest finite value where the dtype cannot hold it (float16)
            big = min(1e30, float(np.finfo(dtype).max))
            garbage = np.nan if self.content == "nan_behind_mask" else big
            key[..., hidden, :] = garbage
            value[..., hidden, :] = garbage
        return {"query": query.astype(dtype), "key": key.astype(dtype),
                "value": value.astype(dtype), "attn_mask": mask, "is_causal": self.is_causal,
                "scale": self.scale, "enable_gqa": self.heads_kv != self.Hq,
                "softcap": self.softcap, "window": self.window}

    def _mask(self, rng, dtype):
        L, S = self.L, self.S
        if self.mask == "none":
            return None
        if self.mask == "bool":
            allowed = rng.random((L, S)) < 0.7
            allowed[:, :1] = True                       # no fully masked row here
            return allowed
        if self.mask == "per_head":
            allowed = rng.random((self.B, self.Hq, L, S)) < 0.7
            allowed[..., :1] = True                     # no fully masked row here
            return allowed
        if self.mask == "window":
            return masks.sliding_window_mask(L, S, (7, 3))
        if self.mask in ("padding", "padding_with_empty"):
            lengths = rng.integers(1, S + 1, size=self.B) if S else np.zeros(self.B, int)
            if self.mask == "padding_with_empty":
                lengths[0] = 0                          # the first sequence is all padding
            return masks.padding_mask(lengths, S)
        if self.mask == "fully_masked_rows":
            allowed = rng.random((L, S)) < 0.6
            allowed[::3] = False                        # every third row sees nothing
            return allowed
        bias = rng.standard_normal((L, S))
        if self.mask == "float_neg_inf":
            bias[rng.random((L, S)) < 0.3] = -np.inf
            bias[:, :1] = 0.0
        elif self.mask == "fully_masked_neg_inf":
            bias[::3] = -np.inf
        elif self.mask == "finfo_min_rows":
            bias[::3] = np.finfo(dtype).min             # finite: such a row is uniform
        return bias.astype(dtype)

    def with_name(self, name):
        return replace(self, name=name)


def _visible_keys(mask, L, S):
    """Bool (S,): keys at least one query may see under ``mask``."""
    if mask is None:
        return np.ones(S, dtype=bool)
    allowed = mask if mask.dtype == bool else np.isfinite(mask)
    allowed = np.broadcast_to(allowed, allowed.shape[:-2] + (L, S)) if allowed.ndim >= 2 else allowed
    return allowed.reshape(-1, S).any(axis=0)


def _suite(*cases):
    named = {case.name: case for case in cases}
    if len(named) != len(cases):
        raise ValueError("case names must be unique within a suite")
    return named


_QUICK = (
    Case("aligned", L=64, S=64, E=64, description="L = S = 64, E = 64"),
    Case("odd_lengths", L=37, S=53, E=48, description="odd lengths, L != S"),
    Case("causal", L=33, S=33, is_causal=True, description="causal, L = S"),
    Case("gqa", L=16, S=24, Hq=8, Hkv=2, description="8 query heads on 2 kv heads"),
    Case("bool_mask", L=20, S=30, mask="bool", description="random bool mask"),
    Case("float_mask", L=20, S=30, mask="float", description="additive float mask"),
    Case("fully_masked_rows", L=12, S=16, mask="fully_masked_rows",
         description="every third row sees no key"),
    Case("huge_scores", L=16, S=16, E=32, content="huge_scores",
         description="scores in the thousands: needs the max-shift"),
)

_STANDARD = _QUICK + (
    Case("query_shorter", L=17, S=129, description="L < S"),
    Case("query_longer", L=129, S=17, description="L > S"),
    Case("causal_query_shorter", L=16, S=48, is_causal=True,
         description="causal with L < S: alignment matters"),
    Case("causal_query_longer", L=48, S=16, is_causal=True,
         description="causal with L > S: alignment matters"),
    Case("value_dim_differs", L=24, S=40, E=32, Ev=80, description="E = 32, Ev = 80"),
    Case("head_dim_1", L=20, S=20, E=1, description="E = 1"),
    Case("head_dim_8", L=20, S=20, E=8, description="E = 8"),
    Case("head_dim_59", L=20, S=20, E=59, description="E = 59"),
    Case("head_dim_128", L=20, S=20, E=128, description="E = 128"),
    Case("head_dim_256", L=20, S=20, E=256, description="E = 256"),
    Case("mqa", L=16, S=24, Hq=4, Hkv=1, description="4 query heads on 1 kv head"),
    Case("gqa_causal", L=24, S=24, Hq=6, Hkv=3, is_causal=True, description="GQA, causal"),
    Case("padding_mask", L=16, S=40, B=3, mask="padding",
         description="per-sequence key padding, mask (B, 1, 1, S)"),
    Case("padding_fully_padded", L=16, S=40, B=3, mask="padding_with_empty",
         description="key padding where the first sequence is all padding"),
    Case("per_head_mask", L=20, S=30, B=2, Hq=3, mask="per_head",
         description="a bool mask per batch entry and head, (B, Hq, L, S)"),
    Case("window_mask", L=40, S=40, mask="window", description="sliding window (7, 3) as a bool mask"),
    Case("float_mask_neg_inf", L=20, S=30, mask="float_neg_inf",
         description="float mask with -inf entries"),
    Case("fully_masked_neg_inf", L=12, S=16, mask="fully_masked_neg_inf",
         description="rows masked entirely by -inf in a float mask"),
    Case("finfo_min_rows", L=12, S=16, mask="finfo_min_rows",
         description="rows biased by finfo.min (finite): uniform, not masked"),
    Case("causal_with_mask", L=24, S=24, mask="bool", is_causal=True,
         description="bool mask and is_causal together"),
    Case("near_ties", L=16, S=64, content="near_ties", description="near-equal scores"),
    Case("nan_behind_mask", L=16, S=24, mask="bool", content="nan_behind_mask",
         description="NaN in keys and values no query may see"),
    Case("big_behind_mask", L=16, S=24, mask="bool", content="big_behind_mask",
         description="1e30 in keys and values no query may see"),
    Case("softcap", L=20, S=20, softcap=2.0, scale=1.0,
         description="softcap = 2 on scores of a few units"),
    Case("softcap_masked", L=20, S=30, mask="float_neg_inf", softcap=2.0,
         description="softcap = 2 with -inf mask entries: capped before the mask, "
                     "masked keys stay at weight 0"),
    Case("causal_window", L=40, S=40, is_causal=True, window=(7, 0),
         description="causal with a left window of 7 keys (Mistral-style local attention)"),
    Case("scale_override", L=20, S=20, scale=0.3, description="scale = 0.3"),
    Case("scale_one", L=20, S=20, scale=1.0, content="huge_scores",
         description="scale = 1 on large scores"),
    Case("long_rows", L=8, S=8192, E=64, Hq=1,
         description="S = 8192: float32 accumulation order matters"),
    Case("long_rows_huge_scores", L=8, S=8192, E=64, Hq=1, content="huge_scores",
         description="S = 8192, scores in the thousands: a running max must keep up"),
    Case("empty_queries", L=0, S=16, description="L = 0"),
    Case("empty_keys", L=8, S=0, description="S = 0: every row fully masked"),
    Case("batch", L=16, S=16, B=3, Hq=4, description="B = 3, H = 4"),
)

_FULL = _STANDARD + tuple(
    Case(f"sweep_L{L}_S{S}_E{E}{'_causal' if causal else ''}", L=L, S=S, E=E, is_causal=causal,
         description=f"L={L}, S={S}, E={E}{', causal' if causal else ''}")
    for L, S in ((1, 1), (1, 1025), (127, 128), (128, 127), (129, 257), (512, 512))
    for E in (16, 64, 111)
    for causal in (False, True)
) + (
    Case("long_rows_causal", L=64, S=8192, is_causal=True, Hq=1,
         description="S = 8192, causal (bottom rows see most keys)"),
    Case("huge_scores_masked", L=32, S=32, mask="float_neg_inf", content="huge_scores",
         description="large scores with -inf entries"),
)

SUITES = {"quick": _suite(*_QUICK), "standard": _suite(*_STANDARD), "full": _suite(*_FULL)}
