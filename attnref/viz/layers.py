"""How attention changes with depth, as a picture: entropy, distance and
sink share by layer.

Seed note ``attention-allocation.md`` ("Alocação ao Longo das Camadas"):
early layers attend locally and syntactically, late layers globally and
semantically. :func:`attnref.analysis.layer_profile` gives the per-layer
numbers; this draws them, with each head as a dot behind the layer mean.
"""
from __future__ import annotations

import numpy as np

from .. import analysis
from ..analysis._common import mean_over_rows
from ._figure import check_path, check_title, new_figure, save, suptitle, weights_array

__all__ = ["plot_layer_profile"]


def plot_layer_profile(weights, *, path=None, title=None):
    r"""Plot mean entropy, mean attention distance and sink share per layer.

    Parameters
    ----------
    weights : array_like, shape (layers, H, L, S)
        E.g. ``output.attention_weights``.
    path : str or os.PathLike, keyword-only, optional
        Save as ``.png`` or ``.svg``.
    title : str, keyword-only, optional
        Default: ``"attention by layer (layers x H heads)"``.

    Returns
    -------
    matplotlib.figure.Figure
        Three panels sharing the layer axis.

    Notes
    -----
    The lines are :func:`attnref.analysis.layer_profile`'s fields, each the
    mean over a layer's heads:

    * ``mean_entropy``: mean row entropy :math:`-\sum_j w_{ij} \log w_{ij}`,
      nats (:func:`attnref.analysis.mean_entropy`);
    * ``mean_distance``: :math:`\sum_j w_{ij} |i - j|` averaged over rows,
      positions (Vig and Belinkov 2019;
      :func:`attnref.analysis.mean_attention_distance`);
    * ``sink_share``: attention on the first key (Xiao et al. 2023;
      :func:`attnref.analysis.sink_score`).

    The dots are the same metrics per head, so a layer mean that hides two
    kinds of head shows as two clusters of dots. "Local early, global late"
    reads as distance and entropy rising with depth.
    """
    weights = weights_array(weights, 4, "(layers, H, L, S), e.g. output.attention_weights")
    path = check_path(path)
    title = check_title(title)
    n_layers, n_heads = weights.shape[:2]
    per_head = {                                                     # each (layers, H)
        "mean entropy (nats)": analysis.mean_entropy(weights),
        "mean attention distance (positions)": analysis.mean_attention_distance(weights),
        "sink share (attention on the first key)": analysis.sink_score(weights),
    }
    # the layer means as analysis.layer_profile takes them, without recomputing the heads
    panels = [(name, mean_over_rows(values), values) for name, values in per_head.items()]
    figure = new_figure(12.0, 3.8)
    axes = figure.subplots(1, len(panels), sharex=True)
    layers = np.arange(n_layers)
    jitter = (np.arange(n_heads) - (n_heads - 1) / 2) * min(0.3 / max(n_heads, 1), 0.04)
    for ax, (name, means, per_head) in zip(axes, panels):
        ax.scatter((layers[:, None] + jitter[None, :]).ravel(), per_head.ravel(), s=12,
                   color="#9ecae1", label="heads", zorder=2)
        ax.plot(layers, means, marker="o", color="#08519c", label="layer mean", zorder=3)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("layer")
        ax.set_xticks(layers)
        ax.grid(alpha=0.25, zorder=0)
    axes[2].set_ylim(-0.03, 1.03)
    axes[0].legend(fontsize=8, loc="best")
    suptitle(figure, title if title is not None else
             f"attention by layer ({n_layers} layers x {n_heads} heads)")
    return save(figure, path)
