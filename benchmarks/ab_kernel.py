"""Two builds of attnref's C kernel in one process, call for call: what a
kernel change buys, on a machine whose speed drifts.

Usage, from anywhere::

    python benchmarks/ab_kernel.py BASE NEW --sizes 2048 8192 --head-dims 64 128 \\
        --causal both --threads 1 2 --rounds 15

BASE and NEW are attnref checkouts (each with ``attnref/`` and ``csrc/``)
whose kernels are built (``python setup.py build_ext --inplace``; a kernel
built from other sources than its checkout's ``csrc/`` is refused). Each
package is copied, with its ``csrc/``, into a temporary folder under a name
of its own (``attnref_base``, ``attnref_new``), so that both load in this
process. Each round of a case calls both kernels once on the same inputs,
in alternating order, and the round's ratio base/new is one sample: this
project's shared hosts ran the same call up to 1.6x slower from one minute
to the next, and a round puts both sides in the same minute. Times of
one-thread cases are CPU time (``time.process_time``), others wall clock;
one untimed call of each first.

Prints per case (query, key and value ``(1, --heads, N, D)``, L = S = N,
E = Ev = D): whether the two outputs are bit-identical, the fastest and the
median time of each, and the median and quartiles of the per-round
ratios (above 1: NEW is faster). Progress on stderr. Both kernels run on
``--path`` (default: the fastest this CPU runs) with ``--scores`` (default
``fast``, what bench_sdpa.py times).
"""
from __future__ import annotations

import argparse
import importlib
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decoder import positive_int  # noqa: E402  (benchmarks/, beside this script)

NAMES = ("base", "new")


def progress(message):
    print(message, file=sys.stderr, flush=True)


def ratio_quartiles(ratios):
    """The first and third quartiles of per-round ratios (the one ratio
    twice when there is one round)."""
    low, _, high = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    return low, high


def checkout(text):
    root = Path(text).resolve()
    for part in ("attnref/__init__.py", "csrc/attnref.h"):
        if not (root / part).is_file():
            raise argparse.ArgumentTypeError(f"{text} is not an attnref checkout (no {part})")
    return root


def parse_arguments(argv):
    parser = argparse.ArgumentParser(
        description="Two builds of attnref's C kernel in one process, call for call.")
    parser.error = lambda message: parser.exit(  # one line, not argparse's usage block
        2, f"{parser.prog}: error: {message} (see '{parser.prog} --help')\n")
    parser.add_argument("base", type=checkout, help="the checkout to compare against")
    parser.add_argument("new", type=checkout, help="the checkout with the change")
    parser.add_argument("--sizes", type=positive_int, nargs="+", default=[2048],
                        help="N = L = S (default 2048)")
    parser.add_argument("--head-dims", type=positive_int, nargs="+", default=[64],
                        help="D = E = Ev (default 64)")
    parser.add_argument("--heads", type=positive_int, default=8, help="H (default 8)")
    parser.add_argument("--causal", choices=("no", "yes", "both"), default="no",
                        help="causal cases, non-causal ones or both (default no)")
    parser.add_argument("--threads", type=positive_int, nargs="+", default=[1],
                        help="kernel threads (default 1)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--scores", choices=("fast", "exact"), default="fast")
    parser.add_argument("--path", default="auto",
                        help="the kernel's code path for both (attnref info lists them)")
    parser.add_argument("--rounds", type=positive_int, default=15,
                        help="timed rounds per case (default 15)")
    arguments = parser.parse_args(argv)
    if arguments.base == arguments.new:
        parser.error("base and new are the same checkout")
    return arguments


def load(root, name, folder):
    """attnref of the checkout ``root`` imported as package ``attnref_<name>``
    from a copy in ``folder``; raises SystemExit when its kernel is not usable."""
    home = folder / name
    shutil.copytree(root / "attnref", home / f"attnref_{name}",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(root / "csrc", home / "csrc", ignore=shutil.ignore_patterns("__pycache__"))
    sys.path.insert(0, str(home))
    package = importlib.import_module(f"attnref_{name}")
    if not package.kernel.available():
        sys.exit(f"ab_kernel: the kernel of {root} cannot run: {package.kernel.info()['reason']}")
    return package


def cases(arguments):
    causal = {"no": (False,), "yes": (True,), "both": (False, True)}[arguments.causal]
    return [(N, D, is_causal, threads) for threads in arguments.threads
            for D in arguments.head_dims for is_causal in causal for N in arguments.sizes]


def run_case(packages, case, arguments):
    """``(bit-identical, {name: times}, per-round ratios base/new)`` of one case."""
    N, D, is_causal, threads = case
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, arguments.heads, N, D)).astype(arguments.dtype)
               for _ in range(3))
    clock = time.process_time if threads == 1 else time.perf_counter
    outputs, times = {}, {name: [] for name in NAMES}

    def call(name):
        start = clock()
        outputs[name] = packages[name].scaled_dot_product_attention(
            q, k, v, is_causal=is_causal, backend="c", scores=arguments.scores)
        return clock() - start

    for package in packages.values():
        package.kernel.set_num_threads(threads)
    for name in NAMES:
        call(name)
    same = np.array_equal(outputs["base"], outputs["new"], equal_nan=True)
    for index in range(arguments.rounds):
        for name in NAMES if index % 2 == 0 else NAMES[::-1]:
            times[name].append(call(name))
    ratios = [old / new for old, new in zip(times["base"], times["new"])]
    return same, times, ratios


def main(argv=None):
    arguments = parse_arguments(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="ab_kernel-") as folder:
        packages = {name: load(root, name, Path(folder))
                    for name, root in zip(NAMES, (arguments.base, arguments.new))}
        for package in packages.values():
            try:
                package.kernel.set_code_path(arguments.path)
            except ValueError as error:
                print(f"ab_kernel: error: --path: {error}", file=sys.stderr)
                sys.exit(2)
        paths = {name: package.kernel.info()["path"] for name, package in packages.items()}
        print(f"base: {arguments.base} ({paths['base']})\nnew:  {arguments.new} "
              f"({paths['new']})\n{arguments.dtype}, scores={arguments.scores}, H = "
              f"{arguments.heads}, {arguments.rounds} rounds; times in ms (1 thread: CPU "
              f"time); ratio = base / new per round (above 1: new is faster)\n")
        print("| N | D | causal | threads | same bits | base min | base median | new min "
              "| new median | ratio median | ratio quartiles |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for case in cases(arguments):
            N, D, is_causal, threads = case
            progress(f"ab_kernel: N={N} D={D} causal={is_causal} threads={threads}")
            same, times, ratios = run_case(packages, case, arguments)
            low, high = ratio_quartiles(ratios)
            print(f"| {N} | {D} | {'yes' if is_causal else 'no'} | {threads} | "
                  f"{'yes' if same else 'NO'} | "
                  + " | ".join(f"{min(times[name]) * 1e3:.1f} | "
                               f"{statistics.median(times[name]) * 1e3:.1f}" for name in NAMES)
                  + f" | {statistics.median(ratios):.3f} | {low:.3f}-{high:.3f} |", flush=True)


if __name__ == "__main__":
    main()
