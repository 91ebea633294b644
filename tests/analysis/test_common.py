"""attnref.analysis._common: the one check that weights are distributions,
and that every public function of attnref.analysis taking weights runs it."""
import doctest
import inspect
import threading

import numpy as np
import pytest

from attnref import analysis
from attnref.analysis import (_common, diagnostics, flow, heads, positions, quality, regularizers,
                              tokens, vectors)
from attnref.analysis._common import (as_array, as_weights, check_distribution,
                                      distribution_tolerance)
from attnref.numerics import softmax

MODULES = (tokens, positions, heads, flow, vectors, quality, diagnostics, regularizers)
PUBLIC_MODULES = {module.__name__ for module in MODULES}
LAYERS, H, T = 2, 3, 4
TOKENS = ["[CLS]", "the", "cat", "[SEP]"]


def test_docstring_examples():
    failures, tried = doctest.testmod(_common)
    assert tried > 0 and failures == 0


def weight_taking_functions():
    """Every public function of attnref.analysis (its modules included) with
    a ``weights`` parameter, by name."""
    found = {}
    for module in (analysis, *MODULES):
        for name, function in vars(module).items():
            if (inspect.isfunction(function) and not name.startswith("_")
                    and function.__module__ in PUBLIC_MODULES
                    and "weights" in inspect.signature(function).parameters):
                found[name] = function
    return found


# How to call a function that needs more than weights (L, S) with leading dims
# (layers, H); every other one is called as function(weights).
CALLS = {
    "interpret_weights": lambda function, weights: function(weights[0, 0], TOKENS),
    "special_token_attention": lambda function, weights: function(weights, TOKENS),
    "content_function_attention":
        lambda function, weights: function(weights, ["X", "DET", "NOUN", "X"]),
    "detect_head": lambda function, weights: function(weights, "previous_token"),
    "head_output_norms": lambda function, weights: function(weights, np.ones((LAYERS, H, T, 2))),
    "head_importance": lambda function, weights: function(weights, np.ones((LAYERS, H, T, 2))),
    "vector_composition": lambda function, weights: function(weights, np.ones((T, 2))),
    "similarity_attention_correlation":
        lambda function, weights: function(np.eye(T), weights),
}
FUNCTIONS = weight_taking_functions()


def call(name, weights):
    return CALLS.get(name, lambda function, array: function(array))(FUNCTIONS[name], weights)


def distributions(rng):
    """(layers, H, L, S) softmax rows, with one fully masked (all-zero) row."""
    weights = softmax(rng.normal(scale=2.0, size=(LAYERS, H, T, T)))
    weights[1, 2, 3] = 0.0
    return weights


def test_the_discovery_finds_the_catalogue():
    """A new metric taking weights is found by weight_taking_functions and
    so runs in the tests below; this checks the discovery found the
    catalogue and that CALLS names only real functions."""
    assert {"entropy", "detect_head", "attention_rollout", "diagnose", "entropy_regularizer",
            "clip_attention_weights", "similarity_attention_correlation"} <= set(FUNCTIONS)
    assert set(CALLS) <= set(FUNCTIONS)


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_accepts_distributions_with_fully_masked_rows(name, rng):
    call(name, distributions(rng))


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_results_do_not_hold_the_checked_view(name, rng):
    """as_weights' read-only views stay inside the call: what a metric
    returns is the caller's to write, and the registry of checked views
    empties."""
    result = call(name, distributions(rng))
    assert len(_common._CHECKED) == 0, f"{name}'s result keeps a checked view alive"
    del result


def test_a_checked_view_is_checked_once_and_read_only(rng, monkeypatch):
    checks = []
    monkeypatch.setattr(_common, "check_distribution", lambda *args, **kwargs: checks.append(1))
    weights = distributions(rng)
    checked = as_weights(weights)
    assert checked.base is weights and not checked.flags.writeable and weights.flags.writeable
    assert as_weights(checked) is checked and len(checks) == 1
    analysis.diagnose(checked)                     # every metric inside reads it unchecked
    assert len(checks) == 1
    analysis.diagnose(weights)                     # the caller's array: checked at the entrance
    assert len(checks) == 2


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_refuses_rows_that_do_not_sum_to_1_or_0(name, rng):
    weights = distributions(rng) * 5.0
    with pytest.raises(ValueError, match=r"weights rows must sum to 1 \(or 0 for fully masked "
                                         r"rows\); row \[(\d+, )*\d+\] sums to 5"):
        call(name, weights)


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_refuses_negative_entries(name, rng):
    scores = rng.normal(size=(LAYERS, H, T, T))  # raw scores passed as weights
    with pytest.raises(ValueError, match=r"weights must be >= 0 \(attention weights\); "
                                         r"weights\[(\d+, )*\d+\] is -"):
        call(name, scores)


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_the_check_can_be_skipped(name, rng):
    weights = distributions(rng) * 0.5  # rows of 0.5: the first keys of a map, say
    with analysis.skip_distribution_check():
        call(name, weights)
    with pytest.raises(ValueError, match="sums to 0.5"):
        call(name, weights)


def test_the_message_names_the_row_and_its_sum():
    weights = np.full((2, 3, 4), 0.25)
    weights[1, 2] = 1.25
    with pytest.raises(ValueError) as raised:
        analysis.entropy(weights)
    assert str(raised.value) == (
        "weights rows must sum to 1 (or 0 for fully masked rows); row [1, 2] sums to 5 "
        "(attnref.analysis.skip_distribution_check() turns this check off)")


def test_nan_and_inf_are_not_distributions():
    weights = np.full((3, 2), 0.5)
    weights[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"weights must not be NaN .* weights\[2, 1\] is nan"):
        analysis.entropy(weights)
    weights[2, 1] = np.inf
    with pytest.raises(ValueError, match=r"row \[2\] sums to inf"):
        analysis.entropy(weights)


def test_the_issue_examples_now_say_what_is_wrong(rng):
    """Rows of 5.0 gave an "entropy" of -24.1; raw scores NaN with a RuntimeWarning."""
    with pytest.raises(ValueError, match="sums to 20"):
        analysis.entropy(np.full((3, 4), 5.0))
    with pytest.raises(ValueError, match=">= 0"):
        analysis.entropy(rng.normal(size=(3, 4)))
    with analysis.skip_distribution_check():  # the formula, as given
        assert analysis.entropy(np.full((3, 4), 5.0)) == pytest.approx([-20 * np.log(5)] * 3)


def test_a_hint_ends_the_message():
    with pytest.raises(ValueError, match="sums to 3.5; pass pre-softmax scores as scores= "):
        analysis.entropy_regularizer(np.array([[2.0, 1.0, 0.5]]))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("n_keys", [1, 7, 128, 4096])
def test_softmax_rounding_passes(dtype, n_keys, rng):
    """Softmax rows rounded to dtype (computed in float32 or float64, as
    attnref and PyTorch do) are within the tolerance."""
    scores = rng.normal(scale=4.0, size=(64, n_keys))
    for computed_in in (np.float32, np.float64):
        check_distribution(softmax(scores.astype(computed_in)).astype(dtype))


def test_the_tolerance_scales_with_dtype_and_row_length():
    assert distribution_tolerance(np.float32, 512) == pytest.approx(
        16 * np.sqrt(512) * np.finfo(np.float32).eps / 2)
    assert distribution_tolerance(np.float64, 8) == distribution_tolerance(np.float32, 8)
    assert distribution_tolerance(np.float16, 8) > 8 * distribution_tolerance(np.float32, 8)
    row = np.full((1, 4), 0.25, dtype=np.float32)
    row[0, 0] += 4 * distribution_tolerance(np.float32, 4)
    with pytest.raises(ValueError, match="sums to 1.0000"):
        check_distribution(row)
    check_distribution(row.astype(np.float16))  # far below float16's rounding


def test_the_switch_is_restored_nested_and_per_thread():
    bad = np.full((2, 2), 1.0)
    seen_in_thread = []

    def other_thread():
        try:
            analysis.entropy(bad)
        except ValueError:
            seen_in_thread.append("checked")

    with analysis.skip_distribution_check():
        with analysis.skip_distribution_check():
            analysis.entropy(bad)
        analysis.entropy(bad)                      # still off after the inner block
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
    assert seen_in_thread == ["checked"]
    with pytest.raises(ValueError):
        analysis.entropy(bad)
    with pytest.raises(ZeroDivisionError), analysis.skip_distribution_check():
        raise ZeroDivisionError
    with pytest.raises(ValueError):               # restored after an exception too
        analysis.entropy(bad)


def test_as_array_checks_dtype_and_dims_only():
    assert as_array([[3, -1]], "values").dtype == np.float64
    with pytest.raises(TypeError, match="values must be a real array, got dtype <U1"):
        as_array([["a"]], "values")
    with pytest.raises(ValueError, match=r"w_o must have at least 2 dims .* got shape \(3,\)"):
        as_array([1.0, 2.0, 3.0], "w_o")
    weights = np.eye(3, dtype=np.float32)
    assert as_array(weights, "weights") is weights  # no copy
    assert as_weights(weights).base is weights      # a view, no copy
    assert as_weights(np.zeros((2, 0))).shape == (2, 0)
