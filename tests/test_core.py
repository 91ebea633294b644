"""Numerics of attnref.core and the attention properties, on both backends.

The C kernel never forms weights; feeding it ``value = I`` (S x S identity)
makes its output *be* the weight matrix, so every weight property is checked
on the kernel too.
"""
import doctest

import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

import attnref
from attnref import attention_scores, attention_weights, masks, scaled_dot_product_attention

sdpa = scaled_dot_product_attention
DTYPES = [np.float32, np.float64]
lengths = st.integers(1, 12)
dims = st.integers(1, 9)


def qkv(draw_seed, B, L, S, E, Ev, dtype, magnitude=1.0):
    rng = np.random.default_rng(draw_seed)
    return (rng.standard_normal((B, L, E)).astype(dtype) * magnitude,
            rng.standard_normal((B, S, E)).astype(dtype) * magnitude,
            rng.standard_normal((B, S, Ev)).astype(dtype))


def weights_of(backend, query, key, **options):
    """Attention weights (..., L, S) as computed by ``backend``."""
    if backend == "numpy":
        return attention_weights(query, key, **options)
    S = key.shape[-2]
    return sdpa(query, key, np.eye(S, dtype=key.dtype), backend="c", **options)


def eps(dtype):
    return float(np.finfo(dtype).eps)


shapes = st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 3), lengths, lengths, dims, dims)


# ---------------------------------------------------------------- scores

def test_attention_scores_scale_and_softcap(rng):
    query, key = rng.standard_normal((3, 4)), rng.standard_normal((5, 4))
    np.testing.assert_allclose(attention_scores(query, key), query @ key.T / 2.0, rtol=1e-14)
    capped = attention_scores(query, key, scale=3.0, softcap=2.0)
    np.testing.assert_allclose(capped, 2.0 * np.tanh(3.0 * query @ key.T / 2.0), rtol=1e-14)


# ---------------------------------------------------------------- weights

@given(shapes, st.sampled_from(DTYPES), st.booleans())
def test_weights_rows_sum_to_one_and_are_nonnegative(backend, shape, dtype, causal):
    seed, B, L, S, E, _ = shape
    query, key, _ = qkv(seed, B, L, S, E, 1, dtype, magnitude=3.0)
    weights = weights_of(backend, query, key, is_causal=causal)
    assert np.all(weights >= 0)
    visible = masks.causal_mask(L, S).sum(-1) if causal else np.full(L, S)
    np.testing.assert_allclose(weights.sum(-1), np.broadcast_to(visible > 0, (B, L)),
                               atol=S * eps(dtype))


@given(shapes, st.sampled_from(DTYPES))
def test_masked_keys_get_zero_weight_and_their_values_cannot_leak(backend, shape, dtype):
    seed, B, L, S, E, Ev = shape
    query, key, value = qkv(seed, B, L, S, E, Ev, dtype)
    allowed = np.random.default_rng(seed).random((L, S)) < 0.6
    weights = weights_of(backend, query, key, attn_mask=allowed)
    assert np.all(weights[:, ~allowed] == 0)
    output = sdpa(query, key, value, attn_mask=allowed, backend=backend)
    hidden = ~allowed.any(0)                      # keys no query may see
    for garbage in (1e30, np.nan, np.inf):
        poisoned_key, poisoned_value = key.copy(), value.copy()
        poisoned_key[:, hidden] = garbage
        poisoned_value[:, hidden] = garbage
        again = sdpa(query, poisoned_key, poisoned_value, attn_mask=allowed, backend=backend)
        assert np.array_equal(output, again), garbage
    # a -inf float mask hides keys too: their weight is exactly 0 and their
    # values cannot leak (their keys still make a score, so NaN there is visible)
    bias = masks.mask_to_bias(allowed, dtype)
    weights = weights_of(backend, query, key, attn_mask=bias)
    assert np.all(weights[:, ~allowed] == 0)
    output = sdpa(query, key, value, attn_mask=bias, backend=backend)
    for garbage in (1e30, -1e30, np.nan, np.inf, -np.inf):
        poisoned_value = value.copy()
        poisoned_value[:, hidden] = garbage
        again = sdpa(query, key, poisoned_value, attn_mask=bias, backend=backend)
        assert np.array_equal(output, again), garbage


@given(shapes, st.floats(-100, 100))
def test_adding_a_constant_to_a_row_of_scores_changes_nothing(backend, shape, shift):
    seed, B, L, S, E, Ev = shape
    query, key, value = qkv(seed, B, L, S, E, Ev, np.float64)
    row_shift = np.random.default_rng(seed).uniform(-abs(shift), abs(shift) + 1e-9, (L, 1))
    shifted = sdpa(query, key, value, attn_mask=np.broadcast_to(row_shift, (L, S)),
                   backend=backend)
    np.testing.assert_allclose(shifted, sdpa(query, key, value, backend=backend),
                               atol=1e-12 * (1 + abs(shift)))


@given(shapes)
def test_joint_permutation_of_keys_and_values_changes_nothing(backend, shape):
    seed, B, L, S, E, Ev = shape
    query, key, value = qkv(seed, B, L, S, E, Ev, np.float64)
    order = np.random.default_rng(seed).permutation(S)
    np.testing.assert_allclose(sdpa(query, key[:, order], value[:, order], backend=backend),
                               sdpa(query, key, value, backend=backend), atol=1e-13)


@given(shapes)
def test_permuting_queries_permutes_outputs(backend, shape):
    seed, B, L, S, E, Ev = shape
    query, key, value = qkv(seed, B, L, S, E, Ev, np.float64)
    allowed = np.random.default_rng(seed).random((L, S)) < 0.7
    order = np.random.default_rng(seed + 1).permutation(L)
    permuted = sdpa(query[:, order], key, value, attn_mask=allowed[order], backend=backend)
    np.testing.assert_allclose(permuted, sdpa(query, key, value, attn_mask=allowed,
                                              backend=backend)[:, order], atol=1e-13)


@given(shapes, st.floats(0.01, 10.0))
def test_folding_the_scale_into_the_query(backend, shape, scale):
    seed, B, L, S, E, Ev = shape
    query, key, value = qkv(seed, B, L, S, E, Ev, np.float64)
    np.testing.assert_allclose(sdpa(query * scale, key, value, scale=1.0, backend=backend),
                               sdpa(query, key, value, scale=scale, backend=backend),
                               atol=1e-12)


@given(shapes, st.sampled_from(DTYPES), st.booleans())
def test_outputs_lie_within_the_value_range(backend, shape, dtype, causal):
    seed, B, L, S, E, Ev = shape
    query, key, value = qkv(seed, B, L, S, E, Ev, dtype, magnitude=3.0)
    output = sdpa(query, key, value, is_causal=causal, backend=backend)
    slack = 4 * eps(dtype) * np.abs(value).max()
    assert np.all(output >= value.min(-2, keepdims=True) - slack)
    assert np.all(output <= value.max(-2, keepdims=True) + slack)


@given(shapes, st.floats(-3, 3), st.floats(-3, 3))
def test_output_is_linear_in_value(backend, shape, alpha, beta):
    seed, B, L, S, E, Ev = shape
    query, key, value = qkv(seed, B, L, S, E, Ev, np.float64)
    other = np.random.default_rng(seed + 1).standard_normal(value.shape)
    combined = sdpa(query, key, alpha * value + beta * other, backend=backend)
    np.testing.assert_allclose(
        combined, alpha * sdpa(query, key, value, backend=backend)
        + beta * sdpa(query, key, other, backend=backend), atol=1e-12)


@given(shapes, st.integers(1, 20))
def test_causal_prefix_is_stable_when_tokens_are_appended(backend, shape, extra):
    seed, B, L, _, E, Ev = shape
    query, key, value = qkv(seed, B, L + extra, L + extra, E, Ev, np.float64)
    longer = sdpa(query, key, value, is_causal=True, backend=backend)
    prefix = sdpa(query[:, :L], key[:, :L], value[:, :L], is_causal=True, backend=backend)
    np.testing.assert_allclose(prefix, longer[:, :L], atol=1e-13)


@given(shapes, st.booleans())
def test_two_halves_of_the_keys_combine_through_their_lse(backend, shape, causal):
    seed, B, L, S, E, Ev = shape
    S = max(S, 2)
    query, key, value = qkv(seed, B, L, S, E, Ev, np.float64)
    visible = masks.causal_mask(L, S) if causal else np.ones((L, S), bool)
    cut = S // 2
    whole = sdpa(query, key, value, attn_mask=visible, return_lse=True, backend=backend)
    first = sdpa(query, key[:, :cut], value[:, :cut], attn_mask=visible[:, :cut],
                 return_lse=True, backend=backend)
    second = sdpa(query, key[:, cut:], value[:, cut:], attn_mask=visible[:, cut:],
                  return_lse=True, backend=backend)
    lse = np.logaddexp(first.lse, second.lse)
    np.testing.assert_allclose(lse, whole.lse, atol=1e-12)
    with np.errstate(invalid="ignore"):  # -inf - -inf on halves with no visible key
        share_first = np.nan_to_num(np.exp(first.lse - lse))[..., None]
        share_second = np.nan_to_num(np.exp(second.lse - lse))[..., None]
    np.testing.assert_allclose(share_first * first.output + share_second * second.output,
                               whole.output, atol=1e-12)


@given(st.integers(0, 2**32 - 1), st.integers(1, 3), st.integers(1, 4), lengths, lengths,
       dims, st.sampled_from(DTYPES))
def test_gqa_equals_explicitly_repeated_kv_heads(backend, seed, Hkv, group, L, S, E, dtype):
    rng = np.random.default_rng(seed)
    query = rng.standard_normal((2, Hkv * group, L, E)).astype(dtype)
    key = rng.standard_normal((2, Hkv, S, E)).astype(dtype)
    value = rng.standard_normal((2, Hkv, S, 3)).astype(dtype)
    grouped = sdpa(query, key, value, enable_gqa=True, is_causal=True, backend=backend)
    repeated = sdpa(query, np.repeat(key, group, axis=-3), np.repeat(value, group, axis=-3),
                    is_causal=True, backend=backend)
    assert np.array_equal(grouped, repeated)


@given(shapes, st.sampled_from(DTYPES))
def test_fully_masked_rows(backend, shape, dtype):
    seed, B, L, S, E, Ev = shape
    query, key, value = qkv(seed, B, L, S, E, Ev, dtype)
    allowed = np.random.default_rng(seed).random((L, S)) < 0.5
    allowed[0] = False
    zero = sdpa(query, key, value, attn_mask=allowed, return_lse=True, backend=backend)
    assert np.array_equal(zero.output[:, 0], np.zeros((B, Ev), dtype))
    assert np.isneginf(zero.lse[:, 0]).all()
    nan = sdpa(query, key, value, attn_mask=allowed, return_lse=True, masked_rows="nan",
               backend=backend)
    assert np.isnan(nan.output[:, 0]).all()
    assert np.isneginf(nan.lse[:, 0]).all()
    # rows with a visible key are the same under both policies
    rows = allowed.any(-1)
    assert np.array_equal(nan.output[:, rows], zero.output[:, rows])
    assert not np.isnan(zero.output).any()


def test_fully_masked_rows_through_float_mask_and_empty_keys(backend):
    query, key, value = qkv(0, 1, 3, 4, 5, 2, np.float64)
    bias = np.zeros((3, 4))
    bias[1] = -np.inf
    result = sdpa(query, key, value, attn_mask=bias, return_lse=True, backend=backend)
    assert np.array_equal(result.output[0, 1], [0.0, 0.0]) and np.isneginf(result.lse[0, 1])
    empty = sdpa(query, key[:, :0], value[:, :0], return_lse=True, backend=backend)
    assert np.array_equal(empty.output, np.zeros((1, 3, 2))) and np.isneginf(empty.lse).all()
    # finfo.min is a large finite bias, not a mask: the row is uniform (as in torch)
    bias[1] = np.finfo(np.float64).min
    uniform = sdpa(query, key, value, attn_mask=bias, backend=backend)
    np.testing.assert_allclose(uniform[0, 1], value[0].mean(0), atol=1e-14)


@given(shapes, st.sampled_from(DTYPES), st.sampled_from(["query", "key", "value", "attn_mask"]))
def test_nan_in_a_visible_input_propagates(backend, shape, dtype, where):
    seed, B, L, S, E, Ev = shape
    query, key, value = qkv(seed, B, L, S, E, Ev, dtype)
    rng = np.random.default_rng(seed)
    i, j, e, c = rng.integers(L), rng.integers(S), rng.integers(E), rng.integers(Ev)
    bias = np.zeros((L, S), dtype)
    poisoned = {"query": (query, (..., i, e)), "key": (key, (..., j, e)),
                "value": (value, (..., j, c)), "attn_mask": (bias, (i, j))}
    array, at = poisoned[where]
    array[at] = np.nan
    output = sdpa(query, key, value, attn_mask=bias, backend=backend)   # (B, L, Ev)
    # a NaN score (query row i, key j for every row, bias entry (i, j)) makes
    # its whole row NaN; a NaN value entry reaches that output dim of every row
    affected = {"query": output[:, i], "key": output, "value": output[..., c],
                "attn_mask": output[:, i]}[where]
    assert np.isnan(affected).all()
    if where != "key":
        rest = np.delete(output, i, axis=1) if where != "value" else np.delete(output, c, -1)
        assert not np.isnan(rest).any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_weights_below_the_smallest_normal_count_as_zero(backend, dtype):
    """Policy rule 5: with scale 1, q = 1 and keys 0 and x, the second key's
    score is exactly x below the max. Its value is inf: it reaches the output
    while exp(x) is normal and is dropped below, on every path alike."""
    floor = np.log(np.finfo(dtype).tiny).astype(dtype)
    query, value = np.ones((1, 1), dtype), np.array([[1.0], [np.inf]], dtype)
    below = np.nextafter(floor, dtype(-np.inf))
    for x, expected in ((floor, np.inf), (below, 1.0), (dtype(-95.0), np.inf if dtype == np.float64 else 1.0)):
        key = np.array([[0.0], [x]], dtype)
        result = sdpa(query, key, value, scale=1.0, return_lse=True, backend=backend)
        assert result.output[0, 0] == expected, (x, result.output)
        assert result.lse[0] == 0.0
    # the key that falls below only drops out; it moves no other weight
    key = np.array([[0.0], [below], [-1.0]], dtype)
    value = np.array([[1.0], [np.inf], [0.0]], dtype)
    expected = 1 / (1 + np.exp(dtype(-1.0)))
    np.testing.assert_allclose(sdpa(query, key, value, scale=1.0, backend=backend)[0, 0],
                               expected, rtol=4 * eps(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mask", ["none", "bool", "float"])
def test_a_key_that_a_later_block_drops_takes_its_inf_along(backend, dtype, mask):
    """130 keys (three blocks of the C kernel): key 1 is within the threshold
    of the first block's max but below it against key 100's score; its inf
    and NaN values must not reach the output, while key 100's inf does."""
    gap = {np.float32: (-50.0, 60.0), np.float64: (-400.0, 500.0)}[dtype]
    key = np.full((130, 1), -2 * gap[1], dtype)
    key[0], key[1], key[100], key[7] = 0.0, gap[0], gap[1], gap[1] - 1
    value = np.random.default_rng(5).standard_normal((130, 3)).astype(dtype)
    value[1, 0], value[1, 2], value[100, 1] = np.inf, np.nan, np.inf
    attn_mask = {"none": None, "bool": np.arange(130)[None] != 7,
                 "float": np.where(np.arange(130)[None] == 7, -np.inf, 0.0).astype(dtype)}[mask]
    output = sdpa(np.ones((1, 1), dtype), key, value, attn_mask=attn_mask, scale=1.0,
                  backend=backend)
    assert output[0, 1] == np.inf
    dropped = value.copy()
    dropped[1] = 0.0                # key 1 weighs 0: its value changes nothing
    expected = sdpa(np.ones((1, 1)), key.astype(np.float64), dropped.astype(np.float64),
                    attn_mask=attn_mask, scale=1.0, backend="numpy")
    np.testing.assert_allclose(output[0, [0, 2]], expected[0, [0, 2]], rtol=8 * eps(dtype))


@pytest.mark.parametrize("masked_rows", ["zero", "nan"])
def test_no_keys_at_all_follows_masked_rows(backend, masked_rows):
    """S = 0: every row is fully masked (policy rule 6), on both backends."""
    query = np.ones((2, 3, 4), np.float32)
    empty = np.ones((2, 0, 4), np.float32)
    result = sdpa(query, empty, empty[..., :2], return_lse=True, masked_rows=masked_rows,
                  backend=backend)
    assert result.output.shape == (2, 3, 2) and np.isneginf(result.lse).all()
    if masked_rows == "nan":
        assert np.isnan(result.output).all()
    else:
        assert np.array_equal(result.output, np.zeros((2, 3, 2), np.float32))


def test_empty_results_return_without_computing(backend):
    """Every requested array empty: 2^32 rows of nothing come back at once."""
    query = np.broadcast_to(np.ones((1, 1, 1, 4)), (2**16, 2**16, 1, 4))
    nothing = np.broadcast_to(np.ones((1, 1, 1, 0)), (2**16, 2**16, 1, 0))
    assert sdpa(query, query, nothing, backend=backend).shape == (2**16, 2**16, 1, 0)
    no_rows = np.ones((3, 0, 4))
    result = sdpa(no_rows, query[0, :3], query[0, :3], return_lse=True, backend=backend)
    assert result.output.shape == (3, 0, 4) and result.lse.shape == (3, 0)


@pytest.mark.parametrize("window, equivalent", [
    ((10**30, None), None), ((None, 10**30), None), ((10**30, 10**30), None),
    ((2**63, 0), (None, 0)), ((10**30, 2), (None, 2)), ((3, 10**30), (3, None))])
def test_window_sides_beyond_every_key_are_unbounded(backend, window, equivalent):
    query, key, value = qkv(3, 1, 6, 9, 4, 2, np.float64)
    for alignment in ("top_left", "bottom_right"):
        wide = sdpa(query, key, value, window=window, causal_alignment=alignment,
                    backend=backend)
        assert np.array_equal(wide, sdpa(query, key, value, window=equivalent,
                                         causal_alignment=alignment, backend=backend))


@given(shapes, st.sampled_from(DTYPES), st.floats(0.0, 1.0), st.booleans())
def test_scores_up_to_the_dtype_limit(backend, shape, dtype, size, biased):
    """Scores of any size up to a tenth of the dtype's largest number (drawn
    log-uniformly), where rounding a score moves its weight by eps |s|: no
    NaN, outputs within the value range, lse within [max s, max s + log S],
    and both backends within what that rounding allows."""
    seed, B, L, S, E, Ev = shape
    query, key, value = qkv(seed, B, L, S, E, Ev, dtype)
    bias = np.random.default_rng(seed).standard_normal((L, S)).astype(dtype) if biased else None
    largest = float(np.abs(query.astype(np.float64) @ np.swapaxes(key, -1, -2)).max())
    target = 10 ** (size * np.log10(float(np.finfo(dtype).max) / 10))
    scale = target / max(largest, 1e-30)
    assume(np.isfinite(scale) and 0 < scale <= float(np.finfo(dtype).max))
    result = sdpa(query, key, value, scale=scale, attn_mask=bias, return_lse=True,
                  backend=backend)
    assert not np.isnan(result.output).any() and not np.isnan(result.lse).any()
    slack = 4 * eps(dtype) * np.abs(value).max()
    assert np.all(result.output >= value.min(-2, keepdims=True) - slack)
    assert np.all(result.output <= value.max(-2, keepdims=True) + slack)
    # every score carries eps * (|q| . |k|) * scale per product summed, and the bias add
    wide = np.longdouble
    magnitude = scale * float((np.abs(query).astype(wide) @ np.swapaxes(np.abs(key), -1, -2)
                               .astype(wide)).max()) + (0 if bias is None else float(np.abs(bias).max()))
    score_error = 4 * (E + 4) * eps(dtype) * max(1.0, magnitude)
    scores = (query.astype(wide) @ np.swapaxes(key, -1, -2).astype(wide)) * wide(scale)
    if bias is not None:
        scores = scores + bias.astype(wide)
    top = scores.max(-1).astype(np.float64)
    assert np.all(result.lse >= top - score_error)
    assert np.all(result.lse <= top + np.log(S) + score_error)
    if backend == "c":
        reference = sdpa(query, key, value, scale=scale, attn_mask=bias, backend="numpy")
        moved = np.expm1(2 * score_error) if score_error < 0.5 else 2.0   # sum of |weight changes|
        allowed = (moved + 8 * S * eps(dtype)) * np.abs(value).max()
        assert np.abs(result.output - reference).max() <= allowed


# ---------------------------------------------------------------- call semantics

def test_result_format_is_the_same_on_both_backends(backend):
    query, key, value = qkv(1, 2, 3, 4, 5, 6, np.float32)
    assert isinstance(sdpa(query, key, value, backend=backend), np.ndarray)
    result = sdpa(query, key, value, return_lse=True, backend=backend)
    assert result.weights is None and result.lse.shape == (2, 3)
    assert result.output.dtype == result.lse.dtype == np.float32


def test_float16_computes_in_float32_and_returns_float16(backend):
    query, key, value = qkv(1, 1, 5, 7, 8, 3, np.float16)
    output = sdpa(query, key, value, backend=backend)
    assert output.dtype == np.float16
    upcast = sdpa(*(a.astype(np.float32) for a in (query, key, value)), backend=backend)
    assert np.array_equal(output, upcast.astype(np.float16))


def test_precision_float64_upcasts(backend):
    query, key, value = qkv(1, 1, 5, 7, 8, 3, np.float32)
    output = sdpa(query, key, value, precision="float64", backend=backend)
    assert output.dtype == np.float64
    exact = sdpa(*(a.astype(np.float64) for a in (query, key, value)), backend=backend)
    assert np.array_equal(output, exact)


def test_bottom_right_alignment_equals_the_bottom_right_mask(backend):
    query, key, value = qkv(2, 2, 3, 8, 4, 5, np.float64)
    aligned = sdpa(query, key, value, is_causal=True, causal_alignment="bottom_right",
                   backend=backend)
    explicit = sdpa(query, key, value, attn_mask=masks.causal_mask(3, 8, alignment="bottom_right"),
                    backend=backend)
    assert np.array_equal(aligned, explicit)


def test_window_equals_the_sliding_window_mask(backend):
    query, key, value = qkv(2, 2, 9, 9, 4, 5, np.float64)
    windowed = sdpa(query, key, value, window=(2, 1), backend=backend)
    explicit = sdpa(query, key, value, attn_mask=masks.sliding_window_mask(9, 9, (2, 1)),
                    backend=backend)
    assert np.array_equal(windowed, explicit)


def test_causal_combines_with_a_mask_and_a_window(backend):
    query, key, value = qkv(4, 1, 7, 7, 4, 2, np.float64)
    allowed = np.random.default_rng(4).random((7, 7)) < 0.8
    combined = sdpa(query, key, value, attn_mask=allowed, is_causal=True, window=(3, None),
                    backend=backend)
    explicit = masks.combine_masks(allowed, masks.causal_mask(7), masks.sliding_window_mask(7, 7, (3, None)))
    assert np.array_equal(combined, sdpa(query, key, value, attn_mask=explicit, backend=backend))


def test_dropout_is_reproducible_and_rescales():
    query, key, value = qkv(5, 1, 6, 6, 4, 3, np.float64)
    first = sdpa(query, key, value, dropout_p=0.5, rng=np.random.default_rng(0),
                 return_weights=True)
    again = sdpa(query, key, value, dropout_p=0.5, rng=np.random.default_rng(0),
                 return_weights=True)
    assert np.array_equal(first.output, again.output)
    plain = attention_weights(query, key)
    kept = first.weights != 0
    np.testing.assert_allclose(first.weights[kept], plain[kept] * 2.0, rtol=1e-14)
    np.testing.assert_allclose(first.output, first.weights @ value, rtol=1e-13)
    assert np.array_equal(sdpa(query, key, value, dropout_p=1.0, rng=np.random.default_rng(0)),
                          np.zeros((1, 6, 3)))


def test_auto_falls_back_to_numpy_for_dropout_and_weights():
    query, key, value = qkv(5, 1, 6, 6, 4, 3, np.float64)
    result = sdpa(query, key, value, return_weights=True)
    assert result.weights.shape == (1, 6, 6)
    with pytest.raises(RuntimeError, match="backend='c' cannot serve this call"):
        sdpa(query, key, value, return_weights=True, backend="c")


def test_broadcast_leading_dims(backend):
    rng = np.random.default_rng(7)
    query = rng.standard_normal((2, 1, 3, 5, 4))
    key = rng.standard_normal((1, 4, 1, 6, 4))
    value = rng.standard_normal((3, 6, 2))
    output = sdpa(query, key, value, backend=backend)
    assert output.shape == (2, 4, 3, 5, 2)
    for index in np.ndindex(2, 4, 3):
        expected = sdpa(query[index[0], 0, index[2]], key[0, index[1], 0], value[index[2]],
                        backend="numpy")
        np.testing.assert_allclose(output[index], expected, atol=1e-14)


@pytest.mark.parametrize("module", [attnref.core, attnref.masks, attnref.numerics])
def test_docstring_examples_run(module):
    failures, tried = doctest.testmod(module, extraglobs={"np": np})
    assert tried > 0 and failures == 0
