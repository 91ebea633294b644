"""Benchmark scaled dot-product attention per instruction set: attnref's C
kernel vs torch (and the NumPy reference), the sweeps behind RESULTS.md.

Usage, from the repository root::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_sdpa.py \\
        --markdown out.md --json out.json --plot out.png
    python benchmarks/bench_sdpa.py --quick        # every section, small: about a minute
    python benchmarks/bench_sdpa.py --isa avx2     # one instruction set only

Instruction sets (``--isa``, default: each of avx2 and avx512 that this CPU
and kernel run, else native). Each ISA is measured in its own Python process
(:data:`ISA_ENVIRONMENT` must be set before torch is imported), with both
sides held to it:

- attnref: ``ATTNREF_KERNEL_PATH`` (its code path);
- torch: ``ATEN_CPU_CAPABILITY`` (ATen's vectorised kernels),
  ``MKL_ENABLE_INSTRUCTIONS`` (MKL's GEMMs) and ``ONEDNN_MAX_CPU_ISA``
  (oneDNN's);
- NumPy under avx2: ``OPENBLAS_CORETYPE=Haswell``;
- native sets none of them and removes any that were inherited.

The probe (:mod:`attnref.probe`) measures the FMA peak of that ISA, in
float32 and in float64, and the read bandwidth. Each process runs
:func:`attnref.bench.run` on the sweep, a case being (dtype, D, causal, N,
threads) with query, key and value of shape (B, H, N, D), B = 1, H = 8
(attnref's letters: L = S = N, E = Ev = D); its method is in that module's
docstring: outputs checked against the wide NumPy reference before any
timing (a wrong kernel is not timed, and the script exits 1), interleaved
rounds with lead-ins, medians, ratios from the same run. Then, in the same
process: decoding (L = 1, GQA 4:1, D = 128, each call after evicting the
caches) against the probe's read bandwidth; the accuracy cases (each
implementation's error against an exact reference, with long rows and large
scores); peak memory beyond inputs and output per case (:mod:`memory`); the
Python wrapper's share of a small call; and the kernel's memory at N =
MEMORY_N.

This process imports neither torch nor the kernel's ISA settings: it starts
the per-ISA processes, reads their JSON, and prints the ISAs side by side
(ratios and shares of each ISA's peak), then each ISA's full tables. Each
table's heading names the CPU, the ISA and the versions. A per-ISA process
that crashes makes the script exit non-zero; a slow number never does.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np

try:
    import attnref
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # a checkout, not installed
    try:
        import attnref
    except ImportError as error:
        sys.exit(f"bench_sdpa: cannot import attnref ({error}). "
                 "Install it from the repository root first: pip install .")
from attnref import bench, probe
from attnref._validation import sdpa_call

import machine
import memory
from machine import ISA_ENVIRONMENT, ISA_VARIABLES

DTYPES = ("float32", "float64")
SIZES = (512, 1024, 2048, 4096, 8192)
HEAD_DIMS = (64, 128)
REPEATS = 5
DECODE_LENGTHS = (1024, 4096, 16384, 32768)
DECODE_REPEATS = 21
QUICK = {"dtypes": DTYPES, "sizes": (512,), "head_dims": (64,), "repeats": 3,
         "decode_lengths": (4096,), "decode_repeats": 5, "memory_n": 2048,
         "overhead_samples": 5, "probe_seconds": 0.05}

OVERHEAD_N, OVERHEAD_D = 128, 64
OVERHEAD_SAMPLES, OVERHEAD_CALLS = 15, 100  # median over samples of the mean of calls
MEMORY_N, MEMORY_D = 16384, 64
MEMORY_LIMIT = 64 * 2**20  # issue 6: the C kernel beyond inputs and output
PLOT_DTYPE = "float32"
CONTENDERS = ("c", "numpy", "torch")



STARTED = time.perf_counter()
PER_ISA_DETAILS = ("numpy", "torch", "attnref kernel")  # rows of machine.details an ISA sets


def progress(message):
    print(f"bench_sdpa [{time.perf_counter() - STARTED:5.0f} s]: {message}", file=sys.stderr,
          flush=True)


# ---------------------------------------------------------------- per-ISA process


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
    validated call, and the CFFI call alone (all the kernel's pieces)."""
    rng = np.random.default_rng([bench.SEED, OVERHEAD_N, OVERHEAD_D])
    query, key, value = (rng.standard_normal((1, 8, OVERHEAD_N, OVERHEAD_D), dtype=np.float32)
                         for _ in range(3))
    bench.set_threads(threads)
    call = sdpa_call(query, key, value)
    recorder = _RecordingLib(attnref.kernel._lib)
    with mock.patch.object(attnref.kernel, "_lib", recorder):
        output, _ = attnref.kernel.attention(call)  # its pointers stay valid while it lives
    pieces = list(recorder.calls)

    def cffi_calls():
        for entry, arguments in pieces:
            entry(*arguments)

    depths = {
        "public": lambda: attnref.scaled_dot_product_attention(query, key, value, backend="c"),
        "kernel.attention": lambda: attnref.kernel.attention(call),
        "cffi call": cffi_calls,
    }

    def batch(function):
        def run():
            for _ in range(OVERHEAD_CALLS):
                function()
        return run

    times = bench.time_round_robin({name: batch(function) for name, function in depths.items()},
                                   samples)
    per_call_us = {name: statistics.median(ms) * 1e3 / OVERHEAD_CALLS
                   for name, ms in times.items()}
    public, cffi_call = per_call_us["public"], per_call_us["cffi call"]
    del output
    return {"threads": threads, "per_call_us": per_call_us, "pieces": len(pieces),
            "wrapper_share": (public - cffi_call) / public,
            "validation_share": (public - per_call_us["kernel.attention"]) / public}


def memory_per_case(record, threads):
    """``{name: bytes}`` beyond inputs and output for each sweep case, added
    to the case as ``memory_bytes`` (C and torch in a fresh process, NumPy
    through tracemalloc)."""
    found = {contender.name: contender for contender in bench.contenders(CONTENDERS)}
    for case in record["cases"]:
        measured = {}
        for name, result in case["results"].items():
            if result["skipped"]:
                continue
            if name == "numpy":
                rng = np.random.default_rng([bench.SEED, case["N"], case["D"]])
                inputs = [rng.standard_normal((1, case["H"], case["N"], case["D"]),
                                              dtype=case["dtype"]) for _ in range(3)]
                measured[name] = memory.numpy_peak(found[name].bind(*inputs, case["causal"]))
            else:
                measured[name] = memory.in_subprocess(
                    name, case["dtype"], [1, case["H"], case["H"], case["N"], case["N"],
                                          case["D"]], case["causal"], False, threads)
        case["memory_bytes"] = measured


def memory_at_scale(names, threads, N):
    """Peak bytes beyond inputs and output at N, D = MEMORY_D, H = 8, float32,
    non-causal, for the C kernel and torch; NumPy's score matrix is stated."""
    result = {"N": N, "D": MEMORY_D, "threads": threads, "limit_bytes": MEMORY_LIMIT,
              "numpy_scores_bytes": 8 * N * N * 4, "measured": {}}
    for name in names:
        progress(f"memory at N={N}: {name}")
        result["measured"][name] = memory.in_subprocess(
            name, "float32", [1, 8, 8, N, N, MEMORY_D], False, False, threads)
    return result


def worker(arguments):
    """Measure everything for the ISA this process was started with; write
    the JSON payload to ``arguments.worker``. Returns the exit status (1
    when the C kernel gave a wrong answer)."""
    try:
        import torch  # after the ISA's variables are set: the parent set them
    except ImportError:
        torch = None  # its columns say why (attnref.bench.contenders)

    quick = arguments.quick
    record = bench.run(
        dtypes=arguments.dtypes, sizes=arguments.sizes, head_dims=arguments.head_dims,
        thread_counts=arguments.threads, repeats=arguments.repeats,
        decode_lengths=QUICK["decode_lengths"] if quick else DECODE_LENGTHS,
        decode_repeats=QUICK["decode_repeats"] if quick else DECODE_REPEATS,
        implementations=CONTENDERS,
        accuracy_cases=bench.QUICK_ACCURACY_CASES if quick else bench.ACCURACY_CASES,
        probe_seconds=QUICK["probe_seconds"] if quick else 0.2, progress=progress,
        scores=arguments.scores)
    threads = max(record["settings"]["threads"])
    if arguments.memory:
        progress("peak memory of each case")
        memory_per_case(record, threads)
    timed = [name for name in ("c", "torch") if name in record["machine"]
             and not record["machine"][name].startswith("unavailable")]
    payload = {
        "isa": arguments.isa,
        "environment": {name: os.environ.get(name) for name in
                        ISA_VARIABLES + machine.OPENBLAS_CORE_VARIABLES},
        "details": machine.details(attnref, torch),
        "record": record,
        "overhead": overhead(threads, QUICK["overhead_samples"] if quick else OVERHEAD_SAMPLES)
                    if attnref.kernel.available() else None,
        "memory_at_scale": memory_at_scale(timed, threads,
                                           QUICK["memory_n"] if quick else MEMORY_N),
        "notes": isa_notes(arguments.isa, torch),
    }
    Path(arguments.worker).write_text(json.dumps(payload) + "\n")
    wrong = any(case["results"].get("c", {}).get("skipped") == "wrong"
                for case in record["cases"] + record["decode"])
    return 1 if wrong else 0


def isa_notes(isa, torch):
    """What did not obey the ISA's settings, if anything."""
    notes = machine.isa_disobeyed(isa, attnref, torch)
    if importlib.util.find_spec("threadpoolctl") is None:
        notes.append("threadpoolctl is not installed, so NumPy's BLAS keeps the threads it chose "
                     f"when NumPy loaded ({machine.blas_threads() or 'all cores'}) whatever the "
                     "row's thread count; pip install threadpoolctl to match them")
    return notes


# ---------------------------------------------------------------- this process


def isa_environment(isa):
    """This process's environment with ``isa``'s settings (native: none)."""
    return machine.with_isa(os.environ, isa)


def run_isa(isa, argv, script=__file__):
    """Run ``script`` (this one, or another benchmark built on it) as the
    per-ISA process for ``isa``; its payload and exit status (0, or 1 when
    the kernel was wrong). A crash raises RuntimeError with its status (its
    stderr went to ours)."""
    with tempfile.TemporaryDirectory(prefix=f"{Path(script).stem}-") as directory:
        output = Path(directory) / "payload.json"
        finished = subprocess.run(
            [sys.executable, str(Path(script).resolve()), *argv, "--worker", str(output),
             "--isa", isa], env=isa_environment(isa))
        if finished.returncode not in (0, 1) or not output.exists():
            raise RuntimeError(f"the {isa} run crashed (exit status {finished.returncode}); "
                               "its error is above")
        return thread_keys(json.loads(output.read_text())), finished.returncode


def thread_keys(value):
    """``value`` read from JSON with the thread-count keys (strings there)
    back to ints."""
    if isinstance(value, dict):
        return {int(key) if key.isdigit() else key: thread_keys(item)
                for key, item in value.items()}
    if isinstance(value, list):
        return [thread_keys(item) for item in value]
    return value


def heading(text, markdown):
    return f"### {text}" if markdown else f"== {text} =="


def versions(payloads):
    """CPU and versions, for a side-by-side heading."""
    machine_of = next(iter(payloads.values()))["record"]["machine"]
    torch = machine_of["torch"].split(" ")[0]
    return f"{machine_of['cpu']}, attnref {machine_of['attnref']}, torch {torch}"


def side_by_side_sweep(payloads, dtype, threads, markdown):
    """c/torch and the shares of each ISA's peak, one column group per ISA."""
    header = ["D", "causal", "N"]
    for isa in payloads:
        header += [f"{isa} c/torch", f"{isa} c %peak", f"{isa} torch %peak"]
    keys = [(case["D"], case["causal"], case["N"])
            for case in next(iter(payloads.values()))["record"]["cases"]
            if case["dtype"] == dtype]
    rows = []
    for D, causal, N in keys:
        row = [str(D), "yes" if causal else "no", str(N)]
        for payload in payloads.values():
            case = next(case for case in payload["record"]["cases"] if case["dtype"] == dtype
                        and (case["D"], case["causal"], case["N"]) == (D, causal, N))
            ratio = case["c_speedup"][threads].get("torch")
            row.append(f"{ratio:.2f}x" if ratio else "-")
            for name in ("c", "torch"):
                percent = case["results"].get(name, {}).get("percent_of_peak", {}).get(threads)
                row.append(f"{percent:.0f}%" if percent is not None else "-")
        rows.append(row)
    return bench.render(header, rows, markdown)


def side_by_side_decode(payloads, markdown):
    header = ["S", "threads"]
    for isa in payloads:
        header += [f"{isa} read GB/s", f"{isa} c GB/s", f"{isa} c %read", f"{isa} torch GB/s",
                   f"{isa} c/torch"]
    first = next(iter(payloads.values()))["record"]
    rows = []
    for index, case in enumerate(first["decode"]):
        for threads in first["settings"]["threads"]:
            row = [str(case["S"]), str(threads)]
            for payload in payloads.values():
                record = payload["record"]
                entry = record["decode"][index]
                read = (record["limits"] or {}).get("read_gbs", {}).get(threads)
                c, torch = (entry["results"].get(name, {}) for name in ("c", "torch"))
                percent = c.get("percent_of_read", {}).get(threads)
                ratio = entry["c_speedup"][threads].get("torch")
                row += [f"{read:.1f}" if read else "-",
                        f"{c['gbs'][threads]:.1f}" if threads in c.get("gbs", {}) else "-",
                        f"{percent:.0f}%" if percent is not None else "-",
                        f"{torch['gbs'][threads]:.1f}" if threads in torch.get("gbs", {})
                        else "-",
                        f"{ratio:.2f}x" if ratio else "-"]
            rows.append(row)
    return bench.render(header, rows, markdown)


def side_by_side_accuracy(payloads, markdown):
    header = ["case", "dtype"]
    for isa in payloads:
        header += [f"{isa} c error", f"{isa} torch error", f"{isa} c/torch"]
    first = next(iter(payloads.values()))["record"]
    rows = []
    for index, entry in enumerate(first["accuracy"]):
        row = [entry["case"], entry["dtype"]]
        for payload in payloads.values():
            errors = payload["record"]["accuracy"][index]["errors"]
            c, torch = errors.get("c"), errors.get("torch")
            row += ["-" if c is None else f"{c:.2e}", "-" if torch is None else f"{torch:.2e}",
                    f"{c / torch:.2f}" if c is not None and torch else "-"]
        rows.append(row)
    return bench.render(header, rows, markdown)


def limits_table(payloads, markdown):
    header = ["ISA", "threads", "float32 peak GFLOP/s", "float64 peak GFLOP/s", "read GB/s"]
    rows = []
    for isa, payload in payloads.items():
        limits = payload["record"]["limits"]
        if limits["reason"]:
            rows.append([isa, "-", f"unavailable: {limits['reason']}", "", ""])
            continue
        for threads, read in limits["read_gbs"].items():
            peaks = [limits["peak_gflops"][dtype].get(threads) for dtype in DTYPES]
            rows.append([f"{isa} ({limits['isa']} probe)", str(threads)]
                        + [f"{peak:.1f}" if peak else "-" for peak in peaks] + [f"{read:.1f}"])
    return bench.render(header, rows, markdown)


def isa_settings_lines(payloads):
    """Per ISA: the variables set, and what the kernel, torch and NumPy ran."""
    lines = []
    for isa, payload in payloads.items():
        details = payload["details"]
        held = ", ".join(f"{name}={value}" for name, value in payload["environment"].items()
                         if value) or "none set"
        lines.append(f"{isa}: variables {held}; attnref kernel {details['attnref kernel']}; "
                     f"torch {payload['record']['machine']['torch']}; numpy {details['numpy']}")
    return lines


def per_isa_sections(isa, payload, markdown):
    """One ISA's full tables: the sweep, scaling, memory, decoding, accuracy,
    small-call overhead, memory at scale and its notes."""
    record = payload["record"]
    tag = bench.table_tag(record)
    settings = record["settings"]
    sections = [heading(f"{isa}: full tables", markdown) if not markdown
                else f"## {isa}: full tables"]
    for dtype in dict.fromkeys(case["dtype"] for case in record["cases"]):
        for threads in settings["threads"]:
            sections += [heading(f"{dtype}, {threads} thread{'s' * (threads > 1)}: {tag}",
                                 markdown), bench.sweep_table(record, dtype, threads, markdown)]
    sections.append(
        f"ms: median of {settings['repeats']} interleaved rounds, B=1, H=8, L=S=N, E=Ev=D. "
        "GFLOP/s: 4*B*H*N^2*D (half when causal) / median. %peak: of the probe's FMA peak "
        f"for {record['limits']['isa']} in the same dtype on the same threads. c/x: x's "
        "median / c's median (above 1: attnref's kernel is faster).")
    if len(settings["threads"]) > 1:
        sections += [heading(f"thread scaling (throughput ratio): {tag}", markdown),
                     scaling_table(record, markdown)]
    if any("memory_bytes" in case for case in record["cases"]):
        sections += [heading(f"peak memory beyond inputs and output, "
                             f"{max(settings['threads'])} threads: {tag}", markdown),
                     memory_table(record, markdown),
                     f"c, torch: {memory.METHOD_RSS}. numpy: {memory.METHOD_TRACEMALLOC}."]
    sections += [heading(f"decoding, L=1, Hq={bench.DECODE_Q_HEADS}, Hkv={bench.DECODE_KV_HEADS}"
                         f", D={bench.DECODE_D}, float32: {tag}", markdown),
                 bench.decode_table(record, markdown),
                 heading(f"accuracy, max |output - exact reference|: {tag}", markdown),
                 bench.accuracy_table(record, markdown)]
    cost = payload["overhead"]
    if cost is not None:
        sections += [heading(f"small-call overhead: B=1, H=8, N={OVERHEAD_N}, D={OVERHEAD_D}, "
                             f"float32, {cost['threads']} threads: {tag}", markdown),
                     bench.render(["depth", "us per call"],
                                  [[name, f"{us:.1f}"] for name, us in cost["per_call_us"].items()],
                                  markdown),
                     f"Wrapper share (public - cffi calls) / public: "
                     f"{100 * cost['wrapper_share']:.1f}%; of which validation (public - "
                     f"kernel.attention): {100 * cost['validation_share']:.1f}%. The kernel ran "
                     f"as {cost['pieces']} CFFI call(s). Median over samples of {OVERHEAD_CALLS} "
                     "calls each, the three depths interleaved."]
    at_scale = payload["memory_at_scale"]
    sections += [heading(f"memory at N={at_scale['N']}, D={at_scale['D']}, H=8, float32, "
                         f"non-causal, {at_scale['threads']} threads: {tag}", markdown),
                 "\n".join(f"- {name}: " + ("not measured" if peak is None else
                                            f"{peak / 2**20:.2f} MiB")
                           + " beyond inputs and output"
                           + (f" (limit {at_scale['limit_bytes'] // 2**20} MiB)"
                              if name == "c" else "")
                           for name, peak in at_scale["measured"].items())
                 + f"\n- numpy: not run; its score matrix alone is L*S*H*4 = "
                   f"{at_scale['numpy_scores_bytes'] / 2**20:.0f} MiB"]
    notes = payload["notes"] + bench.skipped_notes(record)
    if notes:
        sections += [heading(f"{isa}: notes", markdown), "\n".join(f"- {n}" for n in notes)]
    return sections


def scaling_table(record, markdown):
    """Throughput on the most threads over one thread, per implementation."""
    low, high = min(record["settings"]["threads"]), max(record["settings"]["threads"])
    names = [name for name in record["settings"]["implementations"] if name != "numpy"]
    header = ["dtype", "D", "causal", "N"] + [f"{name} {high}t/{low}t" for name in names]
    rows = []
    for case in record["cases"]:
        row = [case["dtype"], str(case["D"]), "yes" if case["causal"] else "no", str(case["N"])]
        for name in names:
            medians = case["results"][name]["median_ms"]
            row.append(f"{medians[low] / medians[high]:.2f}x"
                       if medians.get(low) and medians.get(high) else "-")
        rows.append(row)
    return bench.render(header, rows, markdown)


def memory_table(record, markdown):
    names = record["settings"]["implementations"]
    header = ["dtype", "D", "causal", "N"] + [f"{name} MiB" for name in names]
    rows = [[case["dtype"], str(case["D"]), "yes" if case["causal"] else "no", str(case["N"])]
            + ["-" if case["memory_bytes"].get(name) is None
               else f"{case['memory_bytes'][name] / 2**20:.2f}" for name in names]
            for case in record["cases"]]
    return bench.render(header, rows, markdown)


def report(payloads, command, notes, markdown):
    """The whole report: machine, ISA settings and limits, the ISAs side by
    side, each ISA's full tables, then ``notes``."""
    first = next(iter(payloads.values()))
    details = {label: text for label, text in first["details"].items()
               if label not in PER_ISA_DETAILS}
    width = max(map(len, details))
    record = first["record"]
    tag = versions(payloads)
    sections = [
        "\n".join(f"- {label}: {text}" for label, text in details.items()) if markdown
        else "\n".join(f"{label.ljust(width)}  {text}" for label, text in details.items()),
        f"Command: `{command}`" if markdown else f"command: {command}",
        heading("instruction sets: what each run held to", markdown),
        "\n".join(("- " if markdown else "  ") + line for line in isa_settings_lines(payloads)),
        heading(f"machine limits (attnref.probe, medians): {record['machine']['cpu']}", markdown),
        limits_table(payloads, markdown)]
    for dtype in dict.fromkeys(case["dtype"] for case in record["cases"]):
        for threads in record["settings"]["threads"]:
            sections += [heading(f"{dtype}, {threads} thread{'s' * (threads > 1)}, c/torch and "
                                 f"% of each ISA's FMA peak: {tag}", markdown),
                         side_by_side_sweep(payloads, dtype, threads, markdown)]
    if record["decode"]:
        sections += [heading(f"decoding, L=1, Hq={bench.DECODE_Q_HEADS}, Hkv="
                             f"{bench.DECODE_KV_HEADS}, D={bench.DECODE_D}, float32, GB/s of K "
                             f"and V against the probe's read bandwidth: {tag}", markdown),
                     side_by_side_decode(payloads, markdown)]
    if record["accuracy"]:
        sections += [heading(f"accuracy, max |output - exact reference| (float64 reference "
                             f"for float32, long double for float64): {tag}", markdown),
                     side_by_side_accuracy(payloads, markdown)]
    for isa, payload in payloads.items():
        sections += per_isa_sections(isa, payload, markdown)
    if notes:
        sections += [heading("notes", markdown), "\n".join(f"- {note}" for note in notes)]
    return "\n\n".join(sections) + "\n"


def plot(payloads, path):
    """GFLOP/s against N for PLOT_DTYPE on the most threads: one panel per
    (D, causal), the C kernel and torch of each ISA, each ISA's peak dashed."""
    plt = bench.pyplot()
    first = next(iter(payloads.values()))["record"]
    threads = max(first["settings"]["threads"])
    panels = sorted({(case["D"], case["causal"]) for case in first["cases"]
                     if case["dtype"] == PLOT_DTYPE})
    if not panels:
        progress(f"no {PLOT_DTYPE} case: no plot")
        return
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8),
                                sharey=True, squeeze=False)
    styles = dict(zip(payloads, ("-", "--", ":")))
    for axis, (D, causal) in zip(axes[0], panels):
        for number, (isa, payload) in enumerate(payloads.items()):
            record = payload["record"]
            cases = [case for case in record["cases"] if case["dtype"] == PLOT_DTYPE
                     and (case["D"], case["causal"]) == (D, causal)]
            for color, name in zip(("C0", "C1"), ("c", "torch")):
                points = [(case["N"], case["results"][name]["gflops"][threads])
                          for case in cases if threads in case["results"][name]["gflops"]]
                if points:
                    axis.plot(*zip(*points), styles[isa], marker="o", color=color,
                              label=f"{name} {isa}")
            peak = ((record["limits"] or {}).get("peak_gflops", {})
                    .get(PLOT_DTYPE, {}).get(threads))
            if peak:
                axis.axhline(peak, linestyle=styles[isa], color="grey",
                             label=f"{isa} FMA peak")
        axis.set_xscale("log", base=2)
        axis.set_ylim(bottom=0)
        axis.set_title(f"D={D}, {'causal' if causal else 'non-causal'}")
        axis.set_xlabel("N")
        axis.grid(True, alpha=0.3)
    axes[0][0].set_ylabel(f"GFLOP/s ({PLOT_DTYPE}, {threads} threads)")
    axes[0][0].legend(loc="lower right", fontsize="small")
    figure.suptitle(f"scaled dot-product attention, B=1, H=8: {first['machine']['cpu']}")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    progress(f"plot written to {path}")


def default_isas():
    """avx2 and avx512 where this kernel and CPU run them, else native."""
    supported = attnref.kernel.supported_code_paths()
    return [isa for isa in ("avx2", "avx512") if isa in supported] or ["native"]


def add_isa_arguments(parser, defaults, *, threads_for, repeats_note=""):
    """Add to ``parser`` the options of a per-ISA benchmark (this script's and
    bench_backward.py's): ``--isa``, ``--sizes``, ``--head-dims``,
    ``--threads``, ``--repeats``, ``--markdown`` and the hidden ``--worker``
    (:func:`run_isa` passes it to a per-ISA process).

    Sizes, head dims, threads and repeats parse to None when not given
    (:func:`check_isa_arguments` fills them); ``defaults`` ({"sizes",
    "head_dims", "repeats"}) are the values the help states,
    ``threads_for`` says whom the thread counts hold for and
    ``repeats_note`` follows the repeats default in its help.
    """
    parser.add_argument("--isa", nargs="+", choices=tuple(ISA_ENVIRONMENT),
                        help="instruction sets, each in its own process with attnref and torch "
                             "held to it (default: avx2 and avx512 where this CPU runs them, "
                             "else native)")
    parser.add_argument("--sizes", type=int, nargs="+", metavar="N",
                        help=f"sequence lengths N = L = S (default {defaults['sizes']})")
    parser.add_argument("--head-dims", type=int, nargs="+", metavar="D",
                        help=f"head dims D = E = Ev (default {defaults['head_dims']})")
    parser.add_argument("--threads", type=int, nargs="+", metavar="T",
                        help=f"thread counts for {threads_for} (default: 1 and all usable "
                             f"cores, {probe.usable_cores()} here)")
    parser.add_argument("--repeats", type=int,
                        help=f"timed rounds per case (default {defaults['repeats']}"
                             f"{repeats_note})")
    parser.add_argument("--markdown", type=Path, metavar="PATH",
                        help="also write the report as markdown (the format of RESULTS.md)")
    parser.add_argument("--worker", metavar="PATH", help=argparse.SUPPRESS)


def check_isa_arguments(parser, arguments, defaults):
    """Fill the options of :func:`add_isa_arguments` not given from
    ``defaults`` ({"sizes", "head_dims", "threads", "repeats"}), the thread
    counts sorted without repeats; a usage error (``parser.error``) when a
    size, head dim, thread count or the repeats is below 1. A per-ISA
    process keeps its one ``--isa``."""
    for name in ("sizes", "head_dims", "threads", "repeats"):
        if getattr(arguments, name) is None:
            setattr(arguments, name, defaults[name])
    arguments.threads = sorted(set(arguments.threads))
    for name in ("sizes", "head_dims", "threads"):
        if min(getattr(arguments, name)) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(arguments, name)}")
    if arguments.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {arguments.repeats}")
    if arguments.worker is not None:
        arguments.isa = arguments.isa[0]


def check_isas(parser, arguments):
    """``arguments.isa`` without repeats (:func:`default_isas` when not
    given); a usage error naming an ISA attnref's kernel cannot run here."""
    arguments.isa = list(dict.fromkeys(arguments.isa or default_isas()))
    supported = attnref.kernel.supported_code_paths()
    for isa in arguments.isa:
        if isa != "native" and isa not in supported:
            reason = (f"supports {', '.join(supported)}" if attnref.kernel.available()
                      else f"is unavailable: {attnref.kernel.info()['reason']}")
            parser.error(f"--isa {isa}: attnref's kernel cannot run it here (it {reason})")


def check_writable(parser, *paths):
    """A usage error for an output path (None: not asked for) whose folder
    does not exist."""
    for path in paths:
        if path is not None and not path.parent.is_dir():
            parser.error(f"cannot write {path}: {path.parent} is not a directory")


def parse_arguments(argv):
    parser = argparse.ArgumentParser(
        description="Time attnref's C kernel against torch (and its NumPy reference) per "
                    "instruction set; see the module docstring for the method.")
    add_isa_arguments(parser, {"sizes": SIZES, "head_dims": HEAD_DIMS, "repeats": REPEATS},
                      threads_for="all implementations",
                      repeats_note=f", {QUICK['repeats']} with --quick")
    parser.add_argument("--quick", action="store_true",
                        help=f"every section, small (about a minute): N={QUICK['sizes']}, "
                             f"D={QUICK['head_dims']}, both dtypes, every usable core only, "
                             f"{QUICK['repeats']} rounds, decode S={QUICK['decode_lengths']}, "
                             "no per-case memory (explicit options still win)")
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES,
                        help=f"dtypes of the sweep (default {DTYPES})")
    parser.add_argument("--scores", choices=("fast", "exact"), default="fast",
                        help="the C kernel's score mode (default fast, plain FMA sums as "
                             "torch's; exact: scores rounded once, the library's default)")
    parser.add_argument("--no-memory", dest="memory", action="store_false", default=None,
                        help="skip the per-case peak-memory measurements (--quick skips them)")
    parser.add_argument("--json", type=Path, metavar="PATH",
                        help="also write every timing, error and the machine details as JSON")
    parser.add_argument("--plot", type=Path, metavar="PATH",
                        help=f"also draw GFLOP/s against N ({PLOT_DTYPE}, most threads, each "
                             "ISA) as a PNG; needs matplotlib (extra 'plot' or 'bench')")
    arguments = parser.parse_args(argv)
    quick = arguments.quick
    arguments.dtypes = arguments.dtypes or (QUICK["dtypes"] if quick else DTYPES)
    check_isa_arguments(parser, arguments, {
        "sizes": QUICK["sizes"] if quick else SIZES,
        "head_dims": QUICK["head_dims"] if quick else HEAD_DIMS,
        "repeats": QUICK["repeats"] if quick else REPEATS,
        "threads": [probe.usable_cores()] if quick else [1, probe.usable_cores()]})
    arguments.memory = (not quick) if arguments.memory is None else arguments.memory
    if arguments.worker is not None:
        return arguments
    check_isas(parser, arguments)
    check_writable(parser, arguments.markdown, arguments.json, arguments.plot)
    if arguments.plot:
        try:
            bench.pyplot()
        except ImportError as error:
            parser.error(str(error))
    return arguments


def worker_argv(arguments):
    """The options a per-ISA process gets: the sweep, as this one resolved it."""
    argv = ["--dtypes", *arguments.dtypes, "--sizes", *map(str, arguments.sizes),
            "--head-dims", *map(str, arguments.head_dims), "--threads",
            *map(str, arguments.threads), "--repeats", str(arguments.repeats),
            "--scores", arguments.scores]
    return argv + (["--quick"] if arguments.quick else []) + (
        [] if arguments.memory else ["--no-memory"])


def main(argv=None):
    arguments = parse_arguments(argv)
    if arguments.worker is not None:
        return worker(arguments)
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["python", Path(sys.argv[0]).as_posix()] + given)
    load = machine.OtherLoad()
    payloads, statuses = {}, []
    for isa in arguments.isa:
        held = ", ".join(f"{name}={value}" for name, value in ISA_ENVIRONMENT[isa].items())
        progress(f"{isa}: its own process, {held or 'no ISA variable set'}")
        try:
            payloads[isa], status = run_isa(isa, worker_argv(arguments))
        except RuntimeError as error:
            progress(str(error))
            return 3
        statuses.append(status)
        progress(f"{isa}: done")
    other = load.share()
    notes = [] if other is None else [f"other processes used {100 * other:.0f}% of the "
                                      "machine's CPU time during the run"]
    print(report(payloads, command, notes, markdown=False))
    if arguments.markdown:
        arguments.markdown.write_text(report(payloads, command, notes, markdown=True))
    if arguments.json:
        arguments.json.write_text(json.dumps({"command": command, "isas": payloads,
                                              "notes": notes}, indent=1) + "\n")
    if arguments.plot:
        plot(payloads, arguments.plot)
    return max(statuses)


if __name__ == "__main__":
    sys.exit(main())
