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
* This package depends on NumPy alone.
"""
from __future__ import annotations

import dataclasses

import numpy as np


def as_weights(weights, name="weights", min_ndim=2):
    """``weights`` as a floating ndarray with at least ``min_ndim`` dims.

    Raises a TypeError for non-floating input and a ValueError for too few
    dims, naming ``name``, what arrived and what was expected.
    """
    array = np.asarray(weights)
    if not np.issubdtype(array.dtype, np.floating):
        if np.issubdtype(array.dtype, np.integer) or array.dtype == bool:
            array = array.astype(np.float64)
        else:
            raise TypeError(f"{name} must be a real array, got dtype {array.dtype}")
    if array.ndim < min_ndim:
        raise ValueError(
            f"{name} must have at least {min_ndim} dims (..., L, S), got shape {array.shape}")
    return array


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
