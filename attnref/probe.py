"""This machine: its CPU, and its limits: the peak FMA rate of an instruction set and the
streaming read bandwidth, the two roofs a CPU attention kernel runs under.

A timing means little without them: ``attnref bench`` and
``benchmarks/bench_sdpa.py`` give each GFLOP/s as a share of the peak of the
instruction set (ISA) the kernel runs, and each decoding rate as a share of
the read bandwidth.

How it measures
---------------
The probes are C functions (``probe.c``, shipped beside this module), because
neither Python nor NumPy can issue a chosen ISA's fused multiply-adds: a BLAS
matmul would measure the BLAS, not the roof. :func:`load` compiles
``probe.c`` at run time with the first C compiler it finds (``$CC``, the one
Python was built with, ``cc``, ``gcc``, ``clang``) into a temporary shared
library and calls it through :mod:`ctypes`, which needs neither setuptools
nor anything the kernel's build made, and releases the GIL during a call,
so Python threads run the probes on several cores at once. Each SIMD
function has its own target attribute (no ``-march``), and the C side
checks the CPU before it runs any of them. Where no compiler is found or the
build fails, :func:`load` raises :class:`ProbeUnavailable` with the reason,
and :func:`measure` returns it in place of the figures: a benchmark says
"probe unavailable" and still runs.

- Peak: ``probe_fma_f32`` / ``probe_fma_f64`` run independent chains
  ``acc = acc * M + A`` of full vectors, enough chains to cover the FMA
  latency times the FMA ports, so the loop runs at the core's FMA
  throughput; each FMA is 2 flops per lane. float32 and float64 are each
  measured (not derived from one another).
- Read bandwidth: one pass of vector loads over a buffer of
  :func:`bandwidth_bytes` (at least four times the largest cache), split into
  one contiguous part per thread; bytes read / seconds from the first
  thread's start to the last one's end.

ISAs: ``avx512`` (AVX-512F), ``avx2`` (AVX2 + FMA), ``neon`` (aarch64) and
``generic`` (plain C: the read probe only, no FMA peak). ``native`` is the
widest this CPU runs.

``attnref bench`` prints them above its timings; in a checkout,
``python benchmarks/probe.py --isa avx2`` prints them alone.
"""
from __future__ import annotations

import ctypes
import functools
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

__all__ = ["ISAS", "ProbeUnavailable", "Probe", "load", "supported_isas", "measure",
           "bandwidth_bytes", "read_buffer", "usable_cores", "cpu_name", "isa_of_code_path"]

SOURCE = Path(__file__).with_name("probe.c")
#: Codes of probe.c's ISAs, widest first (the order ``native`` picks in).
ISA_CODES = {"avx512": 2, "avx2": 1, "neon": 3, "generic": 0}
ISAS = tuple(ISA_CODES)
READ_STEP = 64                # floats per step of the widest read loop (probe.c READ_STEP)
DTYPES = ("float32", "float64")
MIN_READ_BYTES, MAX_READ_BYTES = 256 * 2**20, 2**30
CACHE_MULTIPLE = 4            # the read buffer is this many times the largest cache
COMPILE_SECONDS = 120
FALLBACK_COMPILERS = ("cc", "gcc", "clang")


class ProbeUnavailable(RuntimeError):
    """The probes cannot run here: no C compiler, a failed build, or an ISA
    this CPU does not run. The message says which."""


def usable_cores():
    """Cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpuinfo_field(name):
    """The first value of ``name`` in /proc/cpuinfo, or None (not Linux)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.split(":", 1)[0].strip() == name:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_name():
    """The CPU's marketing name (/proc/cpuinfo), else what :mod:`platform` knows."""
    return (cpuinfo_field("model name") or platform.processor() or platform.machine()
            or "unknown CPU")


def largest_cache_bytes():
    """Size of CPU 0's largest cache from Linux sysfs, or None elsewhere."""
    sizes = []
    for size in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            text = size.read_text().strip()
        except OSError:
            continue
        units = {"K": 2**10, "M": 2**20, "G": 2**30}
        if text[:-1].isdigit() and text[-1] in units:
            sizes.append(int(text[:-1]) * units[text[-1]])
    return max(sizes, default=None)


def bandwidth_bytes():
    """Bytes of the read-bandwidth buffer: CACHE_MULTIPLE times the largest
    cache, so that no pass finds its data in a cache, within
    [MIN_READ_BYTES, MAX_READ_BYTES]; MIN_READ_BYTES when the cache size is
    unknown. Also what a decoding benchmark reads to evict the caches."""
    cache = largest_cache_bytes() or 0
    size = min(MAX_READ_BYTES, max(MIN_READ_BYTES, CACHE_MULTIPLE * cache))
    return size // (4 * READ_STEP) * (4 * READ_STEP)


def isa_of_code_path(path):
    """The probe ISA matching an attnref kernel code path (``avx512``,
    ``avx2``, ``neon``); the widest this CPU runs for ``portable`` (whose
    compiler-chosen instructions have no roof of their own)."""
    return path if path in ISA_CODES else "native"


def compiler_command():
    """The C compiler's command as a list of words, or None: ``$CC``, then
    the compiler Python was built with, then FALLBACK_COMPILERS, the first
    whose program is on PATH."""
    for text in (os.environ.get("CC"), sysconfig.get_config_var("CC"), *FALLBACK_COMPILERS):
        words = shlex.split(text) if text else []
        if words and shutil.which(words[0]):
            return words
    return None


def _build(directory, compiler):
    """Compile probe.c with ``compiler`` (a list of words) into ``directory``;
    the library's path."""
    library = Path(directory) / ("attnref_probe" + (sysconfig.get_config_var("SHLIB_SUFFIX")
                                                    or ".so"))
    command = [*compiler, "-O2", "-std=gnu99", "-shared", "-fPIC", str(SOURCE), "-o",
               str(library)]
    try:
        built = subprocess.run(command, capture_output=True, text=True, timeout=COMPILE_SECONDS)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ProbeUnavailable(
            f"{' '.join(compiler)} could not compile probe.c: {error}") from None
    if built.returncode != 0:
        said = " | ".join(built.stderr.strip().splitlines()[:5]) or "no output"
        raise ProbeUnavailable(f"{' '.join(compiler)} failed on probe.c (status "
                               f"{built.returncode}): {said}")
    return library


def _declare(library):
    library.probe_supported.argtypes = [ctypes.c_int]
    library.probe_supported.restype = ctypes.c_int
    library.probe_fma_flops.argtypes = [ctypes.c_int, ctypes.c_int]
    library.probe_fma_flops.restype = ctypes.c_int
    for name in ("probe_fma_f32", "probe_fma_f64"):
        getattr(library, name).argtypes = [ctypes.c_int, ctypes.c_longlong]
        getattr(library, name).restype = ctypes.c_double
    library.probe_read.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
    library.probe_read.restype = ctypes.c_double


def run_threads(work):
    """Seconds from the first start to the last end of ``work[i]()``, each
    run on its own thread, all released together by a barrier."""
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


class Probe:
    """The compiled probes of one ISA. Use :func:`load` to get one.

    Attributes
    ----------
    isa : str
        One of :data:`ISAS`.
    compiler : str
        The command that compiled probe.c.
    """

    def __init__(self, library, isa, compiler):
        self._library, self.isa, self.compiler = library, isa, compiler
        self._code = ISA_CODES[isa]

    def fma_flops(self, dtype):
        """Flops of one iteration of the FMA probe in ``dtype``; 0 when this
        ISA has no FMA probe (``generic``)."""
        return self._library.probe_fma_flops(self._code, DTYPES.index(_dtype_name(dtype)))

    def peak_gflops(self, dtype, threads, seconds=0.2, repeats=5):
        """Median GFLOP/s of the FMA chains in ``dtype`` on ``threads``
        threads, each run lasting about ``seconds``: ``threads * iterations *
        fma_flops(dtype) / seconds / 1e9``, the seconds from the first
        thread's start to the last one's end. None without an FMA probe."""
        flops = self.fma_flops(dtype)
        if not flops:
            return None
        entry = (self._library.probe_fma_f32 if _dtype_name(dtype) == "float32"
                 else self._library.probe_fma_f64)
        iterations = 10**5
        elapsed = run_threads([lambda: entry(self._code, iterations)])
        while elapsed < seconds / 10:  # too short to scale from: lengthen first
            iterations *= 10
            elapsed = run_threads([lambda: entry(self._code, iterations)])
        iterations = max(1, int(iterations * seconds / elapsed))
        rates = [threads * iterations * flops / run_threads(
                     [lambda: entry(self._code, iterations)] * threads) / 1e9
                 for _ in range(repeats)]
        return statistics.median(rates)

    def read_gbs(self, threads, data, repeats=7):
        """Median GB/s (1e9 bytes) of one pass of reads over ``data`` (a
        float32 array, as from :func:`read_buffer`), split into ``threads``
        contiguous parts: ``threads * part * 4 / seconds / 1e9``, the
        seconds from the first thread's start to the last one's end."""
        if not (isinstance(data, np.ndarray) and data.dtype == np.float32
                and data.flags.c_contiguous):
            raise TypeError(f"data must be a C-contiguous float32 array, got "
                            f"{getattr(data, 'dtype', type(data).__name__)}")
        part = data.size // threads // READ_STEP * READ_STEP
        if part == 0:
            raise ValueError(f"data must hold at least {threads * READ_STEP} floats for "
                             f"{threads} threads, got {data.size}")
        address = data.ctypes.data
        work = [lambda start=index * part: self._library.probe_read(
                    self._code, address + 4 * start, part) for index in range(threads)]
        run_threads(work)  # warm-up: page tables, frequency
        return statistics.median(threads * part * 4 / run_threads(work) / 1e9
                                 for _ in range(repeats))


def _dtype_name(dtype):
    name = np.dtype(dtype).name
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {name}")
    return name


def read_buffer(nbytes=None):
    """A float32 buffer of ``nbytes`` (default :func:`bandwidth_bytes`),
    written once so that every page is resident."""
    nbytes = bandwidth_bytes() if nbytes is None else nbytes
    return np.ones(nbytes // (4 * READ_STEP) * READ_STEP, np.float32)


@functools.lru_cache(maxsize=None)
def _compiled(compiler):
    """probe.c compiled by ``compiler`` (a tuple of words), once per process:
    ``(library, supported ISAs widest first)``."""
    with tempfile.TemporaryDirectory(prefix="attnref-probe-",
                                     ignore_cleanup_errors=True) as directory:
        library = ctypes.CDLL(str(_build(directory, list(compiler))))  # mapped: the file may go
    _declare(library)
    return library, tuple(name for name, code in ISA_CODES.items()
                          if library.probe_supported(code))


def _library():
    """The compiled probes and the ISAs this CPU runs (see :func:`_compiled`)."""
    compiler = compiler_command()
    if compiler is None:
        raise ProbeUnavailable("no C compiler found (set CC, or install cc, gcc or clang)")
    library, runs = _compiled(tuple(compiler))
    return library, runs, " ".join(compiler)


def supported_isas():
    """The ISAs of :data:`ISAS` whose probes this CPU runs, widest first.

    Raises :class:`ProbeUnavailable` when probe.c cannot be compiled.
    """
    return _library()[1]


def load(isa="native"):
    """Compile probe.c (once per process and compiler) and return the
    :class:`Probe` of ``isa``.

    Parameters
    ----------
    isa : str
        One of :data:`ISAS`, or ``native`` for the widest this CPU runs.

    Raises
    ------
    ValueError
        ``isa`` is not a known name.
    ProbeUnavailable
        No compiler, a failed build, or a CPU that does not run ``isa``.
    """
    if isa != "native" and isa not in ISA_CODES:
        raise ValueError(f"isa must be 'native' or one of {ISAS}, got {isa!r}")
    library, runs, compiler = _library()
    if isa == "native":
        isa = runs[0]
    elif isa not in runs:
        raise ProbeUnavailable(f"this CPU does not run {isa}; it runs {', '.join(runs)}")
    return Probe(library, isa, compiler)


def measure(isa="native", thread_counts=(1,), dtypes=DTYPES, seconds=0.2,
            read_bytes=None, progress=None):
    """The limits of ``isa`` on each of ``thread_counts``, as a JSON-ready dict.

    Returns
    -------
    dict
        ``isa`` (the ISA measured, or the one asked when unavailable),
        ``compiler``, ``reason`` (why the probes could not run, else None),
        ``peak_gflops`` ``{dtype: {threads: GFLOP/s or None}}``, ``read_gbs``
        ``{threads: GB/s}`` and ``read_bytes`` (the buffer read). The
        dicts are empty when the probes cannot run.
    """
    say = progress or (lambda message: None)
    limits = {"isa": isa, "compiler": None, "reason": None, "peak_gflops": {},
              "read_gbs": {}, "read_bytes": None}
    try:
        probes = load(isa)
    except ProbeUnavailable as error:
        limits["reason"] = str(error)
        say(f"probe: unavailable: {error}")
        return limits
    limits.update(isa=probes.isa, compiler=probes.compiler)
    data = read_buffer(read_bytes)
    limits["read_bytes"] = data.nbytes
    for threads in thread_counts:
        for dtype in dtypes:
            limits["peak_gflops"].setdefault(dtype, {})[threads] = probes.peak_gflops(
                dtype, threads, seconds)
        limits["read_gbs"][threads] = probes.read_gbs(threads, data)
        peaks = ", ".join(f"{dtype} {limits['peak_gflops'][dtype][threads]:.1f}"
                          for dtype in dtypes if limits["peak_gflops"][dtype][threads])
        say(f"probe ({probes.isa}, {threads} thread{'s' * (threads > 1)}): peak GFLOP/s "
            f"{peaks or 'not measured (no FMA probe for this ISA)'}; read "
            f"{limits['read_gbs'][threads]:.1f} GB/s over {data.nbytes // 2**20} MiB")
    return limits

