"""attnref.viz.maps: the heatmap, the head grid and the rollout maps, rendered
with Agg on the demo model and on random maps."""
import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402

from attnref.models.demo import HEAD_TYPES, DemoModel  # noqa: E402
from attnref.report import build_report  # noqa: E402
from attnref.viz import (head_types, plot_attention_heatmap, plot_head_grid,  # noqa: E402
                         plot_rollout)


def test_heatmap_of_a_demo_head(demo_output, tmp_path, assert_drawn):
    weights = demo_output.attention_weights[-1, 2]
    figure = plot_attention_heatmap(weights, demo_output.tokens, path=tmp_path / "map.png")
    assert isinstance(figure, Figure)
    ax, colour_bar = figure.axes
    assert colour_bar.get_ylabel() == "attention weight"
    assert [label.get_text() for label in ax.get_yticklabels()] == demo_output.tokens
    assert [label.get_text() for label in ax.get_xticklabels()] == demo_output.tokens
    assert ax.get_images()[0].get_array().shape == (12, 12)
    assert ax.get_ylabel().startswith("queries") and ax.get_xlabel().startswith("keys")
    assert_drawn(figure, tmp_path / "map.png", ax)
    figure.savefig(tmp_path / "map.svg")
    assert "<svg" in (tmp_path / "map.svg").read_text()


@pytest.mark.parametrize("words", [3, 198])
def test_heatmap_of_demo_texts_of_5_and_200_tokens(words, tmp_path, assert_drawn):
    output = DemoModel().encode(" ".join(["cat", "the"] * (words // 2) + ["cat"] * (words % 2)))
    assert len(output.tokens) == words + 2
    figure = plot_attention_heatmap(output.attention_weights[0, 0], output.tokens,
                                    path=tmp_path / "map.png")
    assert_drawn(figure, tmp_path / "map.png", figure.axes[0])


@pytest.mark.parametrize("count", [5, 200])
def test_heatmap_sizes_and_labels_for_few_and_many_tokens(count, random_maps, tmp_path,
                                                          assert_drawn):
    tokens = [f"token{i}" for i in range(count)]
    figure = plot_attention_heatmap(random_maps(count, count), tokens, title="random",
                                    path=tmp_path / "map.png")
    ax = figure.axes[0]
    labels = [label.get_text() for label in ax.get_xticklabels()]
    assert len(labels) <= 60
    if count == 5:
        assert labels == tokens
        assert figure.get_size_inches()[0] < 6
    else:
        assert labels[:2] == ["0 token0", "4 token4"]       # every 4th, with its position
        assert ax.get_xticklabels()[0].get_rotation() == 90
        assert tuple(figure.get_size_inches()) == (12.4, 11.8)   # grown, then capped
    assert ax.get_title() == "random"
    assert_drawn(figure, tmp_path / "map.png", ax)
    figure = plot_attention_heatmap(random_maps(count, count), tokens, path=tmp_path / "m.svg")
    assert (tmp_path / "m.svg").stat().st_size > 0


def test_heatmap_with_distinct_query_and_key_tokens(random_maps, tmp_path, assert_drawn):
    figure = plot_attention_heatmap(random_maps(3, 7), ["a", "b", "c"],
                                    key_tokens=list("defghij"), path=tmp_path / "map.PNG")
    ax = figure.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == list("defghij")
    assert ax.get_images()[0].get_array().shape == (3, 7)
    assert_drawn(figure, tmp_path / "map.PNG", ax)


def test_heatmap_draws_into_a_given_axes_and_greys_masked_rows(random_maps):
    figure = Figure()
    ax = figure.add_subplot()
    weights = random_maps(4, 4)
    weights[1] = np.nan
    assert plot_attention_heatmap(weights, None, ax=ax) is figure
    assert np.ma.is_masked(ax.get_images()[0].get_array())
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "1", "2", "3"]


@pytest.mark.parametrize("call, error, words", [
    (lambda w: plot_attention_heatmap(w[None], None), ValueError, "pick a layer and head"),
    (lambda w: plot_attention_heatmap(w[:, :3], list("abcd")), ValueError, "key_tokens"),
    (lambda w: plot_attention_heatmap(w, list("abc")), ValueError, "tokens must have 4"),
    (lambda w: plot_attention_heatmap(w, "abcd"), TypeError, "tokens must be a sequence"),
    (lambda w: plot_attention_heatmap(w, None, path="map.jpg"), ValueError, ".png or .svg"),
    (lambda w: plot_attention_heatmap(w, None, path=3), TypeError, "path must be"),
    (lambda w: plot_attention_heatmap(w, None, ax="axes"), TypeError, "ax must be"),
    (lambda w: plot_attention_heatmap(w, None, title=1), TypeError, "title must be"),
    (lambda w: plot_attention_heatmap(w * np.inf, None), ValueError, "inf"),
    (lambda w: plot_attention_heatmap(w.astype(str), None), TypeError, "real array"),
])
def test_heatmap_rejects_bad_arguments(call, error, words, random_maps):
    with pytest.raises(error, match=words):
        call(random_maps(4, 4))


def test_head_types_are_the_reports(demo_output):
    types = head_types(demo_output.attention_weights, demo_output.tokens)
    assert types.shape == (2, 3)
    expected = {"previous_token": "previous-token", "self": "self", "uniform": "broad",
                "cls_sink": "sink", "content_words": "content-focused"}
    for layer, heads in enumerate(HEAD_TYPES):          # the demo's constructed types
        for head, constructed in enumerate(heads):
            assert types[layer, head] == expected[constructed]
    rows = build_report(demo_output).head_level
    assert [row["type"] for row in rows] == list(types.ravel())


def test_head_grid_of_the_demo_model(demo_output, tmp_path, assert_drawn):
    weights = demo_output.attention_weights
    figure = plot_head_grid(weights, demo_output.tokens, path=tmp_path / "grid.png")
    thumbnails = [ax for ax in figure.axes if ax.get_images()]
    assert len(thumbnails) == 6
    # the head, then its type from head_types, the report's
    assert [ax.get_title() for ax in thumbnails] == [
        "L0 H0\nprevious-token", "L0 H1\nself", "L0 H2\nbroad", "L1 H0\nsink",
        "L1 H1\ncontent-focused", "L1 H2\nprevious-token"]
    assert any(ax.get_ylabel() == "attention weight" for ax in figure.axes)
    assert_drawn(figure, tmp_path / "grid.png", thumbnails[0])
    figure.savefig(tmp_path / "grid.svg")


def test_head_grid_of_random_and_rectangular_maps(random_maps, tmp_path, assert_drawn):
    figure = plot_head_grid(random_maps(3, 4, 9, 9), path=tmp_path / "grid.png")
    assert len(figure.axes) == 12 + 1
    assert_drawn(figure, tmp_path / "grid.png", figure.axes[5])
    figure = plot_head_grid(random_maps(1, 2, 3, 5), title="cross", path=tmp_path / "g.svg")
    assert figure.get_suptitle() == "cross"
    with pytest.raises(ValueError, match=r"\(layers, H, L, S\)"):
        plot_head_grid(random_maps(4, 4))


def test_rollout_and_flow_side_by_side(demo_output, tmp_path, assert_drawn):
    figure = plot_rollout(demo_output.attention_weights, demo_output.tokens,
                          path=tmp_path / "rollout.png")
    maps = [ax for ax in figure.axes if ax.get_images()]
    assert [ax.get_title() for ax in maps] == ["attention rollout after layer 1",
                                               "attention flow (max-flow) after layer 1"]
    for ax in maps:
        rows = ax.get_images()[0].get_array()
        np.testing.assert_allclose(rows.sum(axis=1), 1.0, rtol=1e-6)
        assert_drawn(figure, tmp_path / "rollout.png", ax)
    figure.savefig(tmp_path / "rollout.svg")


def test_rollout_alone_and_its_errors(random_maps, tmp_path, assert_drawn):
    weights = random_maps(6, 2, 60, 60)
    with pytest.raises(ValueError, match="flow=False"):
        plot_rollout(weights, None)
    figure = plot_rollout(weights, None, flow=False, title="long", path=tmp_path / "r.png")
    maps = [ax for ax in figure.axes if ax.get_images()]
    assert len(maps) == 1
    assert_drawn(figure, tmp_path / "r.png", maps[0])
    with pytest.raises(ValueError, match="self-attention"):
        plot_rollout(random_maps(2, 2, 3, 4), None)
    with pytest.raises(TypeError, match="flow must be"):
        plot_rollout(random_maps(2, 2, 3, 3), None, flow=1)
