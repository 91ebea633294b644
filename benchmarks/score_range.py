"""Where the equivalence rule stops holding: draws beyond it, by score size.

For each target ``|score|`` it draws random calls (2 batch entries, L < 40,
S < 80, E in {1, 16, 64, 128, 256}, Ev = 8, half of them with a float mask),
with the scale set so that the largest ``|scale q.k|`` is the target, and
counts the draws whose C kernel output is beyond the rule of
:mod:`attnref.testing.tolerance`. Beside it, the same count for the best any
implementation that rounds scores to the dtype can do: exact scores (in the
wide reference dtype) rounded once to the dtype, then everything else exact.
When that one fails too, the rule, not the kernel, is what breaks.

``attnref.testing.strategies.SCORE_RANGE`` quotes its output::

    python benchmarks/score_range.py --dtype float64
    python benchmarks/score_range.py --dtype float32
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from attnref import kernel, scaled_dot_product_attention as sdpa
from attnref.testing.tolerance import max_abs_error, reference_dtype, reference_errors


def rounded_scores_error(query, key, value, scale, bias, dtype, reference):
    """Error of exact scores rounded once to ``dtype``, everything else exact."""
    wide = reference_dtype(dtype)
    scores = (query.astype(wide) @ np.swapaxes(key.astype(wide), -1, -2)) * wide.type(scale)
    scores = scores.astype(dtype).astype(wide) + (0 if bias is None else bias.astype(wide))
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return max_abs_error(weights @ value.astype(wide), reference)


def sweep(dtype, targets, draws, seed):
    """``{target: (draws, beyond the rule, rounded scores beyond it, worst error/bound)}``."""
    rng = np.random.default_rng(seed)
    wide = reference_dtype(dtype)
    counts = {target: [0, 0, 0, 0.0] for target in targets}
    for draw in range(draws):
        if draw % 100 == 0:
            print(f"draw {draw}/{draws}", file=sys.stderr)
        E = int(rng.choice([1, 16, 64, 128, 256]))
        L, S = int(rng.integers(1, 40)), int(rng.integers(1, 80))
        target = float(rng.choice(targets))
        query, key = rng.standard_normal((2, L, E)), rng.standard_normal((2, S, E))
        query, key = query.astype(dtype), key.astype(dtype)
        value = rng.standard_normal((2, S, 8)).astype(dtype)
        scale = target / max(1.0, float(np.abs(query @ np.swapaxes(key, -1, -2)).max()))
        bias = rng.standard_normal((L, S)).astype(dtype) if rng.random() < 0.5 else None
        reference = sdpa(query.astype(wide), key.astype(wide), value.astype(wide),
                         scale=scale, attn_mask=None if bias is None else bias.astype(wide),
                         backend="numpy")
        baseline = sdpa(query, key, value, scale=scale, attn_mask=bias, backend="numpy")
        candidate = sdpa(query, key, value, scale=scale, attn_mask=bias, backend="c")
        error, bound = reference_errors(candidate, reference, baseline, value)
        rounded = rounded_scores_error(query, key, value, scale, bias, dtype, reference)
        row = counts[target]
        row[0] += 1
        row[1] += error > bound
        row[2] += rounded > bound
        row[3] = max(row[3], error / bound)
    return counts


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    parser.add_argument("--targets", default="16,32,64,128,256,1000,5000",
                        help="comma-separated |score| targets")
    parser.add_argument("--draws", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--path", choices=kernel.CODE_PATHS, default="auto")
    arguments = parser.parse_args()
    kernel.set_code_path(arguments.path)
    targets = [float(t) for t in arguments.targets.split(",")]
    counts = sweep(np.dtype(arguments.dtype), targets, arguments.draws, arguments.seed)
    print(f"{arguments.dtype}, {kernel.get_code_path()} path")
    for target, (n, beyond, rounded, worst) in counts.items():
        print(f"|score| ~ {target:6g}: {beyond}/{n} beyond the rule (exact scores rounded "
              f"once: {rounded}/{n}), worst error/bound {worst:.2f}")


if __name__ == "__main__":
    main()
