"""What every plot shares: the lazy matplotlib import, new figures, saving,
argument checks and token tick labels.

matplotlib is the optional extra ``plot``; it is imported here, inside
functions, so that ``import attnref.viz`` works without it. Figures are
plain :class:`matplotlib.figure.Figure` objects, not registered with
``pyplot``: nothing accumulates in pyplot's figure list, no GUI backend is
needed, and Jupyter displays a returned figure like any other.
"""
from __future__ import annotations

import math
import os
import textwrap

import numpy as np

from ..analysis._common import as_array, check_tokens

INSTALL_HINT = 'pip install "attnref[plot]"'
SAVE_SUFFIXES = (".png", ".svg")
MAX_TICK_LABELS = 60
"""At most this many token labels per axis; beyond, every n-th token is labelled."""
TOKEN_WIDTH = 12
"""Token labels longer than this are cut (with an ellipsis)."""
DPI = 100
CMAP = "Blues"
"""The seed's colour map (``sns.heatmap(..., cmap='Blues')``): 0 is white."""


def require_matplotlib():
    """The ``matplotlib`` module, or an ImportError that says how to get it."""
    try:
        import matplotlib
        import matplotlib.figure  # noqa: F401  (the submodule new_figure uses)
    except ImportError as missing:
        raise ImportError(
            f"attnref.viz plots need matplotlib, which is not installed: {INSTALL_HINT}"
        ) from missing
    return matplotlib


def new_figure(width, height):
    """A constrained-layout Figure of ``width`` x ``height`` inches."""
    matplotlib = require_matplotlib()
    return matplotlib.figure.Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def check_path(path):
    """``path`` as a str ending in .png or .svg (any case), or None."""
    if path is None:
        return None
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in SAVE_SUFFIXES:
        raise ValueError(f"path must end in .png or .svg (the format is read from the "
                         f"suffix), got {path!r}")
    return path


def save(figure, path):
    """Write ``figure`` to ``path`` (checked by :func:`check_path`) at the
    figure's own dpi, so a PNG's pixels match the figure's layout."""
    if path is not None:
        figure.savefig(path, dpi=figure.dpi)
    return figure


def suptitle(figure, text, fontsize=12.0):
    """A figure title, wrapped to the figure's width (about 0.55 em a character)."""
    width = figure.get_size_inches()[0] * 72.0 / (0.55 * fontsize)
    figure.suptitle(textwrap.fill(text, width=max(int(width), 20)), fontsize=fontsize)


def check_ax(ax):
    if ax is None:
        return None
    matplotlib = require_matplotlib()
    import matplotlib.axes
    if not isinstance(ax, matplotlib.axes.Axes):
        raise TypeError(f"ax must be a matplotlib Axes or None, got {type(ax).__name__}")
    return ax


def check_title(title):
    if title is not None and not isinstance(title, str):
        raise TypeError(f"title must be a str or None, got {type(title).__name__}")
    return title


def weights_array(weights, ndim, shape_text, name="weights"):
    """``weights`` as a float array with exactly ``ndim`` dims, no inf and
    at least one finite value (NaN marks a fully masked row and is drawn
    grey); errors name the argument, the shape wanted and the shape given."""
    array = as_array(weights, name, min_ndim=1)
    if array.ndim != ndim:
        raise ValueError(f"{name} must have shape {shape_text}, got shape {array.shape}")
    if 0 in array.shape:
        raise ValueError(f"{name} must not be empty, got shape {array.shape}")
    if np.any(np.isinf(array)):
        raise ValueError(f"{name} must not contain inf")
    if np.all(np.isnan(array)):
        raise ValueError(f"{name} is all NaN: nothing to draw")
    return array


def token_list(tokens, length, name="tokens"):
    """``tokens`` as ``length`` strings; None gives the positions "0", "1", ..."""
    if tokens is None:
        return [str(i) for i in range(length)]
    if isinstance(tokens, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of strings (one per position), "
                        f"got a single {type(tokens).__name__}")
    return check_tokens(tokens, length, name=name)


def colour_range(values):
    """(vmin, vmax) for a weight map: from 0 (or the minimum, if negative)
    to the largest finite value, never an empty range."""
    finite = values[np.isfinite(values)]
    low = min(0.0, float(finite.min()))
    high = float(finite.max())
    return low, high if high > low else low + 1.0


def cmap(name=CMAP):
    """The colour map with NaN (fully masked rows) in light grey."""
    matplotlib = require_matplotlib()
    return matplotlib.colormaps[name].with_extremes(bad="#d9d9d9")


def _cut(token, width=TOKEN_WIDTH):
    return token if len(token) <= width else token[:width - 1] + "\u2026"


def tick_positions(count, max_labels=MAX_TICK_LABELS):
    """Every ``ceil(count / max_labels)``-th position, starting at 0."""
    return list(range(0, count, max(1, math.ceil(count / max_labels))))


def tick_labels(tokens, positions):
    """Token labels at ``positions``; when the labels are thinned, each one
    carries its position too (``"40 mouse"``), since neighbours are missing."""
    thinned = len(positions) < len(tokens)
    return [f"{i} {_cut(tokens[i])}" if thinned else _cut(tokens[i]) for i in positions]


def label_fontsize(axis_inches, n_labels, largest=10.0, smallest=5.0):
    """A font size (points) that lets ``n_labels`` labels share
    ``axis_inches`` without overlapping: about 70% of the room per label."""
    room = axis_inches * 72.0 / max(n_labels, 1)
    return float(np.clip(0.7 * room, smallest, largest))


def set_token_ticks(ax, query_tokens, key_tokens, fontsize_rows, fontsize_cols):
    """Token labels on both axes of a map drawn with ``imshow``: queries on
    the rows (left), keys on the columns (bottom, rotated)."""
    rows = tick_positions(len(query_tokens))
    cols = tick_positions(len(key_tokens))
    ax.set_yticks(rows)
    ax.set_yticklabels(tick_labels(query_tokens, rows), fontsize=fontsize_rows)
    ax.set_xticks(cols)
    steep = len(cols) > 20
    ax.set_xticklabels(tick_labels(key_tokens, cols), fontsize=fontsize_cols,
                       rotation=90 if steep else 45, ha="center" if steep else "right",
                       rotation_mode="default" if steep else "anchor")
    ax.tick_params(length=2, pad=2)
