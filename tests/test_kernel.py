"""attnref.kernel: the C kernel against the reference, its determinism, its
buffers and error codes, and the fallback when it is not compiled."""
import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, target, strategies as st

import attnref
from attnref import kernel, scaled_dot_product_attention as sdpa
from attnref._validation import sdpa_call
from attnref.testing.strategies import attention_cases
from attnref.testing.tolerance import reference_dtype, reference_errors

needs_kernel = pytest.mark.skipif(
    not kernel.available(), reason=f"C kernel unavailable: {kernel.info()['reason']}")


def test_native_build_is_present_when_required():
    if os.environ.get("ATTNREF_REQUIRE_NATIVE", "") in ("", "0"):
        pytest.skip("ATTNREF_REQUIRE_NATIVE is not set")
    assert kernel.available(), kernel.info()["reason"]
    assert kernel.info()["path"]


@needs_kernel
@given(attention_cases(), st.sampled_from([np.float32, np.float64]))
def test_kernel_matches_reference_under_the_flash_rule(code_path, case, dtype):
    low = case.astype(dtype)
    wide = low.astype(reference_dtype(dtype))  # the exact answer for the inputs given
    reference = sdpa(wide.query, wide.key, wide.value, backend="numpy", return_lse=True,
                     **wide.options)
    baseline = sdpa(low.query, low.key, low.value, backend="numpy", return_lse=True,
                    **low.options)
    candidate = sdpa(low.query, low.key, low.value, backend="c", return_lse=True,
                     **low.options)
    assert candidate.output.dtype == candidate.lse.dtype == dtype
    error, bound = reference_errors(candidate.output, reference.output, baseline.output,
                                    low.value)
    target(error / bound, label="output error / bound")
    assert error <= bound, (error, bound)
    lse_error, lse_bound = reference_errors(candidate.lse, reference.lse, baseline.lse,
                                            reference.lse)
    target(lse_error / lse_bound, label="lse error / bound")
    assert lse_error <= lse_bound, (lse_error, lse_bound)


@needs_kernel
@given(attention_cases(lengths=(0, 1, 2, 17, 97, 129), head_dims=(1, 59, 64)),
       st.sampled_from([np.float32, np.float64]))
def test_results_are_bit_identical_across_thread_counts_and_runs(code_path, case, dtype):
    low = case.astype(dtype)
    call = sdpa_call(low.query, low.key, low.value, return_lse=True, **low.options)
    first, first_lse = kernel.attention(call, threads=1)
    for threads in (1, 2, 3, 8):
        output, lse = kernel.attention(call, threads=threads)
        assert np.array_equal(output, first, equal_nan=True), threads
        assert np.array_equal(lse, first_lse, equal_nan=True), threads


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
    with pytest.raises(ValueError, match="threads must be an int >= 1, got 0"):
        kernel.set_num_threads(0)
    with pytest.raises(TypeError, match="threads must be an int >= 1, got float"):
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
