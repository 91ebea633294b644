"""Benchmark scaled dot-product attention: NumPy reference vs C kernel vs torch.

Usage, from the repository root::

    python benchmarks/bench_sdpa.py --markdown out.md --json out.json --plot out.png
    python benchmarks/bench_sdpa.py --quick         # all sections, small, in seconds

A sweep case is (dtype, D, causal, N, threads): query, key and value of shape
(B, H, N, D), B = 1 and H = 8 (attnref's letters: L = S = N, E = Ev = D). The
script

1. measures this machine's limits with the probes of ``probe.py``: peak
   float32 FMA rate and streaming-read bandwidth, on each thread count (the
   float64 peak is taken as half the float32 one: the same FMAs on half the
   lanes);
2. for each (dtype, D, causal, N) builds the inputs once, from a generator
   seeded with SEED; at N <= CHECK_MAX_N[dtype] compares every
   implementation's output with the wider NumPy reference under attnref's
   equivalence rule (:mod:`attnref.testing.tolerance`): one that breaks it is
   not timed, and the script exits with status 1, because the speed of a wrong
   kernel means nothing;
3. measures each implementation's peak memory beyond inputs and output once,
   on the largest thread count (:mod:`memory` says how);
4. for each thread count sets the C kernel's, torch's and, through
   threadpoolctl when installed, NumPy's BLAS threads; calls each
   runs ``--repeats`` rounds that time each implementation once in turn, so
   that machine noise falls on all alike. Before its timed call, an
   implementation runs untimed for at least LEAD_IN_SECONDS (one call or
   more): OpenBLAS's idle threads spin for 2^28 TSC ticks after a call, and
   torch's OpenMP threads for a while, so the lead-in keeps the previous
   contender's spinning threads off the cores, and the timed call finds its
   own thread pool awake, as in a loop of calls (on this VM a pool that slept
   for 50 ms costs torch several ms to wake);
5. reports median times, GFLOP/s = 4·B·H·N²·D / median (half that for causal,
   which skips the upper triangle), the percentage of the probe's peak, and
   the ratios of the C kernel to the others, all from the medians of this run.

Then three fixed measurements: decoding (L = 1, GQA 4:1, K/V read rate
against the probe's bandwidth, each call after evicting the caches), the
Python wrapper's share of a small call, and the C kernel's memory at
N = MEMORY_N. torch is optional: without it its columns say "not installed".
The NumPy reference runs only up to NUMPY_MAX_N.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple, Optional
from unittest import mock

import numpy as np

import machine
import memory
import probe

try:
    import attnref
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # a checkout, not installed
    try:
        import attnref
    except ImportError as error:
        sys.exit(f"bench_sdpa: cannot import attnref ({error}). "
                 "Install it from the repository root first: pip install .")
from attnref._validation import sdpa_call
from attnref.testing.tolerance import reference_dtype, reference_errors

try:
    import torch
except ImportError:
    torch = None

try:
    from threadpoolctl import threadpool_limits
except ImportError:
    threadpool_limits = None

B, H = 1, 8
SEED = 0
DTYPES = ("float32", "float64")
SIZES = (128, 256, 512, 1024, 2048, 4096, 8192)
HEAD_DIMS = (64, 128)
REPEATS = 5
QUICK_DTYPES, QUICK_SIZES, QUICK_HEAD_DIMS, QUICK_REPEATS = ("float32",), (128, 512), (64,), 3
# The wide reference is float64 for float32 but long double for float64, which
# NumPy computes without BLAS: 8 s at N = 1024, D = 128.
CHECK_MAX_N = {"float32": 1024, "float64": 512}
# The NumPy reference holds (B, H, N, N) score matrices; past this N it is
# skipped (at N = 4096, float64: 1 GiB per matrix, and minutes per call).
NUMPY_MAX_N = 2048

DECODE_Q_HEADS, DECODE_KV_HEADS, DECODE_D = 32, 8, 128
DECODE_LENGTHS = (1024, 4096, 16384, 32768)
QUICK_DECODE_LENGTHS = (1024, 16384)
DECODE_REPEATS = 21
EVICT_BYTES = 256 * 2**20  # read before each decode call: 8x a 32 MiB L3

OVERHEAD_N, OVERHEAD_D = 128, 64
OVERHEAD_SAMPLES, OVERHEAD_CALLS = 15, 100  # median over samples of the mean of calls
QUICK_OVERHEAD_SAMPLES = 5

MEMORY_N, MEMORY_D = 16384, 64
MEMORY_LIMIT = 64 * 2**20  # issue 6: the C kernel beyond inputs and output

PLOT_DTYPE = "float32"
LEAD_IN_SECONDS = 0.12  # OpenBLAS spins 2^28 TSC ticks: 0.1 s at 2.6 GHz


class Implementation(NamedTuple):
    """One contender. ``bind(query, key, value, is_causal, enable_gqa)``
    returns the call to time; ``unavailable`` says why it cannot run here."""
    name: str
    bind: Optional[Callable]
    unavailable: Optional[str]


@dataclass(frozen=True)
class Shape:
    """(dtype, D, causal, N): what the inputs and the reference depend on."""
    dtype: str
    D: int
    causal: bool
    N: int

    @property
    def flops(self):
        full = 4 * B * H * self.N * self.N * self.D
        return full // 2 if self.causal else full

    @property
    def cells(self):
        """The D, causal and N columns of a table row."""
        return [str(self.D), "yes" if self.causal else "no", str(self.N)]

    @property
    def label(self):
        return f"{self.dtype} D={self.D} {'causal' if self.causal else 'non-causal'} N={self.N}"


@dataclass
class Outcome:
    """What one implementation gave on one shape: ``times_ms`` per thread count."""
    times_ms: dict = field(default_factory=dict)
    error: Optional[float] = None         # max |output - wide reference|, when checked
    bound: Optional[float] = None         # the largest error the equivalence rule accepts
    memory_bytes: Optional[int] = None    # peak beyond inputs and output
    skipped: Optional[str] = None         # short label for the table when not timed
    reason: Optional[str] = None          # why not timed, in full

    def median_ms(self, threads):
        times = self.times_ms.get(threads)
        return statistics.median(times) if times else None


def attnref_backend(backend):
    def bind(query, key, value, is_causal, enable_gqa=False):
        return lambda: attnref.scaled_dot_product_attention(
            query, key, value, is_causal=is_causal, enable_gqa=enable_gqa, backend=backend)
    return bind


def bind_torch(query, key, value, is_causal, enable_gqa=False):
    tensors = [torch.from_numpy(array) for array in (query, key, value)]  # shares memory
    return lambda: torch.nn.functional.scaled_dot_product_attention(
        *tensors, is_causal=is_causal, enable_gqa=enable_gqa)


def implementations():
    """The contenders, in table order."""
    kernel = attnref.kernel.info()
    return [
        Implementation("numpy", attnref_backend("numpy"), None),
        Implementation("c", attnref_backend("c"), None if kernel["available"]
                       else kernel["reason"]),
        Implementation("torch", bind_torch, None) if torch is not None else
        Implementation("torch", None, "not installed (pip install torch to compare)"),
    ]


def set_threads(threads):
    """Run the C kernel, torch and (with threadpoolctl) NumPy's BLAS on ``threads``."""
    attnref.kernel.set_num_threads(threads)
    if torch is not None:
        torch.set_num_threads(threads)
    if threadpool_limits is not None:
        threadpool_limits(limits=threads, user_api="blas")


def progress(message):
    print(message, file=sys.stderr, flush=True)


def checked_errors(inputs, calls, is_causal, enable_gqa=False):
    """``{name: (error, bound)}`` of each call against the wide NumPy reference."""
    wide = reference_dtype(inputs[0].dtype)
    reference = attnref.scaled_dot_product_attention(
        *(array.astype(wide) for array in inputs), is_causal=is_causal,
        enable_gqa=enable_gqa, backend="numpy")
    baseline = attnref.scaled_dot_product_attention(
        *inputs, is_causal=is_causal, enable_gqa=enable_gqa, backend="numpy")
    return {name: reference_errors(np.asarray(call()), reference, baseline, inputs[2])
            for name, call in calls.items()}


def drop_wrong(label, calls, outcomes, errors):
    """Record ``errors`` in ``outcomes``; remove from ``calls`` (and mark) every
    implementation over its bound."""
    for name, (error, bound) in errors.items():
        outcome = outcomes[name]
        outcome.error, outcome.bound = error, bound
        verdict = "ok" if error <= bound else "WRONG"
        progress(f"  {name}: max error {error:.2e} (bound {bound:.2e}) {verdict}")
        if error > bound:
            outcome.skipped = "wrong"
            outcome.reason = (f"wrong at {label}: max error {error:.2e} over the "
                              f"bound {bound:.2e}; not timed")
            del calls[name]


def lead_in(call):
    """Call ``call`` untimed until LEAD_IN_SECONDS have passed, at least once."""
    start = time.perf_counter()
    while True:
        call()
        if time.perf_counter() - start >= LEAD_IN_SECONDS:
            return


def time_round_robin(calls, repeats, before=None):
    """``{name: [ms per call]}`` over ``repeats`` rounds that time each call
    once in turn, each after its :func:`lead_in` and then ``before()`` when
    given."""
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            lead_in(call)
            if before is not None:
                before()
            start = time.perf_counter()
            output = call()
            elapsed = time.perf_counter() - start
            del output  # freed after the clock stops
            times[name].append(elapsed * 1e3)
    return times


def run_shape(shape, contenders, thread_counts, repeats, measure_memory):
    """``{name: Outcome}`` for one shape on every thread count."""
    rng = np.random.default_rng([SEED, shape.N, shape.D])
    inputs = [rng.standard_normal((B, H, shape.N, shape.D), dtype=shape.dtype) for _ in range(3)]
    outcomes = {contender.name: Outcome() for contender in contenders}
    calls = {}
    for contender in contenders:
        outcome = outcomes[contender.name]
        if contender.unavailable:
            outcome.skipped, outcome.reason = "unavailable", contender.unavailable
        elif contender.name == "numpy" and shape.N > NUMPY_MAX_N:
            outcome.skipped = "skipped"
            outcome.reason = f"skipped at N > {NUMPY_MAX_N} (slow, and holds the N x N scores)"
        else:
            calls[contender.name] = contender.bind(*inputs, shape.causal)

    set_threads(max(thread_counts))
    if shape.N <= CHECK_MAX_N[shape.dtype]:
        drop_wrong(shape.label, calls, outcomes, checked_errors(inputs, calls, shape.causal))
    if measure_memory:
        for name, call in calls.items():
            outcomes[name].memory_bytes = (
                memory.numpy_peak(call) if name == "numpy" else memory.in_subprocess(
                    name, shape.dtype, [B, H, H, shape.N, shape.N, shape.D], shape.causal,
                    False, max(thread_counts)))
    for threads in thread_counts:
        set_threads(threads)
        for name, times in time_round_robin(calls, repeats).items():
            outcomes[name].times_ms[threads] = times
    return outcomes


def decode(contenders, thread_counts, lengths, limits):
    """Decoding: L = 1 against S keys, GQA 4:1, float32; each call after
    reading EVICT_BYTES so K and V come from memory, as in a model whose
    layers' caches do not fit in L3. Returns a list of row dicts."""
    evict = np.ones(EVICT_BYTES // 4, np.float32)
    rows = []
    for S in lengths:
        rng = np.random.default_rng([SEED, S])
        query = rng.standard_normal((B, DECODE_Q_HEADS, 1, DECODE_D), dtype=np.float32)
        key, value = (rng.standard_normal((B, DECODE_KV_HEADS, S, DECODE_D), dtype=np.float32)
                      for _ in range(2))
        calls = {c.name: c.bind(query, key, value, False, True) for c in contenders
                 if c.name != "numpy" and not c.unavailable}
        label = f"decode S={S}"
        progress(f"{label}")
        outcomes = {name: Outcome() for name in calls}
        drop_wrong(label, calls, outcomes, checked_errors([query, key, value], calls, False, True))
        kv_bytes = 2 * B * DECODE_KV_HEADS * S * DECODE_D * 4
        for threads in thread_counts:
            set_threads(threads)
            times = time_round_robin(calls, DECODE_REPEATS, before=evict.sum)
            row = {"S": S, "threads": threads, "kv_bytes": kv_bytes,
                   "read_gbs": limits["read_gbs"].get(threads), "results": {}}
            for name, outcome in outcomes.items():
                median = statistics.median(times[name]) if name in times else None
                row["results"][name] = {
                    "times_ms": times.get(name), "median_ms": median,
                    "max_error": outcome.error, "skipped": outcome.reason,
                    "gbs": kv_bytes / median / 1e6 if median else None}
            rows.append(row)
    return rows


class _RecordingLib:
    """Stands in for ``attnref.kernel._lib`` and records the arguments of the
    kernel entry points, so that the CFFI call can be timed alone."""

    def __init__(self, lib):
        self._lib, self.calls = lib, []

    def __getattr__(self, name):
        attribute = getattr(self._lib, name)
        if not name.startswith("attnref_sdpa_"):
            return attribute

        def record(*arguments):
            self.calls.append((attribute, arguments))
            return attribute(*arguments)
        return record


def overhead(threads, samples):
    """Per-call microseconds of a small float32 call (B=1, H=8, N=128, D=64)
    at three depths: the public function, ``attnref.kernel.attention`` on a
    validated call, and the CFFI call alone. Returns a dict."""
    rng = np.random.default_rng([SEED, OVERHEAD_N, OVERHEAD_D])
    query, key, value = (rng.standard_normal((B, H, OVERHEAD_N, OVERHEAD_D), dtype=np.float32)
                         for _ in range(3))
    set_threads(threads)
    call = sdpa_call(query, key, value)
    recorder = _RecordingLib(attnref.kernel._lib)
    with mock.patch.object(attnref.kernel, "_lib", recorder):
        output, _ = attnref.kernel.attention(call)  # its pointers stay valid while it lives
    (entry, arguments), = recorder.calls
    depths = {
        "public": lambda: attnref.scaled_dot_product_attention(query, key, value, backend="c"),
        "kernel.attention": lambda: attnref.kernel.attention(call),
        "cffi call": lambda: entry(*arguments),
    }

    def batch(function):
        def run():
            for _ in range(OVERHEAD_CALLS):
                function()
        return run

    times = time_round_robin({name: batch(function) for name, function in depths.items()},
                             samples)
    per_call_us = {name: statistics.median(ms) * 1e3 / OVERHEAD_CALLS
                   for name, ms in times.items()}
    public, cffi_call = per_call_us["public"], per_call_us["cffi call"]
    del output
    return {"threads": threads, "per_call_us": per_call_us,
            "wrapper_share": (public - cffi_call) / public,
            "validation_share": (public - per_call_us["kernel.attention"]) / public}


def memory_at_scale(contenders, threads):
    """Peak bytes beyond inputs and output at N = MEMORY_N, D = MEMORY_D, float32,
    non-causal, for the C kernel and torch; NumPy's score matrix is stated."""
    result = {"N": MEMORY_N, "D": MEMORY_D, "threads": threads, "limit_bytes": MEMORY_LIMIT,
              "numpy_scores_bytes": B * H * MEMORY_N * MEMORY_N * 4, "measured": {}}
    for contender in contenders:
        if contender.name == "numpy" or contender.unavailable:
            continue
        progress(f"memory at N={MEMORY_N}: {contender.name}")
        result["measured"][contender.name] = memory.in_subprocess(
            contender.name, "float32", [B, H, H, MEMORY_N, MEMORY_N, MEMORY_D], False, False,
            threads)
    return result


def render(header, rows, markdown):
    """A table as fixed-width text (right-aligned) or as markdown."""
    if markdown:
        lines = [header, ["---:"] * len(header)] + rows
        return "\n".join("| " + " | ".join(row) + " |" for row in lines)
    widths = [max(len(row[column]) for row in [header] + rows) for column in range(len(header))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(row, widths)).rstrip()
                     for row in [header] + rows)


def peak_for(limits, dtype, threads):
    """The probe's peak GFLOP/s for ``dtype`` on ``threads``, or None."""
    peak = limits["peak_gflops"].get(threads)
    if peak is None:
        return None
    return peak if dtype == "float32" else peak / 2


def gflops(shape, median_ms):
    return shape.flops / median_ms / 1e6


def timing_table(results, names, dtype, threads, limits, markdown):
    others = [name for name in names if name != "c"]
    header = ["D", "causal", "N"]
    for name in names:
        header += [f"{name} ms", f"{name} GFLOP/s"] + (["% peak"] if name != "numpy" else [])
    header += [f"c/{name}" for name in others] + ["checked"]
    peak = peak_for(limits, dtype, threads)
    rows = []
    for shape, outcomes in results:
        if shape.dtype != dtype:
            continue
        row = shape.cells
        for name in names:
            median = outcomes[name].median_ms(threads)
            if median is None:
                row += [outcomes[name].skipped or "-", ""]
            else:
                row += [f"{median:.3f}", f"{gflops(shape, median):.1f}"]
            if name != "numpy":
                row.append(f"{100 * gflops(shape, median) / peak:.0f}%"
                           if median is not None and peak else "")
        c_median = outcomes["c"].median_ms(threads)
        for name in others:
            other_median = outcomes[name].median_ms(threads)
            row.append(f"{other_median / c_median:.2f}x"
                       if c_median is not None and other_median is not None else "-")
        checked = [outcome for outcome in outcomes.values() if outcome.error is not None]
        row.append("-" if not checked else
                   "ok" if all(o.error <= o.bound for o in checked) else "FAILED")
        rows.append(row)
    return render(header, rows, markdown)


def scaling_table(results, names, thread_counts, markdown):
    """Throughput on the most threads over one thread, per implementation."""
    low, high = min(thread_counts), max(thread_counts)
    timed = [name for name in names if name != "numpy"]
    header = ["dtype", "D", "causal", "N"] + [f"{name} {high}t/{low}t" for name in timed]
    rows = []
    for shape, outcomes in results:
        row = [shape.dtype] + shape.cells
        for name in timed:
            slow, fast = outcomes[name].median_ms(low), outcomes[name].median_ms(high)
            row.append(f"{slow / fast:.2f}x" if slow and fast else "-")
        rows.append(row)
    return render(header, rows, markdown)


def memory_table(results, names, dtype, markdown):
    header = ["D", "causal", "N"] + [f"{name} MiB" for name in names]
    rows = []
    for shape, outcomes in results:
        if shape.dtype != dtype:
            continue
        rows.append(shape.cells + [
            "-" if outcomes[name].memory_bytes is None else
            f"{outcomes[name].memory_bytes / 2**20:.2f}" for name in names])
    return render(header, rows, markdown)


def error_table(results, names, markdown):
    header = ["dtype", "D", "causal", "N"] + [f"{name} max error" for name in names]
    rows = []
    for shape, outcomes in results:
        if shape.N > CHECK_MAX_N[shape.dtype]:
            continue
        row = [shape.dtype] + shape.cells
        for name in names:
            outcome = outcomes[name]
            row.append("-" if outcome.error is None else
                       f"{outcome.error:.1e} (bound {outcome.bound:.1e})")
        rows.append(row)
    return render(header, rows, markdown) if rows else None


def decode_table(rows, markdown):
    names = list(rows[0]["results"]) if rows else []
    header = ["S", "threads", "K/V MiB", "read GB/s (probe)"]
    for name in names:
        header += [f"{name} ms", f"{name} GB/s", f"{name} % of read"]
    if "c" in names and "torch" in names:
        header.append("c/torch")
    lines = []
    for row in rows:
        line = [str(row["S"]), str(row["threads"]), f"{row['kv_bytes'] / 2**20:.0f}",
                f"{row['read_gbs']:.1f}" if row["read_gbs"] else "-"]
        for name in names:
            result = row["results"][name]
            if result["median_ms"] is None:
                line += ["wrong", "", ""]
                continue
            line += [f"{result['median_ms']:.3f}", f"{result['gbs']:.1f}",
                     f"{100 * result['gbs'] / row['read_gbs']:.0f}%" if row["read_gbs"] else ""]
        if "c" in names and "torch" in names:
            c, other = (row["results"][name]["median_ms"] for name in ("c", "torch"))
            line.append(f"{other / c:.2f}x" if c and other else "-")
        lines.append(line)
    return render(header, lines, markdown)


def limits_lines(limits):
    if limits["isa"] is None:
        return [f"probe unavailable: {limits['reason']}"]
    return [f"{threads} thread{'s' * (threads > 1)}: peak {limits['peak_gflops'][threads]:.1f} "
            f"GFLOP/s float32 ({limits['isa']} FMA chains), streaming read "
            f"{limits['read_gbs'][threads]:.1f} GB/s over {probe.BANDWIDTH_BYTES // 2**20} MiB"
            for threads in limits["peak_gflops"]]


def report(run, names, markdown):
    """The whole report as text or markdown, from the dict :func:`main` builds."""
    def heading(text):
        return f"### {text}" if markdown else f"== {text} =="

    def bullets(lines):
        return "\n".join(("- " if markdown else "  ") + line for line in lines)

    details = run["machine"]
    width = max(map(len, details))
    sections = [bullets([f"{label}: {text}" for label, text in details.items()]) if markdown
                else "\n".join(f"{label.ljust(width)}  {text}" for label, text in details.items()),
                f"Command: `{run['command']}`" if markdown else f"command: {run['command']}",
                heading("Machine limits (probe.py, medians)"), bullets(limits_lines(run["limits"]))]
    results, thread_counts = run["results"], run["settings"]["threads"]
    for dtype in dict.fromkeys(shape.dtype for shape, _ in results):
        for threads in thread_counts:
            sections += [heading(f"{dtype}, {threads} thread{'s' * (threads > 1)}"),
                         timing_table(results, names, dtype, threads, run["limits"], markdown)]
    sections.append(
        f"ms: median of {run['settings']['repeats']} interleaved rounds. GFLOP/s: "
        f"4*B*H*N^2*D (half when causal) / median, B={B}, H={H}. % peak: of the probe's "
        "float32 FMA peak on the same threads (float64: half of it). c/x: x median / c "
        "median from this run (above 1: the C kernel is faster). checked: outputs match the "
        "wider NumPy reference under attnref.testing.tolerance (at N <= "
        + ", ".join(f"{n} in {dtype}" for dtype, n in CHECK_MAX_N.items()) + ").")
    if len(thread_counts) > 1:
        sections += [heading("Thread scaling (throughput ratio)"),
                     scaling_table(results, names, thread_counts, markdown)]
    if run["settings"]["memory"]:
        for dtype in dict.fromkeys(shape.dtype for shape, _ in results):
            sections += [heading(f"Peak memory beyond inputs and output, {dtype}, "
                                 f"{max(thread_counts)} threads"),
                         memory_table(results, names, dtype, markdown)]
        sections.append(f"c, torch: {memory.METHOD_RSS}. numpy: {memory.METHOD_TRACEMALLOC}.")
    errors = error_table(results, names, markdown)
    if errors:
        sections += [heading("Max |output - wide reference| and the bound the rule accepts"),
                     errors]
    sections += [heading(f"Decoding: L=1, Hq={DECODE_Q_HEADS}, Hkv={DECODE_KV_HEADS} "
                         f"(enable_gqa), D={DECODE_D}, float32"),
                 decode_table(run["decode"], markdown),
                 f"Each call after reading {EVICT_BYTES // 2**20} MiB (caches evicted); median "
                 f"of {DECODE_REPEATS}. GB/s: 2*B*Hkv*S*D*4 bytes of K and V / median, "
                 "against the probe's streaming read on the same threads."]
    cost = run["overhead"]
    sections.append(heading(f"Small-call overhead: B={B}, H={H}, N={OVERHEAD_N}, "
                            f"D={OVERHEAD_D}, float32"
                            + (f", {cost['threads']} threads" if cost else "")))
    if cost is None:
        sections.append("not measured: the C kernel is unavailable")
    else:
        sections += [
            render(["depth", "us per call"],
                   [[name, f"{us:.1f}"] for name, us in cost["per_call_us"].items()], markdown),
            f"Wrapper share (public - cffi call) / public: {100 * cost['wrapper_share']:.1f}%; "
            f"of which validation (public - kernel.attention): "
            f"{100 * cost['validation_share']:.1f}%. Median over samples of "
            f"{OVERHEAD_CALLS} calls each, the three depths interleaved."]
    at_scale = run["memory_at_scale"]
    sections += [heading(f"Memory at N={at_scale['N']}, D={at_scale['D']}, H={H}, float32, "
                         f"non-causal, {at_scale['threads']} threads"),
                 bullets([f"{name}: {'not measured' if peak is None else f'{peak / 2**20:.2f} MiB'}"
                          " beyond inputs and output"
                          + (f" (limit {at_scale['limit_bytes'] // 2**20} MiB)"
                             if name == "c" else "")
                          for name, peak in at_scale["measured"].items()]
                         + [f"numpy: not run; its score matrix alone is L*S*H*4 = "
                            f"{at_scale['numpy_scores_bytes'] / 2**30:.0f} GiB"])]
    if run["notes"]:
        sections += [heading("Notes"), bullets(run["notes"])]
    return "\n\n".join(sections) + "\n"


def raw_results(run):
    """The run as JSON-ready data: every timing, error and memory figure."""
    return {
        "machine": run["machine"], "command": run["command"], "settings": run["settings"],
        "limits": run["limits"],
        "cases": [{"B": B, "H": H, "N": shape.N, "D": shape.D, "causal": shape.causal,
                   "dtype": shape.dtype, "flops": shape.flops,
                   "results": {name: {"times_ms": outcome.times_ms,
                                      "median_ms": {threads: outcome.median_ms(threads)
                                                    for threads in outcome.times_ms},
                                      "max_error": outcome.error,
                                      "error_bound": outcome.bound,
                                      "memory_bytes": outcome.memory_bytes,
                                      "skipped": outcome.reason}
                               for name, outcome in outcomes.items()}}
                  for shape, outcomes in run["results"]],
        "decode": run["decode"], "overhead": run["overhead"],
        "memory_at_scale": run["memory_at_scale"], "notes": run["notes"],
    }


def plot(run, names, path):
    """GFLOP/s against N, one line per implementation, one panel per (D,
    causal), for PLOT_DTYPE on the most threads; the probe's peak dashed."""
    try:
        import matplotlib
    except ImportError:
        sys.exit("bench_sdpa: --plot needs matplotlib, an optional extra: "
                 "pip install 'attnref[plot]' (or 'attnref[bench]', which adds torch)")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    threads = max(run["settings"]["threads"])
    results = [(shape, outcomes) for shape, outcomes in run["results"]
               if shape.dtype == PLOT_DTYPE]
    panels = sorted({(shape.D, shape.causal) for shape, _ in results})
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8),
                                sharey=True, squeeze=False)
    peak = peak_for(run["limits"], PLOT_DTYPE, threads)
    for axis, (D, causal) in zip(axes[0], panels):
        for name in names:
            points = [(shape.N, gflops(shape, outcomes[name].median_ms(threads)))
                      for shape, outcomes in results
                      if (shape.D, shape.causal) == (D, causal)
                      and outcomes[name].median_ms(threads) is not None]
            if points:
                axis.plot(*zip(*points), marker="o", label=name)
        if peak:
            axis.axhline(peak, linestyle="--", color="grey", label="FMA peak (probe)")
        axis.set_xscale("log", base=2)
        axis.set_ylim(bottom=0)
        axis.set_title(f"D={D}, {'causal' if causal else 'non-causal'}")
        axis.set_xlabel("N")
        axis.grid(True, alpha=0.3)
    axes[0][0].set_ylabel(f"GFLOP/s ({PLOT_DTYPE}, {threads} threads)")
    axes[0][0].legend(loc="lower right")
    figure.suptitle(f"scaled dot-product attention, B={B}, H={H}: {run['machine']['cpu']}")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    progress(f"plot written to {path}")


def blas_thread_note():
    """Why NumPy may run on other threads than the sweep asks, or None."""
    if threadpool_limits is not None:
        return None
    return ("threadpoolctl is not installed, so NumPy's BLAS keeps the threads it chose when "
            f"NumPy loaded ({machine.blas_threads() or 'all cores'}) whatever the sweep's "
            "thread count; pip install threadpoolctl to match them.")


def parse_arguments(argv):
    parser = argparse.ArgumentParser(
        description="Time attnref's NumPy reference and C kernel (and torch when installed) "
                    "on scaled dot-product attention; see the module docstring for the method.")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {QUICK_DTYPES}, N in {QUICK_SIZES}, D in "
                             f"{QUICK_HEAD_DIMS}, all cores only, {QUICK_REPEATS} repeats, "
                             f"decode S in {QUICK_DECODE_LENGTHS} (explicit options still win)")
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES,
                        help=f"dtypes of the sweep (default {DTYPES})")
    parser.add_argument("--sizes", type=int, nargs="+", metavar="N",
                        help=f"sequence lengths N = L = S (default {SIZES})")
    parser.add_argument("--head-dims", type=int, nargs="+", metavar="D",
                        help=f"head dims D = E = Ev (default {HEAD_DIMS})")
    parser.add_argument("--threads", type=int, nargs="+", metavar="T",
                        help="thread counts for all implementations (default: 1 and all "
                             f"usable cores, {machine.usable_cores()} here)")
    parser.add_argument("--repeats", type=int,
                        help=f"timed rounds per case (default {REPEATS}, "
                             f"{QUICK_REPEATS} with --quick)")
    parser.add_argument("--no-memory", dest="memory", action="store_false",
                        help="skip the per-case peak-memory measurements of the sweep")
    parser.add_argument("--markdown", type=Path, metavar="PATH",
                        help="also write the report as markdown (the format of RESULTS.md)")
    parser.add_argument("--json", type=Path, metavar="PATH",
                        help="also write every timing, error and the machine details as JSON")
    parser.add_argument("--plot", type=Path, metavar="PATH",
                        help=f"also draw GFLOP/s against N ({PLOT_DTYPE}, most threads) as a "
                             "PNG; needs matplotlib (extra 'plot' or 'bench')")
    arguments = parser.parse_args(argv)
    quick = arguments.quick
    arguments.dtypes = arguments.dtypes or (QUICK_DTYPES if quick else DTYPES)
    arguments.sizes = arguments.sizes or (QUICK_SIZES if quick else SIZES)
    arguments.head_dims = arguments.head_dims or (QUICK_HEAD_DIMS if quick else HEAD_DIMS)
    arguments.repeats = arguments.repeats or (QUICK_REPEATS if quick else REPEATS)
    arguments.threads = sorted(set(arguments.threads or (
        [machine.usable_cores()] if quick else [1, machine.usable_cores()])))
    for name in ("sizes", "head_dims", "threads"):
        if min(getattr(arguments, name)) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(arguments, name)}")
    if arguments.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {arguments.repeats}")
    return arguments


def main(argv=None):
    arguments = parse_arguments(argv)
    quick = arguments.quick
    given = sys.argv[1:] if argv is None else argv
    contenders = implementations()
    names = [contender.name for contender in contenders]
    notes = [f"{contender.name}: unavailable: {contender.unavailable}"
             for contender in contenders if contender.unavailable]
    blas_note = blas_thread_note()
    if blas_note:
        notes.append(blas_note)
        progress(f"note: {blas_note}")
    load = machine.OtherLoad()
    limits = probe.measure(arguments.threads, progress)

    shapes = [Shape(dtype, D, causal, N) for dtype in arguments.dtypes
              for D in arguments.head_dims for causal in (False, True) for N in arguments.sizes]
    results = []
    for number, shape in enumerate(shapes, start=1):
        progress(f"[{number}/{len(shapes)}] {shape.label}")
        start = time.perf_counter()
        outcomes = run_shape(shape, contenders, arguments.threads, arguments.repeats,
                             arguments.memory)
        progress(f"  done in {time.perf_counter() - start:.1f} s")
        results.append((shape, outcomes))
        notes += [f"{name}: {outcome.reason}" for name, outcome in outcomes.items()
                  if outcome.skipped in ("skipped", "wrong")]

    run = {
        "machine": machine.details(attnref, torch),
        "command": " ".join(["python", Path(sys.argv[0]).as_posix()] + given),
        "settings": {"threads": arguments.threads, "repeats": arguments.repeats, "seed": SEED,
                     "check_max_n": CHECK_MAX_N, "numpy_max_n": NUMPY_MAX_N,
                     "memory": arguments.memory},
        "limits": limits,
        "results": results,
        "decode": decode(contenders, arguments.threads,
                         QUICK_DECODE_LENGTHS if quick else DECODE_LENGTHS, limits),
        "overhead": overhead(max(arguments.threads),
                             QUICK_OVERHEAD_SAMPLES if quick else OVERHEAD_SAMPLES)
                    if attnref.kernel.available() else None,
        "memory_at_scale": memory_at_scale(contenders, max(arguments.threads)),
    }
    notes += [f"{name}: {result['skipped']}" for row in run["decode"]
              for name, result in row["results"].items() if result["skipped"]]
    other = load.share()
    if other is not None:
        notes.append(f"other processes used {100 * other:.0f}% of the machine's CPU time "
                     "during this run")
    run["notes"] = list(dict.fromkeys(notes))  # a skip repeats for every D and causal

    print(report(run, names, markdown=False))
    if arguments.markdown:
        arguments.markdown.write_text(report(run, names, markdown=True))
    if arguments.json:
        arguments.json.write_text(json.dumps(raw_results(run), indent=1) + "\n")
    if arguments.plot:
        plot(run, names, arguments.plot)
    wrong = any(outcome.skipped == "wrong" for _, outcomes in results
                for outcome in outcomes.values()) or any(
        result["skipped"] for row in run["decode"] for result in row["results"].values())
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
