"""Token vectors in 2-D: the seed's t-SNE picture, with PCA as the default.

Seed note ``attention-weights-and-vectors.md`` ("Visualização e
Interpretação", ``plot_attention_vectors_tsne``): project the vectors to two
dimensions, scatter them coloured by token position (colour bar "Token
Position") and write each token beside its point. The projections are
:func:`attnref.viz.projection.pca` and :func:`attnref.viz.projection.tsne`.
"""
from __future__ import annotations

import numpy as np

from . import projection
from ._figure import (_cut, check_ax, check_path, check_title, new_figure, require_matplotlib,
                      save, tick_positions, token_list)

__all__ = ["plot_attention_vectors"]

_METHODS = ("pca", "tsne")


def plot_attention_vectors(vectors, tokens, method="pca", *, perplexity=None, seed=0,
                           backend="numpy", ax=None, path=None, title=None):
    """Scatter token vectors projected to 2-D, each point labelled with its token.

    Parameters
    ----------
    vectors : array_like, shape (N, D)
        One vector per token, e.g. ``output.hidden_states[-1]`` (the
        residual stream after the last layer) or a layer's attention output.
    tokens : sequence of str, length N, or None
        Point labels; None labels by position.
    method : {"pca", "tsne"}, default "pca"
        ``"pca"``: :func:`attnref.viz.projection.pca` (deterministic, linear;
        axes show the share of variance). ``"tsne"``:
        :func:`attnref.viz.projection.tsne` (neighbourhoods; needs N >= 3).
    perplexity : float, keyword-only, optional
        t-SNE only. Default ``min(30, (N - 1) / 3)``.
    seed : int, keyword-only, default 0
        t-SNE only: the initial layout's seed.
    backend : {"numpy", "sklearn"}, keyword-only, default "numpy"
        t-SNE only: attnref's exact t-SNE, or scikit-learn's ``TSNE`` (which
        must be installed). attnref never picks scikit-learn on its own.
    ax : matplotlib Axes, keyword-only, optional
        Draw into this Axes. Default: a new figure.
    path : str or os.PathLike, keyword-only, optional
        Save as ``.png`` or ``.svg``.
    title : str, keyword-only, optional
        Default: ``"PCA of N vectors"`` or ``"t-SNE of N vectors
        (perplexity p)"``.

    Returns
    -------
    matplotlib.figure.Figure

    Notes
    -----
    Points are coloured by position (``viridis``), as in the seed. At most 60
    points are labelled (every n-th token beyond that); points that land on
    the same spot (equal vectors, or equal up to the projection) share one
    label, "cat, mouse", instead of overprinting. Options that only
    t-SNE reads (``perplexity``, ``backend``) are refused with PCA rather
    than ignored.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if method == "pca" and (perplexity is not None or backend != "numpy"):
        raise ValueError("perplexity and backend apply to method='tsne' only; "
                         f"got perplexity={perplexity!r}, backend={backend!r} with method='pca'")
    require_matplotlib()
    vectors = projection.as_vectors(vectors, min_points=3 if method == "tsne" else 2)
    labels = token_list(tokens, vectors.shape[0], name="tokens")
    ax = check_ax(ax)
    path = check_path(path)
    title = check_title(title)
    count = len(labels)
    if method == "pca":
        result = projection.pca(vectors, k=2)
        ratio = result.explained_variance_ratio
        axis_labels = [f"PC{i + 1} ({100 * ratio[i]:.0f}% of variance)" for i in range(2)]
        default_title = f"PCA of {count} vectors"
    else:
        result = projection.tsne(vectors, k=2, perplexity=perplexity, seed=seed,
                                 backend=backend)
        axis_labels = ["t-SNE 1", "t-SNE 2"]
        default_title = f"t-SNE of {count} vectors (perplexity {result.perplexity:.3g})"
    points = result.coordinates
    if ax is None:
        ax = new_figure(7.5, 6.0).add_subplot()
    figure = ax.figure
    scatter = ax.scatter(points[:, 0], points[:, 1], c=np.arange(count), cmap="viridis",
                         s=28, edgecolors="white", linewidths=0.5, zorder=2)
    fontsize = 9 if count <= 30 else 7
    middle = (points[:, 0].min() + points[:, 0].max()) / 2
    for anchor, members in _coincident_groups(points, tick_positions(count)):
        # labels point inwards, so the right half's labels stay inside the axes
        right_half = points[anchor, 0] > middle
        label = ax.annotate(", ".join(_cut(labels[i]) for i in members),
                            tuple(points[anchor]), xytext=(-4 if right_half else 4, 4),
                            textcoords="offset points", ha="right" if right_half else "left",
                            fontsize=fontsize, zorder=3)
        label.set_in_layout(False)  # labels must not shrink the axes; margins make room
    ax.margins(x=0.08, y=0.08)
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    ax.set_title(title if title is not None else default_title)
    ax.grid(alpha=0.25, zorder=0)
    colour_bar = figure.colorbar(scatter, ax=ax, fraction=0.05, pad=0.02)
    colour_bar.set_label("token position")
    return save(figure, path)


def _coincident_groups(points, indices):
    """``(anchor, members)`` for the points at ``indices``, grouping those
    within 1e-6 of the plot's extent of each other."""
    extent = float(np.ptp(points, axis=0).max()) or 1.0
    keys = np.round(points / (extent * 1e-6)).astype(np.int64)
    groups = {}
    for i in indices:
        groups.setdefault(tuple(keys[i]), []).append(i)
    return [(members[0], members) for members in groups.values()]
