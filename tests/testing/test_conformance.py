"""attnref.testing.conformance: the referee has teeth, passes what is right,
and reports what it saw.

Broken implementations are one textbook NumPy attention with a single
mistake switched on; each must be caught by the standard suite on the cases
that exercise the mistake, while the same attention without the mistake,
attnref's own backends, and (recorded below) torch pass.
"""
import functools
import json

import numpy as np
import pytest

import attnref
import attnref.testing
from attnref import kernel, scaled_dot_product_attention
from attnref.testing import CAPABILITIES, PROFILES, SUITES, assert_conforms, check
from attnref.testing.adapters import attnref_c, attnref_numpy, torch_mha_masks, torch_sdpa

STANDARD_CASES = set(SUITES["standard"])


def plain_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                    scale=None, enable_gqa=False, *, bug=None):
    """Textbook attention under the "torch" profile, computed in the inputs'
    dtype; ``bug`` switches on one of the mistakes in ``BUGS``.

    Shapes: query (B, Hq, L, E), key (B, Hkv, S, E), value (B, Hkv, S, Ev).
    """
    output_dtype = query.dtype
    dtype = np.dtype(np.float16 if bug == "float16_accumulation" else query.dtype)
    # float32 masks hold finfo.min, which float16 rounds to -inf: part of that bug
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        query, key, value = (array.astype(dtype) for array in (query, key, value))
        Hq, L, E = query.shape[-3:]
        Hkv, S = key.shape[-3:-1]
        if enable_gqa:
            kv_head = np.arange(Hq) % Hkv if bug == "gqa_modulo" else np.arange(Hq) // (Hq // Hkv)
            key, value = key[..., kv_head, :, :], value[..., kv_head, :, :]
        if scale is None:
            scale = 1.0 if bug == "no_scale" else 1.0 / np.sqrt(E)
        visible = np.ones((L, S), dtype=bool)
        if is_causal:
            visible = np.tri(L, S, k=1 if bug == "causal_off_by_one" else 0, dtype=bool)
        bias = np.zeros((), dtype)
        if attn_mask is not None and attn_mask.ndim == 4 and bug == "mask_of_head_0":
            attn_mask = attn_mask[:, :1]                    # every head reads head 0's mask
        if attn_mask is not None and attn_mask.dtype == bool:
            visible = visible & (~attn_mask if bug == "inverted_mask" else attn_mask)
        elif attn_mask is not None:
            bias = attn_mask.astype(dtype)
        scores = query @ np.swapaxes(key, -1, -2) * dtype.type(scale) + bias   # (B, Hq, L, S)
        scores = np.where(visible, scores, -np.inf)
        # an online softmax that never updates the running max of its first 128-key block
        seen = scores[..., :128] if bug == "first_block_max" else scores
        row_max = np.max(seen, axis=-1, keepdims=True, initial=-np.inf)
        shift = 0.0 if bug == "no_max_shift" else np.where(np.isfinite(row_max), row_max, 0)
        exponentials = np.exp(scores - shift)
        total = exponentials.sum(axis=-1, keepdims=True)
        if bug == "nan_masked_rows":
            weights = exponentials / total                              # 0/0 on a masked row
        else:
            weights = np.where(total > 0, exponentials / np.where(total > 0, total, 1), 0)
        # a key of weight 0 contributes nothing, even NaN hidden behind the mask
        terms = np.where(weights[..., None] != 0, weights[..., None] * value[..., None, :, :], 0)
        return terms.sum(axis=-2).astype(output_dtype)                  # (B, Hq, L, Ev)


CAUSAL_CASES = {"causal", "causal_query_shorter", "causal_query_longer", "gqa_causal",
                "causal_with_mask"}
BUGS = {  # the mistake -> standard cases that must catch it (others may too)
    "no_scale": {"aligned", "odd_lengths", "head_dim_128", "gqa", "bool_mask", "long_rows"},
    "causal_off_by_one": CAUSAL_CASES,
    "inverted_mask": {"bool_mask", "padding_mask", "window_mask", "fully_masked_rows",
                      "causal_with_mask", "nan_behind_mask"},
    "no_max_shift": {"huge_scores", "scale_one"},
    "gqa_modulo": {"gqa", "gqa_causal"},
    "mask_of_head_0": {"per_head_mask"},
    "first_block_max": {"long_rows_huge_scores"},
    "nan_masked_rows": {"fully_masked_rows", "fully_masked_neg_inf"},
    # plain_attention takes no softcap or window keyword, so those cases are skipped
    "float16_accumulation": STANDARD_CASES - {"empty_queries", "empty_keys", "softcap",
                                              "softcap_masked", "causal_window"},
}


def failed_cases(report):
    return {result.name for result in report.failures}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_plain_attention_without_a_bug_conforms(dtype):
    assert check(plain_attention, dtype=dtype, progress=False).passed


@pytest.mark.parametrize("bug", sorted(BUGS))
def test_each_bug_is_caught_by_the_standard_suite(bug):
    # strict: a bug that shows on a hazard case (nan_behind_mask) is caught there too
    report = check(functools.partial(plain_attention, bug=bug), progress=False, name=bug,
                   strict=True)
    assert not report.passed
    missed = BUGS[bug] - failed_cases(report)
    assert not missed, f"{bug} escaped {sorted(missed)}:\n{report.summary()}"


def test_the_pytorch_rule_catches_a_missing_scale_and_passes_attnref():
    broken = check(functools.partial(plain_attention, bug="no_scale"), rule="pytorch",
                   progress=False)
    assert BUGS["no_scale"] <= failed_cases(broken)
    assert check(attnref_numpy, rule="pytorch", progress=False).passed


def for_profile(backend, semantics):
    """attnref's ``backend`` speaking ``semantics``: its bool-mask polarity
    and causal alignment."""
    def attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                  scale=None, enable_gqa=False, *, softcap=None, window=None):
        if (attn_mask is not None and attn_mask.dtype == bool
                and semantics.mask_true_means == "masked_out"):
            attn_mask = ~attn_mask
        output = backend(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                         softcap=softcap, window=window,
                         causal_alignment=semantics.alignment(query.shape[-2], key.shape[-2]))
        if semantics.masked_rows == "nan":   # the profile's NaN rows, from attnref's zero rows
            lse = scaled_dot_product_attention(
                query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                softcap=softcap, window=window, return_lse=True, backend="numpy",
                causal_alignment=semantics.alignment(query.shape[-2], key.shape[-2])).lse
            output = np.where(np.isneginf(lse)[..., None], np.nan, output).astype(output.dtype)
        return output
    return attention


@pytest.mark.parametrize("semantics", sorted(PROFILES))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("backend", [attnref_numpy, attnref_c], ids=["numpy", "c"])
def test_attnref_backends_conform_under_every_profile_they_express(backend, dtype, semantics):
    profile = PROFILES[semantics]
    if profile.masked_rows == "uniform":
        pytest.skip("attnref's backends give 0 (or NaN) for a fully masked row; the jax "
                    "profile's uniform rows are not among their options")
    if backend is attnref_c and not kernel.available():
        pytest.skip(f"C kernel unavailable: {kernel.info()['reason']}")
    report = check(for_profile(backend, profile), dtype=dtype, semantics=semantics,
                   progress=False)
    assert report.passed, report.summary()


# Measured with torch 2.13.0+cpu (docs/torch-2.13-conformance.md): in every
# dtype and under both rules nothing fails; the one hazard is NaN leaking from
# keys and values hidden behind the mask (0 * NaN = NaN in the weighted sum),
# which torch never promised, and a failure under strict.
TORCH_2_13_HAZARDS = {"nan_behind_mask"}


def torch_2_13():
    torch = pytest.importorskip("torch")
    if not torch.__version__.startswith("2.13."):
        pytest.skip(f"verdicts are recorded for torch 2.13, this is {torch.__version__}")


@pytest.mark.parametrize("rule", ["flash", "pytorch"])
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_torch_2_13_verdicts_are_as_recorded(dtype, rule):
    torch_2_13()
    report = check(torch_sdpa, dtype=dtype, rule=rule, progress=False)
    assert report.passed and not failed_cases(report), report.summary()
    assert {result.name for result in report.hazards} == TORCH_2_13_HAZARDS
    hazard = report.hazards[0]
    assert hazard.hazard == "hidden_nonfinite" and "NaN where the reference" in hazard.reason
    strict = check(torch_sdpa, dtype=dtype, rule=rule, progress=False, strict=True)
    assert failed_cases(strict) == TORCH_2_13_HAZARDS and not strict.passed


def test_torch_with_mha_polarity_masks_has_the_same_verdicts():
    torch_2_13()
    report = check(torch_mha_masks, semantics="torch_mha", progress=False)
    assert report.passed and {result.name for result in report.hazards} == TORCH_2_13_HAZARDS


def test_a_polarity_mismatch_is_caught():
    pytest.importorskip("torch")
    report = check(torch_sdpa, semantics="torch_mha", progress=False)
    assert {"bool_mask", "padding_mask", "window_mask"} <= failed_cases(report)


def test_summary_lists_every_case_with_its_verdict():
    report = check(functools.partial(plain_attention, bug="gqa_modulo"), suite="quick",
                   progress=False, name="modulo heads")
    table = report.summary()
    assert table.startswith("modulo heads: suite 'quick'")
    lines = table.splitlines()
    for result in report.results:
        row = next(line for line in lines if line.startswith(result.name + " "))
        assert result.status.upper() in row
    assert "7 pass, 1 fail, 0 error, 0 hazard, 0 skip" in table
    assert "reproduce gqa: attnref.testing.case_inputs('quick', 'gqa'" in table


def test_report_round_trips_through_json():
    report = check(functools.partial(plain_attention, bug="no_max_shift"), suite="quick",
                   progress=False)
    as_dict = report.to_dict()
    assert json.loads(json.dumps(as_dict)) == as_dict
    assert as_dict["passed"] is False and as_dict["counts"]["fail"] == 1
    assert [result["name"] for result in as_dict["results"]] == list(SUITES["quick"])


def test_assert_conforms_raises_with_the_table():
    with pytest.raises(AssertionError, match="does not conform") as raised:
        assert_conforms(functools.partial(plain_attention, bug="causal_off_by_one"),
                        suite="quick")
    assert "causal                   FAIL" in str(raised.value)
    assert assert_conforms(attnref_numpy, suite="quick").passed


def test_unclaimed_capabilities_skip_cases_and_list_them():
    claimed = CAPABILITIES - {"gqa", "float_mask"}
    report = check(attnref_numpy, suite="quick", capabilities=claimed, progress=False)
    skipped = {result.name: result.reason for result in report.results
               if result.status == "skip"}
    assert skipped == {"gqa": "needs gqa", "float_mask": "needs float_mask"}
    assert report.passed and report.counts()["skip"] == 2
    assert "gqa                      SKIP" in report.summary()


def test_an_exception_is_an_error_verdict():
    def refuses(query, key, value, attn_mask=None, **options):
        if attn_mask is not None:
            raise NotImplementedError("no masks here")
        return attnref_numpy(query, key, value, **options)

    report = check(refuses, suite="quick", progress=False)
    errors = {result.name: result.reason for result in report.results
              if result.status == "error"}
    assert errors == {name: "NotImplementedError: no masks here"
                      for name in ("bool_mask", "float_mask", "fully_masked_rows")}
    assert not report.passed


@pytest.mark.parametrize("option, value", [("suite", "huge"), ("semantics", "tensorflow"),
                                           ("rule", "numpy"), ("capabilities", {"gqa", "fp8"})])
def test_unknown_options_are_refused_by_name(option, value):
    named = "fp8" if option == "capabilities" else value
    with pytest.raises(ValueError, match=named):
        check(attnref_numpy, progress=False, **{option: value})


def test_reproducers_rebuild_the_inputs_the_implementation_saw():
    calls = []

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        query, value = args[0], args[2]
        return np.full(query.shape[:-1] + value.shape[-1:], np.nan, query.dtype)

    report = check(spy, suite="quick", dtype="float64", semantics="torch_mha", seed=7,
                   progress=False)
    assert len(calls) == len(report.results)
    for result, (args, kwargs) in zip(report.results, calls):
        rebuilt_args, rebuilt_kwargs = eval(result.reproducer, {"attnref": attnref})
        for rebuilt, original in zip(rebuilt_args, args, strict=True):
            np.testing.assert_array_equal(rebuilt, original)
        assert rebuilt_kwargs.keys() == kwargs.keys()
        for name, original in kwargs.items():
            np.testing.assert_array_equal(rebuilt_kwargs[name], original)


def test_progress_goes_to_stderr(capsys):
    check(attnref_numpy, suite="quick", progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines()[0] == f"[1/{len(SUITES['quick'])}] aligned: pass"


def test_the_full_suite_passes_attnref():
    """One smoke run of the long suite, on the kernel when it is compiled."""
    backend = attnref_c if kernel.available() else attnref_numpy
    assert check(backend, suite="full", progress=False).passed


def returning(transform):
    """attnref's NumPy backend with its output passed through ``transform``
    (output, query) -> what the implementation returns."""
    def attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                  scale=None, enable_gqa=False):
        output = attnref_numpy(query, key, value, attn_mask, dropout_p, is_causal, scale,
                               enable_gqa)
        return transform(output, query)
    return attention


@pytest.mark.parametrize("transform, reason", [
    (lambda output, query: output.astype(np.float64), "output dtype float64, expected float32"),
    (lambda output, query: output.tolist(), "returned a list, expected an ndarray"),
    (lambda output, query: output[..., :1, :], "output shape"),
])
def test_what_comes_back_is_checked_not_only_its_numbers(transform, reason):
    report = check(returning(transform), suite="quick", progress=False)
    assert not report.passed
    assert all(result.status == "fail" and reason in result.reason
               for result in report.results), report.summary()


def test_an_output_sharing_memory_with_an_input_fails():
    def aliasing(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                 scale=None, enable_gqa=False):
        value[...] = attnref_numpy(query, key, value, attn_mask, dropout_p, is_causal, scale,
                                   enable_gqa) if query.shape == value.shape else value
        return value
    report = check(aliasing, suite="quick", progress=False)
    aligned = next(result for result in report.results if result.name == "aligned")
    assert aligned.status == "fail"
    assert aligned.reason == "output shares memory with the value input"


def test_an_input_written_to_fails():
    def scribbling(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                   scale=None, enable_gqa=False):
        output = attnref_numpy(query, key, value, attn_mask, dropout_p, is_causal, scale,
                               enable_gqa)
        key[...] = 0
        return output
    report = check(scribbling, suite="quick", progress=False)
    assert {result.reason for result in report.results} == {"the key input was written to"}


def leaky(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
          enable_gqa=False):
    """attnref, except that NaN anywhere in key or value reaches every output
    (as a dense weights @ value does)."""
    output = attnref_numpy(query, key, value, attn_mask, dropout_p, is_causal, scale,
                           enable_gqa)
    if np.isnan(key).any() or np.isnan(value).any():
        output = output * np.float32(np.nan)
    return output


def test_nan_behind_a_mask_is_a_hazard_not_a_failure():
    report = check(leaky, progress=False)
    assert report.passed and not report.failures
    assert [result.name for result in report.hazards] == ["nan_behind_mask"]
    hazard = report.hazards[0]
    assert hazard.status == "hazard" and hazard.hazard == "hidden_nonfinite"
    assert "NaN or inf entries in masked keys and values" in hazard.reason
    assert "hazard nan_behind_mask" in report.summary()
    as_dict = report.to_dict()
    assert as_dict["hazards"] == ["nan_behind_mask"] and as_dict["counts"]["hazard"] == 1
    assert json.loads(json.dumps(as_dict)) == as_dict
    strict = check(leaky, progress=False, strict=True)
    assert not strict.passed and [result.name for result in strict.failures] == ["nan_behind_mask"]


def test_a_dtype_not_claimed_skips_every_case():
    report = check(attnref_numpy, suite="quick", dtype="float16", progress=False,
                   capabilities=CAPABILITIES - {"float16"})
    assert {result.reason for result in report.results} == {"needs float16"}


def test_bfloat16_runs_when_ml_dtypes_is_installed():
    pytest.importorskip("ml_dtypes")
    report = check(attnref_numpy, suite="quick", dtype="bfloat16", progress=False)
    assert report.dtype == "bfloat16" and report.passed, report.summary()


def test_a_signature_without_softcap_skips_the_softcap_cases():
    report = check(plain_attention, progress=False)
    skipped = {result.name: result.reason for result in report.results
               if result.status == "skip"}
    assert skipped == {"softcap": "needs softcap", "softcap_masked": "needs softcap",
                       "causal_window": "needs window"}
