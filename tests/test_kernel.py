"""attnref.kernel: the C kernel against the reference, its determinism, its
buffers and error codes, and the fallback when it is not compiled."""
import concurrent.futures
import dataclasses
import itertools
import json
import math
import os
import subprocess
import sys
import threading
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, target, strategies as st

import attnref
from attnref import kernel, scaled_dot_product_attention as sdpa
from attnref._validation import sdpa_call
from attnref.testing.strategies import attention_cases
from attnref.testing.tolerance import (plain_score_allowance, reference_dtype,
                                       reference_errors)

needs_kernel = pytest.mark.skipif(
    not kernel.available(), reason=f"C kernel unavailable: {kernel.info()['reason']}")


def test_native_build_is_present_when_required():
    if os.environ.get("ATTNREF_REQUIRE_NATIVE", "") in ("", "0"):
        pytest.skip("ATTNREF_REQUIRE_NATIVE is not set")
    assert kernel.available(), kernel.info()["reason"]
    assert kernel.info()["path"]


#: the score modes (attnref._validation.SCORE_MODES), drawn inside each
#: property so that both are searched without a second copy of its examples
SCORE_MODES = st.sampled_from(["fast", "exact"])


@needs_kernel
@given(attention_cases(), st.sampled_from([np.float32, np.float64]), SCORE_MODES)
def test_kernel_matches_reference_under_the_flash_rule(code_path, case, dtype, scores):
    low = case.astype(dtype)
    wide = low.astype(reference_dtype(dtype))  # the exact answer for the inputs given
    reference = sdpa(wide.query, wide.key, wide.value, backend="numpy", return_lse=True,
                     **wide.options)
    baseline = sdpa(low.query, low.key, low.value, backend="numpy", return_lse=True,
                    **low.options)
    candidate = sdpa(low.query, low.key, low.value, backend="c", return_lse=True,
                     scores=scores, **low.options)
    assert candidate.output.dtype == candidate.lse.dtype == dtype
    # plain score sums: the rule plus one score rounding (see plain_score_allowance)
    allowance = 0.0 if scores == "exact" else plain_score_allowance(
        low.query, low.key, sdpa_call(low.query, low.key, low.value, **low.options).scale,
        dtype, low.options.get("enable_gqa", False))
    error, bound = reference_errors(candidate.output, reference.output, baseline.output,
                                    low.value)
    finite = np.abs(low.value[np.isfinite(low.value)])
    bound += allowance * (float(finite.max()) if finite.size else 0.0)
    target(error / bound, label="output error / bound")
    assert error <= bound, (error, bound)
    lse_error, lse_bound = reference_errors(candidate.lse, reference.lse, baseline.lse,
                                            reference.lse)
    lse_bound += allowance
    target(lse_error / lse_bound, label="lse error / bound")
    assert lse_error <= lse_bound, (lse_error, lse_bound)


@needs_kernel
@given(attention_cases(lengths=(0, 1, 2, 17, 97, 129), head_dims=(1, 59, 64)),
       st.sampled_from([np.float32, np.float64]), SCORE_MODES)
def test_results_are_bit_identical_across_thread_counts_and_runs(code_path, case, dtype,
                                                                 scores):
    low = case.astype(dtype)
    call = sdpa_call(low.query, low.key, low.value, return_lse=True, scores=scores,
                     **low.options)
    first, first_lse = kernel.attention(call, threads=1)
    for threads in (1, 2, 3, 8):
        output, lse = kernel.attention(call, threads=threads)
        assert np.array_equal(output, first, equal_nan=True), threads
        assert np.array_equal(lse, first_lse, equal_nan=True), threads


@needs_kernel
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_each_score_mode_gets_its_own_plan(code_path, rng, dtype):
    """scores= reaches C (the plan cache is keyed by it): on inputs where a
    plain sum and a once-rounded one differ, calls alternating the two modes
    each give their own mode's result, and the exact scores are the ones
    computed from the double dot products."""
    query, key, value = (rng.standard_normal((1, 2, 64, 64)).astype(dtype) for _ in range(3))
    exact = sdpa(query, key, value, backend="c", scores="exact")
    fast = sdpa(query, key, value, backend="c", scores="fast")
    assert not np.array_equal(fast, exact)
    assert np.array_equal(sdpa(query, key, value, backend="c", scores="exact"), exact)
    assert np.array_equal(sdpa(query, key, value, backend="c", scores="fast"), fast)
    assert np.array_equal(sdpa(query, key, value, backend="c"), exact)   # the default


@needs_kernel
def test_non_contiguous_and_broadcast_operands(code_path, rng):
    query = rng.standard_normal((3, 2, 9, 16)).transpose(1, 0, 2, 3)    # (2, 3, 9, 16)
    key = rng.standard_normal((16, 11))[None, None].swapaxes(-1, -2)   # (1, 1, 11, 16)
    value = rng.standard_normal((2, 1, 11, 5))[:, :, :, ::-1]           # negative strides
    mask = rng.random((3, 1, 11)) < 0.8                                 # (H, L=1, S)
    output = sdpa(query, key, value, attn_mask=mask, backend="c")
    expected = sdpa(query, key, value, attn_mask=mask, backend="numpy")
    np.testing.assert_allclose(output, expected, atol=1e-13)


@needs_kernel
def test_batch_dims_that_cannot_merge_are_looped(code_path, rng):
    query = rng.standard_normal((2, 3, 4, 5, 8))
    key = rng.standard_normal((2, 1, 4, 6, 8))        # broadcast in the middle dim only
    value = rng.standard_normal((1, 3, 1, 6, 2))
    output, _ = kernel.attention(sdpa_call(query, key, value))
    np.testing.assert_allclose(output, sdpa(query, key, value, backend="numpy"), atol=1e-13)


@needs_kernel
def test_caller_buffers(code_path, rng):
    query, key, value = (rng.standard_normal((2, 5, 4)) for _ in range(3))
    call = sdpa_call(query, key, value)
    out, lse = np.empty((2, 5, 4)), np.empty((2, 5))
    result = kernel.attention(call, out=out, lse_out=lse)
    assert result[0] is out and result[1] is lse
    np.testing.assert_allclose(out, sdpa(query, key, value, backend="numpy"), atol=1e-14)
    with pytest.raises(ValueError, match="out shares memory with an input"):
        kernel.attention(call, out=value)
    with pytest.raises(ValueError, match="lse_out shares memory with an input"):
        kernel.attention(call, out=out, lse_out=out.reshape(-1)[:10].reshape(2, 5))
    with pytest.raises(ValueError, match=r"lse_out must have shape \(2, 5\) and dtype float64"):
        kernel.attention(call, lse_out=np.empty((2, 5), np.float32))
    with pytest.raises(ValueError, match="out must be C-contiguous"):
        kernel.attention(call, out=np.empty((2, 4, 5)).swapaxes(1, 2))
    with pytest.raises(TypeError, match="out must be a numpy.ndarray"):
        kernel.attention(call, out=[0.0])


@needs_kernel
@pytest.mark.parametrize("chunk_work", [None, 1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_output_follows_a_query_whose_heads_are_views_of_one_projection(
        code_path, rng, monkeypatch, chunk_work, dtype):
    """Heads cut from one (B, L, H*E) projection step less than positions:
    the output is (B, L, H, Ev) in memory, so merging its heads back into
    (B, L, H*Ev) is a view, and its values are the bits of the same call on
    contiguous operands (one C call or many pieces)."""
    B, L, H, Hkv, E = 2, 37, 6, 2, 16
    projected = rng.standard_normal((B, L, (H + 2 * Hkv) * E)).astype(dtype)
    heads = [np.moveaxis(part.reshape(B, L, -1, E), -2, -3)
             for part in np.split(projected, [H * E, (H + Hkv) * E], axis=-1)]
    if chunk_work is not None:
        monkeypatch.setattr(kernel, "CHUNK_WORK", chunk_work)
    output = sdpa(*heads, is_causal=True, enable_gqa=True, backend="c")
    contiguous = sdpa(*map(np.ascontiguousarray, heads), is_causal=True, enable_gqa=True,
                      backend="c")
    assert output.shape == (B, H, L, E) and contiguous.flags.c_contiguous
    assert np.moveaxis(output, -3, -2).flags.c_contiguous        # (B, L, H, Ev) in memory
    assert np.array_equal(output, contiguous)
    merged = np.moveaxis(output, -3, -2).reshape(B, L, H * E)
    assert np.shares_memory(merged, output)


@needs_kernel
def test_c_error_codes_become_exceptions():
    lib, ffi = kernel._lib, kernel._ffi
    params = ffi.new("attnref_params *")
    params.B = params.H = params.L = params.S = params.E = params.Ev = 1
    params.kv_group = params.threads = 1
    params.scale = 1.0
    params.band_lower, params.band_upper = -lib.attnref_band_unbounded(), lib.attnref_band_unbounded()
    x = ffi.new("float[1]")
    assert lib.attnref_sdpa_f32(params, x, ffi.NULL, x, x, x, ffi.NULL) == lib.ATTNREF_OK
    assert lib.attnref_sdpa_f32(params, ffi.NULL, ffi.NULL, x, x, x, ffi.NULL) == lib.ATTNREF_ERR_NULL
    params.mask_kind = lib.ATTNREF_MASK_BOOL
    assert lib.attnref_sdpa_f32(params, x, ffi.NULL, x, x, x, ffi.NULL) == lib.ATTNREF_ERR_NULL
    params.mask_kind = lib.ATTNREF_MASK_NONE
    params.S = -1
    assert lib.attnref_sdpa_f32(params, x, ffi.NULL, x, x, x, ffi.NULL) == lib.ATTNREF_ERR_SIZE
    params.S = 1
    params.threads = 0
    assert lib.attnref_sdpa_f32(params, x, ffi.NULL, x, x, x, ffi.NULL) == lib.ATTNREF_ERR_OPTION
    params.threads = 1
    params.L, params.q_stride[2] = 2**40, 2**40
    assert lib.attnref_sdpa_f32(params, x, ffi.NULL, x, x, x, ffi.NULL) == lib.ATTNREF_ERR_OVERFLOW
    # every code of the header has a message, and the wrapper raises it
    codes = {getattr(lib, name) for name in dir(lib) if name.startswith("ATTNREF_ERR_")}
    assert set(kernel._ERRORS) == codes
    call = dataclasses.replace(sdpa_call(np.ones((2, 3)), np.ones((4, 3)), np.ones((4, 2))),
                               scale=-1.0)  # past validation, which would refuse it
    with pytest.raises(RuntimeError, match=r"attnref C kernel failed \(code 4\): an option "
                                           r"was out of range"):
        kernel.attention(call)


def test_thread_setting_is_validated():
    with pytest.raises(ValueError, match=r"threads must be an int in \[1, 1024\], got 0"):
        kernel.set_num_threads(0)
    with pytest.raises(TypeError, match=r"threads must be an int in \[1, 1024\], got float"):
        kernel.set_num_threads(2.0)
    previous = kernel.get_num_threads()
    kernel.set_num_threads(3)
    assert kernel.info()["threads"] == 3
    kernel.set_num_threads(previous)


FALLBACK_SCRIPT = """
import sys
{prelude}
import numpy as np, attnref
assert not attnref.kernel.available()
print(attnref.kernel.info()["reason"])
q = np.ones((2, 3))
assert attnref.scaled_dot_product_attention(q, q, q).shape == (2, 3)
try:
    attnref.scaled_dot_product_attention(q, q, q, backend="c")
except RuntimeError as error:
    print(error)
"""


@pytest.mark.parametrize("prelude, reason", [
    ("", "disabled by ATTNREF_DISABLE_KERNEL"),
    ("sys.modules['attnref._kernel'] = None", "attnref._kernel is not installed"),
])
def test_package_works_without_the_kernel(prelude, reason):
    environment = dict(os.environ, ATTNREF_DISABLE_KERNEL="1" if not prelude else "")
    run = subprocess.run([sys.executable, "-c", FALLBACK_SCRIPT.format(prelude=prelude)],
                         capture_output=True, text=True, env=environment,
                         cwd=os.path.dirname(os.path.dirname(attnref.__file__)))
    assert run.returncode == 0, run.stderr
    assert reason in run.stdout
    assert "backend='c' cannot serve this call: the C kernel is unavailable" in run.stdout


# ---------------------------------------------------------------- broadcasts reach C as strides

def _peak_bytes(function):
    """Peak of NumPy's allocations (tracemalloc sees them) while ``function`` runs."""
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@needs_kernel
def test_a_broadcast_mask_is_not_copied(code_path, rng):
    """A causal mask broadcast to (4, 16, 256, 256) (4 MiB as bool) costs its
    (256, 256) (64 KiB) and the output, not its broadcast size."""
    query, key, value = (rng.standard_normal((4, 16, 256, 4)).astype(np.float32)
                         for _ in range(3))
    for unbroadcast in (attnref.masks.causal_mask(256),
                        attnref.masks.mask_to_bias(attnref.masks.causal_mask(256), np.float64)):
        mask = np.broadcast_to(unbroadcast, (4, 16, 256, 256))
        expected = sdpa(query, key, value, attn_mask=np.ascontiguousarray(mask), backend="c")
        peak = _peak_bytes(lambda: sdpa(query, key, value, attn_mask=mask, backend="c"))
        # the output (1 MiB), a float64 bias cast to float32 once (256 KiB), and change
        assert peak < expected.nbytes + unbroadcast.nbytes + (256 << 10), peak
        assert np.array_equal(sdpa(query, key, value, attn_mask=mask, backend="c"), expected)


@needs_kernel
def test_stride_zero_and_strided_operands_are_not_copied(code_path, rng):
    """A query of stride 0 over heads and positions (4 MiB if copied), a key
    and value sliced with steps, a value with negative strides: only the
    output is allocated."""
    row = rng.standard_normal((1, 1, 1, 16)).astype(np.float32)
    query = np.broadcast_to(row, (1, 64, 1024, 16))
    key = rng.standard_normal((1, 64, 256, 32)).astype(np.float32)[:, :, ::2, ::2]
    value = rng.standard_normal((1, 64, 128, 8)).astype(np.float32)[:, ::-1, ::-1]
    expected = sdpa(*(np.ascontiguousarray(a) for a in (query, key, value)), backend="c")
    peak = _peak_bytes(lambda: sdpa(query, key, value, backend="c"))
    # key's rows are not contiguous (step 2 in E): it alone is copied (1 MiB)
    assert peak < expected.nbytes + key.size * 4 + (64 << 10), peak
    contiguous_rows = np.ascontiguousarray(key)
    peak = _peak_bytes(lambda: sdpa(query, contiguous_rows, value, backend="c"))
    assert peak < expected.nbytes + (64 << 10), peak
    assert np.array_equal(sdpa(query, key, value, backend="c"), expected)


@needs_kernel
def test_a_float16_broadcast_is_converted_once(rng):
    row = rng.standard_normal((1, 1, 1, 8)).astype(np.float16)
    query = np.broadcast_to(row, (2, 32, 512, 8))               # 2 MiB as float32
    key, value = (rng.standard_normal((2, 32, 64, 8)).astype(np.float16) for _ in range(2))
    output = None

    def run():
        nonlocal output
        output = sdpa(query, key, value, backend="c")
    peak = _peak_bytes(run)
    assert peak < 3 * output.nbytes + 2 * key.size * 4 + (64 << 10), peak
    np.testing.assert_array_equal(
        output, sdpa(np.ascontiguousarray(query), key, value, backend="c"))


# ---------------------------------------------------------------- big calls stay under control

@needs_kernel
def test_empty_outputs_return_before_any_work():
    """B = H = 2^16 with Ev = 0 is 2^32 rows of nothing: both backends return
    at once (the probe measured ~14 minutes before)."""
    query = np.broadcast_to(np.ones((1, 1, 1, 4), np.float32), (2**16, 2**16, 1, 4))
    value = np.broadcast_to(np.ones((1, 1, 1, 0), np.float32), (2**16, 2**16, 1, 0))
    for backend in ("numpy", "c"):
        output = sdpa(query, query, value, backend=backend)
        assert output.shape == (2**16, 2**16, 1, 0) and output.dtype == np.float32
    # and C itself, called directly: no row has anything to write
    lib, ffi = kernel._lib, kernel._ffi
    params = ffi.new("attnref_params *")
    params.B = params.H = 2**16
    params.L, params.S, params.E, params.Ev = 1, 2**20, 4, 0
    params.kv_group = params.threads = 1
    params.scale = 1.0
    params.band_lower, params.band_upper = -lib.attnref_band_unbounded(), lib.attnref_band_unbounded()
    x = ffi.new("float[4]")
    assert lib.attnref_sdpa_f32(params, x, ffi.NULL, x, x, x, ffi.NULL) == lib.ATTNREF_OK


@needs_kernel
@given(attention_cases(lengths=(1, 2, 17, 97, 129), head_dims=(1, 59, 64)),
       st.sampled_from([np.float32, np.float64]), SCORE_MODES)
def test_a_call_split_into_pieces_gives_the_same_bits(code_path, monkeypatch, case, dtype,
                                                      scores):
    """With CHUNK_WORK = 1 every C call covers one batch entry, one kv group
    of heads and as few tiled units of positions as its threads allow (one
    on one thread, two on two): the result is the one call's."""
    low = case.astype(dtype)
    call = sdpa_call(low.query, low.key, low.value, return_lse=True, scores=scores,
                     **low.options)
    whole, whole_lse = kernel.attention(call, threads=2)
    with monkeypatch.context() as patch:
        patch.setattr(kernel, "CHUNK_WORK", 1)
        results = [kernel.attention(call, threads=threads) for threads in (1, 2)]
        out, lse = np.zeros_like(whole), np.zeros_like(whole_lse)
        kernel.attention(call, threads=2, out=out, lse_out=lse)
    for pieces, pieces_lse in results + [(out, lse)]:
        assert np.array_equal(pieces, whole, equal_nan=True)
        assert np.array_equal(pieces_lse, whole_lse, equal_nan=True)


@given(st.integers(1, 3), st.integers(1, 4), st.sampled_from([1, 2, 3]), st.integers(1, 700),
       st.integers(1, 5000), st.integers(1, 10**6), st.sampled_from([1, 64, 256]),
       st.integers(1, 4))
def test_spans_cover_the_call_in_pieces_of_whole_units(B, groups, kv_group, L, row_work,
                                                       work, block, threads):
    """kernel._spans: every row once; whole batch entries, kv groups or units;
    no piece shorter than a unit; a piece within the work budget's items
    (or the fewest that give each thread a unit), rounded up to whole rounds
    of units (a multiple of the threads) where its items allow."""
    H = groups * kv_group
    spans = kernel._spans(B, H, L, row_work, work, kv_group, block, threads)
    seen = np.zeros((B, H, L), int)
    group_units = -(-L // block)                     # the units of one kv group
    tail = L % block != 0                            # its last unit is short
    budget_rows = max(1, work // row_work)

    def whole_rounds(items, item_units):
        """items rounded up to the fewest that make whole rounds of units"""
        multiple = threads // math.gcd(item_units, threads)
        return -(-items // multiple) * multiple

    for b0, b1, h0, h1, i0, i1 in spans:
        seen[b0:b1, h0:h1, i0:i1] += 1
        units = (b1 - b0) * (h1 - h0) // kv_group * -(-(i1 - i0) // block)
        assert h0 % kv_group == 0 and h1 % kv_group == 0
        assert i0 % block == 0 and (i1 == L or i1 % block == 0)
        assert i1 - i0 >= min(block, L)
        if (i0, i1) != (0, L):
            # a short last unit merged into the piece before it counts as none
            budget = max(1, budget_rows // (kv_group * block))
            assert units - (i1 == L and tail) <= whole_rounds(budget, 1)
        elif B * H * L <= budget_rows:
            assert len(spans) == 1
        elif H * L <= budget_rows:                   # whole batch entries
            assert b1 - b0 <= whole_rounds(max(1, budget_rows // (H * L)),
                                           groups * group_units)
        else:                                        # whole kv groups
            fewest = max(1, budget_rows // (kv_group * L), -(-threads // group_units))
            assert (h1 - h0) // kv_group <= whole_rounds(fewest, group_units)
    assert (seen == 1).all()


def test_spans_spread_heads_evenly():
    """8 heads of which a call's budget holds 7: two calls of 4 heads (7 + 1
    would leave a thread idle through the second), and a long unit alone
    over the budget still shares a call with another, for two threads."""
    assert [(h0, h1) for _, _, h0, h1, _, _ in
            kernel._spans(1, 8, 256, 4096 * 256, 7 * 256 * 4096 * 256, 1, 256, 2)] == [(0, 4),
                                                                                       (4, 8)]
    assert [(i0, i1) for *_, i0, i1 in
            kernel._spans(1, 1, 2048, 2**20, 2**20, 1, 256, 2)] == [
        (0, 512), (512, 1024), (1024, 1536), (1536, 2048)]


def test_spans_hold_whole_rounds_of_units():
    """A budget of 3 units (N = 8192, D = 128 on 2 threads) gives pieces of
    4 units, 2 a thread; 3 would leave one thread idle a third of the time."""
    row_work = 8192 * 256 + 1
    spans = kernel._spans(1, 1, 8192, row_work, 3 * 256 * row_work, 1, 256, 2)
    assert {i1 - i0 for *_, i0, i1 in spans} == {4 * 256}
    spans = kernel._spans(1, 1, 8192, row_work, 3 * 256 * row_work, 1, 256, 4)
    assert {i1 - i0 for *_, i0, i1 in spans} == {4 * 256}
    spans = kernel._spans(1, 1, 8192, row_work, 5 * 256 * row_work, 1, 256, 4)
    assert {i1 - i0 for *_, i0, i1 in spans} == {8 * 256}
    # 32 heads of 5 units, 5 heads to a budget: 6 heads (30 units) a piece
    row_work = 1280 * 256 + 1
    spans = kernel._spans(1, 32, 1280, row_work, 5 * 1280 * row_work, 1, 256, 2)
    assert [h1 - h0 for _, _, h0, h1, _, _ in spans] == [6, 6, 6, 6, 6, 2]


INTERRUPT_SCRIPT = """
import json, os, signal, threading, time
import numpy as np
from attnref import kernel, scaled_dot_product_attention as sdpa
from attnref._validation import sdpa_call
kernel.set_code_path({path!r})
# Ctrl-C raises KeyboardInterrupt even when this process inherited SIGINT
# ignored (a shell's background job does), as a terminal's user gets it
signal.signal(signal.SIGINT, signal.default_int_handler)
query = np.ones((1, 4, 16384, 64), np.float32)      # ~5 s on one avx512 thread
call = sdpa_call(query, query, query)
out = np.full(call.output_shape, 7.0, np.float32)
sent = []
def interrupt():
    sent.append(time.perf_counter())
    os.kill(os.getpid(), signal.SIGINT)
threading.Timer(0.5, interrupt).start()
try:
    kernel.attention(call, threads=1, out=out)
    outcome = "finished"
except KeyboardInterrupt:
    outcome = "interrupted"
print(json.dumps({{"outcome": outcome, "latency": time.perf_counter() - sent[0],
                   "untouched": bool((out == 7.0).all())}}))
"""


@needs_kernel
@pytest.mark.parametrize("path", ["portable", "avx512"])
def test_ctrl_c_stops_a_long_call_and_leaves_out_untouched(path):
    if path not in kernel.supported_code_paths():
        pytest.skip(f"code path {path} is not supported on this CPU")
    run = subprocess.run([sys.executable, "-c", INTERRUPT_SCRIPT.format(path=path)],
                         capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(attnref.__file__)))
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["outcome"] == "interrupted"
    assert report["latency"] < 2.0, report
    assert report["untouched"]


# ---------------------------------------------------------------- settings while others call

@needs_kernel
def test_path_changes_while_other_threads_call(monkeypatch, rng):
    """Calls of many pieces run while another thread switches the code path:
    each call gives the bits of one path (it reads the path once)."""
    paths = kernel.supported_code_paths()
    query, key, value = (rng.standard_normal((2, 4, 160, 32)) for _ in range(3))
    call = sdpa_call(query, key, value, is_causal=True)
    expected = {}
    for path in paths:
        kernel.set_code_path(path)
        expected[path] = kernel.attention(call)[0]
    monkeypatch.setattr(kernel, "CHUNK_WORK", 1)
    done = threading.Event()

    def switch():
        for turn in itertools.count():
            if done.is_set():
                return
            kernel.set_code_path(paths[turn % len(paths)])
    switcher = threading.Thread(target=switch)
    switcher.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            outputs = list(pool.map(lambda _: kernel.attention(call)[0], range(24)))
    finally:
        done.set()
        switcher.join()
        kernel.set_code_path("auto")
    for output in outputs:
        assert any(np.array_equal(output, bits) for bits in expected.values())


@needs_kernel
def test_a_path_the_cpu_lacks_is_refused_by_c():
    lib, ffi = kernel._lib, kernel._ffi
    params = ffi.new("attnref_params *")
    params.B = params.H = params.L = params.S = params.E = params.Ev = 1
    params.kv_group = params.threads = 1
    params.scale = 1.0
    params.band_lower, params.band_upper = -lib.attnref_band_unbounded(), lib.attnref_band_unbounded()
    x = ffi.new("float[1]")
    params.path = 7
    assert lib.attnref_sdpa_f32(params, x, ffi.NULL, x, x, x, ffi.NULL) == lib.ATTNREF_ERR_OPTION


@pytest.mark.parametrize("threads", [2**31, 10**30, kernel.MAX_THREADS + 1])
def test_out_of_range_thread_counts_are_refused(threads):
    with pytest.raises(ValueError, match=rf"threads must be an int in \[1, 1024\], got {threads}"):
        kernel.set_num_threads(threads)


def test_an_out_of_range_thread_count_in_the_environment_warns_and_is_ignored():
    """Like a bad ATTNREF_KERNEL_PATH, it must not break ``import attnref``."""
    run = subprocess.run([sys.executable, "-c",
                          "import attnref; print(attnref.kernel.get_num_threads())"],
                         capture_output=True, text=True,
                         env=dict(os.environ, ATTNREF_NUM_THREADS=str(2**31)),
                         cwd=os.path.dirname(os.path.dirname(attnref.__file__)))
    assert run.returncode == 0, run.stderr
    assert f"ATTNREF_NUM_THREADS must be an int in [1, 1024], got '{2**31}'" in run.stderr
    assert int(run.stdout) == min(os.cpu_count() or 1, kernel.MAX_THREADS)
