"""attnref.testing.backward: the gradient oracle catches broken backward
passes, passes correct ones, and reports a row per case and gradient.

Broken VJPs are one textbook NumPy backward with a single mistake switched
on; each must be caught on the cases that exercise the mistake, while the
same backward without it and attnref's own backward pass.
"""
import functools

import numpy as np
import pytest

from attnref.testing import SUITES
from attnref.testing.backward import (GRADIENTS, assert_conforms_backward, case_grad_out,
                                      case_inputs_backward, check_backward,
                                      gradient_magnitudes, reference_gradients)
from attnref import kernel
from attnref.testing.vjp_adapters import attnref_c_vjp, attnref_numpy_vjp


def plain_vjp(query, key, value, grad_out, attn_mask=None, dropout_p=0.0, is_causal=False,
              scale=None, enable_gqa=False, *, bug=None):
    """Textbook attention backward under the "torch" profile, in the inputs'
    dtype, from dense weights; ``bug`` switches on one mistake of ``BUGS``."""
    dtype = query.dtype
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        Hq, L, E = query.shape[-3:]
        Hkv, S = key.shape[-3:-1]
        G = Hq // Hkv
        key_r, value_r = (np.repeat(array, G, axis=-3) for array in (key, value))
        scale = 1.0 / np.sqrt(E) if scale is None else scale
        visible = np.tri(L, S, dtype=bool) if is_causal else np.ones((L, S), bool)
        bias = np.zeros((), dtype)
        if attn_mask is not None and attn_mask.dtype == bool:
            visible = visible & attn_mask
        elif attn_mask is not None:
            bias = attn_mask
        scores = np.where(visible, query @ np.swapaxes(key_r, -1, -2) * dtype.type(scale)
                          + bias, -np.inf)
        peak = np.max(scores, axis=-1, keepdims=True, initial=-np.inf)
        exponentials = np.exp(scores - np.where(np.isfinite(peak), peak, 0))
        total = exponentials.sum(axis=-1, keepdims=True)
        if bug == "nan_masked_rows":
            weights = exponentials / total                              # 0/0 on a masked row
        else:
            weights = np.where(total > 0, exponentials / np.where(total > 0, total, 1), 0)
        used = weights != 0
        value_r = np.where(used.any(axis=-2)[..., None], value_r, 0)  # hidden keys unread
        key_r = np.where(used.any(axis=-2)[..., None], key_r, 0)
        output = weights @ value_r
        grad_value = (weights @ grad_out if bug == "dv_not_transposed"
                      else np.swapaxes(weights, -1, -2) @ grad_out)
        grad_weights = grad_out @ np.swapaxes(value_r, -1, -2)
        delta = 0 if bug == "no_delta" else np.sum(grad_out * output, axis=-1, keepdims=True)
        grad_scores = weights * (grad_weights - delta)
        factor = 1.0 if bug == "dq_without_scale" else scale
        dq = factor * grad_scores @ key_r
        dk = scale * np.swapaxes(grad_scores, -1, -2) @ query
        if bug == "gqa_not_summed":
            dk, grad_value = dk[..., ::G, :, :], grad_value[..., ::G, :, :]
        else:
            dk, grad_value = (array.reshape(array.shape[:-3] + (Hkv, G) + array.shape[-2:])
                              .sum(axis=-3) for array in (dk, grad_value))
        return dq.astype(dtype), dk.astype(dtype), grad_value.astype(dtype)


BUGS = {  # the mistake -> (case, gradient) rows of the quick suite that must catch it
    "dq_without_scale": {("aligned", "dq"), ("odd_lengths", "dq"), ("gqa", "dq")},
    "no_delta": {("aligned", "dq"), ("aligned", "dk"), ("causal", "dq"), ("gqa", "dk")},
    "nan_masked_rows": {("fully_masked_rows", "dq"), ("fully_masked_rows", "dk"),
                        ("fully_masked_rows", "dv")},
    "gqa_not_summed": {("gqa", "dk"), ("gqa", "dv")},
    "dv_not_transposed": {("odd_lengths", "dv"), ("aligned", "dv"), ("bool_mask", "dv")},
}


@pytest.fixture(scope="module")
def reports():
    """The quick suite's report of every broken VJP, and of the plain one."""
    return {bug: check_backward(functools.partial(plain_vjp, bug=bug), suite="quick",
                                progress=False)
            for bug in [None, *BUGS]}


def test_the_plain_backward_and_attnref_pass(reports):
    assert reports[None].passed, reports[None].summary()
    for dtype in ("float32", "float64"):
        assert_conforms_backward(attnref_numpy_vjp, dtype=dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("semantics", ["torch", "flash"])
def test_the_c_backward_passes(dtype, semantics):
    if not kernel.available():
        pytest.skip(f"C kernel unavailable: {kernel.info()['reason']}")
    alignment = "top_left" if semantics == "torch" else "bottom_right"
    assert_conforms_backward(functools.partial(attnref_c_vjp, causal_alignment=alignment),
                             dtype=dtype, semantics=semantics)


@pytest.mark.parametrize("bug", sorted(BUGS))
def test_each_broken_vjp_is_caught(reports, bug):
    failed = {tuple(result.name.split(":")) for result in reports[bug].failures}
    assert BUGS[bug] <= failed, reports[bug].summary()
    with pytest.raises(AssertionError, match="attention backward does not conform"):
        assert_conforms_backward(functools.partial(plain_vjp, bug=bug), suite="quick")


def test_a_row_per_case_and_gradient():
    report = check_backward(attnref_numpy_vjp, suite="quick", dtype="float64", progress=False)
    names = [result.name for result in report.results]
    assert names == [f"{case}:{gradient}" for case in SUITES["quick"] for gradient in GRADIENTS]
    assert report.to_dict()["counts"] == {"pass": 24, "fail": 0, "error": 0, "hazard": 0,
                                          "skip": 0}


def test_the_pytorch_rule_catches_a_missing_scale_and_passes_attnref():
    broken = check_backward(functools.partial(plain_vjp, bug="dq_without_scale"),
                            suite="quick", rule="pytorch", progress=False)
    assert ("aligned:dq" in {result.name for result in broken.failures})
    assert check_backward(attnref_numpy_vjp, suite="quick", rule="pytorch",
                          progress=False).passed


def test_exceptions_wrong_counts_shapes_and_skips_are_reported():
    def raises(*args, **kwargs):
        raise RuntimeError("no backward\nsecond line")

    report = check_backward(raises, suite="quick", progress=False)
    assert {result.status for result in report.results} == {"error"}
    assert report.results[0].reason == "RuntimeError: no backward"

    two = check_backward(lambda *args, **kwargs: attnref_numpy_vjp(*args, **kwargs)[:2],
                         suite="quick", progress=False)
    assert "returned 2 results, expected (dq, dk, dv)" in two.results[0].reason

    def wrong_shape(*args, **kwargs):
        dq, dk, dv = attnref_numpy_vjp(*args, **kwargs)
        return dq[..., :1], dk, dv

    shaped = check_backward(wrong_shape, suite="quick", progress=False)
    assert shaped.results[0].status == "fail" and "shape" in shaped.results[0].reason
    skipped = check_backward(attnref_numpy_vjp, suite="quick", capabilities={"causal"},
                             progress=False)
    needing_more = [case for case in SUITES["quick"].values() if case.requires - {"causal"}]
    assert 0 < len(needing_more) < len(SUITES["quick"])
    assert skipped.counts()["skip"] == 3 * len(needing_more)


def test_progress_goes_to_stderr(capsys):
    check_backward(attnref_numpy_vjp, suite="quick", progress=True)
    err = capsys.readouterr().err
    assert "[1/8] aligned: dq pass, dk pass, dv pass" in err


@pytest.mark.parametrize("options, message", [
    ({"rule": "exact"}, "rule must be one of"),
    ({"capabilities": {"wings"}}, "unknown capabilities"),
    ({"suite": "huge"}, "suite must be one of"),
    ({"semantics": "tf"}, "semantics must be one of"),
])
def test_bad_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        check_backward(attnref_numpy_vjp, **options)


def test_case_inputs_backward_rebuilds_what_the_vjp_received():
    seen = {}

    def spy(query, key, value, grad_out, **kwargs):
        seen["args"], seen["kwargs"] = (query, key, value, grad_out), kwargs
        return attnref_numpy_vjp(query, key, value, grad_out, **kwargs)

    check_backward(spy, suite="quick", seed=7, dtype="float64", progress=False)
    args, kwargs = case_inputs_backward("quick", "huge_scores", seed=7, dtype="float64")
    assert all(np.array_equal(a, b) for a, b in zip(args, seen["args"]))
    assert kwargs == seen["kwargs"]
    with pytest.raises(ValueError, match="has no case 'nope'"):
        case_inputs_backward("quick", "nope")


def test_grad_out_depends_on_the_seed_and_the_name():
    case = SUITES["quick"]["aligned"]
    assert np.array_equal(case_grad_out(case, 0), case_grad_out(case, 0))
    assert not np.array_equal(case_grad_out(case, 0), case_grad_out(case, 1))
    assert case_grad_out(case, 0, "float64").shape == (1, 2, 64, 64)


def test_jax_profile_rows_spread_their_gradient_over_the_masked_keys():
    """Under "jax", a row that sees nothing is uniform over its masked keys:
    its dO reaches their dv divided by their number, dq gets nothing."""
    case = SUITES["quick"]["fully_masked_rows"]
    inputs = case.inputs(0, "float64")
    grad_out = case_grad_out(case, 0, "float64")
    torch_like = reference_gradients(inputs, grad_out, "torch")
    jax_like = reference_gradients(inputs, grad_out, "jax")
    masked_rows = ~inputs["attn_mask"].any(axis=-1)                    # (L,)
    assert masked_rows.any()
    spread = (grad_out[..., masked_rows, :].sum(axis=-2) / case.S)[..., None, :]
    np.testing.assert_allclose(jax_like["dv"] - torch_like["dv"], np.broadcast_to(
        spread, torch_like["dv"].shape), rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(jax_like["dq"], torch_like["dq"])


def test_gradient_magnitudes_bound_the_gradients():
    for name, case in SUITES["quick"].items():
        inputs = case.inputs(0, "float64")
        grad_out = case_grad_out(case, 0, "float64")
        gradients = reference_gradients(inputs, grad_out, "torch")
        magnitudes = gradient_magnitudes(inputs, grad_out, "torch", np.float64)
        for gradient in GRADIENTS:
            assert np.max(np.abs(gradients[gradient]), initial=0) <= \
                magnitudes[gradient] * (1 + 1e-12), (name, gradient)


def test_cases_a_vjp_cannot_express_are_skipped_and_softcap_window_are_judged():
    """A VJP without softcap and window keywords has the cases that set them
    skipped (as check() does); one that takes them and ignores softcap fails
    those cases, while attnref's backward passes them."""
    names = {name for name, case in SUITES["standard"].items() if case.softcap or case.window}
    assert names == {"softcap", "softcap_masked", "causal_window"}
    plain = check_backward(plain_vjp, suite="standard", dtype="float64", progress=False)
    skipped = {result.name.split(":")[0] for result in plain.results if result.status == "skip"}
    assert skipped == names and plain.passed, plain.summary()

    def ignores_softcap(query, key, value, grad_out, *, softcap=None, window=None, **options):
        return attnref_numpy_vjp(query, key, value, grad_out, window=window, **options)

    broken = check_backward(ignores_softcap, suite="standard", dtype="float64", progress=False)
    assert {result.name.split(":")[0] for result in broken.failures} == {"softcap",
                                                                         "softcap_masked"}
    assert check_backward(attnref_numpy_vjp, suite="standard", dtype="float64",
                          progress=False).counts()["pass"] == 3 * len(SUITES["standard"])


def test_nan_behind_the_mask_is_a_hazard_and_fails_only_under_strict():
    def reads_hidden_keys(query, key, value, grad_out, **options):
        leak = 0 * (key.sum() + value.sum())   # NaN when any key or value holds one
        return tuple(gradient + leak for gradient in
                     attnref_numpy_vjp(query, key, value, grad_out, **options))

    report = check_backward(reads_hidden_keys, suite="standard", progress=False)
    hazards = {result.name for result in report.hazards}
    assert hazards == {f"nan_behind_mask:{gradient}" for gradient in GRADIENTS}
    assert report.passed and "hazard nan_behind_mask:dq (NaN or inf" in report.summary()
    assert all(result.hazard == "hidden_nonfinite" and "1536 NaN or inf entries" in result.reason
               for result in report.hazards)
    strict = check_backward(reads_hidden_keys, suite="standard", progress=False, strict=True)
    assert not strict.passed and {result.name for result in strict.failures} == hazards


def test_kv_cache_alignment_is_resolved_per_case():
    """Under "onnx_attention" the causal frontier is bottom-right when the
    keys outnumber the queries (a KV cache) and top-left otherwise."""
    for name, same_as in (("causal_query_shorter", "onnx"), ("causal_query_longer", "torch")):
        case = SUITES["standard"][name]
        inputs, grad_out = case.inputs(0, "float64"), case_grad_out(case, 0, "float64")
        kv_cache = reference_gradients(inputs, grad_out, "onnx_attention")
        expected = reference_gradients(inputs, grad_out, same_as)
        for gradient in GRADIENTS:
            np.testing.assert_array_equal(kv_cache[gradient], expected[gradient])


def test_a_gradient_of_the_wrong_dtype_or_type_fails():
    def widened(*args, **kwargs):
        dq, dk, dv = attnref_numpy_vjp(*args, **kwargs)
        return dq.astype(np.float64), dk.tolist(), dv

    report = check_backward(widened, suite="quick", progress=False)
    first = {result.name: result for result in report.results[:3]}
    assert first["aligned:dq"].status == "fail"
    assert first["aligned:dq"].reason == "output dtype float64, expected float32"
    assert first["aligned:dk"].reason.startswith("returned a list, expected an ndarray")
    assert first["aligned:dv"].status == "pass"
