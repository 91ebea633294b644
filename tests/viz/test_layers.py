"""attnref.viz.layers: the per-layer profile, rendered with Agg."""
import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402

from attnref import analysis  # noqa: E402
from attnref.viz import plot_layer_profile  # noqa: E402


def test_layer_profile_of_the_demo_model(demo_output, tmp_path, assert_drawn):
    weights = demo_output.attention_weights
    figure = plot_layer_profile(weights, path=tmp_path / "profile.png")
    assert isinstance(figure, Figure)
    assert len(figure.axes) == 3
    profile = analysis.layer_profile(weights)
    for ax, means in zip(figure.axes, (profile.mean_entropy, profile.mean_distance,
                                       profile.sink_share)):
        line, = ax.get_lines()
        np.testing.assert_allclose(line.get_ydata(), means)
        assert_drawn(figure, tmp_path / "profile.png", ax)
    figure.savefig(tmp_path / "profile.svg")
    assert "<svg" in (tmp_path / "profile.svg").read_text()


def test_layer_profile_of_random_maps(random_maps, tmp_path, assert_drawn):
    figure = plot_layer_profile(random_maps(5, 4, 10, 10), title="random",
                                path=tmp_path / "profile.svg")
    assert figure.get_suptitle() == "random"
    assert list(figure.axes[0].get_xticks()) == [0, 1, 2, 3, 4]
    figure.savefig(tmp_path / "profile.png")
    assert_drawn(figure, tmp_path / "profile.png", figure.axes[1])
    with pytest.raises(ValueError, match=r"\(layers, H, L, S\)"):
        plot_layer_profile(random_maps(4, 10, 10))
    with pytest.raises(ValueError, match=r"\.png or \.svg"):
        plot_layer_profile(random_maps(1, 1, 3, 3), path=tmp_path / "profile.pdf")
