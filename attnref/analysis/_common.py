"""What every analysis metric shares: argument checks, safe logs, records.

Conventions (SPEC "Analysis conventions"):

* ``weights`` are attention maps shaped ``(..., L, S)``: one map, heads,
  layers x heads, batches. Every metric reduces only the dims it is about and
  keeps the leading dims, so ``(layers, heads, L, S)`` gives per-layer,
  per-head tables.
* A row of zeros is a query with no visible key (a fully masked row), not an
  error: row metrics give NaN there and means skip it
  (:func:`mean_over_rows`). A key is *visible* to a row when its weight is
  > 0 (:func:`support`).
* ``weights`` are distributions: every entry >= 0 and every row summing to
  1, or to 0 for a fully masked row. :func:`as_weights`, which every metric
  calls on its ``weights`` at the entrance, checks it (:func:`check_distribution`)
  and raises a ValueError naming the first bad entry or row; inside
  ``with skip_distribution_check():`` it does not, for callers who pass
  something else on purpose (unnormalised rows, a subset of the keys).
  A metric's weights are checked once per call, however many metrics it
  hands them on to (see :func:`as_weights`).
  Arrays that are not attention maps (values, W_O, embeddings, scores,
  detection patterns) go through :func:`as_array`, which checks only the
  dtype and the number of dims.
* This package depends on NumPy alone.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import weakref

import numpy as np

_CHECK_DISTRIBUTIONS = contextvars.ContextVar("attnref_analysis_check_distributions",
                                              default=True)
_CHECKED = weakref.WeakValueDictionary()  # id -> the read-only view as_weights checked

# lambda of the probabilistic bound below: a row sum's rounding error exceeds
# lambda * sqrt(S) * u with probability below 2 exp(-lambda^2 / 2) (~1e-56)
ROUNDING_LAMBDA = 16.0


def as_array(array, name, min_ndim=2):
    """``array`` as a floating ndarray with at least ``min_ndim`` dims
    (integers and bools become float64; no copy otherwise).

    Raises a TypeError for non-real input and a ValueError for too few
    dims, naming ``name``, what arrived and what was expected.
    """
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.floating):
        if np.issubdtype(array.dtype, np.integer) or array.dtype == bool:
            array = array.astype(np.float64)
        else:
            raise TypeError(f"{name} must be a real array, got dtype {array.dtype}")
    if array.ndim < min_ndim:
        raise ValueError(
            f"{name} must have at least {min_ndim} dims (..., L, S), got shape {array.shape}")
    return array


def as_weights(weights, name="weights", min_ndim=2, *, hint=None):
    """``weights``, attention maps (..., L, S), as a floating ndarray with at
    least ``min_ndim`` dims whose rows are distributions.

    :func:`as_array`, then :func:`check_distribution` unless the caller is
    inside :func:`skip_distribution_check`. ``hint`` ends the message of a
    failed check (e.g. where scores should go instead).

    A checked array is returned as a read-only view that is remembered
    (weakly, until it is dropped) as checked: a metric that hands it on to
    other metrics (``diagnose`` calls ``entropy``, ``sink_score``, ...) has
    it checked once, not once per metric. Nothing can write through the
    view, so what was checked is what they read.
    """
    array = as_array(weights, name, min_ndim)
    if not _CHECK_DISTRIBUTIONS.get() or _CHECKED.get(id(array)) is array:
        return array
    check_distribution(array, name, hint=hint)
    checked = array.view()
    checked.flags.writeable = False
    _CHECKED[id(checked)] = checked
    return checked


@contextlib.contextmanager
def skip_distribution_check():
    """Within the ``with`` block, the metrics of :mod:`attnref.analysis`
    accept ``weights`` whose rows are not distributions (negative entries,
    rows that do not sum to 1 or 0) and compute their formula on them as
    given. The setting is per thread (and per asyncio task) and is restored
    when the block ends.

    Examples
    --------
    >>> import numpy as np
    >>> from attnref import analysis
    >>> with analysis.skip_distribution_check():
    ...     analysis.sparsity(np.array([[0.5, 0.3]]), threshold=0.4)  # a row's first keys
    array(0.5)
    """
    token = _CHECK_DISTRIBUTIONS.set(False)
    try:
        yield
    finally:
        _CHECK_DISTRIBUTIONS.reset(token)


def distribution_tolerance(dtype, n_keys):
    r"""How far a row of ``n_keys`` weights of ``dtype`` may sum from 1 (or
    0), and an entry fall below 0, and still count as a distribution.

    .. math:: \tau = \lambda \sqrt{S}\, u, \qquad \lambda = 16,\quad
              u = \max(\epsilon_{dtype}, \epsilon_{float32}) / 2.

    A softmax row's sum is off 1 by the rounding of its normaliser, a sum of
    S terms; by the probabilistic bound of Higham & Mary (2019, "A new
    approach to probabilistic rounding error analysis", SIAM J. Sci.
    Comput. 41(5)) that relative error stays below :math:`\lambda \sqrt{S} u`
    except with probability :math:`2 e^{-\lambda^2/2}`. ``u`` is never
    below float32's: float64 arrays commonly hold maps a model computed in
    float32. Examples: float32, S = 512: 2.2e-5; float16, S = 512: 0.18;
    float64 as float32, S = 8: 2.7e-6. Rows of 5.0, raw scores and
    log-probabilities are far outside.
    """
    unit = max(np.finfo(dtype).eps, np.finfo(np.float32).eps) / 2
    return ROUNDING_LAMBDA * np.sqrt(max(n_keys, 1)) * unit


def check_distribution(weights, name="weights", *, hint=None):
    """Raise a ValueError unless every row of ``weights`` (a floating
    ndarray, (..., L, S)) is a distribution: entries >= 0 (NaN is not) and
    a sum of 1, or 0 for a fully masked row, within
    :func:`distribution_tolerance`.

    Reads ``weights`` twice (its minimum, its row sums accumulated in
    float64) and copies nothing; only a failing check looks for where.
    The message names ``name``, the first bad entry or row and what it
    holds, then ``hint`` when given.
    """
    if weights.size == 0:
        return
    tolerance = distribution_tolerance(weights.dtype, weights.shape[-1])
    advice = (f"; {hint}" if hint else "") + (
        " (attnref.analysis.skip_distribution_check() turns this check off)")
    if not weights.min() >= -tolerance:  # also true for NaN
        where = np.unravel_index(np.argmax(~(weights >= -tolerance)), weights.shape)
        value = weights[where]
        problem = "must not be NaN" if np.isnan(value) else "must be >= 0"
        raise ValueError(f"{name} {problem} (attention weights); {name}{_index(where)} is "
                         f"{value:.6g}{advice}")
    mass = weights.sum(axis=-1, dtype=np.float64)                   # (..., L)
    wrong = ~((np.abs(mass - 1) <= tolerance) | (mass <= tolerance))
    if wrong.any():
        where = np.unravel_index(np.argmax(wrong), mass.shape)
        raise ValueError(f"{name} rows must sum to 1 (or 0 for fully masked rows); row "
                         f"{_index(where)} sums to {mass[where]:.6g}{advice}")


def _index(where):
    """``[2, 5]`` for an index tuple."""
    return "[" + ", ".join(str(int(i)) for i in where) + "]"


def check_tokens(tokens, length, name="tokens"):
    """``tokens`` as a list of ``length`` strings, or a ValueError naming it."""
    tokens = [str(token) for token in tokens]
    if len(tokens) != length:
        raise ValueError(f"{name} must have {length} entries (one per position), got {len(tokens)}")
    return tokens


def support(weights):
    """Bool (..., L, S): keys a row gives positive weight to (its visible keys)."""
    return weights > 0


def row_mass(weights):
    """(..., L): the total weight of each row (1 for a softmax row, 0 for a
    fully masked one)."""
    return weights.sum(axis=-1)


def xlogy(x, y):
    """``x * log(y)`` elementwise, with ``0 * log(0) = 0`` (the entropy
    convention, so no epsilon has to be added)."""
    x, y = np.asarray(x), np.asarray(y)
    result = np.zeros(np.broadcast_shapes(x.shape, y.shape))
    # float64 loops on buffered casts, in place: one float64 array in memory
    # (the result), not float64 copies of x and y and of their nonzero entries
    np.log(y, out=result, where=x != 0, dtype=np.float64)
    np.multiply(result, x, out=result, dtype=np.float64)
    return result


def key_share(weights, key_mask):
    """(...): the mass each non-empty row gives the keys in ``key_mask``,
    averaged over those rows. ``key_mask`` is bool, (S,) or broadcastable
    to (..., L, S)."""
    share_per_row = np.sum(weights * np.asarray(key_mask, dtype=weights.dtype), axis=-1)
    return mean_over_rows(np.where(row_mass(weights) > 0, share_per_row, np.nan))


def mean_over_rows(values, axis=-1):
    """Mean over ``axis`` that skips NaN (fully masked rows); NaN if all are."""
    values = np.asarray(values, dtype=float)
    count = np.sum(~np.isnan(values), axis=axis)
    total = np.nansum(values, axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):  # count 0 -> NaN, by design
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _plain(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if dataclasses.is_dataclass(value):
        return value.to_dict()
    return value


class Record:
    """Mixin for metric results (dataclasses): ``to_dict()`` gives plain
    Python values (arrays become nested lists), ready for JSON."""

    def to_dict(self):
        return {field.name: _plain(getattr(self, field.name))
                for field in dataclasses.fields(self)}
