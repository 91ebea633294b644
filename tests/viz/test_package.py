"""attnref.viz as a package: its names, and that it imports (and projects)
without matplotlib, failing only when a plot is drawn, with the extra to install."""
import ast
import pathlib
import subprocess
import sys

import attnref.viz as viz

NAMES = ["plot_attention_heatmap", "plot_head_grid", "plot_attention_vectors",
         "plot_layer_profile", "plot_rollout", "pca", "tsne"]


def test_public_names():
    assert all(name in viz.__all__ and callable(getattr(viz, name)) for name in NAMES)


def test_no_module_imports_matplotlib_at_the_top():
    for path in pathlib.Path(viz.__file__).parent.glob("*.py"):
        for node in ast.parse(path.read_text()).body:     # module level only
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("matplotlib") for a in node.names), path
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("matplotlib"), path


def test_works_without_matplotlib_until_a_plot_is_drawn():
    script = """
import sys
sys.modules["matplotlib"] = None          # as if it were not installed
import numpy as np
import attnref.viz as viz
assert viz.pca(np.eye(4)).coordinates.shape == (4, 2)
try:
    viz.plot_attention_heatmap(np.eye(3) / 1.0, list("abc"))
except ImportError as error:
    print(error)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True)
    assert 'pip install "attnref[plot]"' in result.stdout
