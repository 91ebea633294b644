"""What a benchmark ran on: CPU, cores, library versions, thread settings.

A timing without these details cannot be reproduced or compared, so every
benchmark prints them above its numbers and stores them with its raw timings.
"""
from __future__ import annotations

import datetime
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

try:
    from attnref.probe import cpuinfo_field, usable_cores
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # a checkout, not installed
    from attnref.probe import cpuinfo_field, usable_cores

BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS")
# Set on some machines to work around old OpenBLAS bugs; they also pick a slower
# OpenBLAS kernel, so a NumPy timing must say whether they were set.
OPENBLAS_CORE_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
SIMD_FLAGS = ("avx512f", "avx512vl", "avx512bw", "avx512_bf16", "avx2", "fma")
#: The variables that hold each side to an instruction set: attnref's code path,
#: torch's ATen kernels, MKL's and oneDNN's GEMMs, and (avx2) NumPy's OpenBLAS.
#: They must be set before torch and NumPy load (benchmarks run a process per ISA).
ISA_ENVIRONMENT = {
    "avx2": {"ATTNREF_KERNEL_PATH": "avx2", "ATEN_CPU_CAPABILITY": "avx2",
             "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2",
             "OPENBLAS_CORETYPE": "Haswell"},
    "avx512": {"ATTNREF_KERNEL_PATH": "avx512", "ATEN_CPU_CAPABILITY": "avx512",
               "MKL_ENABLE_INSTRUCTIONS": "AVX512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
    "native": {},
}
ISA_VARIABLES = ("ATTNREF_KERNEL_PATH", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS",
                 "ONEDNN_MAX_CPU_ISA")
# what torch.backends.cpu.get_cpu_capability() says when it obeys
TORCH_CAPABILITY = {"avx2": "AVX2", "avx512": "AVX512"}


def with_isa(environment, isa):
    """``environment`` (a mapping) with ``isa``'s settings of
    :data:`ISA_ENVIRONMENT` and none of another's (native: none at all)."""
    held = {name: value for name, value in environment.items() if name not in ISA_VARIABLES}
    held.update(ISA_ENVIRONMENT[isa])
    return held


def isa_disobeyed(isa, attnref, torch=None):
    """What did not run the instruction set ``isa`` held it to (a line each):
    attnref's kernel path and, when given, torch's CPU capability. Nothing
    for native."""
    if isa not in TORCH_CAPABILITY:
        return []
    notes = []
    if torch is not None:
        capability = torch.backends.cpu.get_cpu_capability()
        if capability != TORCH_CAPABILITY[isa]:
            notes.append(f"torch ran with CPU capability {capability}, not "
                         f"{TORCH_CAPABILITY[isa]}: ATEN_CPU_CAPABILITY was not obeyed")
    if attnref.kernel.available() and attnref.kernel.get_code_path() != isa:
        notes.append(f"attnref's kernel ran {attnref.kernel.get_code_path()}, not {isa}")
    return notes


def cpu_model():
    """The CPU's marketing name, family and model from /proc/cpuinfo, else what
    platform knows."""
    model = cpuinfo_field("model name")
    if model is None:
        return platform.processor() or platform.machine()
    return f"{model} (family {cpuinfo_field('cpu family')}, model {cpuinfo_field('model')})"


def cpu_simd():
    """Which of SIMD_FLAGS the CPU reports, and its clock as /proc/cpuinfo gives
    it (under a hypervisor often the nominal or TSC rate, not the boost clock)."""
    flags = set((cpuinfo_field("flags") or "").split())
    present = [flag for flag in SIMD_FLAGS if flag in flags]
    clock = cpuinfo_field("cpu MHz")
    return ((" ".join(present) if present else "none of " + " ".join(SIMD_FLAGS))
            + (f"; cpu MHz {float(clock):.0f}" if clock else ""))


def caches():
    """Cache sizes of CPU 0 from sysfs, e.g. ``L1d 48K, L1i 32K, L2 1024K, L3 32768K``."""
    found = []
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, kind, size = ((index / name).read_text().strip()
                                 for name in ("level", "type", "size"))
        except OSError:
            continue
        found.append(f"L{level}{dict(Data='d', Instruction='i').get(kind, '')} {size}")
    return ", ".join(found) or "unknown"


def blas_threads():
    """How NumPy's BLAS picks its thread count, which is fixed when NumPy loads.

    Returns the first of BLAS_THREAD_VARIABLES that is set, as ``NAME=value``,
    or None when none is (the BLAS then uses its default, normally all cores).
    """
    for name in BLAS_THREAD_VARIABLES:
        if os.environ.get(name):
            return f"{name}={os.environ[name]}"
    return None


def blas_library():
    """Name and version of the BLAS NumPy was built against, the kernel it runs
    (when threadpoolctl is installed) and the OPENBLAS_CORE_VARIABLES set."""
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        text = f"{blas.get('name', 'unknown')} {blas.get('version', '')}".strip()
    except (TypeError, KeyError):  # NumPy < 1.26 only prints its config
        text = "unknown (NumPy < 1.26 does not report it)"
    try:
        import threadpoolctl
    except ImportError:
        text += ", kernel unknown (install threadpoolctl to see it)"
    else:
        kernels = [pool.get("architecture") for pool in threadpoolctl.threadpool_info()
                   if pool.get("user_api") == "blas" and pool.get("architecture")]
        text += f", kernel {'/'.join(kernels) or 'unknown'}"
    core = [f"{name}={os.environ[name]}" for name in OPENBLAS_CORE_VARIABLES if name in os.environ]
    return text + (f" ({' '.join(core)})" if core else f" ({'/'.join(OPENBLAS_CORE_VARIABLES)} unset)")


def source_revision(path):
    """``git describe`` of the checkout holding ``path`` (``-dirty`` when it has
    uncommitted changes), or None outside a git checkout."""
    try:
        described = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=Path(path).parent,
            capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return described.stdout.strip()


class OtherLoad:
    """CPU time that other processes took while a benchmark ran, as a share of
    all cores: noise that interleaving spreads over every implementation but
    cannot remove. Start it with the run; :meth:`share` reads it."""

    def __init__(self):
        self.start = self._sample()

    @staticmethod
    def _sample():
        """(busy CPU seconds of the machine, of this process and its waited-for
        children, wall seconds), or None without /proc/stat."""
        try:
            with open("/proc/stat") as stat:
                ticks = [int(value) for value in stat.readline().split()[1:]]
        except OSError:
            return None
        busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # less idle, iowait
        own = sum(usage.ru_utime + usage.ru_stime for usage in
                  (resource.getrusage(resource.RUSAGE_SELF),
                   resource.getrusage(resource.RUSAGE_CHILDREN)))
        return busy, own, time.monotonic()

    def share(self):
        """Other processes' CPU time since the start over cores x wall time, or None."""
        end = self._sample()
        if self.start is None or end is None:
            return None
        (busy0, own0, wall0), (busy1, own1, wall1) = self.start, end
        return max(0.0, (busy1 - busy0) - (own1 - own0)) / ((wall1 - wall0) * (os.cpu_count() or 1))


def details(attnref, torch=None):
    """Machine and software details as an ordered ``{label: text}`` dict.

    ``attnref`` is the imported package; ``torch`` the imported module or None.
    The revision is that of the checkout holding this file, the one an
    installed attnref was built from when the benchmark runs from it.
    """
    kernel = attnref.kernel.info()
    blas_setting = blas_threads()
    rows = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cpu flags": cpu_simd(),
        "caches": caches(),
        "cores": f"{usable_cores()} usable ({os.cpu_count()} online)",
        "os": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "python": platform.python_version(),
        "numpy": f"{np.__version__}, BLAS {blas_library()}, threads: "
                 + (blas_setting or "library default (no "
                    + "/".join(BLAS_THREAD_VARIABLES) + " set)"),
        "torch": (f"{torch.__version__}, threads: {torch.get_num_threads()}"
                  if torch is not None else "not installed"),
        "attnref": f"{attnref.__version__} from {Path(attnref.__file__).parent}",
        "revision": source_revision(__file__) or "not a git checkout",
    }
    if kernel["available"]:
        rows["attnref kernel"] = (f"{kernel['path']}, threads: {kernel['threads']} "
                                  f"({kernel['module']})")
    else:
        rows["attnref kernel"] = f"unavailable: {kernel['reason']}"
    return rows
