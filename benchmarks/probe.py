"""Print this machine's limits (:mod:`attnref.probe`): the peak FMA rate of an
instruction set, float32 and float64, and the streaming read bandwidth, on
one thread and on every usable core.

    python benchmarks/probe.py                # the widest ISA this CPU runs
    python benchmarks/probe.py --isa avx2     # AVX2 + FMA on an AVX-512 CPU too
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    from attnref import probe
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # a checkout, not installed
    from attnref import probe


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--isa", choices=("native",) + probe.ISAS, default="native",
                        help="instruction set whose FMA peak is measured (default native: "
                             "the widest this CPU runs)")
    arguments = parser.parse_args(argv)
    limits = probe.measure(arguments.isa, sorted({1, probe.usable_cores()}),
                           progress=lambda message: print(message, file=sys.stderr))
    return 0 if limits["reason"] is None else 1


if __name__ == "__main__":
    sys.exit(main())
