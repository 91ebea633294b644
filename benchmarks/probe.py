"""This machine's limits: peak float32 FMA rate and memory read bandwidth.

The probes are C functions in ``probe.c``, compiled at run time by cffi (a
runtime dependency of attnref) with ``-O2`` into a temporary directory. Each
function carries a ``target("avx512f")`` or ``target("avx2,fma")`` attribute
and :func:`load` picks the widest one the CPU supports, so the build needs no
``-march``. CFFI releases the GIL during a call, so Python threads run the
probe on several cores at once.

Run it alone to print both limits::

    python benchmarks/probe.py
"""
from __future__ import annotations

import importlib.util
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

import machine

SOURCE = Path(__file__).with_name("probe.c")
ISAS = {2: "avx512", 1: "avx2"}          # probe_isa() -> suffix of the functions
FLOAT32_LANES = {"avx512": 16, "avx2": 8}
READ_ALIGN = 64                          # floats per step of the widest read loop
TARGET_SECONDS = 0.2                     # length of one FMA measurement
BANDWIDTH_BYTES = 2**30                  # many times any L3 cache


class Probes:
    """The compiled probes: ``isa`` (``avx512`` or ``avx2``), ``fma(iterations)``
    with its ``fma_flops`` per iteration, and ``read(pointer, n)``; or ``isa``
    None and ``reason`` when the CPU has neither instruction set or no C
    compiler is found."""

    def __init__(self, isa=None, lib=None, ffi=None, reason=None):
        self.isa, self.reason, self.ffi = isa, reason, ffi
        if isa is not None:
            self.fma = getattr(lib, f"probe_fma_{isa}")
            self.read = getattr(lib, f"probe_read_{isa}")
            chains = getattr(lib, f"FMA_CHAINS_{isa.removeprefix('avx')}")  # from probe.c
            self.fma_flops = chains * FLOAT32_LANES[isa] * 2


def load():
    """Compile ``probe.c`` and return its :class:`Probes`."""
    from cffi import FFI

    ffi = FFI()
    ffi.cdef("""
        #define FMA_CHAINS_512 ...
        #define FMA_CHAINS_256 ...
        int probe_isa(void);
        float probe_fma_avx512(long long iterations);
        float probe_fma_avx2(long long iterations);
        float probe_read_avx512(const float *data, size_t n);
        float probe_read_avx2(const float *data, size_t n);
    """)
    ffi.set_source("_attnref_probe", SOURCE.read_text(), extra_compile_args=["-O2"])
    build = tempfile.mkdtemp(prefix="attnref-probe-")
    try:
        library = ffi.compile(tmpdir=build)
    except Exception as error:  # cffi raises distutils/setuptools errors of several kinds
        return Probes(reason=f"probe.c did not compile ({type(error).__name__}: {error})")
    spec = importlib.util.spec_from_file_location("_attnref_probe", library)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    isa = ISAS.get(module.lib.probe_isa())
    if isa is None:
        return Probes(reason="the CPU has neither AVX-512F nor AVX2 + FMA")
    return Probes(isa, module.lib, module.ffi)


def run_threads(work):
    """Seconds from the first start to the last end of ``work[i]()`` each run
    on its own thread, all released together."""
    barrier = threading.Barrier(len(work))
    spans = [None] * len(work)

    def run(index):
        barrier.wait()
        start = time.perf_counter()
        work[index]()
        spans[index] = (start, time.perf_counter())

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(work))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return max(end for _, end in spans) - min(start for start, _ in spans)


def peak_gflops(probes, threads, repeats=7):
    """Median float32 GFLOP/s of the FMA chains on ``threads`` threads."""
    calibration = 10**6
    seconds = run_threads([lambda: probes.fma(calibration)])
    iterations = max(calibration, int(calibration * TARGET_SECONDS / seconds))
    rates = []
    for _ in range(repeats):
        seconds = run_threads([lambda: probes.fma(iterations)] * threads)
        rates.append(threads * iterations * probes.fma_flops / seconds / 1e9)
    return statistics.median(rates)


def read_bandwidth(probes, threads, repeats=9):
    """Median GB/s (1e9 bytes) of streaming reads of a BANDWIDTH_BYTES buffer,
    split into ``threads`` contiguous parts, one per thread."""
    n = BANDWIDTH_BYTES // 4
    data = np.ones(n, np.float32)  # written once, so every page is resident
    part = n // threads // READ_ALIGN * READ_ALIGN
    pointer = probes.ffi.cast("const float *", probes.ffi.from_buffer(data))
    work = [lambda start=index * part: probes.read(pointer + start, part)
            for index in range(threads)]
    run_threads(work)  # warm-up: TLB, frequency
    rates = [threads * part * 4 / run_threads(work) / 1e9 for _ in range(repeats)]
    return statistics.median(rates)


def measure(thread_counts, progress=lambda message: None):
    """``{"isa", "peak_gflops": {threads: GFLOP/s}, "read_gbs": {threads: GB/s},
    "reason"}`` for each thread count; the dicts are empty when the probes
    cannot run, and ``reason`` says why."""
    probes = load()
    limits = {"isa": probes.isa, "peak_gflops": {}, "read_gbs": {}, "reason": probes.reason}
    if probes.isa is None:
        progress(f"probe: unavailable: {probes.reason}")
        return limits
    for threads in thread_counts:
        limits["peak_gflops"][threads] = peak_gflops(probes, threads)
        limits["read_gbs"][threads] = read_bandwidth(probes, threads)
        progress(f"probe ({probes.isa}, {threads} thread{'s' * (threads > 1)}): "
                 f"peak {limits['peak_gflops'][threads]:.1f} GFLOP/s float32, "
                 f"read {limits['read_gbs'][threads]:.1f} GB/s")
    return limits


if __name__ == "__main__":
    measure(sorted({1, machine.usable_cores()}), lambda message: print(message, file=sys.stderr))
