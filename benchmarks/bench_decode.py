"""Decoding throughput: attnref's C kernel beside torch, on one instruction set.

One new token against S cached keys: L = 1, Hq = 32, Hkv = 8 (GQA 4:1),
D = 128, B = 1, float32 and float64. Before each timed call EVICT_BYTES are
read, so K and V come from memory (as in a model whose layers' caches do not
fit in L3); the two libraries are timed in turn, round after round, and the
medians compared. GB/s = 2 B Hkv S D itemsize (the K and V bytes) / median.
The read bandwidth they are measured against is timed in the same rounds:
the probe's streaming read (benchmarks/probe.py) of as many bytes, evicted
the same way, on as many threads; on a shared machine it moves with the
load, so a figure taken once, apart from the calls, would not match them.

    python benchmarks/bench_decode.py --isa avx2 [--threads 1 2] [--lengths 4096 16384]

``--isa avx2`` holds both sides to AVX2: ATTNREF_KERNEL_PATH=avx2 and, for
torch, ATEN_CPU_CAPABILITY=avx2 and MKL_ENABLE_INSTRUCTIONS=AVX2, set before
either is imported; ``--isa avx512`` (the default) sets them to AVX-512.
OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are removed from the environment.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ISA_ENVIRONMENT = {
    "avx2": {"ATTNREF_KERNEL_PATH": "avx2", "ATEN_CPU_CAPABILITY": "avx2",
             "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "avx512": {"ATTNREF_KERNEL_PATH": "avx512", "ATEN_CPU_CAPABILITY": "avx512",
               "MKL_ENABLE_INSTRUCTIONS": "AVX512"},
}
Q_HEADS, KV_HEADS, D = 32, 8, 128
EVICT_BYTES = 2**30          # over 3x this Xeon's 300 MiB L3
LEAD_IN_SECONDS = 0.05       # untimed calls before each timed one: threads awake
SEED = 15


def arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--isa", choices=sorted(ISA_ENVIRONMENT), default="avx512")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--repeats", type=int, default=15)
    return parser.parse_args(argv)


def progress(message):
    print(message, file=sys.stderr, flush=True)


def main(argv=None):
    args = arguments(argv)
    os.environ.update(ISA_ENVIRONMENT[args.isa])
    for name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        os.environ.pop(name, None)
    import numpy as np
    import torch
    import attnref
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import probe

    progress(f"attnref path {attnref.kernel.get_code_path()}, torch CPU capability "
             f"{torch.backends.cpu.get_cpu_capability()}")
    probes = probe.load()
    if probes.isa is None:
        progress(f"the read probe cannot run: {probes.reason}")
        return 1
    evict = np.ones(EVICT_BYTES // 4, np.float32)
    print(f"| dtype | S | threads | read GB/s | attnref GB/s | % of read | torch GB/s "
          f"| % of read | attnref / torch |")
    print("|---|---|---|---|---|---|---|---|---|")
    for dtype in (np.float32, np.float64):
        for S in args.lengths:
            rng = np.random.default_rng([SEED, S])
            query = rng.standard_normal((1, Q_HEADS, 1, D)).astype(dtype)
            key, value = (rng.standard_normal((1, KV_HEADS, S, D)).astype(dtype)
                          for _ in range(2))
            tensors = [torch.from_numpy(array) for array in (query, key, value)]
            calls = {
                "attnref": lambda: attnref.scaled_dot_product_attention(
                    query, key, value, enable_gqa=True, backend="c"),
                "torch": lambda: torch.nn.functional.scaled_dot_product_attention(
                    *tensors, enable_gqa=True),
            }
            difference = np.abs(calls["attnref"]() - calls["torch"]().numpy()).max()
            progress(f"{np.dtype(dtype).name} S={S}: attnref and torch differ by "
                     f"{difference:.2e} at most")
            kv_bytes = 2 * KV_HEADS * S * D * np.dtype(dtype).itemsize
            data = np.ones(kv_bytes // 4, np.float32)
            pointer = probes.ffi.cast("const float *", probes.ffi.from_buffer(data))
            for threads in args.threads:
                part = data.size // threads // probe.READ_ALIGN * probe.READ_ALIGN
                work = [lambda start=index * part: probes.read(pointer + start, part)
                        for index in range(threads)]
                calls["read"] = lambda: probe.run_threads(work)
                attnref.kernel.set_num_threads(threads)
                torch.set_num_threads(threads)
                times = {name: [] for name in calls}
                for _ in range(args.repeats):
                    for name, call in calls.items():
                        start = time.perf_counter()
                        while time.perf_counter() - start < LEAD_IN_SECONDS:
                            call()
                        evict.sum()
                        start = time.perf_counter()
                        result = call()
                        # the read's own span: from its threads' start to their end
                        times[name].append(result if name == "read"
                                           else time.perf_counter() - start)
                rate = {name: kv_bytes / statistics.median(seconds) / 1e9
                        for name, seconds in times.items()}
                rate["read"] = threads * part * 4 / statistics.median(times["read"]) / 1e9
                print(f"| {np.dtype(dtype).name} | {S} | {threads} | {rate['read']:.1f} "
                      f"| {rate['attnref']:.1f} | {100 * rate['attnref'] / rate['read']:.0f}% "
                      f"| {rate['torch']:.1f} | {100 * rate['torch'] / rate['read']:.0f}% "
                      f"| {rate['attnref'] / rate['torch']:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
