"""attnref.testing.tolerance: the equivalence rule, stated once."""
import numpy as np
import pytest

from attnref.testing.tolerance import (equivalence_bound, max_abs_error, plain_score_allowance,
                                       reference_errors)


def test_max_abs_error_treats_nan_and_inf_as_values():
    assert max_abs_error([1.0, np.nan], [1.5, np.nan]) == 0.5
    assert max_abs_error([np.inf], [np.inf]) == 0.0
    assert max_abs_error([np.nan], [1.0]) == np.inf
    assert max_abs_error([1.0], [np.nan]) == np.inf
    assert max_abs_error([np.inf], [-np.inf]) == np.inf
    assert max_abs_error(np.zeros((0, 3)), np.zeros((0, 3))) == 0.0
    with pytest.raises(ValueError, match=r"candidate shape \(2,\) differs from reference shape \(3,\)"):
        max_abs_error([1.0, 2.0], [1.0, 2.0, 3.0])


def test_bound_is_twice_the_baseline_plus_a_floor_of_four_eps():
    eps32 = np.finfo(np.float32).eps
    assert equivalence_bound(1e-6, np.float32, 0.5) == pytest.approx(2e-6 + 4 * eps32)
    assert equivalence_bound(0.0, np.float32, 10.0) == pytest.approx(40 * eps32)


def test_reference_errors_reads_the_value_scale():
    reference64 = np.array([1.0, 2.0])
    baseline = np.array([1.0, 2.0 + 1e-6], np.float32)
    candidate = np.array([1.0 + 2e-6, 2.0])
    error, bound = reference_errors(candidate, reference64, baseline, np.array([3.0, np.nan]))
    assert error == pytest.approx(2e-6)
    assert bound == pytest.approx(2 * abs(np.float32(2.0 + 1e-6) - 2.0)
                                  + 4 * np.finfo(np.float32).eps * 3.0)


def test_plain_score_allowance_is_one_eps_of_the_largest_absolute_score():
    """eps * scale * max_ij sum_c |q_ic| |k_jc|, key heads repeated under GQA,
    inf and NaN magnitudes left out."""
    query = np.array([[[1.0, -2.0]], [[0.5, 0.5]]])          # (Hq=2, L=1, E=2)
    key = np.array([[[3.0, 1.0], [-1.0, 4.0]]])               # (Hkv=1, S=2, E=2)
    eps32 = float(np.finfo(np.float32).eps)
    # head 0: |q|.|k| = 1*3 + 2*1 = 5 and 1*1 + 2*4 = 9; head 1: 2 and 2.5
    assert plain_score_allowance(query, key, 0.5, np.float32, enable_gqa=True) == pytest.approx(
        eps32 * 0.5 * 9.0)
    assert plain_score_allowance(query[:1, 0], key[0], 1.0, np.float64) == pytest.approx(
        float(np.finfo(np.float64).eps) * 9.0)
    assert plain_score_allowance(np.full((1, 2), np.inf), key[0], 1.0, np.float32) == 0.0
    assert plain_score_allowance(np.zeros((0, 2)), key[0], 1.0, np.float32) == 0.0
