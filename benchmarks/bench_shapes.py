"""attnref's C kernel against torch's CPU attention on shapes that are not the
sweep's: batches, ragged lengths, head dims that are not 64 or 128, grouped
queries, cross-attention, tiny heads.

``bench_sdpa.py`` times square calls, B = 1, H = 8, N a multiple of 64,
D = 64 or 128. Users call other shapes, and a kernel tuned on those can
lose elsewhere (a last key tile that is mostly empty at N = 197, a head
dim whose last vector is narrow). This script times the two side by side on
:data:`SHAPES`: each round calls each once in turn, after a lead-in that
takes the other's spinning threads off the cores (``attnref.bench``), and
the round's ratio torch / C is one sample. It prints per shape the median
times, the median ratio (above 1: attnref is faster) and the quartiles of
the per-round ratios, then checks each output against attnref's float64
reference under the equivalence rule where that reference fits in memory.

Usage::

    python benchmarks/bench_shapes.py --isa avx2 --threads 2 --rounds 15

``--isa`` holds both sides to an instruction set as bench_sdpa.py does
(the script re-executes itself with the settings of
``machine.ISA_ENVIRONMENT``); float32, ``scores="fast"`` (what
bench_sdpa.py times). Progress goes to stderr, the markdown table to
stdout. Needs torch.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402  (benchmarks/, beside this script)
from ab_kernel import progress, ratio_quartiles  # noqa: E402
from bench_decoder import isa_held, parse_in_clean_environment, positive_int  # noqa: E402
from attnref.probe import usable_cores  # noqa: E402  (machine.py put attnref on the path)

#: (what it stands for, B, Hq, Hkv, L, S, D, causal)
SHAPES = (
    ("ViT-B/16 encoder", 2, 12, 12, 197, 197, 64, False),
    ("ragged length, D = 80", 1, 16, 16, 1000, 1000, 80, False),
    ("batch of 4, D = 96, causal", 4, 8, 8, 512, 512, 96, True),
    ("32 heads, short causal", 1, 32, 32, 256, 256, 128, True),
    ("GQA 4:1 prompt", 1, 32, 8, 1024, 1024, 128, True),
    ("batch of 8 short rows", 8, 8, 8, 128, 128, 64, False),
    ("cross-attention, L != S", 1, 8, 8, 300, 4000, 64, False),
    ("long causal", 1, 8, 8, 4096, 4096, 64, True),
    ("tiny heads, D = 32", 16, 8, 8, 64, 64, 32, False),
    ("odd length, D = 112", 1, 8, 8, 777, 777, 112, False),
)
#: the largest B * Hq * L * S whose float64 reference is computed (512 MiB of scores)
CHECK_MAX_SCORES = 1 << 26


def inputs(shape, rng):
    _, B, Hq, Hkv, L, S, D, _ = shape
    return (rng.standard_normal((B, Hq, L, D), dtype=np.float32),
            rng.standard_normal((B, Hkv, S, D), dtype=np.float32),
            rng.standard_normal((B, Hkv, S, D), dtype=np.float32))


def measure(shape, rounds, rng, torch):
    """``(times, ratios, errors)`` of one shape: ``{name: [ms]}``, the
    per-round torch / C ratios, and ``{name: (error, bound)}`` or None."""
    import attnref
    from attnref import bench
    causal, gqa = shape[7], shape[2] != shape[3]
    query, key, value = inputs(shape, rng)
    tensors = [torch.from_numpy(array) for array in (query, key, value)]
    calls = {
        "c": lambda: attnref.scaled_dot_product_attention(
            query, key, value, is_causal=causal, enable_gqa=gqa, backend="c", scores="fast"),
        "torch": lambda: torch.nn.functional.scaled_dot_product_attention(
            *tensors, is_causal=causal, enable_gqa=gqa).numpy(),
    }
    B, Hq, L, S = shape[1], shape[2], shape[4], shape[5]
    errors = None
    if B * Hq * L * S <= CHECK_MAX_SCORES:
        errors = bench.errors_against_reference((query, key, value), calls, is_causal=causal,
                                                enable_gqa=gqa)
    times = bench.time_round_robin(calls, rounds)
    ratios = [slow / fast for fast, slow in zip(times["c"], times["torch"])]
    return times, ratios, errors


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="attnref's C kernel against torch on shapes that are not the sweep's.")
    parser.add_argument("--isa", choices=tuple(machine.ISA_ENVIRONMENT), default="native",
                        help="hold both sides to this instruction set (default: each picks)")
    parser.add_argument("--threads", type=positive_int, default=usable_cores(),
                        help="threads for both (default: every usable core)")
    parser.add_argument("--rounds", type=positive_int, default=15,
                        help="timed rounds per shape (default 15)")
    arguments = parse_in_clean_environment(parser, argv, __file__)
    import attnref
    try:
        import torch
    except ImportError:
        parser.exit(2, f"{parser.prog}: error: torch is not installed (pip install torch)\n")
    torch.set_num_threads(arguments.threads)
    attnref.kernel.set_num_threads(arguments.threads)
    details = machine.details(attnref, torch)
    print(f"{details['cpu']}; attnref kernel {details['attnref kernel']}; "
          f"revision {details['revision']}; torch {torch.__version__}; "
          f"{arguments.threads} thread(s); held to {isa_held(arguments.isa, attnref, torch)}; "
          f"float32, scores=fast, {arguments.rounds} rounds\n")
    print("| shape | B | Hq/Hkv | L | S | D | causal | c ms | torch ms | torch/c | "
          "quartiles | c error / bound | torch error / bound |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    wrong = False
    for number, shape in enumerate(SHAPES, 1):
        name, B, Hq, Hkv, L, S, D, causal = shape
        progress(f"[{number}/{len(SHAPES)}] {name}")
        times, ratios, errors = measure(shape, arguments.rounds, rng, torch)
        low, high = ratio_quartiles(ratios)
        checked = {who: "not checked (too large)" if errors is None
                   else f"{errors[who][0]:.2g} / {errors[who][1]:.2g}" for who in ("c", "torch")}
        wrong |= errors is not None and errors["c"][0] > errors["c"][1]
        print(f"| {name} | {B} | {Hq}/{Hkv} | {L} | {S} | {D} | {'yes' if causal else 'no'} | "
              f"{statistics.median(times['c']):.2f} | {statistics.median(times['torch']):.2f} | "
              f"{statistics.median(ratios):.2f}x | {low:.2f}-{high:.2f} | {checked['c']} | "
              f"{checked['torch']} |", flush=True)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
