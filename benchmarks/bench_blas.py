"""The decoder's matrix products on each library: where SmolLM2's prompt time goes.

attnref's decoder computes its layers' products with NumPy (its OpenBLAS),
transformers with torch (MKL). This times SmolLM2-135M's products alone, at
``--tokens`` rows (float32, weights stored ``(N, K)`` as both models keep
them, random values):

- ``q|k|v`` (K 576, N 960), ``o`` (576 x 576), ``gate|up`` (576 x 3,072),
  ``down`` (1,536 x 576): the four of a layer, fused as attnref fuses them
  (transformers computes q, k, v and gate, up apart: the same multiply-adds);
- ``lm head`` (576 x 49,152): the logits of every position;
- ``layer``: the four of a layer together (their multiply-adds over the sum
  of their times).

Three contenders, each in a fresh process of its own (a library's worker
threads keep spinning after a product and would slow the next contender):

- ``attnref``: :func:`attnref.nn.products.matmul`, what ``attnref.nn.Linear``
  runs (one OpenBLAS call per attnref thread, or OpenBLAS's own threads
  below its size rule);
- ``openblas``: plain ``np.matmul`` on OpenBLAS's own threads;
- ``torch``: ``torch.nn.functional.linear`` (skipped when torch is absent).

Each process times every shape ``--repeats`` times (median); the processes
run in ``--rounds`` rounds, the contenders alternating, and the table gives
the median over rounds of GFLOP/s (2 M N K per product). ``--isa`` holds
every side to one instruction set (:data:`machine.ISA_ENVIRONMENT`), and
``--threads`` sets attnref's, OpenBLAS's and torch's thread counts. Progress
goes to stderr, the table to stdout.

The "products alone" rows of benchmarks/RESULTS.md come from::

    python benchmarks/bench_blas.py --isa avx512
    python benchmarks/bench_blas.py --isa avx2
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402  (benchmarks/machine.py, beside this script)
from bench_decoder import parse_in_clean_environment, positive_int  # noqa: E402
import attnref  # noqa: E402  (machine.py put attnref on the path)
from attnref.nn.products import matmul  # noqa: E402
from attnref.probe import usable_cores  # noqa: E402

#: SmolLM2-135M's products: name -> (K, N)
SHAPES = {"q|k|v": (576, 960), "o": (576, 576), "gate|up": (576, 3072), "down": (1536, 576),
          "lm head": (576, 49152)}
CONTENDERS = ("attnref", "openblas", "torch")
LAYER = ("q|k|v", "o", "gate|up", "down")   # one decoder layer's products


def multiply_adds(rows):
    """{product: multiply-adds} at ``rows`` rows, and "layer", the sum of :data:`LAYER`'s."""
    counts = {name: rows * K * N for name, (K, N) in SHAPES.items()}
    counts["layer"] = sum(counts[name] for name in LAYER)
    return counts


def say(message):
    print(f"bench_blas: {message}", file=sys.stderr, flush=True)


def products(contender, rows, threads):
    """{shape name: a callable computing that product} for ``contender``."""
    rng = np.random.default_rng(0)
    operands = {name: (rng.standard_normal((rows, K), dtype=np.float32),
                       rng.standard_normal((N, K), dtype=np.float32))
                for name, (K, N) in SHAPES.items()}
    if contender == "torch":
        import torch
        torch.set_num_threads(threads)
        operands = {name: (torch.from_numpy(x), torch.from_numpy(weight))
                    for name, (x, weight) in operands.items()}
        return {name: (lambda x=x, weight=weight: torch.nn.functional.linear(x, weight))
                for name, (x, weight) in operands.items()}
    attnref.kernel.set_num_threads(threads)
    multiply = matmul if contender == "attnref" else np.matmul
    return {name: (lambda x=x, weight=weight: multiply(x, weight.T))
            for name, (x, weight) in operands.items()}


def worker(contender, rows, threads, repeats, isa):
    """Median seconds per shape, and what did not obey ``isa``
    (:func:`machine.isa_disobeyed`), as JSON on stdout."""
    seconds = {}
    for name, product in products(contender, rows, threads).items():
        product()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            product()
            times.append(time.perf_counter() - start)
        seconds[name] = statistics.median(times)
    torch = sys.modules.get("torch")    # imported by products() for torch only
    print(json.dumps({"seconds": seconds,
                      "notes": machine.isa_disobeyed(isa, attnref, torch)}))


def torch_installed():
    import importlib.util
    return importlib.util.find_spec("torch") is not None


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=__doc__[__doc__.index("Three contenders"):],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=positive_int, nargs="+", default=[128, 1024],
                        help="rows of each product, a prompt's tokens (default: 128 1024)")
    parser.add_argument("--rounds", type=positive_int, default=3,
                        help="fresh processes per contender (median; default 3)")
    parser.add_argument("--repeats", type=positive_int, default=7,
                        help="timed products per shape in each process (median; default 7)")
    parser.add_argument("--threads", type=positive_int, default=usable_cores(),
                        help="threads of every contender (default: every usable core, "
                             "%(default)s here)")
    parser.add_argument("--isa", choices=tuple(machine.ISA_ENVIRONMENT), default="native",
                        help="hold every contender to one instruction set (default native)")
    parser.add_argument("--worker", nargs=2, metavar=("CONTENDER", "ROWS"),
                        help=argparse.SUPPRESS)
    arguments = parse_in_clean_environment(parser, argv, __file__)
    if arguments.worker:
        contender, rows = arguments.worker
        worker(contender, int(rows), arguments.threads, arguments.repeats, arguments.isa)
        return 0
    contenders = [name for name in CONTENDERS if name != "torch" or torch_installed()]
    print(f"{machine.cpu_model()}; {arguments.threads} threads; held to {arguments.isa}; "
          f"numpy {np.__version__} ({machine.blas_library()}); attnref {attnref.__version__} "
          f"({machine.source_revision(attnref.__file__)})")
    for rows in arguments.tokens:
        rates = {name: {shape: [] for shape in multiply_adds(rows)} for name in contenders}
        for round_ in range(arguments.rounds):
            for name in contenders:
                say(f"{rows} rows, round {round_ + 1}/{arguments.rounds}: {name}")
                finished = subprocess.run(
                    [sys.executable, __file__, "--worker", name, str(rows), "--threads",
                     str(arguments.threads), "--repeats", str(arguments.repeats),
                     "--isa", arguments.isa], stdout=subprocess.PIPE, text=True, check=True)
                report = json.loads(finished.stdout)
                seconds = report["seconds"]
                for note in report["notes"]:
                    say(f"NOT HELD to {arguments.isa}: {note}")
                for shape, flops in multiply_adds(rows).items():
                    rates[name][shape].append(2 * flops / sum(
                        seconds[part] for part in LAYER) / 1e9 if shape == "layer"
                        else 2 * flops / seconds[shape] / 1e9)
        print(f"\n{rows} rows: GFLOP/s, medians of {arguments.rounds} processes x "
              f"{arguments.repeats} products")
        print(f"{'product':<10}" + "".join(f"{name:>10}" for name in contenders)
              + ("  torch/attnref" if "torch" in contenders else ""))
        for shape in multiply_adds(rows):
            medians = {name: statistics.median(rates[name][shape]) for name in contenders}
            line = f"{shape:<10}" + "".join(f"{medians[name]:10.1f}" for name in contenders)
            if "torch" in contenders:
                line += f"  {medians['torch'] / medians['attnref']:13.2f}x"
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
