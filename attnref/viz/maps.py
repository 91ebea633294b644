"""Attention maps as pictures: one map as a heatmap, every head of a model
as a grid of thumbnails, and the rollout / max-flow maps.

Seed notes: ``attention-weights-and-vectors.md`` ("Visualização e
Interpretação": ``plot_attention_heatmap``, queries on rows, keys on columns,
colour bar "Attention Weight", ``cmap='Blues'``) and
``attention-allocation.md`` ("Análise e Visualização": look at the patterns,
as bertviz does, to diagnose misallocation).

Shape letters: ``L`` queries, ``S`` keys, ``T`` tokens of a self-attention
map (``L = S = T``), ``H`` heads, ``layers`` layers.
"""
from __future__ import annotations

import numpy as np

from .. import analysis
from ..analysis._common import as_weights
from ..analysis.flow import MAX_FLOW_NODES
from ._figure import (check_ax, check_path, check_title, cmap, colour_range, label_fontsize,
                      new_figure, save, set_token_ticks, suptitle, tick_positions, token_list,
                      weights_array)

__all__ = ["plot_attention_heatmap", "plot_head_grid", "plot_rollout", "head_types"]

_CELL = 0.3          # inches per token while the map is small
_MAP_MIN, _MAP_MAX = 2.2, 10.0   # inches: the map grows with the tokens, then caps


def _map_inches(count):
    return float(np.clip(_CELL * count, _MAP_MIN, _MAP_MAX))


def _draw_map(ax, weights, query_tokens, key_tokens, *, title, colour_label,
              xlabel="keys (attended to)", ylabel="queries (attending from)"):
    """One (L, S) map on ``ax`` with token ticks and a labelled colour bar."""
    figure = ax.figure
    vmin, vmax = colour_range(weights)
    image = ax.imshow(np.ma.masked_invalid(weights), cmap=cmap(), vmin=vmin, vmax=vmax,
                      aspect="auto")
    position = ax.get_position()
    width_in, height_in = figure.get_size_inches()
    map_height = max(position.height * height_in, 1.0)
    map_width = max(position.width * width_in, 1.0)
    set_token_ticks(ax, query_tokens, key_tokens,
                    label_fontsize(map_height, len(tick_positions(len(query_tokens)))),
                    label_fontsize(map_width, len(tick_positions(len(key_tokens)))))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    colour_bar = figure.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
    colour_bar.set_label(colour_label)
    return image


def plot_attention_heatmap(weights, tokens, *, key_tokens=None, ax=None, path=None,
                           title=None):
    """Draw one attention map as a heatmap: queries on rows, keys on columns.

    Parameters
    ----------
    weights : array_like, shape (L, S)
        One map, e.g. ``output.attention_weights[layer, head]``. NaN (a
        fully masked row under ``masked_rows="nan"``) is drawn grey.
    tokens : sequence of str, length L, or None
        The query tokens (row labels); None labels rows by position.
    key_tokens : sequence of str, length S, keyword-only, optional
        The key tokens (column labels). Default: ``tokens``, which needs
        ``L == S``.
    ax : matplotlib Axes, keyword-only, optional
        Draw into this Axes (and add the colour bar beside it). Default: a
        new figure sized to the map.
    path : str or os.PathLike, keyword-only, optional
        Save the figure there; ``.png`` or ``.svg`` (chosen by the suffix).
    title : str, keyword-only, optional
        Default: ``"attention weights (L queries x S keys)"``.

    Returns
    -------
    matplotlib.figure.Figure
        The figure (``ax.figure`` when ``ax`` is given).

    Notes
    -----
    The seed's ``plot_attention_heatmap`` (``sns.heatmap`` of the weights,
    ``cmap='Blues'``, colour bar "Attention Weight", x "Keys (attended to)",
    y "Queries (attending from)", key labels rotated) at a size that works
    from 5 to a few hundred tokens: the figure grows by 0.3 inch per token
    and stops at a 10-inch map; at most 60 labels per axis are drawn (every
    n-th token, labelled with its position, beyond that) and their font
    shrinks to fit. The colour scale runs from 0 to the largest weight, so a
    diffuse map over many keys is still visible; read values off the colour
    bar. Matrix cell ``[i, j]`` is the weight query ``i`` gives key ``j``.
    """
    weights = weights_array(weights, 2, "(L, S): one map; pick a layer and head, e.g. "
                                        "output.attention_weights[-1, 0]")
    length, n_keys = weights.shape
    query_tokens = token_list(tokens, length, name="tokens")
    if key_tokens is None:
        if tokens is not None and length != n_keys:
            raise ValueError(f"weights has L={length} queries and S={n_keys} keys: pass "
                             "key_tokens (S labels) as well as tokens (L labels)")
        key_tokens = tokens
    key_tokens = token_list(key_tokens, n_keys, name="key_tokens")
    ax = check_ax(ax)
    path = check_path(path)
    title = check_title(title)
    if ax is None:
        figure = new_figure(_map_inches(n_keys) + 2.4, _map_inches(length) + 1.8)
        ax = figure.add_subplot()
    figure = ax.figure
    _draw_map(ax, weights, query_tokens, key_tokens,
              title=title if title is not None else
              f"attention weights ({length} queries x {n_keys} keys)",
              colour_label="attention weight")
    return save(figure, path)


def head_types(weights, tokens=None, *, lang="en"):
    """Each head's type, the one ``attnref report`` gives it:
    :func:`attnref.analysis.head_taxonomy` ``.type``.

    Parameters
    ----------
    weights : array_like, shape (..., L, S)
    tokens : sequence of str, length S, optional
        The key tokens: with them the sink is [CLS]/[SEP]/punctuation and
        content-focused heads can be found; without, the sink is the first
        key.
    lang : {"en", "pt"}, keyword-only
        Function-word list for the content words.

    Returns
    -------
    ndarray of str, shape (...)
        One of :data:`attnref.analysis.HEAD_TYPES` per map.
    """
    weights = as_weights(weights)
    if tokens is not None:
        tokens = token_list(tokens, weights.shape[-1], name="tokens")
    return analysis.head_taxonomy(weights, tokens, lang=lang).type


def _thumbnail_title(label, layer, head):
    """``"L1 H0\nsink"``: the head, then its :func:`head_types` label, in two
    short lines so it fits a thumbnail."""
    return f"L{layer} H{head}\n{label}"


def plot_head_grid(weights, tokens=None, *, lang="en", path=None, title=None):
    """Draw every head of every layer as a thumbnail, titled with its type.

    Parameters
    ----------
    weights : array_like, shape (layers, H, L, S)
        E.g. ``output.attention_weights``.
    tokens : sequence of str, length L, optional
        The sequence (square maps), for the special-token sink and content
        words of :func:`head_types`. (Thumbnails carry no token labels; draw
        one head with :func:`plot_attention_heatmap` to read them.)
    lang : {"en", "pt"}, keyword-only
        Function-word list of :func:`head_types`.
    path : str or os.PathLike, keyword-only, optional
        Save as ``.png`` or ``.svg``.
    title : str, keyword-only, optional
        Default: ``"attention heads (layers x H)"``.

    Returns
    -------
    matplotlib.figure.Figure

    Notes
    -----
    bertviz's "model view" (Vig 2019, "A Multiscale Visualization of
    Attention in the Transformer Model"), as a static picture: one row per
    layer, one column per head, all on one colour scale (0 to the largest
    weight of the model, one colour bar), so heads can be compared. Each
    title is ``L<layer> H<head>`` over the head's type from
    :func:`head_types` (``"L1 H0\nsink"``), the type ``attnref report``
    and the HTML explorer show.
    """
    weights = weights_array(weights, 4, "(layers, H, L, S), e.g. output.attention_weights")
    n_layers, n_heads, length, n_keys = weights.shape
    if tokens is not None:
        tokens = token_list(tokens, length, name="tokens")
    path = check_path(path)
    title = check_title(title)
    titles = np.vectorize(_thumbnail_title, otypes=[str])(
        head_types(weights, tokens, lang=lang), *np.indices((n_layers, n_heads)))
    thumb = float(np.clip(16.0 / n_heads, 0.9, 1.9))     # inches per thumbnail
    longest = max(len(line) for title in titles.ravel() for line in title.split("\n"))
    fontsize = float(np.clip(thumb * 72 / (0.6 * longest), 5, 8))
    figure = new_figure(n_heads * thumb + 1.3,
                        n_layers * (thumb * min(length / n_keys, 1.5) + 0.5) + 0.6)
    axes = figure.subplots(n_layers, n_heads, squeeze=False)
    vmin, vmax = colour_range(weights)
    colours = cmap()
    for layer in range(n_layers):
        for head in range(n_heads):
            ax = axes[layer, head]
            image = ax.imshow(np.ma.masked_invalid(weights[layer, head]), cmap=colours,
                              vmin=vmin, vmax=vmax, aspect="equal")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(titles[layer, head], fontsize=fontsize, pad=3)
        axes[layer, 0].set_ylabel(f"layer {layer}", fontsize=fontsize + 1)
    colour_bar = figure.colorbar(image, ax=axes, shrink=min(1.0, 4.0 / n_layers + 0.3),
                                 fraction=0.03, pad=0.01)
    colour_bar.set_label("attention weight")
    suptitle(figure, title if title is not None else
             f"attention heads ({n_layers} layers x {n_heads} heads, "
             f"{length} x {n_keys} maps)")
    return save(figure, path)


def plot_rollout(weights, tokens, *, flow=True, max_nodes=MAX_FLOW_NODES, path=None,
                 title=None):
    """Draw attention rollout and attention flow after the last layer, side by side.

    Parameters
    ----------
    weights : array_like, shape (layers, H, T, T)
        Self-attention maps of every layer and head, e.g.
        ``output.attention_weights``.
    tokens : sequence of str, length T, or None
        Labels; None labels by position.
    flow : bool, keyword-only, default True
        Also compute and draw the max-flow map (slow on long inputs; see
        ``max_nodes``). False draws the rollout alone.
    max_nodes : int or None, keyword-only, default 300
        Size guard of :func:`attnref.analysis.attention_max_flow`: a
        ValueError when ``(layers + 1) * T`` exceeds it.
    path : str or os.PathLike, keyword-only, optional
        Save as ``.png`` or ``.svg``.
    title : str, keyword-only, optional
        A title over both panels.

    Returns
    -------
    matplotlib.figure.Figure

    Notes
    -----
    Abnar and Zuidema (2020), "Quantifying Attention Flow in Transformers":
    rollout (:func:`attnref.analysis.attention_rollout`, heads averaged, the
    residual added) multiplies the layers' maps, ``J_l = A_hat_l J_{l-1}``;
    flow (:func:`attnref.analysis.attention_max_flow` with
    ``normalize=True``, as the authors plot it) is the maximum flow through
    the same layered graph, each row divided by its total. Row ``i`` of
    either map: how much position ``i`` after the last layer draws on each
    input token (rows sum to 1).
    """
    weights = weights_array(weights, 4, "(layers, H, T, T), e.g. output.attention_weights")
    n_layers, _, length, n_keys = weights.shape
    if length != n_keys:
        raise ValueError(f"weights must be self-attention maps (layers, H, T, T), got "
                         f"L={length} queries and S={n_keys} keys")
    if not isinstance(flow, bool):
        raise TypeError(f"flow must be True or False, got {flow!r}")
    labels = token_list(tokens, length, name="tokens")
    path = check_path(path)
    title = check_title(title)
    weights = np.nan_to_num(weights)  # a fully masked row (NaN) passes nothing on
    maps = [("attention rollout", analysis.attention_rollout(weights)[-1])]
    if flow:
        try:
            flows = analysis.attention_max_flow(weights, normalize=True,
                                                max_nodes=max_nodes)
        except ValueError as too_big:
            raise ValueError(f"{too_big}; or pass flow=False to plot_rollout to draw the "
                             "rollout alone") from too_big
        maps.append(("attention flow (max-flow)", flows[-1]))
    side = _map_inches(length)
    figure = new_figure(len(maps) * (side + 2.4), side + 1.9)
    for index, (name, joint) in enumerate(maps):
        ax = figure.add_subplot(1, len(maps), index + 1)
        _draw_map(ax, joint, labels, labels, title=f"{name} after layer {n_layers - 1}",
                  colour_label="share of input token", xlabel="input tokens",
                  ylabel=f"positions after layer {n_layers - 1}")
    if title is not None:
        suptitle(figure, title)
    return save(figure, path)
