"""attnref.testing.onnx_adapters: the ONNX Attention operator and ONNX
Runtime's contrib operators behind the torch SDPA signature, on the quick
suite and on inputs whose conventions they reveal (measured with onnx 1.23.2
and onnxruntime 1.32.0; docs/conformance.md)."""
import importlib

import numpy as np
import pytest

import attnref
from attnref.testing import adapters, check, onnx_adapters

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

ONNX_TARGETS = ("onnxruntime", "onnx-reference", "onnxruntime-mha", "onnxruntime-gqa")


def run_quick(target, dtype="float32"):
    adapter = adapters.ADAPTERS[target]
    return check(adapter.fn, suite="quick", dtype=dtype, semantics=adapter.semantics,
                 capabilities=adapter.capabilities, progress=False, name=target)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("target", ONNX_TARGETS)
def test_each_onnx_adapter_runs_the_quick_suite(target, dtype):
    report = run_quick(target, dtype)
    statuses = {result.name: result.status for result in report.results}
    assert report.passed, report.summary()
    if target == "onnxruntime-mha":      # mask_filter_value -10000: the row attends to all
        assert statuses["fully_masked_rows"] == "hazard"
        assert report.hazards[0].hazard == "finite_mask_empty_row"
    if target == "onnxruntime-gqa":      # no bool mask input
        assert statuses["bool_mask"] == statuses["fully_masked_rows"] == "skip"


def qkv(L, S, *, Hq=2, Hkv=2, E=8, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((1, Hq, L, E)).astype(np.float32),
            rng.standard_normal((1, Hkv, S, E)).astype(np.float32),
            rng.standard_normal((1, Hkv, S, E)).astype(np.float32))


def assert_close(output, expected):
    np.testing.assert_allclose(output, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fn", [onnx_adapters.onnxruntime_attention,
                                onnx_adapters.onnx_reference_attention,
                                onnx_adapters.onnxruntime_mha])
def test_causal_is_bottom_right_with_a_cache_and_top_left_without(fn):
    query, key, value = qkv(3, 7)
    for kv_cache, alignment in ((True, "bottom_right"), (False, "top_left")):
        output = fn(query, key, value, is_causal=True, kv_cache=kv_cache)
        if fn is onnx_adapters.onnxruntime_mha and not kv_cache:
            continue                     # neither alignment: see the next test
        assert_close(output, attnref.scaled_dot_product_attention(
            query, key, value, is_causal=True, causal_alignment=alignment))


def test_mha_without_a_past_lets_the_last_row_see_every_key():
    query, key, value = qkv(3, 7)
    output = onnx_adapters.onnxruntime_mha(query, key, value, is_causal=True, kv_cache=False)
    seen = np.tri(3, 7, dtype=bool)
    seen[-1] = True                      # measured on onnxruntime 1.32
    assert_close(output, attnref.scaled_dot_product_attention(query, key, value, seen))


def test_softcap_comes_before_the_mask():
    query, key, value = qkv(4, 6, seed=1)
    bias = np.zeros((4, 6), dtype=np.float32)
    bias[:, 4:] = -np.inf
    expected = attnref.scaled_dot_product_attention(query, key, value, bias, softcap=1.0)
    for fn in (onnx_adapters.onnxruntime_attention, onnx_adapters.onnx_reference_attention,
               onnx_adapters.onnxruntime_gqa):
        assert_close(fn(query, key, value, bias, softcap=1.0), expected)


def test_gqa_local_window_is_attnrefs_left_window_plus_the_query():
    query, key, value = qkv(12, 12, Hq=4, Hkv=2, seed=2)
    output = onnx_adapters.onnxruntime_gqa(query, key, value, is_causal=True, window=(3, 0))
    assert_close(output, attnref.scaled_dot_product_attention(
        query, key, value, is_causal=True, window=(3, 0), enable_gqa=True))


def test_what_an_operator_cannot_express_is_refused_by_name():
    query, key, value = qkv(4, 4, Hq=4, Hkv=2)
    with pytest.raises(ValueError, match="one head count"):
        onnx_adapters.onnxruntime_mha(query, key, value, enable_gqa=True)
    with pytest.raises(ValueError, match="no boolean mask"):
        onnx_adapters.onnxruntime_gqa(query, key, value, np.ones((4, 4), bool))
    with pytest.raises(ValueError, match="S >= L"):
        onnx_adapters.onnxruntime_gqa(*qkv(5, 3))
    with pytest.raises(ValueError, match="dropout_p must be 0.0"):
        onnx_adapters.onnxruntime_attention(query, key, value, dropout_p=0.1)


@pytest.mark.parametrize("fn, module", [(onnx_adapters.onnx_reference_attention, "onnx"),
                                        (onnx_adapters.onnxruntime_mha, "onnxruntime")])
def test_a_missing_package_names_its_install_command(monkeypatch, fn, module):
    real_import = importlib.import_module

    def without(name, *args):
        if name == module or name.startswith(module + "."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args)
    monkeypatch.setattr(importlib, "import_module", without)
    onnx_adapters._attention_model.cache_clear()
    onnx_adapters._contrib_model.cache_clear()
    onnx_adapters._session.cache_clear()
    onnx_adapters._reference_evaluator.cache_clear()
    with pytest.raises(ImportError, match=f"pip install {module}"):
        fn(*qkv(2, 3, seed=5))
