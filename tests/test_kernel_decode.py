"""The C kernel's decoding path (csrc/decode_impl.h, csrc/decode.c): calls
with at most DECODE_ROWS = 16 query rows per kv head (kv_group * L) on the
AVX2 and AVX-512 paths, keys in chunks of 1024 or more combined in chunk
order. The general properties of tests/test_kernel.py reach it with short
keys; these draw the long ones (several chunks) and the chunk combination's
corner cases, and compare with the portable path and the reference."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from attnref import kernel, scaled_dot_product_attention as sdpa
from attnref._validation import sdpa_call
from attnref.testing.strategies import AttentionCase
from attnref.testing.tolerance import (plain_score_allowance, reference_dtype,
                                       reference_errors)

# key lengths of one chunk (<= 1024) and of two and three (csrc/decode.c)
KEY_LENGTHS = (1, 17, 130, 1100, 2100)
DTYPES = (np.float32, np.float64)
#: the score modes (attnref._validation.SCORE_MODES): the decoding kernel has
#: a micro-kernel for each
SCORE_MODES = ("exact", "fast")


@st.composite
def decode_cases(draw):
    """A call with few rows per kv head: Hkv in {1, 2}, kv_group in {1, 2, 4},
    L in 1..4, S from KEY_LENGTHS, a bool or additive mask, causal (either
    alignment), window and softcap each drawn."""
    kv_heads, group = draw(st.integers(1, 2)), draw(st.sampled_from((1, 2, 4)))
    L, S = draw(st.integers(1, 4)), draw(st.sampled_from(KEY_LENGTHS))
    E, Ev = draw(st.sampled_from((1, 8, 59, 64))), draw(st.sampled_from((1, 5, 64)))
    batch = draw(st.sampled_from(((), (2,))))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    query = rng.standard_normal(batch + (kv_heads * group, L, E))
    key = rng.standard_normal(batch + (kv_heads, S, E))
    value = rng.standard_normal(batch + (kv_heads, S, Ev))
    options = {"enable_gqa": True} if group > 1 else {}
    mask_kind = draw(st.sampled_from(("none", "bool", "bias")))
    if mask_kind == "bool":
        options["attn_mask"] = rng.random((kv_heads * group, L, S)) < 0.7
    elif mask_kind == "bias":
        bias = rng.standard_normal((L, S))
        bias[rng.random((L, S)) < 0.2] = -np.inf
        options["attn_mask"] = bias
    if draw(st.booleans()):
        options["is_causal"] = True
        if draw(st.booleans()):
            options["causal_alignment"] = "bottom_right"
    if draw(st.booleans()):
        options["window"] = (draw(st.sampled_from((None, 0, 700))), None)
    if draw(st.booleans()):
        options["softcap"] = draw(st.sampled_from((1.0, 30.0)))
    return AttentionCase(query, key, value, options)


def in_rows_per_kv_head(case):
    """kv_group * L: the decoding path takes calls with at most 16."""
    return (case.query.shape[-3] // case.key.shape[-3]) * case.query.shape[-2]


@pytest.fixture(params=["avx2", "avx512"])
def decoding_path(request):
    """The SIMD code paths, which have the decoding kernel; the default path
    is restored afterwards."""
    if not kernel.available():
        pytest.skip(f"C kernel unavailable: {kernel.info()['reason']}")
    if request.param not in kernel.supported_code_paths():
        pytest.skip(f"code path {request.param} is not supported on this CPU")
    kernel.set_code_path(request.param)
    yield request.param
    kernel.set_code_path("auto")


@settings(max_examples=30)
@given(decode_cases(), st.sampled_from(DTYPES), st.sampled_from(SCORE_MODES))
def test_decoding_matches_the_reference_and_the_portable_path(decoding_path, case, dtype,
                                                              scores):
    """Under the equivalence rule, plus, for the decoding path's plain (fast)
    score sums, one score rounding (plain_score_allowance, as
    tests/test_kernel.py applies it); the portable path, held to the rule
    alone, is the control."""
    assert in_rows_per_kv_head(case) <= 16
    low = case.astype(dtype)
    wide = low.astype(reference_dtype(dtype))
    reference = sdpa(wide.query, wide.key, wide.value, backend="numpy", return_lse=True,
                     **wide.options)
    baseline = sdpa(low.query, low.key, low.value, backend="numpy", return_lse=True,
                    **low.options)
    call = sdpa_call(low.query, low.key, low.value, return_lse=True, scores=scores,
                     **low.options)
    allowance = 0.0 if scores == "exact" else plain_score_allowance(
        low.query, low.key, call.scale, dtype, low.options.get("enable_gqa", False))
    finite = np.abs(low.value[np.isfinite(low.value)])
    kernel.set_code_path("portable")
    portable = kernel.attention(call, threads=1)
    kernel.set_code_path(decoding_path)
    for candidate, plain in ((kernel.attention(call, threads=2), allowance), (portable, 0.0)):
        error, bound = reference_errors(candidate[0], reference.output, baseline.output,
                                        low.value)
        bound += plain * (float(finite.max()) if finite.size else 0.0)
        assert error <= bound, (error, bound)
        error, bound = reference_errors(candidate[1], reference.lse, baseline.lse,
                                        reference.lse)
        assert error <= bound + plain, (error, bound + plain)


@settings(max_examples=20)
@given(decode_cases(), st.sampled_from(DTYPES), st.sampled_from(SCORE_MODES))
def test_decoding_is_bit_identical_across_threads_and_split_calls(decoding_path, monkeypatch,
                                                                  case, dtype, scores):
    """Any thread count, and kernel.py's pieces (CHUNK_WORK = 1: one C call
    per batch entry and kv group), give the bits of one call on one thread."""
    low = case.astype(dtype)
    call = sdpa_call(low.query, low.key, low.value, return_lse=True, scores=scores,
                     **low.options)
    first, first_lse = kernel.attention(call, threads=1)
    results = [kernel.attention(call, threads=threads) for threads in (2, 3, 8)]
    with monkeypatch.context() as patch:
        patch.setattr(kernel, "CHUNK_WORK", 1)
        results.append(kernel.attention(call, threads=2))
    for output, lse in results:
        assert np.array_equal(output, first, equal_nan=True)
        assert np.array_equal(lse, first_lse, equal_nan=True)


def long_row(dtype, S=2100, E=16):
    """One query row against S keys (three chunks), scores about N(0, 1)."""
    rng = np.random.default_rng(5)
    query = rng.standard_normal((1, 1, E)).astype(dtype)
    key = (rng.standard_normal((1, S, E)) / np.sqrt(E)).astype(dtype)
    value = rng.standard_normal((1, S, 8)).astype(dtype)
    return query, key, value


@pytest.mark.parametrize("dtype", DTYPES)
def test_an_inf_value_whose_weight_the_last_chunk_flushes_does_not_reach_the_output(
        decoding_path, dtype):
    """Key 3 leads its chunk (its weight there is 1, its inf value enters that
    chunk's sums) but a key of the last chunk scores 1000 more: against the
    row's max its weight is below the smallest normal, so it weighs 0 and
    the output is finite, as on the portable path (attnref.h)."""
    query, key, value = long_row(dtype)
    query[:] = 0
    query[..., 0] = 1
    key[..., 0] = 0
    key[0, 3, 0], key[0, 2050, 0] = 10, 1010
    value[0, 3, 2] = np.inf
    result = sdpa(query, key, value, scale=1.0, return_lse=True, backend="c")
    output, lse = result.output, result.lse
    assert np.all(np.isfinite(output))
    np.testing.assert_array_equal(output[0, 0], value[0, 2050])
    assert lse[0, 0] == dtype(1010)


@pytest.mark.parametrize("dtype", DTYPES)
def test_chunk_corner_cases_match_the_portable_path(decoding_path, dtype):
    """Rows whose visible keys are in one chunk only, or in none, a NaN score
    in the last chunk, an inf value that does count, and every masked-row
    rule, each the same on the decoding path as on the portable path."""
    query, key, value = long_row(dtype)
    query = np.repeat(query, 4, axis=0)                             # 4 heads, L = 1
    mask = np.ones((4, 1, key.shape[-2]), bool)
    mask[0, :, 1024:] = False                                        # the first chunk only
    mask[1, :, :2048] = False                                        # the last chunk only
    mask[2] = False                                                  # no key at all
    nan_key, inf_value = key.copy(), value.copy()
    nan_key[..., 2090, 0] = np.nan                                   # row 3 sees it
    inf_value[..., 1500, 1] = -np.inf                                # a visible key of rows 1 and 3
    inf_value[..., 2060, 1] = np.inf
    cases = [(key, value, {}), (nan_key, value, {}), (key, inf_value, {}),
             (key, inf_value, {"masked_rows": "nan"})]
    for k, v, options in cases:
        call = sdpa_call(query, k, v, attn_mask=mask, return_lse=True, **options)
        decoded = kernel.attention(call, threads=2)
        kernel.set_code_path("portable")
        expected = kernel.attention(call, threads=1)
        kernel.set_code_path(decoding_path)
        for got, want in zip(decoded, expected):
            assert np.array_equal(np.isnan(got), np.isnan(want)), options
            assert np.array_equal(np.isinf(got), np.isinf(want)), options
            finite = np.isfinite(want)
            np.testing.assert_allclose(got[finite], want[finite], rtol=1e-5 if dtype == np.float32
                                       else 1e-13, atol=1e-6 if dtype == np.float32 else 1e-14)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fast_scores_are_deterministic_and_close_to_exact_ones(decoding_path, dtype):
    """ATTNREF_SCORES_FAST on the decoding path: bit-identical across thread
    counts, and within a few rounding errors of the exact scores' output on
    scores of moderate size (B=1, Hq=8, Hkv=2, L=1, S=2100, E=59)."""
    rng = np.random.default_rng(6)
    query = rng.standard_normal((8, 1, 59)).astype(dtype)
    key, value = (rng.standard_normal((2, 2100, 59)).astype(dtype) for _ in range(2))
    call = sdpa_call(query, key, value, enable_gqa=True, return_lse=True)
    exact = kernel.attention(call, threads=2)
    original = kernel._plan

    def plan(*args):
        """kernel._plan's parameters with ATTNREF_SCORES_FAST"""
        params, loops, spans, strides = original(*args)
        fast = kernel._ffi.new("attnref_params *")
        fast[0] = params[0]
        fast.scores = kernel._lib.ATTNREF_SCORES_FAST
        return fast, loops, spans, strides
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(kernel, "_plan", plan)
        runs = [kernel.attention(call, threads=threads) for threads in (1, 2, 3)]
    for output, lse in runs[1:]:
        assert np.array_equal(output, runs[0][0]) and np.array_equal(lse, runs[0][1])
    epsilon = np.finfo(dtype).eps
    np.testing.assert_allclose(runs[0][0], exact[0], rtol=0, atol=64 * epsilon)
    np.testing.assert_allclose(runs[0][1], exact[1], rtol=0, atol=64 * epsilon * 8)
    assert not np.array_equal(runs[0][0], exact[0])   # the FAST sums are another computation
