"""The conformance harness: run someone's attention over named cases and
judge every answer against attnref's reference.

``fn`` has the torch SDPA signature ``fn(query, key, value, attn_mask=None,
dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False)`` on NumPy
arrays and returns the output array. :func:`check` returns a
:class:`ConformanceReport`; :func:`assert_conforms` raises with its table.

Verdict rules:

``"flash"`` (default)
    FlashAttention's rule (:mod:`attnref.testing.tolerance`): error against
    a wider reference <= 2 x the error of attnref's NumPy reference in the
    same dtype + ``4 eps max|v|``.
``"pytorch"``
    Modelled on PyTorch's SDPA tests (``test/test_transformers.py``,
    ``get_tolerances`` with ``fudge_factor=5``): elementwise
    ``|o - o_w| <= atol + rtol |o_w|`` with ``atol = 5 max(atol_d, dev_abs)``
    and ``rtol = 5 max(rtol_d, dev_rel)``, where ``atol_d, rtol_d`` are
    ``torch.testing.assert_close``'s defaults for the dtype and ``dev_*`` the
    same-dtype reference's own deviation.

Under both, a NaN where the reference has a number (or a number where it has
NaN), or an exception fails the case. So does an output that is not what
was asked for, whatever its numbers: not an ndarray (or an object NumPy
reads through ``__array__`` or ``__array_interface__``, such as a torch
tensor or a JAX array; a list or a scalar is not), a wrong shape, a dtype other than the inputs' (or
the profile's ``output_dtype``), memory shared with an input, or an input
written to.

Verdicts (SPEC.md, "The oracle's verdicts"):

``pass``    the answer agrees with attnref under the profile.
``fail``    it does not: the implementation breaks the semantics it declares.
``error``   the implementation raised.
``hazard``  the case's input lies outside what the profile promises (one of
            :data:`attnref.testing.semantics.HAZARDS`: NaN or inf behind a
            mask, a fully masked row under a finite mask value, scores
            beyond the dtype's range) and the answer departs from attnref's;
            reported with the evidence, a failure only with ``strict=True``.
            An output of the wrong type, shape or dtype is a ``fail`` even
            there.
``skip``    the case needs a capability the implementation does not claim.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .._optional import import_optional
from .cases import CAPABILITIES, DTYPE_CAPABILITIES, SUITES
from .semantics import HAZARDS, profile
from .tolerance import max_abs_error, reference_dtype, reference_errors

RULES = ("flash", "pytorch")
STATUSES = ("pass", "fail", "error", "hazard", "skip")
DTYPES = ("float16", "bfloat16", "float32", "float64")
PYTORCH_FUDGE = 5.0
# torch.testing.assert_close defaults: dtype -> (atol, rtol)
PYTORCH_DEFAULTS = {"float16": (1e-5, 1e-3), "bfloat16": (1e-5, 1.6e-2),
                    "float32": (1e-5, 1.3e-6), "float64": (1e-7, 1e-7)}


@dataclass
class CaseResult:
    """The verdict on one case. ``status`` is one of :data:`STATUSES`;
    ``hazard`` names the :data:`attnref.testing.semantics.HAZARDS` entry the
    input meets (empty when none) and ``reason`` says what came back."""
    name: str
    description: str
    status: str
    error: Optional[float] = None          # max |output - wide reference|
    baseline_error: Optional[float] = None  # same for attnref's same-dtype reference
    bound: Optional[float] = None           # largest error the rule accepts
    reason: str = ""
    reproducer: str = ""
    hazard: str = ""

    @property
    def ratio(self):
        """error / bound (above 1 fails), or None."""
        if self.error is None or not self.bound:
            return None
        return self.error / self.bound

    def to_dict(self):
        return {"name": self.name, "description": self.description, "status": self.status,
                "error": self.error, "baseline_error": self.baseline_error,
                "bound": self.bound, "ratio": self.ratio, "reason": self.reason,
                "reproducer": self.reproducer, "hazard": self.hazard}


@dataclass
class ConformanceReport:
    """Every case's verdict for one implementation, suite, dtype and profile.
    With ``strict`` a hazard counts as a failure."""
    implementation: str
    suite: str
    dtype: str
    semantics: str
    rule: str
    seed: int
    results: list = field(default_factory=list)
    strict: bool = False

    @property
    def passed(self):
        """True when no case failed or raised, nor (with ``strict``) met a
        hazard; skipped cases do not count."""
        return not self.failures

    @property
    def failures(self):
        """Cases that fail the report: "fail", "error" and, with ``strict``,
        "hazard"."""
        failing = ("fail", "error", "hazard") if self.strict else ("fail", "error")
        return [result for result in self.results if result.status in failing]

    @property
    def hazards(self):
        """Cases whose input is outside the profile's promises and whose
        answer departs from attnref's."""
        return [result for result in self.results if result.status == "hazard"]

    def counts(self):
        return {status: sum(result.status == status for result in self.results)
                for status in STATUSES}

    def summary(self):
        """A readable table: one line per case, then the totals."""
        lines = [f"{self.implementation}: suite {self.suite!r}, {self.dtype}, semantics "
                 f"{self.semantics!r}, rule {self.rule!r}, seed {self.seed}"
                 f"{', strict' if self.strict else ''}",
                 f"{'case':<24} {'verdict':<7} {'error':>9} {'baseline':>9} {'bound':>9} "
                 f"{'ratio':>6}  note"]
        for result in self.results:
            numbers = [f"{value:9.2e}" if value is not None else f"{'-':>9}"
                       for value in (result.error, result.baseline_error, result.bound)]
            ratio = f"{result.ratio:6.2f}" if result.ratio is not None else f"{'-':>6}"
            lines.append(f"{result.name:<24} {result.status.upper():<7} {' '.join(numbers)} "
                         f"{ratio}  {result.reason}")
        counts = self.counts()
        lines.append(", ".join(f"{count} {status}" for status, count in counts.items()))
        for result in self.hazards:
            lines.append(f"hazard {result.name} ({HAZARDS[result.hazard]}): {result.reason}"
                         f"{'; a failure under strict' if self.strict else ''}")
        for result in self.failures:
            lines.append(f"reproduce {result.name}: {result.reproducer}")
        return "\n".join(lines)

    def to_dict(self):
        return {"implementation": self.implementation, "suite": self.suite,
                "dtype": self.dtype, "semantics": self.semantics, "rule": self.rule,
                "seed": self.seed, "strict": self.strict, "passed": self.passed,
                "counts": self.counts(),
                "hazards": [result.name for result in self.hazards],
                "results": [result.to_dict() for result in self.results]}


def case_inputs(suite, name, seed=0, dtype="float32", semantics="torch"):
    """The exact arguments :func:`check` passed to the implementation for one
    case: ``(args, kwargs)`` for ``fn(*args, **kwargs)``."""
    cases = _suite(suite)
    if name not in cases:
        raise ValueError(f"suite {suite!r} has no case {name!r}; it has {tuple(cases)}")
    return profile(semantics).arguments(cases[name].inputs(seed, input_dtype(dtype)))


def input_dtype(dtype):
    """The NumPy dtype named by ``dtype`` (one of :data:`DTYPES`, or a dtype).

    ``"bfloat16"`` is ``ml_dtypes.bfloat16``, imported here: an ImportError
    says how to install it when it is missing (JAX brings it).
    """
    if isinstance(dtype, str) and dtype == "bfloat16":
        return np.dtype(import_optional("ml_dtypes", "dtype 'bfloat16'").bfloat16)
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved is None or resolved.name not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    return resolved


def signature_capabilities(fn):
    """Every capability, less ``softcap`` and ``window`` when ``fn`` takes
    no keyword of that name (nor ``**kwargs``): what ``check`` claims for a
    function that says nothing."""
    import inspect
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: claim everything
        return CAPABILITIES
    if any(parameter.kind is parameter.VAR_KEYWORD for parameter in parameters):
        return CAPABILITIES
    names = {parameter.name for parameter in parameters}
    return CAPABILITIES - {keyword for keyword in ("softcap", "window") if keyword not in names}


def start_report(fn, *, suite, dtype, semantics, capabilities, seed, rule, name, strict):
    """What :func:`check` and :func:`~attnref.testing.backward.check_backward`
    share before their first case: the suite's cases, the semantics profile,
    the capabilities ``fn`` claims and an empty :class:`ConformanceReport`
    (its ``dtype`` the input dtype's name), each argument checked."""
    cases = _suite(suite)
    semantics = profile(semantics)
    dtype = input_dtype(dtype).name
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    claimed = claimed_capabilities(fn, capabilities)
    report = ConformanceReport(name or getattr(fn, "__qualname__", repr(fn)), suite, dtype,
                               semantics.name, rule, seed, strict=bool(strict))
    return cases, semantics, claimed, report


def claimed_capabilities(fn, capabilities):
    """What a run of ``fn`` claims: ``capabilities`` (None: what ``fn``'s
    signature can take, :func:`signature_capabilities`), every dtype when
    it names none; a ValueError names unknown ones."""
    claimed = (signature_capabilities(fn) if capabilities is None
               else frozenset(capabilities))
    if not claimed & DTYPE_CAPABILITIES:   # a claim that names no dtype claims them all
        claimed |= DTYPE_CAPABILITIES
    unknown = claimed - CAPABILITIES
    if unknown:
        raise ValueError(f"unknown capabilities {sorted(unknown)}; known: {sorted(CAPABILITIES)}")
    return claimed


def missing_capabilities(case, dtype, claimed):
    """The capabilities ``case`` in ``dtype`` needs and ``claimed`` lacks
    (the case is skipped when there are any)."""
    return (case.requires | ({dtype} & DTYPE_CAPABILITIES)) - claimed


def available_dtypes():
    """:data:`DTYPES` that can be built here (bfloat16 needs ml_dtypes)."""
    try:
        input_dtype("bfloat16")
    except ImportError:
        return tuple(dtype for dtype in DTYPES if dtype != "bfloat16")
    return DTYPES


def check(fn, *, suite="standard", dtype="float32", semantics="torch", capabilities=None,
          seed=0, rule="flash", progress=True, name=None, strict=False):
    """Run ``fn`` over a suite and judge each answer.

    Parameters
    ----------
    fn : callable
        ``fn(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
        scale=None, enable_gqa=False) -> output`` on NumPy arrays
        (see :mod:`attnref.testing.adapters` for torch and JAX).
    suite : {"quick", "standard", "full"}
    dtype : {"float16", "bfloat16", "float32", "float64"}
        The dtype of the inputs ``fn`` receives (bfloat16 needs ml_dtypes).
        When ``capabilities`` names some dtype (float16, bfloat16, float64),
        a dtype it does not name skips every case; naming none claims all.
    semantics : {"torch", "torch_mha", "jax", "flash", "onnx", "onnx_attention", \
"ort_mha", "ort_gqa"} or Semantics
    capabilities : iterable of str, optional
        What ``fn`` supports (see :mod:`attnref.testing.cases`); cases needing
        anything else are skipped and listed. None claims everything ``fn``'s
        signature can take (:func:`signature_capabilities`).
    seed : int
        Together with a case's name, fixes its inputs.
    rule : {"flash", "pytorch"}
    progress : bool
        One line per case on stderr.
    name : str, optional
        What to call ``fn`` in the report (default: its qualified name).
    strict : bool
        Count hazards (inputs outside the profile's promises on which ``fn``
        departs from attnref) as failures.

    Returns
    -------
    ConformanceReport
    """
    cases, semantics, claimed, report = start_report(
        fn, suite=suite, dtype=dtype, semantics=semantics, capabilities=capabilities,
        seed=seed, rule=rule, name=name, strict=strict)
    for position, case in enumerate(cases.values(), 1):
        result = _judge(fn, case, suite, report.dtype, semantics, claimed, seed, rule)
        report.results.append(result)
        if progress:
            print(f"[{position}/{len(cases)}] {case.name}: {result.status}", file=sys.stderr,
                  flush=True)
    return report


def assert_conforms(fn, **options):
    """:func:`check`, raising AssertionError with the summary table when a
    case fails; for other projects' test suites. Returns the report."""
    options.setdefault("progress", False)
    report = check(fn, **options)
    if not report.passed:
        raise AssertionError("attention implementation does not conform:\n" + report.summary())
    return report


def _suite(suite):
    if suite not in SUITES:
        raise ValueError(f"suite must be one of {tuple(SUITES)}, got {suite!r}")
    return SUITES[suite]


def _judge(fn, case, suite, dtype, semantics, claimed, seed, rule):
    reproducer = (f"attnref.testing.case_inputs({suite!r}, {case.name!r}, seed={seed}, "
                  f"dtype={dtype!r}, semantics={semantics.name!r})")
    result = CaseResult(case.name, case.description, "pass", reproducer=reproducer)
    missing = missing_capabilities(case, dtype, claimed)
    if missing:
        result.status, result.reason = "skip", f"needs {', '.join(sorted(missing))}"
        return result
    inputs = case.inputs(seed, input_dtype(dtype))
    args, kwargs = semantics.arguments(inputs)
    given = [(name, array) for name, array in zip(("query", "key", "value", "attn_mask"),
                                                  args + (kwargs["attn_mask"],))
             if array is not None]
    untouched = [np.array(array, copy=True) for _, array in given]
    try:
        returned = fn(*args, **kwargs)
    except Exception as exception:  # the implementation's failure is the verdict
        result.status = "error"
        result.reason = f"{type(exception).__name__}: {exception}".splitlines()[0][:120]
        return _hazard_or(result, semantics, inputs)
    wide = semantics.reference(inputs, reference_dtype(dtype))
    expected_dtype = semantics.output_dtype or dtype
    problem, output = _output_problem(returned, wide.shape, expected_dtype, given, untouched)
    if problem:
        result.status, result.reason = "fail", problem
        return result
    baseline = semantics.reference(inputs)
    nan_mismatch = np.isnan(output) != np.isnan(wide)
    if rule == "flash":
        # the output's own scale: values hidden behind the mask must not widen the floor
        result.error, result.bound = reference_errors(output, wide, baseline, wide)
    else:
        result.error, result.bound = _pytorch_errors(output, wide, baseline, dtype)
    result.baseline_error = max_abs_error(baseline, wide)
    if nan_mismatch.any():
        result.status = "fail"
        result.reason = (f"NaN where the reference has a number at {int(nan_mismatch.sum())} "
                         f"of {output.size} positions" if np.isnan(output[nan_mismatch]).any()
                         else f"a number where the reference has NaN at "
                              f"{int(nan_mismatch.sum())} of {output.size} positions")
    elif not result.error <= result.bound:
        result.status = "fail"
        result.reason = f"error {result.error / result.bound:.1f}x the bound"
    return _hazard_or(result, semantics, inputs)


def _hazard_or(result, semantics, inputs):
    """``result``, turned into a hazard when it disagrees with attnref on
    an input the profile makes no promise about."""
    if result.status not in ("fail", "error"):
        return result
    found = semantics.hazard(inputs)
    if found is not None:
        result.hazard, evidence = found
        result.status, result.reason = "hazard", f"{evidence}; {result.reason}"
    return result


def _output_problem(returned, shape, dtype, given, untouched):
    """``(problem, output)``: what is wrong with what ``fn`` returned, other
    than its numbers ("" when nothing), and the returned array."""
    readable = ("__array__", "__array_interface__", "__array_struct__")
    if not (isinstance(returned, np.ndarray) or any(hasattr(returned, name) for name in readable)):
        return (f"returned a {type(returned).__name__}, expected an ndarray (or an array "
                f"NumPy reads through __array__ or __array_interface__)"), None
    try:
        output = np.asarray(returned)
    except Exception as exception:  # an array-like that cannot be read is a wrong output
        return (f"returned a {type(returned).__name__} that numpy.asarray cannot read: "
                f"{type(exception).__name__}: {exception}".splitlines()[0][:160]), None
    if output.shape != shape:
        return f"output shape {output.shape}, expected {shape}", output
    if output.dtype.name != np.dtype(dtype).name:
        return f"output dtype {output.dtype.name}, expected {np.dtype(dtype).name}", output
    for (name, array), before in zip(given, untouched):
        if np.may_share_memory(output, array):
            return f"output shares memory with the {name} input", output
        if not np.array_equal(array, before, equal_nan=array.dtype != bool):
            return f"the {name} input was written to", output
    return "", output


def _pytorch_errors(output, wide, baseline, dtype):
    """(error, bound) at the element that comes closest to failing under the
    PyTorch-style rule, so error / bound is the rule's worst ratio. A NaN
    mismatch is an infinite error (the caller fails it on its own)."""
    default_atol, default_rtol = PYTORCH_DEFAULTS[dtype]
    wide = np.asarray(wide, dtype=np.float64)
    deviation = np.abs(np.asarray(baseline, dtype=np.float64) - wide)
    finite = np.isfinite(deviation) & np.isfinite(wide)
    with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 where the reference is 0
        relative = np.where(finite & (wide != 0), deviation / np.abs(wide), 0.0)
    atol = PYTORCH_FUDGE * max(default_atol, float(np.max(deviation[finite], initial=0.0)))
    rtol = PYTORCH_FUDGE * max(default_rtol, float(np.max(relative, initial=0.0)))
    allowed = atol + rtol * np.where(np.isfinite(wide), np.abs(wide), 0.0)
    with np.errstate(invalid="ignore"):  # inf - inf where both are the same infinity
        difference = np.abs(np.asarray(output, dtype=np.float64) - wide)
    difference = np.where((output == wide) | (np.isnan(output) & np.isnan(wide)), 0.0, difference)
    if difference.size == 0:
        return 0.0, atol
    if np.isnan(difference).any():
        return float("inf"), float(np.max(allowed))
    worst = int(np.argmax(difference / allowed))
    return float(difference.flat[worst]), float(allowed.flat[worst])
