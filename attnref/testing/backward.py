r"""The gradient oracle: run someone's attention backward pass (a VJP) over
the conformance cases and judge every gradient against attnref's.

``vjp`` has the signature ``vjp(query, key, value, grad_out, attn_mask=None,
dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False) -> (dq, dk,
dv)`` on NumPy arrays: the gradients of ``sum(grad_out * sdpa(query, key,
value, ...))``. :func:`check_backward` returns the forward's
:class:`~attnref.testing.conformance.ConformanceReport`, with one row per
case and gradient (``causal:dq``, ``causal:dk``, ``causal:dv``);
:func:`assert_conforms_backward` raises with its table. Adapters for torch
autograd and ``jax.vjp``: :mod:`attnref.testing.vjp_adapters`.

Every case of :data:`attnref.testing.SUITES` is used as it is for the
forward; ``grad_out`` (:func:`case_grad_out`) is standard normal, drawn from
the seed and the case's name, so ``(suite, name, seed, dtype)`` rebuilds a
case anywhere (:func:`case_inputs_backward`).

The rule for gradients
----------------------
``"flash"`` (default) is the forward's rule
(:mod:`attnref.testing.tolerance`) applied to each gradient ``g``, with the
floor at the scale of the terms the gradient sums:

.. math::
    \max |g - g_w| \le 2 \max |g_{\text{ref}, d} - g_w|
        + 4\, \varepsilon_d \max(1, \gamma_g)

where :math:`g_w` is attnref's backward
(:func:`attnref.scaled_dot_product_attention_backward`) in the wider
reference dtype (float64 for float32 and narrower, long double for float64),
computed from the candidate's own inputs, :math:`g_{\text{ref}, d}` the same
backward in the candidate's dtype ``d``, and :math:`\gamma_g` the largest
entry of the gradient's formula with every term taken in absolute value
(:func:`gradient_magnitudes`):

.. math::
    \gamma_{dV} = \max\, P^\top |dO|, \quad
    \gamma_{dQ} = \max\, \text{scale}\; M |K|, \quad
    \gamma_{dK} = \max\, \text{scale}\; M^\top |Q|, \quad
    M = P \circ \big(|dO|\,|V|^\top + \operatorname{rowsum}(|dO| \circ P|V|)\big)
        \circ \big(1 - \tanh^2(A / c)\big)

(the last factor only with ``softcap`` c, A the scaled scores: the
derivative of :math:`c \tanh(A / c)`; GQA sums over each kv head's query
heads, as the gradients do).

The factor 2 is FlashAttention's gradient check (Dao et al.,
``tests/test_flash_attn.py``: ``dq`` within twice the error of a PyTorch
same-precision reference against the float32 one, likewise ``dk`` and
``dv``, plus an absolute term, ``3e-5`` in FlashAttention-3's tests). The
floor is needed because a same-precision reference can be exact, or nearly,
where another correct summation order is not; 2 x 0 would then demand
bit-identical answers. Its scale cannot be the gradient's own size as the
forward's is ``max |v|``: ``dQ`` and ``dK`` come out of the cancellation
``dP - D``, so on near one-hot rows (large scores) they are tiny while every
dtype-``d`` computation of them carries rounding at the size of ``dP``. A
computed sum is off by at most a few units of rounding times the sum of its
terms' magnitudes (Higham, "Accuracy and Stability of Numerical
Algorithms", 2nd ed., sec. 4.2), hence :math:`\gamma_g`. On torch 2.13's
CPU flash backward in float64 the bare forward floor failed ``huge_scores``
(``dk`` at 1.06 x the bound, its baseline error 650 times ``max |dk|``).

``"pytorch"``: the forward's PyTorch-style rule
(:mod:`attnref.testing.conformance`) on each gradient.

Under both, a NaN where the reference has a number (or the reverse), a
wrong number of results or an exception fails the row, and so does a
gradient that is not what was asked for, as the forward's output
(:mod:`attnref.testing.conformance`): not an ndarray or array-like, a
wrong shape or dtype, memory shared with an input, or an input written to.
As for the forward, a row that departs from attnref on an input the profile
makes no promise about (:data:`attnref.testing.semantics.HAZARDS`, such as
NaN behind a mask) is a ``hazard``, a failure only with ``strict=True``;
a case needing a capability the VJP does not claim (by default, what its
signature takes: ``softcap`` and ``window`` keywords) is skipped. Under
the ``"torch"`` profile (and every profile whose fully masked rows give 0)
a fully masked row's exact gradients are 0: ``dq`` row 0 and no
contribution to ``dk``, ``dv``, so a NaN there fails. Under ``"jax"`` such a
row spreads uniformly over its masked keys (see
:mod:`attnref.testing.semantics`), so its ``dO`` reaches those keys' ``dv``
divided by their number, and ``dq``, ``dk`` get nothing from it.
"""
from __future__ import annotations

import sys
import zlib

import numpy as np

from ..backward import scaled_dot_product_attention_backward
from ..core import scaled_dot_product_attention
from .conformance import (CaseResult, _hazard_or, _output_problem, _pytorch_errors, _suite,
                          input_dtype, missing_capabilities, start_report)
from .semantics import profile
from .tolerance import equivalence_bound, max_abs_error, reference_dtype

GRADIENTS = ("dq", "dk", "dv")


def case_grad_out(case, seed=0, dtype="float32"):
    """The ``grad_out`` (B, Hq, L, Ev) of one case: standard normal in
    ``dtype``, from NumPy's PCG64 seeded with ``seed``, the CRC-32 of the
    case's name and 1 (the forward's inputs use the first two alone)."""
    rng = np.random.default_rng([seed, zlib.crc32(case.name.encode()), 1])
    return rng.standard_normal((case.B, case.Hq, case.L, case.value_dim)).astype(
        input_dtype(dtype))


def case_inputs_backward(suite, name, seed=0, dtype="float32", semantics="torch"):
    """The exact arguments :func:`check_backward` passed to the VJP for one
    case: ``(args, kwargs)`` for ``vjp(*args, **kwargs)``."""
    cases = _suite(suite)
    if name not in cases:
        raise ValueError(f"suite {suite!r} has no case {name!r}; it has {tuple(cases)}")
    case = cases[name]
    (query, key, value), kwargs = profile(semantics).arguments(
        case.inputs(seed, input_dtype(dtype)))
    return (query, key, value, case_grad_out(case, seed, dtype)), kwargs


def reference_gradients(inputs, grad_out, semantics, dtype=None):
    """attnref's ``{"dq", "dk", "dv"}`` for a case's ``inputs`` (a
    :meth:`~attnref.testing.Case.inputs` dict) under ``semantics``, computed
    in ``dtype`` (the inputs' own when None; ``numpy.longdouble`` allowed)."""
    semantics = profile(semantics)
    arrays = [inputs[name] if dtype is None else inputs[name].astype(dtype)
              for name in ("query", "key", "value")]
    grad_out = grad_out if dtype is None else grad_out.astype(dtype)
    mask = inputs["attn_mask"]
    if mask is not None and mask.dtype != bool and dtype is not None:
        mask = mask.astype(dtype)
    elif mask is not None and mask.dtype.name == "bfloat16":
        mask = mask.astype(np.float32)   # exact; attnref computes bfloat16 in float32
    options = {"attn_mask": mask, "is_causal": inputs["is_causal"], "scale": inputs["scale"],
               "enable_gqa": inputs["enable_gqa"],
               "causal_alignment": semantics.alignment(arrays[0].shape[-2],
                                                       arrays[1].shape[-2]),
               "softcap": inputs.get("softcap"), "window": inputs.get("window"),
               "masked_rows": "nan" if semantics.masked_rows == "nan" else "zero"}
    grads = scaled_dot_product_attention_backward(grad_out, *arrays, **options,
                                                  backend="numpy")
    gradients = dict(zip(GRADIENTS, grads[:3]))
    if semantics.masked_rows == "uniform":
        gradients = _uniform_rows(gradients, arrays, grad_out, inputs, options, semantics)
    return gradients


def _uniform_rows(gradients, arrays, grad_out, inputs, options, semantics):
    """The gradients under JAX's fully masked rows (lse = -inf): uniform
    weights ``1/n`` over the row's ``n`` masked keys, constant in query and
    key, so ``dv`` of each masked key gains ``dO_i / n`` and ``dq``, ``dk``
    nothing; a row with no masked key (every logit -inf) is NaN, and its
    NaN reaches its ``dq`` row and every ``dk``, ``dv`` of its head."""
    query, key, value = arrays
    lse = scaled_dot_product_attention(*arrays, **options, return_lse=True,
                                       backend="numpy").lse          # (B, Hq, L)
    masked = np.isneginf(lse)
    S = key.shape[-2]
    if S == 0 or not masked.any():
        return gradients                      # with no key, JAX's empty sums give 0
    hidden = ~np.broadcast_to(semantics.visible(inputs, float_mask=False),
                              lse.shape + (S,))                      # (B, Hq, L, S)
    count = hidden.sum(axis=-1)                                      # (B, Hq, L)
    spread = np.where((masked & (count > 0))[..., None],
                      hidden / np.maximum(count, 1)[..., None], 0).astype(value.dtype)
    extra = np.swapaxes(spread, -1, -2) @ grad_out                   # (B, Hq, S, Ev)
    Hq, Hkv = query.shape[-3], key.shape[-3]
    extra = extra.reshape(extra.shape[:-3] + (Hkv, Hq // Hkv) + extra.shape[-2:]).sum(axis=-3)
    dq, dk, dv = gradients["dq"], gradients["dk"], gradients["dv"] + extra
    undefined = masked & (count == 0)                                # every logit -inf
    if undefined.any():
        dq = np.where(undefined[..., None], np.nan, dq)
        heads = undefined.any(axis=-1)                               # (B, Hq)
        heads = heads.reshape(heads.shape[:-1] + (Hkv, Hq // Hkv)).any(axis=-1)[..., None, None]
        dk, dv = np.where(heads, np.nan, dk), np.where(heads, np.nan, dv)
    return {"dq": dq, "dk": dk, "dv": dv.astype(gradients["dv"].dtype)}


def gradient_magnitudes(inputs, grad_out, semantics, dtype):
    """:math:`\\gamma` of each gradient (module docstring): ``{"dq", "dk",
    "dv"}``, the largest entry of its formula with every term in absolute
    value, computed in ``dtype`` from a case's ``inputs`` and ``grad_out``
    under ``semantics``. Keys of weight 0 (whatever they hold) add nothing."""
    semantics = profile(semantics)
    query, key, value = (inputs[name].astype(dtype) for name in ("query", "key", "value"))
    mask = inputs["attn_mask"]
    if mask is not None and mask.dtype != bool:
        mask = mask.astype(dtype)
    weights = scaled_dot_product_attention(
        query, key, value, mask, is_causal=inputs["is_causal"], scale=inputs["scale"],
        enable_gqa=inputs["enable_gqa"],
        causal_alignment=semantics.alignment(query.shape[-2], key.shape[-2]),
        softcap=inputs.get("softcap"), window=inputs.get("window"),
        return_weights=True, backend="numpy").weights               # P, (B, Hq, L, S)
    Hq, Hkv = query.shape[-3], key.shape[-3]
    key = np.repeat(key, Hq // Hkv, axis=-3)
    value = np.repeat(value, Hq // Hkv, axis=-3)
    scale = 1 / np.sqrt(query.shape[-1]) if inputs["scale"] is None else inputs["scale"]
    softcap = inputs.get("softcap")
    capped = 1.0                                             # softcap's factor 1 - tanh^2(A/c)
    if softcap is not None:
        with np.errstate(invalid="ignore", over="ignore"):
            scores = scale * (query @ np.swapaxes(key, -1, -2))
            capped = np.where(np.isfinite(scores), 1 - np.tanh(scores / softcap) ** 2, 0)
    key, value = (np.where(np.isfinite(array), np.abs(array), 0) for array in (key, value))
    grad_out = np.abs(grad_out.astype(dtype))
    delta = np.sum(grad_out * (weights @ value), axis=-1, keepdims=True)
    terms = capped * weights * (grad_out @ np.swapaxes(value, -1, -2) + delta)  # M, (B, Hq, L, S)
    magnitudes = {
        "dq": scale * terms @ key,
        "dk": _per_kv_head(scale * np.swapaxes(terms, -1, -2) @ np.abs(query), Hkv),
        "dv": _per_kv_head(np.swapaxes(weights, -1, -2) @ grad_out, Hkv)}
    return {name: float(np.max(array, initial=0.0)) for name, array in magnitudes.items()}


def _per_kv_head(array, Hkv):
    """(B, Hq, ...) summed over each kv head's query heads: (B, Hkv, ...)."""
    Hq = array.shape[-3]
    return array.reshape(array.shape[:-3] + (Hkv, Hq // Hkv) + array.shape[-2:]).sum(axis=-3)


def gradient_errors(candidate, reference, baseline, magnitude):
    """``(candidate error, bound)`` of one gradient under the gradient rule
    (module docstring): errors against ``reference`` (the wide backward);
    ``baseline`` is the same-dtype backward, ``magnitude`` the gradient's
    :math:`\\gamma` (:func:`gradient_magnitudes`)."""
    return (max_abs_error(candidate, reference),
            equivalence_bound(max_abs_error(baseline, reference), np.asarray(baseline).dtype,
                              magnitude))


def check_backward(vjp, *, suite="standard", dtype="float32", semantics="torch",
                   capabilities=None, seed=0, rule="flash", progress=True, name=None,
                   strict=False):
    """Run ``vjp`` over a suite and judge each gradient.

    Parameters
    ----------
    vjp : callable
        ``vjp(query, key, value, grad_out, attn_mask=None, dropout_p=0.0,
        is_causal=False, scale=None, enable_gqa=False) -> (dq, dk, dv)`` on
        NumPy arrays (see :mod:`attnref.testing.vjp_adapters` for torch and
        JAX).
    suite : {"quick", "standard", "full"}
    dtype : {"float16", "bfloat16", "float32", "float64"}
        The dtype of the inputs and ``grad_out`` the VJP receives (bfloat16
        needs ml_dtypes); a dtype the capabilities do not name skips every
        case, as for :func:`attnref.testing.check`.
    semantics : {"torch", "torch_mha", "jax", "flash", "onnx", "onnx_attention", \
"ort_mha", "ort_gqa"} or Semantics
    capabilities : iterable of str, optional
        As for :func:`attnref.testing.check`: None claims everything
        ``vjp``'s signature can take, so a VJP without ``softcap`` and
        ``window`` keywords has the cases that set them skipped.
    seed : int
        Together with a case's name, fixes its inputs and ``grad_out``.
    rule : {"flash", "pytorch"}
        See the module docstring.
    progress : bool
        One line per case on stderr.
    name : str, optional
        What to call ``vjp`` in the report (default: its qualified name).
    strict : bool
        Count hazards (inputs outside the profile's promises on which a
        gradient departs from attnref's) as failures.

    Returns
    -------
    ConformanceReport
        Three rows per case, named ``CASE:dq``, ``CASE:dk``, ``CASE:dv``.
    """
    cases, semantics, claimed, report = start_report(
        vjp, suite=suite, dtype=dtype, semantics=semantics, capabilities=capabilities,
        seed=seed, rule=rule, name=name, strict=strict)
    for position, case in enumerate(cases.values(), 1):
        results = _judge(vjp, case, suite, report.dtype, semantics, claimed, seed, rule)
        report.results.extend(results)
        if progress:
            verdicts = ", ".join(f"{result.name.rsplit(':', 1)[1]} {result.status}"
                                 for result in results)
            print(f"[{position}/{len(cases)}] {case.name}: {verdicts}", file=sys.stderr,
                  flush=True)
    return report


def assert_conforms_backward(vjp, **options):
    """:func:`check_backward`, raising AssertionError with the summary table
    when a gradient fails; for other projects' test suites. Returns the
    report."""
    options.setdefault("progress", False)
    report = check_backward(vjp, **options)
    if not report.passed:
        raise AssertionError("attention backward does not conform:\n" + report.summary())
    return report


def _judge(vjp, case, suite, dtype, semantics, claimed, seed, rule):
    """The three rows (dq, dk, dv) of one case."""
    reproducer = (f"attnref.testing.backward.case_inputs_backward({suite!r}, {case.name!r}, "
                  f"seed={seed}, dtype={dtype!r}, semantics={semantics.name!r})")
    results = [CaseResult(f"{case.name}:{gradient}", case.description, "pass",
                          reproducer=reproducer) for gradient in GRADIENTS]
    missing = missing_capabilities(case, dtype, claimed)
    if missing:
        for result in results:
            result.status, result.reason = "skip", f"needs {', '.join(sorted(missing))}"
        return results
    inputs = case.inputs(seed, input_dtype(dtype))
    grad_out = case_grad_out(case, seed, dtype)
    (query, key, value), kwargs = semantics.arguments(inputs)
    given = [(name, array) for name, array in zip(
        ("query", "key", "value", "grad_out", "attn_mask"),
        (query, key, value, grad_out, kwargs["attn_mask"])) if array is not None]
    untouched = [np.array(array, copy=True) for _, array in given]
    try:
        answer = tuple(vjp(query, key, value, grad_out, **kwargs))
        if len(answer) != 3:
            raise ValueError(f"returned {len(answer)} results, expected (dq, dk, dv)")
    except Exception as exception:  # the implementation's failure is the verdict
        for result in results:
            result.status = "error"
            result.reason = f"{type(exception).__name__}: {exception}".splitlines()[0][:120]
        return [_hazard_or(result, semantics, inputs) for result in results]
    wide_dtype = reference_dtype(dtype)
    wide = reference_gradients(inputs, grad_out, semantics, wide_dtype)
    baseline = reference_gradients(inputs, grad_out, semantics)
    magnitudes = gradient_magnitudes(inputs, grad_out, semantics, wide_dtype)
    expected_dtype = semantics.output_dtype or dtype
    for result, gradient, returned in zip(results, GRADIENTS, answer):
        problem, candidate = _output_problem(returned, wide[gradient].shape, expected_dtype,
                                             given, untouched)
        if problem:
            result.status, result.reason = "fail", problem
            continue
        _judge_gradient(result, candidate, wide[gradient], baseline[gradient],
                        magnitudes[gradient], dtype, rule)
        _hazard_or(result, semantics, inputs)
    return results


def _judge_gradient(result, candidate, wide, baseline, magnitude, dtype, rule):
    """Fill ``result`` with the verdict on one gradient (``magnitude``: its
    :math:`\\gamma`) of the right type, shape and dtype."""
    if rule == "flash":
        result.error, result.bound = gradient_errors(candidate, wide, baseline, magnitude)
    else:
        result.error, result.bound = _pytorch_errors(candidate, wide, baseline, dtype)
    result.baseline_error = max_abs_error(baseline, wide)
    nan_mismatch = np.isnan(candidate) != np.isnan(wide)
    if nan_mismatch.any():
        result.status = "fail"
        result.reason = (f"NaN where the reference has a number at {int(nan_mismatch.sum())} "
                         f"positions" if np.isnan(candidate[nan_mismatch]).any() else
                         f"a number where the reference has NaN at {int(nan_mismatch.sum())} "
                         f"positions")
    elif not result.error <= result.bound:
        result.status = "fail"
        result.reason = f"error {result.error / result.bound:.1f}x the bound"
