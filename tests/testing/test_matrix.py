"""attnref.testing.matrix: each probe tells the conventions apart on
implementations whose conventions are known (attnref's backend bound to
each), and the table carries every cell."""
import functools

import numpy as np

from attnref.testing import adapters, matrix
from attnref.testing.semantics import profile


def masked_out_polarity(query, key, value, attn_mask=None, **options):
    return adapters.attnref_numpy(query, key, value, ~attn_mask, **options)


def test_probes_name_the_convention_they_see():
    torch_profile = profile("torch")
    assert matrix._polarity(adapters.attnref_numpy, torch_profile) == "True = may attend"
    assert matrix._polarity(masked_out_polarity, torch_profile) == "True = masked out"
    assert matrix._causal_shorter(adapters.attnref_numpy, torch_profile) == "top-left"
    bottom_right = functools.partial(adapters.attnref_numpy, causal_alignment="bottom_right")
    assert matrix._causal_shorter(bottom_right, torch_profile) == "bottom-right"
    assert matrix._fully_masked_bool(adapters.attnref_numpy, torch_profile) == "0"
    assert matrix._softcap(adapters.attnref_numpy, torch_profile).startswith("before the mask")
    assert matrix._gqa(adapters.attnref_numpy, torch_profile) == "h // (Hq/Hkv)"
    assert matrix._nan_behind_mask(adapters.attnref_numpy, torch_profile) == "does not leak"


def test_a_refusal_is_reported_with_its_message():
    def no_gqa(query, key, value, **options):
        raise ValueError("no grouped heads here")
    assert matrix._gqa(no_gqa, profile("torch")) == "refused (ValueError: no grouped heads here)"


def test_markdown_has_a_column_per_implementation_and_a_row_per_convention():
    first = matrix.Measurement("a", "1.0", "torch", {"x": "top-left", "y": "0"})
    second = matrix.Measurement("b", "2.0", "onnx_attention", {"x": "bottom-right | odd"})
    lines = matrix.to_markdown([first, second]).splitlines()
    header = next(line for line in lines if line.startswith("| convention"))
    assert "`a` (1.0; profile `torch`)" in header and "`b` (2.0" in header
    assert "| x | top-left | bottom-right / odd |" in lines
    assert "| y | 0 | - |" in lines
    assert np.all([line.count("|") == header.count("|") for line in lines
                   if line.startswith("| ")])
