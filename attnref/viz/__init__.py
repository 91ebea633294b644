"""Pictures of attention: heatmaps, head grids, rollout maps, layer profiles
and 2-D projections of token vectors.

The plots need matplotlib, the optional extra ``plot``
(``pip install "attnref[plot]"``); it is imported when a plot is drawn, so
``import attnref.viz`` and the projections (:mod:`attnref.viz.projection`,
NumPy only) work without it. Every plot returns a
:class:`matplotlib.figure.Figure` (not registered with ``pyplot``; Jupyter
shows it when returned) and saves it as PNG or SVG when given ``path``.

Seed notes: ``attention-weights-and-vectors.md`` ("Visualização e
Interpretação") and ``attention-allocation.md`` ("Análise e Visualização").

==========================  ===============================================
:func:`plot_attention_heatmap`  one (L, S) map, tokens on both axes
:func:`plot_head_grid`          (layers, H, L, S) thumbnails titled by head type
:func:`plot_rollout`            rollout and max-flow maps after the last layer
:func:`plot_layer_profile`      entropy, distance, sink share by layer
:func:`plot_attention_vectors`  PCA or t-SNE of token vectors, labelled
:func:`pca`, :func:`tsne`       the projections, NumPy only
==========================  ===============================================
"""
from .layers import plot_layer_profile
from .maps import head_types, plot_attention_heatmap, plot_head_grid, plot_rollout
from .projection import PCAResult, TSNEResult, pca, tsne
from .vectors import plot_attention_vectors

__all__ = [
    "plot_attention_heatmap", "plot_head_grid", "plot_rollout", "plot_layer_profile",
    "plot_attention_vectors", "head_types", "pca", "tsne", "PCAResult", "TSNEResult",
]
