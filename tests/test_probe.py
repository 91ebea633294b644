"""attnref.probe: the FMA-peak and read-bandwidth probes, compiled at run time.

The AVX2 probe is forced on AVX-512 machines too (it used to crash there
with ``FMA_CHAINS_2``); the aarch64 NEON probe is cross-compiled and run
under qemu-user when those tools are installed.
"""
import math
import shutil
import subprocess

import numpy as np
import pytest

from attnref import probe

needs_compiler = pytest.mark.skipif(probe.compiler_command() is None,
                                    reason="no C compiler to build probe.c")
SECONDS = 0.005  # each peak measurement: long enough to be positive, short for CI
SMALL_READ = 4 * probe.READ_STEP * 64  # bytes: 64 steps of the widest read loop


@pytest.fixture(scope="module")
def native():
    return probe.load("native")


def runs(isa):
    """Whether this CPU runs ``isa``'s probes."""
    return isa in probe.supported_isas()


@needs_compiler
def test_native_is_the_widest_isa_this_cpu_runs(native):
    widest = next(isa for isa in probe.ISAS if runs(isa))
    assert native.isa == widest
    assert native.compiler


@needs_compiler
@pytest.mark.parametrize("isa, lanes32", [("avx512", 16), ("avx2", 8), ("neon", 4)])
def test_each_isa_measures_a_positive_peak_in_both_dtypes(isa, lanes32):
    if not runs(isa):
        pytest.skip(f"this CPU does not run {isa}")
    forced = probe.load(isa)
    assert forced.isa == isa
    # float64 has half the lanes of float32 and the same chains
    assert forced.fma_flops("float32") == 2 * forced.fma_flops("float64")
    assert forced.fma_flops("float32") % (2 * lanes32) == 0
    for dtype in ("float32", "float64"):
        for threads in (1, 2):
            peak = forced.peak_gflops(dtype, threads, seconds=SECONDS, repeats=1)
            assert math.isfinite(peak) and peak > 0


@needs_compiler
def test_generic_has_no_fma_peak_but_reads():
    generic = probe.load("generic")
    assert generic.fma_flops(np.float32) == 0
    assert generic.peak_gflops("float32", 1, seconds=SECONDS) is None
    assert generic.read_gbs(1, probe.read_buffer(SMALL_READ), repeats=1) > 0


@needs_compiler
def test_read_bandwidth_splits_the_buffer_between_threads(native):
    data = probe.read_buffer(SMALL_READ)
    assert data.dtype == np.float32 and data.nbytes == SMALL_READ
    for threads in (1, 3):
        assert native.read_gbs(threads, data, repeats=1) > 0
    with pytest.raises(ValueError, match="data must hold at least"):
        native.read_gbs(2, data[:probe.READ_STEP])
    with pytest.raises(TypeError, match="data must be a C-contiguous float32 array, got float64"):
        native.read_gbs(1, data.astype(np.float64))
    with pytest.raises(TypeError, match="C-contiguous"):
        native.read_gbs(1, data[::2])


@needs_compiler
def test_measure_returns_every_figure_per_dtype_and_thread_count():
    messages = []
    limits = probe.measure("native", [1, 2], seconds=SECONDS, read_bytes=SMALL_READ,
                           progress=messages.append)
    assert limits["reason"] is None and limits["isa"] in probe.ISAS
    assert limits["read_bytes"] == SMALL_READ
    assert set(limits["read_gbs"]) == {1, 2}
    assert set(limits["peak_gflops"]) == {"float32", "float64"}
    assert all(set(per_thread) == {1, 2} for per_thread in limits["peak_gflops"].values())
    assert len(messages) == 2 and "read" in messages[0]


def test_an_unknown_isa_is_a_value_error():
    with pytest.raises(ValueError, match=r"isa must be 'native' or one of .*got 'sse9'"):
        probe.load("sse9")


@needs_compiler
def test_an_isa_the_cpu_lacks_is_unavailable_with_the_reason():
    lacking = next((isa for isa in probe.ISAS if not runs(isa)), None)
    if lacking is None:
        pytest.skip("this CPU runs every probe ISA")
    with pytest.raises(probe.ProbeUnavailable, match=f"this CPU does not run {lacking}"):
        probe.load(lacking)
    limits = probe.measure(lacking, [1])
    assert limits["reason"].startswith("this CPU does not run")
    assert limits["peak_gflops"] == {} and limits["read_gbs"] == {}


def test_without_a_compiler_measure_says_why(monkeypatch, tmp_path):
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing to run there
    assert probe.compiler_command() is None
    limits = probe.measure("native", [1])
    assert limits["reason"].startswith("no C compiler found")


def test_a_failing_compiler_is_reported(monkeypatch):
    if shutil.which("false") is None:
        pytest.skip("no 'false' program")
    monkeypatch.setenv("CC", "false")
    with pytest.raises(probe.ProbeUnavailable, match=r"false failed on probe.c \(status 1\)"):
        probe.load()


def test_the_read_buffer_outgrows_the_largest_cache():
    size = probe.bandwidth_bytes()
    assert probe.MIN_READ_BYTES <= size <= probe.MAX_READ_BYTES
    assert size % (4 * probe.READ_STEP) == 0
    cache = probe.largest_cache_bytes()
    if cache is not None:
        assert size >= min(probe.MAX_READ_BYTES, probe.CACHE_MULTIPLE * cache) - 4 * probe.READ_STEP


def test_kernel_code_paths_map_to_probe_isas():
    assert probe.isa_of_code_path("avx2") == "avx2"
    assert probe.isa_of_code_path("avx512") == "avx512"
    assert probe.isa_of_code_path("portable") == "native"


@pytest.mark.parametrize("compiler", ["gcc", "clang"])
def test_probe_c_is_warning_free(compiler, tmp_path):
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} not installed")
    subprocess.run([compiler, "-Wall", "-Wextra", "-Werror", "-O2", "-std=gnu99", "-shared",
                    "-fPIC", str(probe.SOURCE), "-o", str(tmp_path / "probe.so")], check=True)


NEON_DRIVER = r"""
#include <math.h>
#include <stdio.h>
#include <stddef.h>
int probe_supported(int isa);
int probe_fma_flops(int isa, int is_double);
double probe_fma_f32(int isa, long long iterations);
double probe_fma_f64(int isa, long long iterations);
double probe_read(int isa, const float *data, size_t n);
int main(void)
{
    static float data[1024];
    for (int i = 0; i < 1024; i++)
        data[i] = 1.0f;
    printf("%d %d %d %d %d %.1f %.1f\n", probe_supported(3), probe_supported(1),
           probe_fma_flops(3, 0), probe_fma_flops(3, 1),
           isfinite(probe_fma_f32(3, 1000)) && isfinite(probe_fma_f64(3, 1000)),
           probe_read(3, data, 1024), probe_read(0, data, 1024));
    return 0;
}
"""


def test_the_neon_probe_runs_under_qemu(tmp_path):
    tools = ("aarch64-linux-gnu-gcc", "qemu-aarch64")
    if any(shutil.which(tool) is None for tool in tools):
        pytest.skip(f"needs {' and '.join(tools)}")
    (tmp_path / "driver.c").write_text(NEON_DRIVER)
    subprocess.run(["aarch64-linux-gnu-gcc", "-Wall", "-Wextra", "-Werror", "-O2", "-std=gnu99",
                    "-static", str(probe.SOURCE), str(tmp_path / "driver.c"), "-o",
                    str(tmp_path / "driver"), "-lm"], check=True)
    printed = subprocess.run(["qemu-aarch64", str(tmp_path / "driver")], check=True,
                             capture_output=True, text=True, timeout=60).stdout.split()
    # NEON runs, AVX2 does not; 24 chains x 4 (2) lanes x 2 flops; 1024 ones read
    assert printed == ["1", "0", "192", "96", "1", "1024.0", "1024.0"]
