"""attnref.viz.vectors: token vectors projected to 2-D, rendered with Agg."""
import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402

from attnref.viz import pca, plot_attention_vectors  # noqa: E402


def labels_of(ax):
    return [text.get_text() for text in ax.texts]


def test_pca_of_demo_hidden_states(demo_output, tmp_path, assert_drawn):
    vectors = demo_output.hidden_states[-1]
    figure = plot_attention_vectors(vectors, demo_output.tokens, path=tmp_path / "pca.png")
    assert isinstance(figure, Figure)
    ax, colour_bar = figure.axes
    assert colour_bar.get_ylabel() == "token position"
    np.testing.assert_allclose(ax.collections[0].get_offsets(), pca(vectors).coordinates)
    # every token is written once; tokens on one spot share a label
    written = [token for label in labels_of(ax) for token in label.split(", ")]
    assert sorted(written) == sorted(demo_output.tokens)
    assert ax.get_xlabel().startswith("PC1 (") and "of variance" in ax.get_xlabel()
    assert_drawn(figure, tmp_path / "pca.png", ax)
    figure.savefig(tmp_path / "pca.svg")


def test_tsne_of_demo_hidden_states(demo_output, tmp_path, assert_drawn):
    figure = plot_attention_vectors(demo_output.hidden_states[1], demo_output.tokens,
                                    method="tsne", perplexity=3.0, path=tmp_path / "tsne.svg")
    ax = figure.axes[0]
    assert ax.get_title() == "t-SNE of 12 vectors (perplexity 3)"
    figure.savefig(tmp_path / "tsne.png")
    assert_drawn(figure, tmp_path / "tsne.png", ax)


def test_random_vectors_many_points_and_a_given_axes(tmp_path, assert_drawn):
    rng = np.random.default_rng(1)
    figure = plot_attention_vectors(rng.normal(size=(150, 16)), None, title="random",
                                    path=tmp_path / "many.png")
    ax = figure.axes[0]
    assert len(ax.texts) == 50                 # every 3rd point labelled
    assert ax.get_title() == "random"
    assert_drawn(figure, tmp_path / "many.png", ax)
    figure = Figure()
    ax = figure.add_subplot()
    assert plot_attention_vectors(rng.normal(size=(6, 3)), list("abcdef"), ax=ax) is figure


@pytest.mark.parametrize("kwargs, error, words", [
    ({"method": "umap"}, ValueError, "method must be one of"),
    ({"perplexity": 5.0}, ValueError, "method='tsne' only"),
    ({"backend": "sklearn"}, ValueError, "method='tsne' only"),
    ({"path": "x.gif"}, ValueError, r"\.png or \.svg"),
])
def test_vectors_reject_bad_options(kwargs, error, words):
    with pytest.raises(error, match=words):
        plot_attention_vectors(np.eye(4), list("abcd"), **kwargs)


def test_vectors_reject_bad_shapes():
    with pytest.raises(ValueError, match="hidden_states"):
        plot_attention_vectors(np.zeros((3, 4, 5)), None)
    with pytest.raises(ValueError, match="tokens must have 4"):
        plot_attention_vectors(np.eye(4), list("abc"))
