"""``attnref bench``: time CPU attention implementations on this machine.

Contenders (:data:`CONTENDERS`): ``c``, attnref's fused kernel (with the
score mode ``scores`` chooses: ``"fast"`` by default, plain fused
multiply-add score sums as torch's; ``"exact"``, scores rounded once, is the
library's default); ``numpy``,
attnref's reference; ``torch``
(``torch.nn.functional.scaled_dot_product_attention``) and ``jax``
(``jax.nn.dot_product_attention``, jitted), each when installed (imported
here, lazily: neither is a dependency of attnref).

Method
------
A case is ``(dtype, D, causal, N)``: query, key and value of shape
``(B, H, N, D)`` (L = S = N, E = Ev = D), drawn once from a generator seeded
with :data:`SEED`. For each case:

1. at ``N <= CHECK_MAX_N[dtype]`` every contender's output is compared with
   attnref's NumPy reference computed in a wider dtype, under the
   equivalence rule (:mod:`attnref.testing.tolerance`); one that breaks it is
   not timed (the speed of a wrong answer means nothing);
2. for each thread count, ``repeats`` rounds time each contender once in
   turn, so that machine noise falls on all alike; before its timed call a
   contender runs untimed for at least :data:`LEAD_IN_SECONDS` (one call or
   more), so that its thread pool is awake and the previous contender's
   spinning threads are off the cores, as in a loop of calls;
3. the figures are medians: ``GFLOP/s = 4 B H N^2 D / median`` (half of it
   when causal: the upper triangle is skipped), its share of the FMA peak
   that :mod:`attnref.probe` measures for the kernel's instruction set, and
   the C kernel's speed relative to each other contender, ``c/x = median_x /
   median_c`` (above 1: the kernel is faster), all from this one run.

Decoding is timed the same way on ``L = 1``, GQA 4:1 (Hq = 32, Hkv = 8,
D = 128, float32) against S keys, each call after reading a buffer several
times the largest cache so that K and V come from memory; its rate is
``2 B Hkv S D itemsize`` bytes of K and V over the median, against the
probe's read bandwidth.

The accuracy cases (:data:`ACCURACY_CASES`) measure each contender's max
error against an exact reference (attnref's NumPy path in float64 for
float32 inputs, long double for float64), with long rows and large scores.

torch and attnref take the thread count of each row; NumPy's BLAS too when
threadpoolctl is installed; JAX keeps XLA's own thread pool (set at import,
all cores), which the report says.
"""
from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, NamedTuple, Optional

import numpy as np

from . import __version__, kernel, probe
from ._optional import import_optional
from ._validation import SCORE_MODES
from .core import scaled_dot_product_attention
from .testing.cases import Case
from .testing.tolerance import reference_dtype, reference_errors

__all__ = ["CONTENDERS", "Contender", "SweepCase", "contenders", "set_threads",
           "time_round_robin", "errors_against_reference", "run", "report", "plot", "accuracy",
           "ACCURACY_CASES", "QUICK_ACCURACY_CASES", "sweep_table", "decode_table",
           "accuracy_table", "limits_lines", "table_tag", "render", "pyplot"]

#: The contenders in table order; ``c`` is the one every ratio divides by.
CONTENDERS = ("c", "numpy", "torch", "jax")
B = 1
SEED = 0
LEAD_IN_SECONDS = 0.12  # OpenBLAS's idle threads spin 2^28 TSC ticks: 0.1 s at 2.6 GHz
# The wide reference of float64 is long double, which NumPy multiplies without
# BLAS: about 3 s at N = 512, D = 128, H = 8.
CHECK_MAX_N = {"float32": 1024, "float64": 512}
# The NumPy reference holds (B, H, N, N) score matrices: past this it is skipped.
NUMPY_MAX_N = 2048
DECODE_Q_HEADS, DECODE_KV_HEADS, DECODE_D = 32, 8, 128

#: Accuracy cases: benchmark-sized rows beside the conformance suite's long
#: row with huge scores. ``scale=1`` on E = 128 makes |scores| reach about 60.
ACCURACY_CASES = (
    Case("typical", L=512, S=512, E=128, Hq=8, description="L = S = 512, E = 128, H = 8"),
    Case("long_rows", L=16, S=16384, E=128, Hq=8, description="L = 16, S = 16384, E = 128"),
    Case("large_scores", L=512, S=512, E=128, Hq=8, scale=1.0,
         description="scale = 1 on E = 128: |scores| up to about 60"),
    Case("long_rows_huge_scores", L=8, S=8192, E=64, Hq=1, content="huge_scores",
         description="S = 8192, scores in the thousands (the conformance case)"),
)
QUICK_ACCURACY_CASES = (
    Case("typical", L=128, S=128, E=128, Hq=8, description="L = S = 128, E = 128, H = 8"),
    Case("long_rows", L=8, S=4096, E=128, Hq=2, description="L = 8, S = 4096, E = 128, H = 2"),
    Case("large_scores", L=128, S=128, E=128, Hq=8, scale=1.0,
         description="scale = 1 on E = 128: |scores| up to about 50"),
    Case("long_rows_huge_scores", L=8, S=8192, E=64, Hq=1, content="huge_scores",
         description="S = 8192, scores in the thousands (the conformance case)"),
)


class Contender(NamedTuple):
    """One implementation. ``bind(query, key, value, is_causal=False,
    enable_gqa=False, scale=None)`` returns the call to time, which returns
    the output as an array; ``unavailable`` says why it cannot run here (then
    ``bind`` is None); ``version`` is what ran (the kernel's code path,
    torch's version and CPU capability, ...), or None."""
    name: str
    bind: Optional[Callable]
    unavailable: Optional[str]
    version: Optional[str] = None


def _bind_attnref(backend, query, key, value, is_causal=False, enable_gqa=False, scale=None,
                  scores="exact"):
    return lambda: scaled_dot_product_attention(
        query, key, value, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa,
        backend=backend, scores=scores)


def _bind_torch(torch, query, key, value, is_causal=False, enable_gqa=False, scale=None):
    tensors = [torch.from_numpy(array) for array in (query, key, value)]  # shares memory
    return lambda: torch.nn.functional.scaled_dot_product_attention(
        *tensors, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa).numpy()


def _bind_jax(jax, query, key, value, is_causal=False, enable_gqa=False, scale=None):
    """JAX's layout is (B, T, N, H): heads and lengths swap on the way in;
    GQA is native. float64 runs with 64-bit types enabled (else JAX would
    compute it in float32); the arrays are on the device before timing."""
    wide = query.dtype == np.float64
    function = jax.jit(partial(jax.nn.dot_product_attention, is_causal=is_causal,
                               scale=scale))
    with jax.enable_x64(wide):
        arrays = [jax.numpy.asarray(np.swapaxes(array, 1, 2)) for array in (query, key, value)]

    def call():
        with jax.enable_x64(wide):
            output = function(*arrays).block_until_ready()
        return np.swapaxes(np.asarray(output), 1, 2)
    return call


def _framework(name):
    """The imported module ``name``, or the reason it cannot be imported."""
    try:
        return import_optional(name, f"the {name} contender"), None
    except ImportError as error:
        return None, str(error)


def contenders(names=CONTENDERS, scores="fast"):
    """The :class:`Contender` of each of ``names`` (a subset of
    :data:`CONTENDERS`), in :data:`CONTENDERS` order; ``c`` computes its
    scores in mode ``scores`` (``"fast"`` or ``"exact"``)."""
    if scores not in SCORE_MODES:
        raise ValueError(f"scores must be one of {SCORE_MODES}, got {scores!r}")
    unknown = sorted(set(names) - set(CONTENDERS))
    if unknown:
        raise ValueError(f"implementations must be among {CONTENDERS}, got {unknown}")
    found = []
    for name in (name for name in CONTENDERS if name in names):
        if name == "c":
            details = kernel.info()
            found.append(Contender("c", partial(_bind_attnref, "c", scores=scores), None,
                                   f"{details['path']}, scores={scores}")
                         if details["available"] else Contender("c", None, details["reason"]))
        elif name == "numpy":
            found.append(Contender("numpy", partial(_bind_attnref, "numpy"), None,
                                   np.__version__))
        else:
            module, reason = _framework(name)
            if module is None:
                found.append(Contender(name, None, reason))
            elif name == "torch":
                found.append(Contender("torch", partial(_bind_torch, module), None,
                                       f"{module.__version__} "
                                       f"({module.backends.cpu.get_cpu_capability()})"))
            else:
                found.append(Contender("jax", partial(_bind_jax, module), None,
                                       module.__version__))
    return found


def set_threads(threads):
    """Run the C kernel, torch (when imported) and, with threadpoolctl,
    NumPy's BLAS on ``threads`` threads."""
    kernel.set_num_threads(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(limits=threads, user_api="blas")


def lead_in(call, seconds=LEAD_IN_SECONDS):
    """Call ``call`` untimed until ``seconds`` have passed, at least once."""
    start = time.perf_counter()
    while True:
        call()
        if time.perf_counter() - start >= seconds:
            return


def time_round_robin(calls, repeats, before=None, lead_in_seconds=LEAD_IN_SECONDS):
    """``{name: [ms per call]}`` over ``repeats`` rounds that time each of
    ``calls`` once in turn, each after its :func:`lead_in` and then
    ``before()`` when given."""
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            lead_in(call, lead_in_seconds)
            if before is not None:
                before()
            start = time.perf_counter()
            output = call()
            elapsed = time.perf_counter() - start
            del output  # freed after the clock stops
            times[name].append(elapsed * 1e3)
    return times


def errors_against_reference(inputs, calls, is_causal=False, enable_gqa=False, scale=None):
    """``{name: (max error, bound)}`` of each call's output against attnref's
    NumPy reference in the wider dtype, under the equivalence rule."""
    wide = reference_dtype(inputs[0].dtype)
    reference = scaled_dot_product_attention(
        *(array.astype(wide) for array in inputs), is_causal=is_causal, scale=scale,
        enable_gqa=enable_gqa, backend="numpy")
    baseline = scaled_dot_product_attention(*inputs, is_causal=is_causal, scale=scale,
                                            enable_gqa=enable_gqa, backend="numpy")
    return {name: reference_errors(np.asarray(call()), reference, baseline, inputs[2])
            for name, call in calls.items()}


@dataclass(frozen=True)
class SweepCase:
    """One timed shape: (B, H, N, D) inputs in ``dtype``, causal or not."""
    dtype: str
    D: int
    causal: bool
    N: int
    H: int = 8

    @property
    def flops(self):
        """4 B H N^2 D (2 for q.k, 2 for p.v), half of it when causal."""
        full = 4 * B * self.H * self.N * self.N * self.D
        return full // 2 if self.causal else full

    @property
    def label(self):
        return f"{self.dtype} D={self.D} {'causal' if self.causal else 'non-causal'} N={self.N}"


@dataclass
class Outcome:
    """One contender on one shape: ``times_ms`` per thread count, its error
    against the wide reference when checked, or why it was not timed."""
    times_ms: dict = field(default_factory=dict)
    error: Optional[float] = None
    bound: Optional[float] = None
    skipped: Optional[str] = None   # short label for a table: unavailable, skipped, wrong
    reason: Optional[str] = None    # why not timed, in full

    def median_ms(self, threads):
        times = self.times_ms.get(threads)
        return statistics.median(times) if times else None

    def to_dict(self):
        return {"times_ms": self.times_ms,
                "median_ms": {threads: self.median_ms(threads) for threads in self.times_ms},
                "max_error": self.error, "error_bound": self.bound, "skipped": self.skipped,
                "reason": self.reason}

    def check(self, error, bound, label, say):
        """Record the error against the wide reference; over ``bound``, mark
        this contender wrong (not timed). Returns whether it is within."""
        self.error, self.bound = error, bound
        if error <= bound:
            return True
        self.skipped = "wrong"
        self.reason = f"wrong at {label}: max error {error:.2e} over the bound {bound:.2e}"
        say(f"WRONG: {self.reason}; not timed")
        return False


def time_case(case, found, thread_counts, repeats, say):
    """``{name: Outcome}`` for one :class:`SweepCase` on every thread count."""
    rng = np.random.default_rng([SEED, case.N, case.D])
    inputs = [rng.standard_normal((B, case.H, case.N, case.D), dtype=case.dtype)
              for _ in range(3)]
    outcomes = {contender.name: Outcome() for contender in found}
    calls = {}
    for contender in found:
        outcome = outcomes[contender.name]
        if contender.unavailable:
            outcome.skipped, outcome.reason = "unavailable", contender.unavailable
        elif contender.name == "numpy" and case.N > NUMPY_MAX_N:
            outcome.skipped = "skipped"
            outcome.reason = f"skipped at N > {NUMPY_MAX_N} (it holds the N x N scores)"
        else:
            calls[contender.name] = contender.bind(*inputs, case.causal)
    set_threads(max(thread_counts))
    if case.N <= CHECK_MAX_N[case.dtype]:
        for name, (error, bound) in errors_against_reference(inputs, calls, case.causal).items():
            if not outcomes[name].check(error, bound, f"{case.label} ({name})", say):
                del calls[name]
    for threads in thread_counts:
        set_threads(threads)
        for name, times in time_round_robin(calls, repeats).items():
            outcomes[name].times_ms[threads] = times
    return outcomes


def time_decode(S, found, thread_counts, repeats, evict, say):
    """Decoding against ``S`` keys (L = 1, GQA 4:1, D = 128, float32), each
    call after ``evict()``: ``{name: Outcome}``."""
    rng = np.random.default_rng([SEED, S])
    query = rng.standard_normal((B, DECODE_Q_HEADS, 1, DECODE_D), dtype=np.float32)
    key, value = (rng.standard_normal((B, DECODE_KV_HEADS, S, DECODE_D), dtype=np.float32)
                  for _ in range(2))
    outcomes = {contender.name: Outcome() for contender in found if contender.name != "numpy"}
    calls = {}
    for contender in found:
        if contender.name == "numpy":
            continue
        if contender.unavailable:
            outcomes[contender.name].skipped = "unavailable"
            outcomes[contender.name].reason = contender.unavailable
        else:
            calls[contender.name] = contender.bind(query, key, value, False, True)
    set_threads(max(thread_counts))
    for name, (error, bound) in errors_against_reference(
            [query, key, value], calls, enable_gqa=True).items():
        if not outcomes[name].check(error, bound, f"decode S={S} ({name})", say):
            del calls[name]
    for threads in thread_counts:
        set_threads(threads)
        for name, times in time_round_robin(calls, repeats, before=evict).items():
            outcomes[name].times_ms[threads] = times
    return outcomes


def accuracy(found, cases=ACCURACY_CASES, dtypes=("float32", "float64"), say=None):
    """Each contender's max error against the exact reference on ``cases``.

    Returns a list of dicts: ``case``, ``description``, ``dtype``,
    ``errors`` ``{name: max |output - reference|}`` (None when the contender
    cannot run) and ``bound`` (what the equivalence rule accepts). The
    reference is attnref's NumPy path in :func:`reference_dtype` (float64 for
    float32, long double for float64) on the very inputs the contenders got.
    """
    say = say or (lambda message: None)
    rows = []
    for case in cases:
        for dtype in dtypes:
            say(f"accuracy: {case.name}, {dtype}")
            inputs = case.inputs(SEED, dtype)
            arrays = [inputs["query"], inputs["key"], inputs["value"]]
            calls = {contender.name: contender.bind(*arrays, inputs["is_causal"],
                                                    inputs["enable_gqa"], inputs["scale"])
                     for contender in found if not contender.unavailable}
            measured = errors_against_reference(arrays, calls, inputs["is_causal"],
                                                inputs["enable_gqa"], inputs["scale"])
            rows.append({"case": case.name, "description": case.description, "dtype": dtype,
                         "errors": {contender.name: measured.get(contender.name, (None,))[0]
                                    for contender in found},
                         "bound": next(iter(measured.values()))[1] if measured else None})
    return rows


def machine(found):
    """What ran: CPU, cores, Python, attnref and each contender's version."""
    return {
        "cpu": probe.cpu_name(),
        "cores": f"{probe.usable_cores()} usable ({os.cpu_count()} online)",
        "os": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "python": platform.python_version(),
        "attnref": __version__,
        **{contender.name: contender.version or f"unavailable: {contender.unavailable}"
           for contender in found},
    }


def run(*, dtypes=("float32",), sizes=(512, 1024, 2048), head_dims=(64, 128),
        causal=(False, True), thread_counts=None, repeats=5, decode_lengths=(4096,),
        decode_repeats=None, implementations=CONTENDERS, measure_limits=True,
        accuracy_cases=(), probe_seconds=0.2, read_bytes=None, progress=None, scores="fast"):
    """Run the benchmark and return its record (a JSON-ready dict).

    Parameters
    ----------
    dtypes, sizes, head_dims, causal : sequences
        The sweep: every (dtype, D, causal, N) of them.
    thread_counts : sequence of int, optional
        Default: 1 and every usable core.
    repeats : int
        Timed rounds per case (the medians are over them).
    decode_lengths : sequence of int
        S of the decoding cases (empty: none).
    decode_repeats : int, optional
        Timed rounds per decoding case (default ``repeats``).
    implementations : sequence of str
        A subset of :data:`CONTENDERS`.
    measure_limits : bool
        Run :mod:`attnref.probe` (the peak and read bandwidth).
    accuracy_cases : sequence of Case
        Cases of :func:`accuracy` (empty: none).
    probe_seconds : float
        Length of each FMA-peak measurement.
    read_bytes : int, optional
        Bytes of the probe's read-bandwidth buffer, which is also what each
        decoding call reads first to evict the caches (default
        :func:`attnref.probe.bandwidth_bytes`).
    progress : callable, optional
        Called with each progress message (a case starts, a probe result).
    scores : {"fast", "exact"}
        The C kernel's score mode (see :func:`attnref.scaled_dot_product_attention`).

    Returns
    -------
    dict
        ``machine``, ``limits`` (see :func:`attnref.probe.measure`; None
        when not measured), ``settings``, ``cases``, ``decode`` and
        ``accuracy``; every time in ms, medians and ratios computed from it.
    """
    say = progress or (lambda message: None)
    thread_counts = sorted(set(thread_counts or (1, probe.usable_cores())))
    found = contenders(implementations, scores)
    isa = probe.isa_of_code_path(kernel.get_code_path()) if kernel.available() else "native"
    limits = (probe.measure(isa, thread_counts, dtypes=("float32", "float64"),
                            seconds=probe_seconds, read_bytes=read_bytes, progress=say)
              if measure_limits else None)
    record = {"machine": machine(found), "limits": limits,
              "settings": {"implementations": [contender.name for contender in found],
                           "B": B, "threads": thread_counts, "repeats": repeats,
                           "decode_repeats": decode_repeats or repeats, "seed": SEED,
                           "scores": scores,
                           "check_max_n": CHECK_MAX_N, "numpy_max_n": NUMPY_MAX_N},
              "cases": [], "decode": [], "accuracy": []}
    shapes = [SweepCase(dtype, D, is_causal, N) for dtype in dtypes for D in head_dims
              for is_causal in causal for N in sizes]
    for number, case in enumerate(shapes, start=1):
        say(f"[{number}/{len(shapes)}] {case.label}")
        outcomes = time_case(case, found, thread_counts, repeats, say)
        record["cases"].append(_case_record(case, outcomes, thread_counts, limits))
    if decode_lengths:
        evict_data = probe.read_buffer(read_bytes)
        for S in decode_lengths:
            say(f"decode S={S} (L=1, Hq={DECODE_Q_HEADS}, Hkv={DECODE_KV_HEADS}, D={DECODE_D})")
            outcomes = time_decode(S, found, thread_counts, decode_repeats or repeats,
                                   evict_data.sum, say)
            record["decode"].append(_decode_record(S, outcomes, thread_counts, limits,
                                                   evict_data.nbytes))
        del evict_data
    if accuracy_cases:
        record["accuracy"] = accuracy(found, accuracy_cases, dtypes, say)
    return record


def _ratios(outcomes, threads):
    """``{name: median_name / median_c}`` for each other contender timed."""
    c = outcomes["c"].median_ms(threads) if "c" in outcomes else None
    return {name: outcome.median_ms(threads) / c for name, outcome in outcomes.items()
            if name != "c" and c and outcome.median_ms(threads)}


def _case_record(case, outcomes, thread_counts, limits):
    peak = (limits or {}).get("peak_gflops", {}).get(case.dtype, {})
    results = {}
    for name, outcome in outcomes.items():
        entry = outcome.to_dict()
        entry["gflops"] = {t: case.flops / ms / 1e6 for t, ms in entry["median_ms"].items()}
        entry["percent_of_peak"] = {t: 100 * rate / peak[t] for t, rate in
                                    entry["gflops"].items() if peak.get(t)}
        results[name] = entry
    return {"dtype": case.dtype, "B": B, "H": case.H, "N": case.N, "D": case.D,
            "causal": case.causal, "flops": case.flops, "results": results,
            "c_speedup": {t: _ratios(outcomes, t) for t in thread_counts}}


def _decode_record(S, outcomes, thread_counts, limits, evict_bytes):
    kv_bytes = 2 * B * DECODE_KV_HEADS * S * DECODE_D * 4
    read = (limits or {}).get("read_gbs", {})
    results = {}
    for name, outcome in outcomes.items():
        entry = outcome.to_dict()
        entry["gbs"] = {t: kv_bytes / ms / 1e6 for t, ms in entry["median_ms"].items()}
        entry["percent_of_read"] = {t: 100 * rate / read[t] for t, rate in entry["gbs"].items()
                                    if read.get(t)}
        results[name] = entry
    return {"S": S, "L": 1, "Hq": DECODE_Q_HEADS, "Hkv": DECODE_KV_HEADS, "D": DECODE_D,
            "dtype": "float32", "kv_bytes": kv_bytes, "evict_bytes": evict_bytes,
            "results": results, "c_speedup": {t: _ratios(outcomes, t) for t in thread_counts}}


def render(header, rows, markdown=False):
    """A table as right-aligned fixed-width text, or as markdown."""
    if markdown:
        lines = [header, ["---:"] * len(header)] + rows
        return "\n".join("| " + " | ".join(row) + " |" for row in lines)
    widths = [max(len(row[column]) for row in [header] + rows) for column in range(len(header))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(row, widths)).rstrip()
                     for row in [header] + rows)


def _plural(threads):
    return f"{threads} thread{'s' * (threads != 1)}"


def limits_lines(limits):
    """The probe's figures, one line per thread count."""
    if limits is None:
        return ["machine limits: not measured (--no-probe)"]
    if limits["reason"]:
        return [f"machine limits: probe unavailable: {limits['reason']}"]
    lines = []
    for threads, read in limits["read_gbs"].items():
        peaks = ", ".join(f"{dtype} {per_thread[threads]:.1f}"
                          for dtype, per_thread in limits["peak_gflops"].items()
                          if per_thread.get(threads))
        lines.append(f"machine limits ({limits['isa']}, {_plural(threads)}): FMA peak GFLOP/s "
                     f"{peaks or 'not measured (no FMA probe for this ISA)'}; read {read:.1f} "
                     f"GB/s over {limits['read_bytes'] // 2**20} MiB")
    return lines


def sweep_table(record, dtype, threads, markdown=False):
    """One (dtype, threads) table: ms, GFLOP/s and % of peak per contender,
    then the kernel's speed relative to each other one."""
    names = record["settings"]["implementations"]
    others = [name for name in names if name != "c"]
    header = ["D", "causal", "N"]
    for name in names:
        header += [f"{name} ms", f"{name} GFLOP/s", f"{name} %peak"]
    header += [f"c/{name}" for name in others]
    rows = []
    for case in record["cases"]:
        if case["dtype"] != dtype:
            continue
        rows.append([str(case["D"]), "yes" if case["causal"] else "no", str(case["N"])]
                    + _timing_cells(case, names, threads, "gflops", "percent_of_peak"))
    return render(header, rows, markdown)


def _timing_cells(case, names, threads, rate, percent):
    """A case's cells at ``threads``: each contender's median ms, its
    ``rate`` (the result's key: ``"gflops"`` or ``"gbs"``) and ``percent``
    (``"percent_of_peak"`` or ``"percent_of_read"``), then the kernel's speed
    relative to each other contender."""
    cells = []
    for name in names:
        result = case["results"][name]
        median = result["median_ms"].get(threads)
        if median is None:
            cells += [result["skipped"] or "-", "", ""]
            continue
        share = result[percent].get(threads)
        cells += [f"{median:.3f}", f"{result[rate][threads]:.1f}",
                  f"{share:.0f}%" if share is not None else "-"]
    ratios = case["c_speedup"][threads]
    return cells + [f"{ratios[name]:.2f}x" if name in ratios else "-"
                    for name in names if name != "c"]


def decode_table(record, markdown=False):
    """Decoding: ms, GB/s of K and V and % of the probe's read bandwidth per
    contender, and the kernel's speed relative to the others."""
    names = [name for name in record["settings"]["implementations"] if name != "numpy"]
    read = (record["limits"] or {}).get("read_gbs", {})
    header = ["S", "threads", "K+V MiB", "read GB/s"]
    for name in names:
        header += [f"{name} ms", f"{name} GB/s", f"{name} %read"]
    header += [f"c/{name}" for name in names if name != "c"]
    rows = []
    for case in record["decode"]:
        for threads in record["settings"]["threads"]:
            rows.append([str(case["S"]), str(threads), f"{case['kv_bytes'] / 2**20:.0f}",
                         f"{read[threads]:.1f}" if read.get(threads) else "-"]
                        + _timing_cells(case, names, threads, "gbs", "percent_of_read"))
    return render(header, rows, markdown)


def accuracy_table(record, markdown=False):
    """Max |output - exact reference| per contender, the rule's bound, and
    the kernel's error over torch's (at most 1: as accurate as torch)."""
    names = record["settings"]["implementations"]
    header = ["case", "dtype"] + [f"{name} error" for name in names] + ["bound"]
    header += ["c/torch error"] if {"c", "torch"} <= set(names) else []
    rows = []
    for entry in record["accuracy"]:
        errors = entry["errors"]
        row = [entry["case"], entry["dtype"]]
        row += ["-" if errors[name] is None else f"{errors[name]:.2e}" for name in names]
        row.append("-" if entry["bound"] is None else f"{entry['bound']:.2e}")
        if {"c", "torch"} <= set(names):
            c, torch = errors["c"], errors["torch"]
            row.append(f"{c / torch:.2f}" if c is not None and torch else "-")
        rows.append(row)
    return render(header, rows, markdown)


def skipped_notes(record):
    """Why each contender that was not timed somewhere was not, once each."""
    notes = {}
    for case in record["cases"] + record["decode"]:
        for name, result in case["results"].items():
            if result["reason"]:
                notes.setdefault(f"{name}: {result['reason']}", None)
    return list(notes)


def report(record, markdown=False):
    """The record as text (or markdown): what ran, the machine's limits, one
    table per (dtype, threads), decoding, accuracy, and the notes."""
    def heading(text):
        return f"### {text}" if markdown else f"== {text} =="

    settings = record["settings"]
    details = record["machine"]
    sections = ["\n".join(f"{label}: {text}" for label, text in details.items()),
                "\n".join(limits_lines(record["limits"]))]
    tag = table_tag(record)
    for dtype in dict.fromkeys(case["dtype"] for case in record["cases"]):
        for threads in settings["threads"]:
            sections += [heading(f"{dtype}, {_plural(threads)}: {tag}"),
                         sweep_table(record, dtype, threads, markdown)]
    if record["cases"]:
        sections.append(
            f"ms: median of {settings['repeats']} interleaved rounds, B={B}, H="
            f"{record['cases'][0]['H']}, L=S=N, E=Ev=D. GFLOP/s: 4*B*H*N^2*D (half when "
            "causal) / median. %peak: of the probe's FMA peak in the same dtype on the same "
            "threads. c/x: x's median / c's median (above 1: attnref's kernel is faster).")
    if record["decode"]:
        sections += [heading(f"decoding, L=1, Hq={DECODE_Q_HEADS}, Hkv={DECODE_KV_HEADS}, "
                             f"D={DECODE_D}, float32: {tag}"),
                     decode_table(record, markdown),
                     f"Each call after reading {record['decode'][0]['evict_bytes'] // 2**20} MiB "
                     f"(caches evicted); median of {settings['decode_repeats']}. GB/s: "
                     "2*B*Hkv*S*D*4 bytes of K and V / median; %read: of the probe's read "
                     "bandwidth on the same threads."]
    if record["accuracy"]:
        sections += [heading(f"accuracy, max |output - exact reference|: {tag}"),
                     accuracy_table(record, markdown),
                     "Exact reference: attnref's NumPy path in float64 (float32 inputs) or long "
                     "double (float64 inputs) on the same inputs. bound: what the equivalence "
                     "rule accepts (2x the same-dtype NumPy error + floor). c/torch error: at "
                     "most 1 when the kernel is as accurate as torch."]
    notes = skipped_notes(record)
    if "jax" in settings["implementations"] and "unavailable" not in details.get("jax", ""):
        notes.append("jax: XLA's own thread pool (all cores, fixed at import), whatever the "
                     "row's thread count")
    if notes:
        sections += [heading("notes"), "\n".join(f"- {note}" for note in notes)]
    return "\n\n".join(sections) + "\n"


def table_tag(record):
    """What a table ran on, for its heading: CPU, ISA and versions."""
    details, limits = record["machine"], record["limits"]
    parts = [details["cpu"], f"ISA {limits['isa']}" if limits else "no probe",
             f"attnref {details['attnref']}"]
    parts += [f"{name} {details[name]}" for name in ("c", "torch", "jax")
              if name in details and not details[name].startswith("unavailable")]
    return ", ".join(parts)


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only), or an ImportError
    that names the extra to install."""
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError("--plot needs matplotlib, which is not installed: "
                          "pip install 'attnref[plot]'") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot
    return matplotlib.pyplot


def plot(record, path):
    """GFLOP/s against N, one line per contender, one panel per (D, causal),
    for the first dtype on the most threads; the probe's peak dashed.

    Needs matplotlib (an optional extra): ImportError naming it otherwise.
    """
    plt = pyplot()
    threads = max(record["settings"]["threads"])
    dtype = record["cases"][0]["dtype"]
    cases = [case for case in record["cases"] if case["dtype"] == dtype]
    panels = sorted({(case["D"], case["causal"]) for case in cases})
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8),
                                sharey=True, squeeze=False)
    peak = ((record["limits"] or {}).get("peak_gflops", {}).get(dtype, {})).get(threads)
    for axis, (D, causal) in zip(axes[0], panels):
        for name in record["settings"]["implementations"]:
            points = [(case["N"], case["results"][name]["gflops"][threads]) for case in cases
                      if (case["D"], case["causal"]) == (D, causal)
                      and threads in case["results"][name]["gflops"]]
            if points:
                axis.plot(*zip(*points), marker="o", label=name)
        if peak:
            axis.axhline(peak, linestyle="--", color="grey", label="FMA peak (probe)")
        axis.set_xscale("log", base=2)
        axis.set_ylim(bottom=0)
        axis.set_title(f"D={D}, {'causal' if causal else 'non-causal'}")
        axis.set_xlabel("N")
        axis.grid(True, alpha=0.3)
    axes[0][0].set_ylabel(f"GFLOP/s ({dtype}, {_plural(threads)})")
    axes[0][0].legend(loc="lower right")
    figure.suptitle(f"attention, B={B}, H={cases[0]['H']}: {record['machine']['cpu']}")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
