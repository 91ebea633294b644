"""The measured conformance matrix: what each installed implementation
does at the edges where attention conventions differ, run here.

:func:`measure` probes one adapter (:data:`attnref.testing.adapters.ADAPTERS`)
on small inputs built for each convention in :data:`CONVENTIONS` and says
which of the known conventions its output matches (or what it does instead),
and runs the standard suite under the adapter's own semantics profile in
float32 and float16 (bfloat16 too when ml_dtypes is installed).
:func:`conformance_matrix` does so for every installed adapter and writes one
Markdown table; ``attnref check --matrix --out docs/conformance.md`` is how
``docs/conformance.md`` is made.

A probe classifies an output by comparing it with candidate answers that
attnref computes in float64 from the same float32 inputs: two arrays match
when they agree to ``1e-4 max(1, max|v|)``, far above float32 rounding and far
below the differences between conventions on these inputs (scores of a few
units, so weights differ by tenths).
"""
from __future__ import annotations

import inspect
import platform
import sys
from dataclasses import dataclass, field

import numpy as np

from .. import __version__
from ..core import scaled_dot_product_attention
from .adapters import ADAPTERS
from .cases import SUITES
from .conformance import available_dtypes, check
from .semantics import profile

MATCH_TOLERANCE = 1e-4
APPROXIMATE_TOLERANCE = 1e-2
# Shapes of the probes: small, with L != S where alignment matters.
B, H, E = 2, 2, 8


@dataclass
class Measurement:
    """What one adapter does, convention by convention."""
    target: str
    version: str
    semantics: str
    cells: dict = field(default_factory=dict)   # convention -> text

    def to_dict(self):
        return {"target": self.target, "version": self.version, "semantics": self.semantics,
                "cells": dict(self.cells)}


def _inputs(L, S, *, seed, Hq=H, Hkv=H, Ev=E, scale=1.0):
    rng = np.random.default_rng(seed)
    query = (scale * rng.standard_normal((B, Hq, L, E))).astype(np.float32)
    key = (scale * rng.standard_normal((B, Hkv, S, E))).astype(np.float32)
    value = rng.standard_normal((B, Hkv, S, Ev)).astype(np.float32)
    return query, key, value


def _reference(query, key, value, **options):
    wide = [array.astype(np.float64) for array in (query, key, value)]
    mask = options.pop("attn_mask", None)
    if mask is not None and mask.dtype != bool:
        mask = mask.astype(np.float64)
    return scaled_dot_product_attention(*wide, attn_mask=mask, backend="numpy", **options)


def _matches(output, expected, value):
    output = np.asarray(output, dtype=np.float64)
    if output.shape != expected.shape:
        return False
    tolerance = MATCH_TOLERANCE * max(1.0, float(np.max(np.abs(value))))
    same_nan = np.isnan(output) == np.isnan(expected)
    close = np.abs(np.nan_to_num(output) - np.nan_to_num(expected)) <= tolerance
    return bool(np.all(same_nan & close))


def _call(fn, args, **keywords):
    """fn's output, or the text of the exception it raised."""
    try:
        return np.asarray(fn(*args, **keywords)), ""
    except Exception as exception:  # what the implementation refuses is a finding
        message = str(exception).strip().splitlines()
        text = message[-1] if message else ""
        text = text[:100] + ("..." if len(text) > 100 else "")
        return None, f"refused ({type(exception).__name__}: {text})"


def _classify(output, candidates, value):
    for label, expected in candidates:
        if _matches(output, expected, value):
            return label
    return None


def _polarity(fn, semantics):
    """Which bool polarity the output follows (the raw mask, not translated)."""
    query, key, value = _inputs(4, 6, seed=1)
    rng = np.random.default_rng(1)
    mask = rng.random((4, 6)) < 0.5
    mask[:, 0], mask[:, 1] = True, False              # each row of the mask and of ~mask sees a key
    output, refused = _call(fn, (query, key, value), attn_mask=mask)
    if output is None:
        return refused
    attend = _reference(query, key, value, attn_mask=mask)
    masked_out = _reference(query, key, value, attn_mask=~mask)
    label = _classify(output, [("True = may attend", attend), ("True = masked out", masked_out)],
                      value)
    return label or "neither polarity"


def _visible_pattern(fn, L, S, **keywords):
    """Rows' visible key counts under ``is_causal``, read off the weights:
    values are the identity, so the output row is the weight row."""
    query, key, _ = _inputs(L, S, seed=2, scale=0.1)
    value = np.zeros((B, H, S, E), dtype=np.float32)
    value[..., np.arange(S), np.arange(S)] = 1.0          # S <= E: output[..., :S] = weights
    output, refused = _call(fn, (query, key, value), is_causal=True, **keywords)
    if output is None:
        return None, refused
    weights = np.asarray(output, dtype=np.float64)[..., :S]
    if np.isnan(weights).any():
        return None, "NaN in some rows"
    counts = (weights > 1e-3).sum(axis=-1)               # (B, H, L)
    if not (counts == counts[:1, :1]).all():
        return None, "depends on the batch entry or head"
    return tuple(int(count) for count in counts[0, 0]), ""


def _alignment(fn, L, S, **keywords):
    """top-left, bottom-right, or the rows' visible key counts."""
    pattern, problem = _visible_pattern(fn, L, S, **keywords)
    if pattern is None:
        return problem
    top_left = tuple(min(S, max(0, i + 1)) for i in range(L))
    bottom_right = tuple(min(S, max(0, i + 1 + S - L)) for i in range(L))
    if pattern == top_left == bottom_right:
        return "top-left = bottom-right"
    if pattern == top_left:
        return "top-left"
    if pattern == bottom_right:
        return "bottom-right"
    return (f"neither: rows see {', '.join(map(str, pattern))} keys (top-left "
            f"{', '.join(map(str, top_left))}; bottom-right {', '.join(map(str, bottom_right))})")


def _causal_shorter(fn, semantics):
    """Causal with L < S, through the adapter as it stands (a KV cache when it has one)."""
    return _alignment(fn, 3, 8)


def _causal_shorter_no_cache(fn, semantics):
    """Causal with L < S and ``kv_cache=False`` where the adapter takes it."""
    if "kv_cache" not in inspect.signature(fn).parameters:
        return "no cache input: as above"
    return _alignment(fn, 3, 8, kv_cache=False)


def _causal_longer(fn, semantics):
    """Causal with L > S."""
    return _alignment(fn, 8, 3)


def _masked_rows(output, rows, query, key, value):
    """What the fully masked rows hold."""
    output = np.asarray(output, dtype=np.float64)[rows]
    if np.isnan(output).all():
        return "NaN"
    if np.all(output == 0):
        return "0"
    mean = np.broadcast_to(value.astype(np.float64).mean(axis=-2, keepdims=True),
                           value.shape[:-2] + (query.shape[-2], value.shape[-1]))
    unmasked = _reference(query, key, value)
    label = _classify(output, [("mean of all values (uniform weights)", mean[rows]),
                               ("unmasked attention (the mask is ignored)", unmasked[rows])],
                      value)
    if label:
        return label
    # a finite fill value rounds the scores it is added to: near, not exactly, unmasked
    deviation = float(np.max(np.abs(output - unmasked[rows])))
    if deviation <= APPROXIMATE_TOLERANCE * max(1.0, float(np.max(np.abs(value)))):
        return f"unmasked attention to {deviation:.1e} (the finite fill value hides nothing)"
    return "other (neither 0, NaN, the mean of values nor unmasked attention)"


def _fully_masked_bool(fn, semantics):
    """Rows 0 and 3 masked entirely by a bool mask, in the profile's polarity."""
    query, key, value = _inputs(5, 6, seed=3)
    mask = np.random.default_rng(3).random((5, 6)) < 0.6
    mask[:, 0] = True
    mask[::3] = False                                        # rows 0 and 3 see nothing
    (args, keywords) = semantics.arguments(_case(query, key, value, mask))
    output, refused = _call(fn, args, **keywords)
    return refused or _masked_rows(output, (..., slice(0, None, 3), slice(None)),
                                   query, key, value)


def _fully_masked_float(fn, semantics):
    """Rows 0 and 3 masked entirely by ``-inf`` in a float mask."""
    query, key, value = _inputs(5, 6, seed=4)
    bias = np.random.default_rng(4).standard_normal((5, 6)).astype(np.float32)
    bias[::3] = -np.inf
    output, refused = _call(fn, (query, key, value), attn_mask=bias)
    return refused or _masked_rows(output, (..., slice(0, None, 3), slice(None)),
                                   query, key, value)


def _fully_padded(fn, semantics):
    """A (B, 1, 1, S) padding mask whose first sequence is all padding."""
    query, key, value = _inputs(4, 6, seed=5)
    lengths = np.array([0, 4])
    mask = (np.arange(6) < lengths[:, None])[:, None, None, :]   # (B, 1, 1, S)
    args, keywords = semantics.arguments(_case(query, key, value, mask))
    output, refused = _call(fn, args, **keywords)
    return refused or _masked_rows(output, (0,), query[:1], key[:1], value[:1])


def _softcap(fn, semantics):
    """softcap = 1 with ``-inf`` mask entries: capped before or after the mask."""
    query, key, value = _inputs(4, 6, seed=6, scale=1.5)
    bias = np.zeros((4, 6), dtype=np.float32)
    bias[:, 3:] = -np.inf
    cap = 1.0
    output, refused = _call(fn, (query, key, value), attn_mask=bias, softcap=cap)
    if output is None:
        return "no softcap" if "softcap" in refused else refused
    before = _reference(query, key, value, attn_mask=bias, softcap=cap)
    scores = np.matmul(query.astype(np.float64), np.swapaxes(key, -1, -2)) / np.sqrt(E)
    after = cap * np.tanh((scores + bias) / cap)            # -inf becomes -cap
    weights = np.exp(after - after.max(axis=-1, keepdims=True))
    after_output = (weights / weights.sum(axis=-1, keepdims=True)) @ value.astype(np.float64)
    return _classify(output, [("before the mask (-inf stays -inf)", before),
                              ("after the mask (-inf becomes -softcap)", after_output)],
                     value) or "neither order"


def _gqa(fn, semantics):
    """4 query heads on 2 kv heads: grouped (``h // 2``) or tiled (``h % 2``)."""
    query, key, value = _inputs(4, 4, seed=7, Hq=4, Hkv=2)
    output, refused = _call(fn, (query, key, value), enable_gqa=True)
    if output is None:
        return refused
    grouped = _reference(query, key, value, enable_gqa=True)
    tiled = _reference(query, np.tile(key, (1, 2, 1, 1)), np.tile(value, (1, 2, 1, 1)))
    return _classify(output, [("h // (Hq/Hkv)", grouped), ("h % Hkv (tiled)", tiled)],
                     value) or "neither mapping"


def _nan_behind_mask(fn, semantics):
    """The standard ``nan_behind_mask`` case: NaN outputs counted."""
    inputs = SUITES["standard"]["nan_behind_mask"].inputs(0, np.float32)
    args, keywords = semantics.arguments(inputs)
    output, refused = _call(fn, args, **keywords)
    how = ""
    if output is None:                    # no bool mask input: hide the same keys with -inf
        keywords["attn_mask"] = np.where(inputs["attn_mask"], 0.0, -np.inf).astype(np.float32)
        output, _ = _call(fn, args, **keywords)
        how = " (behind a -inf float mask)"
    if output is None:
        return refused
    count = int(np.isnan(output).sum())
    return (f"leaks{how}: NaN in {count} of {output.size} outputs" if count
            else f"does not leak{how}")


def _case(query, key, value, mask):
    return {"query": query, "key": key, "value": value, "attn_mask": mask, "is_causal": False,
            "scale": None, "enable_gqa": False}


def _verdicts(adapter, dtype):
    """The standard suite's verdicts under the adapter's profile, in one cell."""
    report = check(adapter.fn, suite="standard", dtype=dtype, semantics=adapter.semantics,
                   capabilities=adapter.capabilities, progress=False)
    counts = report.counts()
    if counts["skip"] == len(report.results):
        return f"not run: {report.results[0].reason}"
    text = ", ".join(f"{counts[status]} {status}" for status in counts if counts[status])
    worst = max((result.ratio for result in report.results
                 if result.status == "pass" and result.ratio is not None), default=None)
    if worst is not None:
        text += f"; worst passing error {worst:.2f} of the bound"
    named = [f"{result.status} `{result.name}`" for result in report.results
             if result.status in ("fail", "error", "hazard")]
    return text + ("; " + ", ".join(named) if named else "")


CONVENTIONS = (
    ("bool mask `True` means", _polarity),
    ("causal, L < S (keys beyond L as a KV cache where the API has one)", _causal_shorter),
    ("causal, L < S, no cache", _causal_shorter_no_cache),
    ("causal, L > S", _causal_longer),
    ("fully masked row, bool mask", _fully_masked_bool),
    ("fully masked row, `-inf` float mask", _fully_masked_float),
    ("fully padded batch entry (padding mask)", _fully_padded),
    ("softcap order", _softcap),
    ("GQA: query head h reads kv head", _gqa),
    ("NaN in masked keys and values", _nan_behind_mask),
)


def measure(target, *, progress=True):
    """Probe the adapter named ``target`` on every convention and run the
    standard suite in each available low and single precision dtype.
    Raises ImportError (with the install command) when its framework is
    missing."""
    adapter = ADAPTERS[target]
    version = adapter.framework_version() or f"attnref {__version__}"
    semantics = profile(adapter.semantics)
    measurement = Measurement(target, str(version), semantics.name)
    rows = list(CONVENTIONS) + [(f"standard suite, {dtype}", None)
                                for dtype in ("float32",) + _low_precision()]
    for position, (convention, probe) in enumerate(rows, 1):
        if progress:
            print(f"[{target} {position}/{len(rows)}] {convention}", file=sys.stderr, flush=True)
        if probe is None:
            dtype = convention.rsplit(", ", 1)[1]
            measurement.cells[convention] = _verdicts(adapter, dtype)
        else:
            measurement.cells[convention] = probe(adapter.fn, semantics)
    return measurement


def _low_precision():
    return tuple(dtype for dtype in ("float16", "bfloat16") if dtype in available_dtypes())


def installed_targets():
    """Adapters whose frameworks import here, in :data:`ADAPTERS` order
    (attnref's C backend only when the kernel is compiled)."""
    from .. import kernel
    found = []
    for target, adapter in ADAPTERS.items():
        if target == "attnref-c" and not kernel.available():
            continue
        try:
            adapter.framework_version()
        except ImportError:
            continue
        found.append(target)
    return found


def conformance_matrix(targets=None, *, progress=True):
    """Measurements of ``targets`` (default: every installed adapter)."""
    return [measure(target, progress=progress) for target in (targets or installed_targets())]


def to_markdown(measurements):
    """The matrix as Markdown: one column per implementation, one row per
    convention, headed by the machine and versions it was measured with."""
    numpy_version = np.__version__
    lines = [
        "# Conformance matrix, measured",
        "",
        "Generated by `attnref check --matrix --out docs/conformance.md`; do not edit by hand.",
        "Every cell is what the implementation did here, through its adapter "
        "(`attnref.testing.adapters`), on inputs built for that convention "
        "(`attnref.testing.matrix`); the suite rows are `attnref check TARGET` under the "
        "adapter's own profile and capabilities. `docs/semantics.md` explains the "
        "conventions, with sources.",
        "",
        f"Machine: {platform.machine()} {platform.system()}, Python {platform.python_version()}, "
        f"NumPy {numpy_version}, attnref {__version__}.",
        "",
    ]
    header = ["convention"] + [f"`{m.target}` ({m.version}; profile `{m.semantics}`)"
                               for m in measurements]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    conventions = list(dict.fromkeys(key for m in measurements for key in m.cells))
    for convention in conventions:
        cells = [m.cells.get(convention, "-").replace("|", "/") for m in measurements]
        lines.append("| " + " | ".join([convention] + cells) + " |")
    return "\n".join(lines) + "\n"
