"""attnref.kernel's code paths: selection, and the vector exp their softmax
uses (its error bound is stated in csrc/simd.h)."""
import concurrent.futures
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys

import numpy as np
import pytest

import attnref
from attnref import kernel
from attnref import scaled_dot_product_attention as sdpa

needs_kernel = pytest.mark.skipif(not kernel.available(), reason="C kernel not compiled")
DEFAULT_THREADS = kernel.get_num_threads()

# csrc/simd.h: "tests/test_kernel_paths.py states and checks the bound, 2 ulp"
MAX_ULP = 2.0
FLOAT_LIMITS = {np.float32: (-87.33654, 88.72283), np.float64: (-708.3964, 709.7827)}
# csrc/internal.h's LOG_FLT_MIN and LOG_DBL_MIN: every path's softmax weighs a
# key whose s - m is below it exactly 0
FLUSH_BELOW = {np.float32: np.float32(-87.33654475), np.float64: np.float64(-708.39641853226408)}


def ulp_errors(x):
    """|exp_kernel(x) - exp(x)| in units of the last place of the correct
    result; the correct result is computed in a wider type (float64 for
    float32, long double for float64)."""
    wide = np.float64 if x.dtype == np.float32 else np.longdouble
    exact = np.exp(x.astype(wide))
    spacing = np.spacing(exact.astype(x.dtype)).astype(wide)
    return np.abs(kernel.exp(x).astype(wide) - exact) / spacing


@needs_kernel
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_is_within_its_stated_ulp_bound(code_path, dtype):
    lo, hi = FLOAT_LIMITS[dtype]
    rng = np.random.default_rng(7)
    x = np.concatenate([rng.uniform(lo, hi, 400_000), rng.uniform(-1, 1, 100_000),
                        np.linspace(lo, 0, 100_000)]).astype(dtype)  # softmax's range: x <= 0
    errors = ulp_errors(x)
    assert errors.max() <= MAX_ULP, (code_path, float(errors.max()), x[np.argmax(errors)])


@needs_kernel
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_special_values(code_path, dtype):
    lo, hi = FLOAT_LIMITS[dtype]
    x = np.array([0.0, -0.0, -np.inf, np.inf, np.nan, 2 * lo, 2 * hi], dtype)
    y = kernel.exp(x)
    assert y[0] == y[1] == 1.0                # exp(0) = 1 exactly: a row's max weighs 1
    assert y[2] == 0.0                        # masked scores weigh exactly 0
    assert y[3] == np.inf and np.isnan(y[4])  # NaN propagates
    assert y[5] == 0.0 and y[6] == np.inf
    # below the smallest normal result the vector paths flush to 0 (stated in simd.h)
    tiny = kernel.exp(np.array([lo - 0.5], dtype))[0]
    assert tiny == 0.0 or (code_path == "portable" and 0 < tiny < np.finfo(dtype).tiny)


@needs_kernel
@pytest.mark.parametrize("scores", ["fast", "exact"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_weights_are_the_kernel_exp_bit_for_bit(code_path, dtype, scores):
    """The softmax weighs a key exp(s - m) by its own cheaper exp for
    arguments <= 0 (csrc/simd_exp.h, TILED(vexp_weight): the same bits as
    TILED(vexp) there). Row i scores 0 and x_i <= 0 against two keys of values
    0 and 1, so its output is w / (1 + w) with w its weight exp(x_i); w must
    be kernel.exp(x_i), bit for bit, down to the smallest normal result (the
    flush bound, where 2^n is built from its exponent field), and 0 below it."""
    lo = FLUSH_BELOW[dtype]
    rng = np.random.default_rng(11)
    x = np.concatenate([np.linspace(lo - 1, lo + 1, 3000), rng.uniform(lo, 0, 3000),
                        rng.uniform(-1, 0, 1000), [0.0, -0.0, lo]]).astype(dtype)
    query = x.reshape(1, 1, -1, 1)
    key = np.array([0.0, 1.0], dtype).reshape(1, 1, 2, 1)
    value = np.array([0.0, 1.0], dtype).reshape(1, 1, 2, 1)
    output = sdpa(query, key, value, scale=1.0, backend="c", scores=scores)[0, 0, :, 0]
    weight = np.where(x < lo, dtype(0), kernel.exp(x))
    expected = weight / (dtype(1) + weight)
    assert np.array_equal(output, expected), (code_path, x[np.argmax(output != expected)])


@needs_kernel
def test_exp_refuses_other_dtypes():
    with pytest.raises(TypeError, match="x must be float32 or float64, got dtype int64"):
        kernel.exp(np.arange(3))


@needs_kernel
def test_code_path_selection():
    supported = kernel.supported_code_paths()
    assert "portable" in supported and set(supported) <= set(kernel.CODE_PATHS[1:])
    try:
        for path in supported:
            kernel.set_code_path(path)
            assert kernel.get_code_path() == path and kernel.info()["path"].startswith(path)
        kernel.set_code_path("auto")
        assert kernel.get_code_path() == supported[-1]   # the fastest the CPU has
        with pytest.raises(ValueError, match="code path must be one of .* got 'sse'"):
            kernel.set_code_path("sse")
    finally:
        kernel.set_code_path("auto")


def _import_with_path(name, script, *prefix):
    """Run ``script`` in a fresh interpreter (behind ``prefix``, an emulator)
    with ATTNREF_KERNEL_PATH=``name``, importing this same attnref (the rest
    of the environment is kept: sanitizer runs need their LD_PRELOAD)."""
    return subprocess.run([*prefix, sys.executable, "-c", script], capture_output=True,
                          text=True, env=dict(os.environ, ATTNREF_KERNEL_PATH=name),
                          cwd=os.path.dirname(os.path.dirname(attnref.__file__)))


KERNEL_STATE = "import attnref; print(attnref.kernel.available(), attnref.kernel.info()['reason'])"


@needs_kernel
@pytest.mark.parametrize("name", ["sse", "AVX2"])   # names are case-sensitive
def test_unknown_path_in_the_environment_leaves_the_kernel_unavailable(name):
    run = _import_with_path(name, KERNEL_STATE)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"False ATTNREF_KERNEL_PATH={name!r} cannot be used: code "
                                 f"path must be one of ('auto', 'portable', 'avx2', 'avx512', 'neon')")
    assert "RuntimeWarning: attnref: the C kernel is unavailable" in run.stderr


@needs_kernel
@pytest.mark.skipif(platform.machine() != "x86_64" or shutil.which("qemu-x86_64") is None,
                    reason="needs qemu-x86_64 to emulate a CPU without AVX-512")
@pytest.mark.skipif("-fsanitize" in ((kernel.info()["build"] or {}).get("flags", "")),
                    reason="a sanitizer's runtime cannot map its shadow memory under qemu")
def test_path_the_cpu_lacks_leaves_the_kernel_unavailable():
    """ATTNREF_KERNEL_PATH=avx512 on a CPU without it (a Haswell, emulated):
    `import attnref` works, and `attnref info` says why there is no kernel."""
    info = "from attnref.cli import main; raise SystemExit(main(['info']))"
    run = _import_with_path("avx512", f"{KERNEL_STATE}\n{info}", "qemu-x86_64", "-cpu", "Haswell")
    assert run.returncode == 0, run.stderr
    reason = ("ATTNREF_KERNEL_PATH='avx512' cannot be used: code path 'avx512' is not "
              "supported here; supported: ('portable', 'avx2')")
    assert run.stdout.startswith(f"False {reason}")
    assert f"C kernel: unavailable - {reason}" in run.stdout


@needs_kernel
@pytest.mark.parametrize("path", kernel.CODE_PATHS[1:])
def test_environment_variable_forces_the_path(path):
    if path not in kernel.supported_code_paths():
        pytest.skip(f"code path {path} is not supported on this CPU")
    run = _import_with_path(path, "from attnref import kernel; print(kernel.get_code_path())")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == path


@needs_kernel
def test_threads_large_call_bit_identical_for_any_thread_count(code_path):
    """Large enough that every thread count is used (small calls run on
    fewer threads than asked: waking one costs more than it saves)."""
    rng = np.random.default_rng(3)
    query, key, value = (rng.standard_normal((1, 4, 300, 64)).astype(np.float32)
                         for _ in range(3))
    results = []
    try:
        for threads in (1, 2, 3, 8):
            kernel.set_num_threads(threads)
            results.append(sdpa(query, key, value, is_causal=True, backend="c"))
    finally:
        kernel.set_num_threads(DEFAULT_THREADS)
    for result in results[1:]:
        assert np.array_equal(result, results[0])


@needs_kernel
def test_concurrent_callers_and_forked_children_get_the_same_answer():
    """Python threads calling at once (the GIL is released: one call uses the
    worker pool, the others start their own threads) and a forked child
    (which has none of the parent's workers) all compute the same bits."""
    rng = np.random.default_rng(4)
    query, key, value = (rng.standard_normal((2, 4, 200, 32)) for _ in range(3))
    expected = sdpa(query, key, value, backend="c")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        outputs = list(pool.map(lambda _: sdpa(query, key, value, backend="c"), range(16)))
    assert all(np.array_equal(output, expected) for output in outputs)
    context = multiprocessing.get_context("fork")
    with context.Pool(1) as children:
        child_output = children.apply(_attention_in_child, (query, key, value))
    assert np.array_equal(child_output, expected)


def _attention_in_child(query, key, value):
    return sdpa(query, key, value, backend="c")


@needs_kernel
@pytest.mark.parametrize("scores", ["fast", "exact"])
@pytest.mark.parametrize("heads, options", [
    ((2, 2), {"is_causal": True}),
    ((4, 2), {"is_causal": True, "causal_alignment": "bottom_right", "enable_gqa": True}),
    ((2, 2), {"window": (150, 40)}),
    ((6, 2), {"window": (None, 60), "enable_gqa": True}),
    ((4, 1), {"window": (200, 0), "causal_alignment": "bottom_right", "enable_gqa": True}),
])
def test_rows_of_a_unit_that_see_different_key_tiles(code_path, scores, heads, options):
    """A tiled unit holds up to 256 rows (the heads of a kv group x a run of
    positions) and runs the scores and the weighted values of a key tile
    only over the rows whose band meets it (csrc/tiled_impl.h): under causal
    and sliding-window bands, with GQA heads sharing a unit, each row still
    matches the NumPy reference, bit for bit across thread counts."""
    rng = np.random.default_rng(12)
    (hq, hkv), L, S = heads, 600, 700
    query = rng.standard_normal((1, hq, L, 64))
    key, value = (rng.standard_normal((1, hkv, S, 64)) for _ in range(2))
    if not options.get("enable_gqa"):
        key, value = key[:, :1].repeat(hq, 1), value[:, :1].repeat(hq, 1)
    expected = sdpa(query, key, value, backend="numpy", **options)
    results = []
    try:
        for threads in (1, 2, 3):
            kernel.set_num_threads(threads)
            results.append(sdpa(query, key, value, backend="c", scores=scores, **options))
    finally:
        kernel.set_num_threads(DEFAULT_THREADS)
    np.testing.assert_allclose(results[0], expected, rtol=0, atol=1e-13)
    for result in results[1:]:
        assert np.array_equal(result, results[0])
