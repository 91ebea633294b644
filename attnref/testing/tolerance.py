"""The equivalence rule, stated once.

FlashAttention's test policy (Dao et al., ``tests/test_flash_attn.py``): an
implementation agrees with the reference when its error against a
higher-precision reference is at most twice the error of a plain
implementation run in the same precision, plus a small absolute floor:

.. math::
    \\max |o - o_{w}| \\le 2 \\max |o_{\\text{ref}, d} - o_{w}| + \\text{floor},
    \\qquad \\text{floor} = 4\\, \\varepsilon_d \\max(1, \\max |v|)

where :math:`o_{w}` is attnref's NumPy reference in a dtype wider than the
candidate's (:func:`reference_dtype`: float64 for float32 and narrower,
long double for float64), :math:`o_{\\text{ref}, d}` the same reference
computed in the candidate's dtype ``d``, and :math:`\\varepsilon_d` that
dtype's machine epsilon. A reference no wider than the candidate would make
the baseline error 0 and leave only the floor.

The wide reference is computed from the candidate's own inputs (rounded to
``d``, then widened), so it is the exact answer for what the candidate was
given. Computed from unrounded inputs it would add the same input-rounding
error to the candidate and the baseline, and a baseline whose own rounding
happens to cancel part of it would make an accurate candidate fail. The floor is a
few units of rounding at the scale of the values (outputs are convex
combinations of value rows, so ``max |v|`` bounds them); it matters only when
the same-dtype reference happens to be exact.

NaN is compared as a value: a NaN where the reference has a number
(or a number where it has NaN) is an unbounded error.
"""
from __future__ import annotations

import numpy as np

FACTOR = 2.0
FLOOR_EPS = 4.0


def reference_dtype(dtype):
    """The dtype of the reference a ``dtype`` candidate is measured against.

    float64 for float32 and narrower; ``numpy.longdouble`` for float64 (80-bit
    extended on x86, 64 significand bits; where long double is no wider than
    double the float64 rule degenerates to its floor).
    """
    dtype = np.dtype(dtype)
    return np.dtype(np.longdouble) if dtype.itemsize >= 8 else np.dtype(np.float64)


def max_abs_error(candidate, reference):
    """Largest ``|candidate - reference|``; NaN/inf mismatches count as inf.

    Positions where both are NaN, or both the same infinity, agree.
    """
    candidate = np.asarray(candidate, dtype=np.longdouble)
    reference = np.asarray(reference, dtype=np.longdouble)
    if candidate.shape != reference.shape:
        raise ValueError(
            f"candidate shape {candidate.shape} differs from reference shape "
            f"{reference.shape}")
    if candidate.size == 0:
        return 0.0
    same = (candidate == reference) | (np.isnan(candidate) & np.isnan(reference))
    with np.errstate(invalid="ignore"):
        difference = np.where(same, 0.0, np.abs(candidate - reference))
    return float(np.max(np.where(np.isnan(difference), np.inf, difference)))


def equivalence_bound(baseline_error, dtype, value_magnitude):
    """The largest error the rule accepts.

    Parameters
    ----------
    baseline_error : float
        Error of the same-dtype NumPy reference against the float64 one.
    dtype : numpy dtype of the candidate's computation
    value_magnitude : float
        ``max |value|`` of the case.
    """
    eps = float(np.finfo(np.dtype(dtype)).eps)
    return FACTOR * baseline_error + FLOOR_EPS * eps * max(1.0, float(value_magnitude))


def reference_errors(candidate, reference, baseline, value):
    """``(candidate error, bound)`` for one case, both against ``reference``.

    ``baseline`` is the same-dtype reference output, ``reference`` the one
    computed in :func:`reference_dtype`; the floor's scale is ``max |value|``
    over finite entries (pass the reference output itself when values hidden
    behind a mask may hold huge numbers: outputs are convex combinations of
    visible values, so it is the tighter scale) and ``value`` the case's value array. The candidate conforms
    when ``error <= bound``.
    """
    value = np.asarray(value)
    finite = value[np.isfinite(value)]
    magnitude = float(np.max(np.abs(finite))) if finite.size else 0.0
    return (max_abs_error(candidate, reference),
            equivalence_bound(max_abs_error(baseline, reference),
                              np.asarray(baseline).dtype, magnitude))


def plain_score_allowance(query, key, scale, dtype, enable_gqa=False):
    r"""What the rule adds for a candidate that sums scores plainly
    (the C kernel's ``scores="fast"``): one rounding of the largest score.

    .. math::
        \text{allowance} = \varepsilon_d\, \text{scale}\,
                           \max_{i,j} \sum_c |q_{ic}|\,|k_{jc}|

    for the lse, times :math:`\max |v|` for the output.

    Why: the rule's baseline (the NumPy reference in the same dtype) also
    sums scores plainly, so the candidate's score errors are a second random
    draw of the baseline's size, and "twice the baseline" fails whenever the
    candidate's draw is more than twice the baseline's. Where :math:`q \cdot k`
    cancels heavily (:math:`|q \cdot k| \ll \sum_c |q_c k_c|`) the baseline's
    draw can be near 0 while the candidate's is not. A score error
    :math:`\delta s_j` moves the lse by at most :math:`\max_j |\delta s_j|`
    and the output by at most :math:`2 \max |v| \max_j |\delta s_j|`
    (:math:`\partial o / \partial s_j = w_j (v_j - o)`); a plain dot's error
    is at most :math:`\gamma_E \sum_c |q_c k_c|` (Higham, "Accuracy and
    Stability of Numerical Algorithms", 2002, eq. 3.5) and typically about
    :math:`\sqrt{E}\, u` times it (Higham & Mary 2019); the allowance takes
    one unit :math:`\varepsilon_d = 2u` of it. Measured: in the ``ci``
    Hypothesis profile, ``tests/test_kernel.py``'s flash-rule property found
    two float64 cases (causal, E = 128 and 256) where ``scores="fast"`` was
    1.01x and 1.10x the rule's bound and this allowance covers both;
    ``scores="exact"`` (rounded once) needs none and is held to the rule
    alone. No other candidate gets it: the oracle's teeth tests apply the
    rule without it.

    Parameters
    ----------
    query : (..., L, E)
    key : (..., S, E), or (..., Hkv, S, E) with ``enable_gqa``
    scale : float
        The call's score scale.
    dtype : numpy dtype of the candidate's computation
    enable_gqa : bool
        Query head ``h`` reads key head ``h // (Hq // Hkv)``.
    """
    query = np.abs(np.asarray(query, dtype=np.float64))
    key = np.abs(np.asarray(key, dtype=np.float64))
    if enable_gqa:
        key = np.repeat(key, query.shape[-3] // key.shape[-3], axis=-3)
    magnitude = np.matmul(query, np.swapaxes(key, -1, -2))
    finite = magnitude[np.isfinite(magnitude)]
    largest = float(np.max(finite)) if finite.size else 0.0
    return float(np.finfo(np.dtype(dtype)).eps) * float(scale) * largest
