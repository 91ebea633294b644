"""Benchmark the attention backward per instruction set: attnref's C
backward against torch autograd through ``F.scaled_dot_product_attention``
on the CPU, the backward alone and the forward + backward of a training
step, side by side.

Usage, from the repository root::

    python benchmarks/bench_backward.py                  # the RESULTS.md sweep
    python benchmarks/bench_backward.py --sizes 512 --repeats 3 --isa avx512
    python benchmarks/bench_backward.py --markdown out.md

Cases: float32, B = 1, H = 8, N = L = S in ``--sizes``, D = E = Ev in
``--head-dims``, causal and not, at each thread count of ``--threads``.
Each instruction set runs in its own process with both sides held to it,
by ``bench_sdpa.ISA_ENVIRONMENT`` (attnref's ``ATTNREF_KERNEL_PATH``,
torch's ``ATEN_CPU_CAPABILITY``, MKL's and oneDNN's limits; the same helpers
as ``bench_sdpa.py``).

What is timed, per case, in interleaved rounds (:func:`attnref.bench.time_round_robin`:
each call after a lead-in, medians over ``--repeats`` rounds); one-thread
rows in CPU seconds (``time.process_time`` as that function's clock: on a
machine shared with other jobs the wall clock of one thread mostly measures
them), rows of more threads in wall-clock seconds:

- ``c bwd``: :func:`attnref.scaled_dot_product_attention_backward` on the C
  backend, given the forward's output and lse (as a training step saves
  them: FlashAttention-2's recomputation, ``csrc/backward_tiled_impl.h``);
- ``torch bwd``: ``torch.autograd.grad`` of a saved SDPA output
  (``retain_graph``), the graph torch's CPU dispatch built (its ``grad_fn``
  is recorded: the flash path is ``ScaledDotProductFlashAttentionForCpuBackward0``);
- ``c fwd+bwd``: the C forward with ``return_lse=True`` and ``scores="fast"``
  (plain FMA sums, as torch's), then ``c bwd``;
- ``torch fwd+bwd``: SDPA on tensors that require grad, then the grad.

Before timing, at the smallest N of each (D, causal), the C gradients are
checked against attnref's NumPy backward under the gradient rule of
:mod:`attnref.testing.backward` (2 x the float32 reference's error against
the float64 one, plus the floor): a wrong kernel is not timed and the
script exits 1. Ratios are torch / c (above 1: attnref faster).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np

import machine
# this directory's forward benchmark: the ISA settings and the per-ISA process helpers
from bench_sdpa import (add_isa_arguments, check_isa_arguments, check_isas, check_writable,
                        run_isa)

import attnref  # bench_sdpa made a checkout importable
from attnref import bench, probe
from attnref._optional import import_optional

SIZES = (512, 1024, 2048)
HEAD_DIMS = (64, 128)
REPEATS = 5
H = 8
CALLS = ("c bwd", "torch bwd", "c fwd+bwd", "torch fwd+bwd")

STARTED = time.perf_counter()


def progress(message):
    print(f"bench_backward [{time.perf_counter() - STARTED:5.0f} s]: {message}",
          file=sys.stderr, flush=True)


def check(query, key, value, grad_out, causal):
    """``{gradient: (error, bound)}`` of the C backward under the gradient
    rule (module docstring)."""
    from attnref.testing.backward import gradient_errors, gradient_magnitudes
    inputs = {"query": query, "key": key, "value": value, "attn_mask": None,
              "is_causal": causal, "scale": None, "enable_gqa": False}
    magnitudes = gradient_magnitudes(inputs, grad_out, "torch", np.float64)

    def run(**options):
        return attnref.scaled_dot_product_attention_backward(
            grad_out, query, key, value, is_causal=causal, **options)
    candidate, baseline, wide = run(backend="c"), run(backend="numpy"), \
        run(backend="numpy", precision="float64")
    return {name: gradient_errors(c, w, b, magnitudes[name])
            for name, c, b, w in zip(("dq", "dk", "dv"), candidate, baseline, wide)}


def case_calls(torch, query, key, value, grad_out, causal):
    """The four timed calls of a case (module docstring), and torch's grad_fn."""
    F = torch.nn.functional
    saved = attnref.scaled_dot_product_attention(query, key, value, is_causal=causal,
                                                 return_lse=True, backend="c", scores="fast")
    tensors = [torch.from_numpy(array).requires_grad_() for array in (query, key, value)]
    grad = torch.from_numpy(grad_out)
    torch_out = F.scaled_dot_product_attention(*tensors, is_causal=causal)

    def c_bwd(out=saved.output, lse=saved.lse):
        return attnref.scaled_dot_product_attention_backward(
            grad_out, query, key, value, is_causal=causal, out=out, lse=lse, backend="c")

    def c_step():
        forward = attnref.scaled_dot_product_attention(
            query, key, value, is_causal=causal, return_lse=True, backend="c", scores="fast")
        return c_bwd(forward.output, forward.lse)

    def torch_step():
        return torch.autograd.grad(F.scaled_dot_product_attention(*tensors, is_causal=causal),
                                   tensors, grad)

    calls = {"c bwd": c_bwd,
             "torch bwd": lambda: torch.autograd.grad(torch_out, tensors, grad,
                                                      retain_graph=True),
             "c fwd+bwd": c_step, "torch fwd+bwd": torch_step}
    return calls, type(torch_out.grad_fn).__name__


def worker(arguments):
    """Time every case on this process's ISA; write the JSON payload.
    Returns 1 when the C backward failed its check, else 0."""
    import torch  # after the ISA's variables are set: the parent set them
    cases, wrong = [], False
    for D in arguments.head_dims:
        for causal in (False, True):
            for N in arguments.sizes:
                rng = np.random.default_rng([N, D, int(causal)])
                query, key, value, grad_out = (rng.standard_normal((1, H, N, D),
                                                                   dtype=np.float32)
                                               for _ in range(4))
                case = {"D": D, "causal": causal, "N": N, "median_ms": {}}
                if N == min(arguments.sizes):
                    progress(f"{arguments.isa}: checking D={D} causal={causal} N={N}")
                    errors = check(query, key, value, grad_out, causal)
                    case["check"] = {name: list(pair) for name, pair in errors.items()}
                    if any(error > bound for error, bound in errors.values()):
                        wrong = True
                        progress(f"{arguments.isa}: the C backward is wrong here: {errors}")
                        cases.append(case)
                        continue
                calls, case["torch_grad_fn"] = case_calls(torch, query, key, value, grad_out,
                                                          causal)
                for threads in arguments.threads:
                    progress(f"{arguments.isa}: D={D} causal={causal} N={N} threads={threads}")
                    bench.set_threads(threads)
                    clock = time.process_time if threads == 1 else time.perf_counter
                    with mock.patch.object(bench.time, "perf_counter", clock):
                        times = bench.time_round_robin(calls, arguments.repeats)
                    case["median_ms"][threads] = {name: statistics.median(ms)
                                                  for name, ms in times.items()}
                cases.append(case)
    payload = {"isa": arguments.isa, "details": machine.details(attnref, torch),
               "capability": torch.backends.cpu.get_cpu_capability(),
               "kernel_path": attnref.kernel.get_code_path(), "cases": cases}
    Path(arguments.worker).write_text(json.dumps(payload) + "\n")
    return 1 if wrong else 0


def table(payloads, threads, markdown):
    """Per case: each ISA's medians and torch / c ratios at ``threads``."""
    header = ["D", "causal", "N"]
    for isa in payloads:
        header += [f"{isa} c bwd ms", f"{isa} torch bwd ms", f"{isa} bwd torch/c",
                   f"{isa} c fwd+bwd ms", f"{isa} torch fwd+bwd ms", f"{isa} fwd+bwd torch/c"]
    first = next(iter(payloads.values()))["cases"]
    rows = []
    for index, case in enumerate(first):
        row = [str(case["D"]), "yes" if case["causal"] else "no", str(case["N"])]
        for payload in payloads.values():
            medians = payload["cases"][index]["median_ms"].get(threads)
            if medians is None:
                row += ["wrong"] + [""] * 5
                continue
            for step in ("bwd", "fwd+bwd"):
                c, torch = medians[f"c {step}"], medians[f"torch {step}"]
                row += [f"{c:.1f}", f"{torch:.1f}", f"{torch / c:.2f}x"]
        rows.append(row)
    return bench.render(header, rows, markdown)


def report(payloads, command, threads_list, notes, markdown):
    first = next(iter(payloads.values()))
    details = first["details"]
    lines = [f"command: {command}",
             f"cpu: {details['cpu']}; {details['cores']}; torch {details['torch']}; "
             f"attnref {details['attnref']} ({details['revision']})"]
    for isa, payload in payloads.items():
        grad_fns = sorted({case.get("torch_grad_fn", "-") for case in payload["cases"]})
        lines.append(f"{isa}: attnref kernel path {payload['kernel_path']}, torch CPU capability "
                     f"{payload['capability']}, torch grad_fn {', '.join(grad_fns)}")
    lines += notes
    for threads in threads_list:
        lines += ["", f"{'### ' if markdown else '== '}float32, B=1, H={H}, {threads} "
                      f"thread{'s' if threads > 1 else ''} "
                      f"({'CPU time' if threads == 1 else 'wall clock'}): medians (ms) and torch/c"
                      f"{'' if markdown else ' =='}", "",
                  table(payloads, threads, markdown)]
    return "\n".join(lines) + "\n"


def parse_arguments(argv):
    parser = argparse.ArgumentParser(
        description="Time attnref's C backward against torch autograd through SDPA on the "
                    "CPU, per instruction set; see the module docstring for the method.")
    add_isa_arguments(parser, {"sizes": SIZES, "head_dims": HEAD_DIMS, "repeats": REPEATS},
                      threads_for="both sides")
    arguments = parser.parse_args(argv)
    check_isa_arguments(parser, arguments, {"sizes": list(SIZES), "head_dims": list(HEAD_DIMS),
                                            "repeats": REPEATS,
                                            "threads": [1, probe.usable_cores()]})
    if arguments.worker is not None:
        return arguments
    if not attnref.kernel.available():
        parser.error(f"attnref's C kernel is unavailable: {attnref.kernel.info()['reason']}")
    try:
        import_optional("torch", "bench_backward.py")   # the parent only checks it is there
    except ImportError as error:
        parser.error(str(error))
    check_isas(parser, arguments)
    check_writable(parser, arguments.markdown)
    return arguments


def main(argv=None):
    arguments = parse_arguments(argv)
    if arguments.worker is not None:
        return worker(arguments)
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["python", Path(sys.argv[0]).as_posix()] + given)
    worker_argv = ["--sizes", *map(str, arguments.sizes), "--head-dims",
                   *map(str, arguments.head_dims), "--threads", *map(str, arguments.threads),
                   "--repeats", str(arguments.repeats)]
    load = machine.OtherLoad()
    payloads, statuses = {}, []
    for isa in arguments.isa:
        progress(f"{isa}: its own process")
        try:
            payloads[isa], status = run_isa(isa, worker_argv, __file__)
        except RuntimeError as error:
            progress(str(error))
            return 3
        statuses.append(status)
    other = load.share()
    notes = [] if other is None else [f"other processes used {100 * other:.0f}% of the "
                                      "machine's CPU time during the run"]
    print(report(payloads, command, arguments.threads, notes, markdown=False))
    if arguments.markdown:
        arguments.markdown.write_text(report(payloads, command, arguments.threads, notes,
                                             markdown=True))
    return max(statuses)


if __name__ == "__main__":
    sys.exit(main())
