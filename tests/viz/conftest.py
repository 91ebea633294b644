"""Shared by the plot tests: the demo model's output on the README sentence,
random softmax maps, and the check that a saved PNG shows something."""
import numpy as np
import pytest

TEXT = "The cat chased the mouse because it was hungry."


@pytest.fixture(scope="session")
def demo_output():
    from attnref.models import DemoModel
    return DemoModel().encode(TEXT)


@pytest.fixture
def random_maps():
    """``random_maps(*shape)``: softmax rows of scaled Gaussian scores."""
    rng = np.random.default_rng(20261129)

    def make(*shape):
        scores = 3.0 * rng.normal(size=shape)
        weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
        return weights / weights.sum(axis=-1, keepdims=True)
    return make


@pytest.fixture
def assert_drawn():
    """``assert_drawn(figure, png_path, ax=None)``: the PNG varies, and so does
    the part of it under ``ax`` (the map itself, not only its frame)."""
    def check(figure, png_path, ax=None):
        import matplotlib.image
        image = matplotlib.image.imread(png_path)[..., :3]           # (rows, cols, RGB)
        width, height = figure.get_size_inches() * figure.dpi
        assert image.shape[:2] == (round(height), round(width))   # saved at the figure's dpi
        assert image.std() > 0.05, "the PNG is blank"
        if ax is not None:
            box = ax.get_window_extent()                           # display pixels, y up
            rows = slice(int(image.shape[0] - box.y1) + 2, int(image.shape[0] - box.y0) - 2)
            cols = slice(int(box.x0) + 2, int(box.x1) - 2)
            inside = image[rows, cols]
            assert inside.size > 0
            assert inside.std() > 0.01, "the plotted area is uniform"
    return check
