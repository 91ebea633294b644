"""Hypothesis strategies for attention calls (needs the ``test`` extra).

Two strategies share one way of drawing shapes (leading dims, GQA heads,
L, S, E, Ev), mask shapes, ``is_causal`` and ``scale``:

:func:`attention_inputs`
    For other projects' property tests. Draws the keyword arguments of the
    torch SDPA signature (``query, key, value, attn_mask, is_causal, scale,
    enable_gqa``) with small shapes and bounded, finite elements drawn by
    ``hypothesis.extra.numpy.arrays``, so Hypothesis shrinks the numbers as
    well as the shapes. Masks come in the polarity of a semantics profile
    (:mod:`attnref.testing.semantics`).
:func:`attention_cases`
    For attnref's own kernel tests. Draws large shapes (up to L = S = 1025,
    E = 256) and attnref's extras (window, softcap, causal alignment); array
    contents come from a drawn seed through NumPy's generator, so large
    cases stay cheap while Hypothesis still shrinks shapes and options.
    Scores stay within the range the equivalence rule is tested on,
    ``|scale q.k| <= SCORE_RANGE`` (see there).

Shape letters as in :mod:`attnref.core`.

Examples
--------
A property test of an attention implementation against attnref, judged by
the FlashAttention rule (:mod:`attnref.testing.tolerance`): the candidate's
error against a float64 reference may be at most twice that of attnref's
same-dtype reference, plus a floor. Put your implementation in the first
line of the test; here attnref's own dispatcher (the C kernel when built)
stands in for it:

>>> from hypothesis import given, settings
>>> import attnref
>>> from attnref.testing.strategies import attention_inputs
>>> from attnref.testing.tolerance import reference_errors
>>> @settings(max_examples=25, deadline=None)
... @given(attention_inputs(dtype="float32", max_query_length=12, max_key_length=12))
... def test_attention_agrees_with_attnref(inputs):
...     output = attnref.scaled_dot_product_attention(**inputs)
...     wide = attnref.scaled_dot_product_attention(**inputs, precision="float64",
...                                                 backend="numpy")
...     baseline = attnref.scaled_dot_product_attention(**inputs, backend="numpy")
...     error, bound = reference_errors(output, wide, baseline, wide)
...     assert error <= bound, (error, bound)
>>> test_attention_agrees_with_attnref()

For an implementation with other conventions, draw its masks with
``attention_inputs(semantics="torch_mha")`` (bool ``True`` = masked out) and
compare against ``attnref.testing.semantics.profile(name).reference(...)``
(see ``docs/semantics.md``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .semantics import profile

try:
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hypothesis_numpy
except ImportError as error:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "attnref.testing.strategies needs Hypothesis: pip install 'attnref[test]'"
    ) from error

LENGTHS = (0, 1, 2, 17, 97, 127, 128, 129, 1025)
HEAD_DIMS = (1, 59, 64, 111, 128, 256)
MASK_KINDS = ("none", "bool", "float", "float_neg_inf", "padding", "block_diagonal")
SCALES = (0.05, 0.5, 1.0, 2.0)
INPUT_DTYPES = ("float16", "float32", "float64")
INPUT_MASK_KINDS = ("bool", "float")
#: Largest ``|scale * q.k|`` that :func:`attention_cases` draws: the range on
#: which the equivalence rule (:mod:`attnref.testing.tolerance`) is tested.
#: Beyond it the rule's floor misses the error of rounding a score to the
#: dtype, ``eps * |s|`` in every weight, and a same-dtype reference whose
#: roundings happen to cancel sets a bound that even exact scores rounded
#: once cannot always meet. ``python benchmarks/score_range.py`` (3000 draws,
#: seed 0, avx512 path; ~430 per target) measured draws beyond the rule,
#: kernel / exact scores rounded once: float64 0/0 at |s| ~ 16, 32 and 64
#: (worst 0.86 of the bound), 4/0 of 444 at 128, 6/1 of 441 at 256, 4/3 of
#: 405 at 5000; float32 0/0 at 16 and 32 (worst 0.69), 1/1 of 447 at 64,
#: 5/3 of 401 at 1000. Properties that hold at any magnitude draw scores up
#: to the dtype's limits (tests/test_core.py).
SCORE_RANGE = 32.0


@dataclass
class AttentionCase:
    """One drawn call: ``sdpa(query, key, value, **options)``."""
    query: np.ndarray
    key: np.ndarray
    value: np.ndarray
    options: dict = field(default_factory=dict)

    def astype(self, dtype):
        """The same case with query, key, value (and a float mask) in ``dtype``."""
        options = dict(self.options)
        mask = options.get("attn_mask")
        if mask is not None and mask.dtype != bool:
            options["attn_mask"] = mask.astype(dtype)
        return AttentionCase(*(a.astype(dtype) for a in (self.query, self.key, self.value)),
                             options)

    def __repr__(self):
        shown = {name: (f"array{value.shape}:{value.dtype}" if isinstance(value, np.ndarray)
                        else value) for name, value in self.options.items()}
        return (f"AttentionCase(query{self.query.shape}, key{self.key.shape}, "
                f"value{self.value.shape}, {shown})")


@dataclass(frozen=True)
class _Layout:
    """The shapes of one drawn call. ``query_leading`` and ``kv_leading`` are
    the leading dims of query and of key/value, heads (dim -3) last."""
    query_leading: tuple
    kv_leading: tuple
    L: int
    S: int
    E: int
    Ev: int
    enable_gqa: bool

    @property
    def query_shape(self):
        return self.query_leading + (self.L, self.E)

    @property
    def key_shape(self):
        return self.kv_leading + (self.S, self.E)

    @property
    def value_shape(self):
        return self.kv_leading + (self.S, self.Ev)


@st.composite
def _layouts(draw, *, query_lengths, key_lengths, head_dims, value_head_dims,
             leading_dims, max_heads, allow_gqa, allow_kv_broadcast):
    """Draw a :class:`_Layout`.

    ``leading_dims`` draws the query's leading dims (heads last). Under GQA
    the head count becomes ``Hkv * group <= max_heads`` and key/value keep
    the other leading dims with ``Hkv`` heads. ``value_head_dims=None``
    makes ``Ev = E``.
    """
    leading = tuple(draw(leading_dims))
    enable_gqa = allow_gqa and draw(st.booleans())
    if enable_gqa:
        kv_heads = draw(st.integers(1, max(1, max_heads // 2)))
        group = draw(st.integers(1, max(1, max_heads // kv_heads)))
        query_leading = leading[:-1] + (kv_heads * group,)
        kv_leading = leading[:-1] + (kv_heads,)
    else:
        query_leading = kv_leading = leading
        if allow_kv_broadcast and leading and draw(st.booleans()):
            kv_leading = (1,) * len(leading)  # keys/values broadcast over the batch
    E = draw(head_dims)
    Ev = E if value_head_dims is None else draw(value_head_dims)
    return _Layout(query_leading, kv_leading, draw(query_lengths), draw(key_lengths), E, Ev,
                   enable_gqa)


def _mask_shapes(layout):
    """Shapes a dense mask may take: one ``(L, S)`` for every head, one key
    row per head ``(H, 1, S)``, or the full ``(..., H, L, S)``."""
    L, S = layout.L, layout.S
    return st.sampled_from([(L, S), layout.query_leading[-1:] + (1, S),
                            layout.query_leading + (L, S)])


def _scales(allow_scale):
    """None (the default ``1/sqrt(E)``) or an explicit scale."""
    if not allow_scale:
        return st.none()
    return st.one_of(st.none(), st.sampled_from(SCALES))


def attention_inputs(*, dtype="float32", max_batch=2, max_heads=4, min_length=1,
                     max_query_length=8, max_key_length=8, head_dims=(1, 2, 3, 4, 7, 8, 16),
                     value_head_dims=None, allow_gqa=True, mask_kinds=INPUT_MASK_KINDS,
                     allow_causal=True, allow_mask_with_causal=False, allow_scale=True,
                     semantics="torch", min_value=-8.0, max_value=8.0):
    """A Hypothesis strategy for the keyword arguments of one attention call.

    Each drawn example is a dict with the torch SDPA keywords ``query``
    (B, Hq, L, E), ``key`` (B, Hkv, S, E), ``value`` (B, Hkv, S, Ev),
    ``attn_mask`` (None or an array broadcastable to (B, Hq, L, S)),
    ``is_causal``, ``scale`` and ``enable_gqa``, consistent with each other,
    so ``fn(**inputs)`` calls any implementation with that signature.
    ``attnref.scaled_dot_product_attention(**inputs)`` always accepts them,
    and under the default ``semantics="torch"`` reads them as torch does.
    Dropout is never drawn.

    Parameters
    ----------
    dtype : {"float16", "float32", "float64"}
        dtype of query, key, value and of a float mask.
    max_batch : int >= 1
        Largest batch size B.
    max_heads : int >= 1
        Largest number of query heads Hq.
    min_length : int >= 0
        Smallest L and S; 0 allows empty sequences.
    max_query_length, max_key_length : int >= min_length
        Largest L and largest S.
    head_dims : sequence of int >= 1
        The head dims E drawn from (Hypothesis shrinks towards the first).
    value_head_dims : sequence of int >= 1, optional
        The value head dims Ev drawn from; None means Ev = E (FlashAttention
        needs that; torch's SDPA does not).
    allow_gqa : bool
        Whether ``enable_gqa=True`` with Hkv dividing Hq may be drawn. When
        False, Hkv = Hq and ``enable_gqa`` is False.
    mask_kinds : sequence of {"bool", "float"}
        The masks that may be drawn (no mask is always possible; an empty
        sequence draws none). A bool mask holds random True/False; a float
        mask is an additive bias in ``[min_value, max_value]`` with ``-inf``
        entries. Rows with no visible key can occur in both.
    allow_causal : bool
        Whether ``is_causal=True`` may be drawn.
    allow_mask_with_causal : bool
        Whether a mask and ``is_causal=True`` may come together. False by
        default: torch 2.13's math backend raises on it (its CPU flash
        kernel combines them).
    allow_scale : bool
        Whether an explicit ``scale`` may be drawn (otherwise always None,
        meaning ``1/sqrt(E)``).
    semantics : str or Semantics
        The profile whose mask polarity is emitted: under ``"torch_mha"`` a
        bool mask's True means *masked out*; every other profile uses True =
        may attend. The expected answer for the drawn inputs under a profile
        is ``profile(name).reference(...)`` of the inputs in attnref's
        polarity (invert a ``torch_mha`` bool mask back first).
    min_value, max_value : float
        Bounds of the elements of query, key, value and the finite entries
        of a float mask; finite and exactly representable in ``dtype``
        (``-0.1`` is not, in float16).

    Returns
    -------
    hypothesis.strategies.SearchStrategy of dict

    Raises
    ------
    ValueError
        An argument out of range, naming it and what arrived; an unknown
        ``semantics`` profile.
    """
    dtype = _input_dtype(dtype)
    for name, value, smallest in (("max_batch", max_batch, 1), ("max_heads", max_heads, 1),
                                  ("min_length", min_length, 0),
                                  ("max_query_length", max_query_length, min_length),
                                  ("max_key_length", max_key_length, min_length)):
        if not isinstance(value, (int, np.integer)) or value < smallest:
            raise ValueError(f"{name} must be an int >= {smallest}, got {value!r}")
    for name, dims in (("head_dims", head_dims), ("value_head_dims", value_head_dims)):
        if dims is not None and (len(dims) == 0 or min(dims) < 1):
            raise ValueError(f"{name} must be a non-empty sequence of ints >= 1, got {dims!r}")
    unknown = set(mask_kinds) - set(INPUT_MASK_KINDS)
    if unknown:
        raise ValueError(f"mask_kinds must be drawn from {INPUT_MASK_KINDS}, "
                         f"got {tuple(mask_kinds)!r}")
    largest = float(np.finfo(dtype).max)
    for name, bound in (("min_value", min_value), ("max_value", max_value)):
        if not -largest <= bound <= largest:
            raise ValueError(f"{name} must be finite in {dtype.name} (at most {largest:g} in "
                             f"magnitude), got {bound!r}")
        if float(dtype.type(bound)) != bound:
            raise ValueError(f"{name} must be exactly representable in {dtype.name}, got "
                             f"{bound!r}; {float(dtype.type(bound))!r} is")
    if not min_value < max_value:
        raise ValueError(f"min_value must be < max_value, got min_value={min_value!r}, "
                         f"max_value={max_value!r}")
    return _attention_inputs(
        dtype=dtype, max_batch=max_batch, max_heads=max_heads, min_length=min_length,
        max_query_length=max_query_length, max_key_length=max_key_length,
        head_dims=tuple(head_dims),
        value_head_dims=None if value_head_dims is None else tuple(value_head_dims),
        allow_gqa=allow_gqa, mask_kinds=tuple(mask_kinds), allow_causal=allow_causal,
        allow_mask_with_causal=allow_mask_with_causal, allow_scale=allow_scale,
        semantics=profile(semantics), min_value=min_value, max_value=max_value)


def _input_dtype(dtype):
    """``dtype`` as a NumPy dtype, when it is one :func:`attention_inputs` draws."""
    try:
        checked = np.dtype(dtype)
    except TypeError:
        checked = None
    if checked is None or checked.name not in INPUT_DTYPES:
        raise ValueError(f"dtype must be one of {INPUT_DTYPES}, got {dtype!r}")
    return checked


@st.composite
def _attention_inputs(draw, *, dtype, max_batch, max_heads, min_length, max_query_length,
                      max_key_length, head_dims, value_head_dims, allow_gqa, mask_kinds,
                      allow_causal, allow_mask_with_causal, allow_scale, semantics,
                      min_value, max_value):
    """:func:`attention_inputs` after its arguments were checked."""
    layout = draw(_layouts(
        query_lengths=st.integers(min_length, max_query_length),
        key_lengths=st.integers(min_length, max_key_length),
        head_dims=st.sampled_from(head_dims),
        value_head_dims=None if value_head_dims is None else st.sampled_from(value_head_dims),
        leading_dims=st.tuples(st.integers(1, max_batch), st.integers(1, max_heads)),
        max_heads=max_heads, allow_gqa=allow_gqa, allow_kv_broadcast=False))
    bounds = {"min_value": min_value, "max_value": max_value}
    query, key, value = (draw(hypothesis_numpy.arrays(dtype, shape, elements=bounds))
                         for shape in (layout.query_shape, layout.key_shape, layout.value_shape))
    attn_mask = None
    mask_kind = draw(st.sampled_from(("none",) + mask_kinds))
    if mask_kind == "bool":
        attn_mask = draw(hypothesis_numpy.arrays(bool, draw(_mask_shapes(layout))))
    elif mask_kind == "float":
        entries = hypothesis_numpy.from_dtype(dtype, **bounds) | st.just(-np.inf)
        attn_mask = draw(hypothesis_numpy.arrays(dtype, draw(_mask_shapes(layout)),
                                                 elements=entries))
    causal_allowed = allow_causal and (attn_mask is None or allow_mask_with_causal)
    inputs = {"query": query, "key": key, "value": value, "attn_mask": attn_mask,
              "is_causal": causal_allowed and draw(st.booleans()),
              "scale": draw(_scales(allow_scale)), "enable_gqa": layout.enable_gqa}
    _, keywords = semantics.arguments(inputs)
    inputs["attn_mask"] = keywords["attn_mask"]
    return inputs


def _mask(kind, rng, layout, shape):
    """A mask of ``kind`` broadcastable to the attention shape of ``layout``;
    bool and float masks take ``shape``."""
    L, S = layout.L, layout.S
    batch_shape = layout.query_leading
    if kind == "bool":
        return rng.random(shape) < 0.7
    if kind in ("float", "float_neg_inf"):
        bias = rng.standard_normal(shape)
        if kind == "float_neg_inf":
            bias[rng.random(shape) < 0.3] = -np.inf
        return bias
    if kind == "padding":
        lengths = rng.integers(0, S + 1, size=batch_shape[:1] or (1,))
        visible = np.arange(S) < lengths[:, None]                  # (batch[0], S)
        if not batch_shape:
            return visible
        return visible.reshape(lengths.shape + (1,) * (len(batch_shape) - 1) + (1, S))
    if kind == "block_diagonal":
        cuts = np.sort(rng.integers(0, min(L, S) + 1, size=2))
        segments = np.diff(np.concatenate([[0], cuts, [min(L, S)]]))
        mask = np.zeros((L, S), dtype=bool)
        start = 0
        for size in segments:
            mask[start:start + size, start:start + size] = True
            start += size
        return mask
    return None


@st.composite
def attention_cases(draw, lengths=LENGTHS, head_dims=HEAD_DIMS,
                    mask_kinds=MASK_KINDS, max_batch_elements=4,
                    allow_gqa=True, allow_causal=True, allow_window=True,
                    allow_softcap=True, alignments=("top_left", "bottom_right")):
    """Draw an :class:`AttentionCase` in float64 (cast with ``.astype``).

    L and S are drawn from ``lengths``, E and Ev from ``head_dims``; the
    query has 0 to 2 leading dims of size 1 or 2 (heads last), GQA draws at
    most ``max_batch_elements`` query heads, and keys/values may broadcast
    over the batch. The mask is one of ``mask_kinds``; is_causal, window,
    softcap and scale are each drawn when allowed, and the causal alignment
    from ``alignments`` when a band is drawn.
    """
    layout = draw(_layouts(
        query_lengths=st.sampled_from(lengths), key_lengths=st.sampled_from(lengths),
        head_dims=st.sampled_from(head_dims), value_head_dims=st.sampled_from(head_dims),
        leading_dims=st.lists(st.integers(1, 2), max_size=2),
        max_heads=max_batch_elements, allow_gqa=allow_gqa, allow_kv_broadcast=True))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    magnitude = draw(st.sampled_from((0.1, 1.0, 4.0)))
    query = rng.standard_normal(layout.query_shape) * magnitude
    key = rng.standard_normal(layout.key_shape) * magnitude
    value = rng.standard_normal(layout.value_shape)
    scale = draw(_scales(allow_scale=True))
    query = _within_score_range(query, key, 1 / np.sqrt(layout.E) if scale is None else scale)

    options = {}
    if layout.enable_gqa:
        options["enable_gqa"] = True
    mask = _mask(draw(st.sampled_from(mask_kinds)), rng, layout, draw(_mask_shapes(layout)))
    if mask is not None:
        options["attn_mask"] = mask
    if allow_causal and draw(st.booleans()):
        options["is_causal"] = True
    if allow_window and draw(st.booleans()):
        options["window"] = (draw(st.one_of(st.none(), st.integers(0, 40))),
                             draw(st.one_of(st.none(), st.integers(0, 40))))
    if options.get("is_causal") or "window" in options:
        alignment = draw(st.sampled_from(alignments))
        if alignment != "top_left":
            options["causal_alignment"] = alignment
    if allow_softcap and draw(st.booleans()):
        options["softcap"] = draw(st.sampled_from((1.0, 5.0, 30.0)))
    if scale is not None:
        options["scale"] = scale
    return AttentionCase(query, key, value, options)


def _within_score_range(query, key, scale):
    """``query`` shrunk so that ``|scale q.k| <= SCORE_RANGE`` for every
    query and key, by Cauchy-Schwarz (``|q.k| <= |q| |k|``) on the largest
    row norms: cheap for any shape."""
    if query.size == 0 or key.size == 0:
        return query
    largest = scale * np.linalg.norm(query, axis=-1).max() * np.linalg.norm(key, axis=-1).max()
    return query * (SCORE_RANGE / largest) if largest > SCORE_RANGE else query
