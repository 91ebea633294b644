"""attnref.cli: `attnref info`, `attnref check`, `attnref vectors`."""
import json
import sys

import pytest

from attnref import cli, kernel
from attnref.testing import SUITES


def test_info_reports_kernel_status_and_passes_its_self_check(capsys):
    status = cli.main(["info"])
    printed = capsys.readouterr().out
    assert printed.startswith("attnref ")
    if kernel.available():
        assert "C kernel: available" in printed and "code path:" in printed
        assert "FAIL" not in printed and printed.count(" ok") == 2 * len(cli.SELF_CHECK_CASES)
        assert status == 0
    else:
        assert "C kernel: unavailable" in printed and status == 0


def run(capsys, *argv):
    """``attnref argv...``: (exit status, stdout, stderr)."""
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_check_prints_the_table_and_passes_attnref(capsys):
    status, out, err = run(capsys, "check", "attnref-numpy", "--suite", "quick")
    assert status == 0
    assert out.startswith("attnref-numpy: suite 'quick', float32, semantics 'torch', "
                          "rule 'flash', seed 0")
    for name in SUITES["quick"]:
        assert f"\n{name} " in out
    assert "8 pass, 0 fail, 0 error, 0 skip" in out
    assert err.splitlines()[0] == "[1/8] aligned: pass"


BROKEN_MODULE = """
import numpy as np
from attnref import scaled_dot_product_attention


def unscaled(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
             enable_gqa=False):
    return scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, is_causal,
                                        1.0, enable_gqa)


def nan_everywhere(query, key, value, *args, **kwargs):
    return np.full(query.shape[:-1] + value.shape[-1:], np.nan, query.dtype)
"""


@pytest.fixture
def broken_module(tmp_path, monkeypatch):
    """A module ``broken`` in the working directory, as a user's would be."""
    (tmp_path / "broken.py").write_text(BROKEN_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "broken", raising=False)
    return tmp_path


def test_check_exits_1_on_a_failing_function(capsys, broken_module):
    status, out, _ = run(capsys, "check", "broken:unscaled", "--suite", "quick", "--seed", "3")
    assert status == 1
    assert out.startswith("broken:unscaled: suite 'quick', float32, semantics 'torch'")
    assert "aligned                  FAIL" in out
    assert "reproduce aligned: attnref.testing.case_inputs('quick', 'aligned', seed=3" in out


def test_check_writes_the_report_as_strict_json(capsys, broken_module):
    status, _, _ = run(capsys, "check", "broken:nan_everywhere", "--suite", "quick",
                       "--rule", "pytorch", "--json", "report.json")
    assert status == 1

    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    report = json.loads((broken_module / "report.json").read_text(), parse_constant=refuse)
    assert report["passed"] is False and report["rule"] == "pytorch"
    assert [result["name"] for result in report["results"]] == list(SUITES["quick"])
    assert report["results"][0]["error"] == "inf"


def test_check_options_reach_the_report(capsys):
    status, out, _ = run(capsys, "check", "attnref.testing.adapters:attnref_numpy",
                         "--suite", "quick", "--dtype", "float64", "--semantics", "flash",
                         "--rule", "pytorch", "--capabilities", "causal,bool_mask")
    assert status == 0
    assert "float64, semantics 'flash', rule 'pytorch'" in out
    assert "causal                   PASS" in out
    assert "gqa                      SKIP" in out and "needs gqa" in out
    assert "3 pass, 0 fail, 0 error, 5 skip" in out


def test_check_attnref_c_passes(capsys):
    if not kernel.available():
        pytest.skip(f"C kernel unavailable: {kernel.info()['reason']}")
    status, out, _ = run(capsys, "check", "attnref-c", "--suite", "quick", "--dtype", "float64")
    assert status == 0 and "8 pass" in out


def test_check_torch_names_the_version(capsys):
    torch = pytest.importorskip("torch")
    status, out, _ = run(capsys, "check", "torch", "--suite", "quick")
    assert status == 0
    assert out.startswith(f"torch (torch {torch.__version__}): suite 'quick'")


@pytest.mark.parametrize("argv, message", [
    (["check", "nowhere"], "expected one of ('torch', 'torch-mha', 'jax', 'attnref-numpy', "
                           "'attnref-c') or package.module:function, got 'nowhere'"),
    (["check", "no_such_module_here:attention"], "cannot import 'no_such_module_here'"),
    (["check", "attnref:no_such_function"], "'attnref' has no attribute 'no_such_function'"),
    (["check", "attnref:__version__"], "'attnref:__version__' is a str, expected a callable"),
    (["check", "attnref-numpy", "--capabilities", "gqa,fp8"], "unknown capabilities ['fp8']"),
    (["check", "attnref-numpy", "--suite", "huge"], "invalid choice: 'huge'"),
    (["check", "attnref-numpy", "--rule", "numpy"], "invalid choice: 'numpy'"),
    (["vectors", "export"], "the following arguments are required: directory"),
])
def test_usage_errors_exit_2_and_say_why(capsys, argv, message):
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_check_jax_without_jax_names_the_install_command(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "jax", None)  # makes `import jax` fail
    with pytest.raises(SystemExit) as exited:
        cli.main(["check", "jax"])
    assert exited.value.code == 2
    assert "pip install jax jaxlib" in capsys.readouterr().err


def test_vectors_export_then_verify(capsys, tmp_path):
    status, out, err = run(capsys, "vectors", "export", str(tmp_path), "--suite", "quick")
    assert status == 0
    assert out == (f"wrote 8 cases of suite 'quick' (float32, semantics 'torch', seed 0) "
                   f"and manifest.json to {tmp_path}\n")
    assert len(err.splitlines()) == 8
    status, out, _ = run(capsys, "vectors", "verify", str(tmp_path))
    assert status == 0
    assert out.splitlines()[0].startswith("aligned ") and out.endswith("8 ok, 0 failed\n")

    tampered = tmp_path / "gqa.npz"
    archive = bytearray(tampered.read_bytes())
    archive[len(archive) // 2] ^= 0xFF             # one flipped byte inside an array
    tampered.write_bytes(bytes(archive))
    status, out, _ = run(capsys, "vectors", "verify", str(tmp_path))
    assert status == 1
    assert "gqa" in out and "FAIL" in out and out.endswith("7 ok, 1 failed\n")


def test_vectors_verify_of_a_directory_without_a_manifest_fails(capsys, tmp_path):
    status, out, err = run(capsys, "vectors", "verify", str(tmp_path))
    assert status == 1 and out == ""
    assert "manifest.json not found" in err


def test_vectors_verify_of_a_forged_directory_fails(capsys, tmp_path):
    """A loosened bound fails its case; a malformed manifest or an edited
    rule is one line on stderr; both exit 1."""
    run(capsys, "vectors", "export", str(tmp_path), "--suite", "quick")
    manifest_path = tmp_path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["cases"][0]["tolerance"]["output"]["bound"] = 1e9
    manifest_path.write_text(json.dumps(manifest))
    status, out, _ = run(capsys, "vectors", "verify", str(tmp_path))
    assert status == 1 and out.endswith("7 ok, 1 failed\n")
    assert "tolerance.output.bound is 1000000000.0" in out and "a looser bound" in out
    for field, value in (("name", ["aligned"]), ("file", 3)):
        malformed = json.loads(json.dumps(manifest))
        malformed["cases"][0][field] = value
        manifest_path.write_text(json.dumps(malformed))
        status, out, err = run(capsys, "vectors", "verify", str(tmp_path))
        assert status == 1 and out == ""
        assert err.count("\n") == 1 and f"the field 'cases[0].{field}' must be a string" in err
    manifest["tolerance"]["factor"] = 1e9
    manifest_path.write_text(json.dumps(manifest))
    status, out, err = run(capsys, "vectors", "verify", str(tmp_path))
    assert status == 1 and err.count("\n") == 1 and out == ""


def test_report_on_the_demo_model_prints_the_three_levels(capsys):
    status, out, err = run(capsys, "report", "The cat chased the mouse because it was hungry.",
                           "--model", "demo")
    assert status == 0 and "running attnref demo (constructed heads)" in err
    for heading in ("== per token (layer 1, mean over heads)", "== per layer", "== per head",
                    "== misallocation", "== attention rollout"):
        assert heading in out
    assert "layer 1 head 0 collapse" in out


def test_report_json_parses_and_follows_layer_and_head(capsys):
    status, out, _ = run(capsys, "report", "the cat sat", "--model", "demo", "--json",
                         "--layer", "0", "--head", "1", "--top-k", "1")
    data = json.loads(out)
    assert status == 0 and data["token_map"] == "layer 0, head 1"
    # L0 H1 is the constructed self head: every token attends to itself
    assert [row["attends_to"][0][0] for row in data["token_level"]] == list(range(5))
    assert {row["layer"] for row in data["head_level"]} == {0}


def test_report_default_model_falls_back_to_demo_or_runs_minilm(capsys):
    from attnref.models import find_minilm
    status, out, err = run(capsys, "report", "Ação e coração.", "--lang", "pt")
    assert status == 0
    try:
        find_minilm()
    except ModuleNotFoundError:
        assert "using the embedded demo model" in err and "attnref demo" in out
    else:
        assert out.startswith("attnref report -- all-MiniLM-L6-v2")
        # uncased BERT lower-cases and strips accents
        assert "cora ##cao" in out.splitlines()[2]


def test_report_refuses_an_unknown_model(capsys):
    with pytest.raises(ValueError, match="model must be 'minilm', 'demo' or a checkpoint "
                                         "directory, got 'nope'"):
        cli.main(["report", "text", "--model", "nope"])


def test_report_html_writes_the_explorer_and_still_prints_the_text(capsys, tmp_path):
    path = tmp_path / "out.html"
    status, out, err = run(capsys, "report", "The cat chased the mouse.", "--model", "demo",
                           "--html", str(path))
    page = path.read_text(encoding="utf-8")
    assert status == 0 and page.startswith("<!DOCTYPE html>") and 'id="attnref-data"' in page
    assert out.startswith("attnref report -- attnref demo")
    assert "wrote the explorer" in err and str(path) in err


def test_report_html_with_json_prints_only_json(capsys, tmp_path):
    path = tmp_path / "out.html"
    status, out, _ = run(capsys, "report", "the cat sat", "--model", "demo", "--json",
                         "--layer", "0", "--html", str(path))
    assert status == 0 and json.loads(out)["token_map"] == "layer 0, mean over heads"
    page = path.read_text(encoding="utf-8")
    # the page shows the same report: the token section and head table of layer 0
    assert "(layer 0, mean over heads)" in page
    assert 'data-layer="0"' in page and 'data-layer="1"' not in page


def test_report_lang_reaches_the_demo_model(capsys):
    """Layer 1 head 1 of the demo model attends to content words only: with
    --lang pt "o" is a function word, so all of it goes to "gato"."""
    weights = {}
    for lang in ("en", "pt"):
        status, out, _ = run(capsys, "report", "o gato", "--model", "demo", "--lang", lang,
                             "--layer", "1", "--head", "1", "--top-k", "1", "--json")
        assert status == 0
        weights[lang] = [row["attends_to"][0][2] for row in json.loads(out)["token_level"]]
    assert weights["pt"] == pytest.approx([1.0] * 4)
    assert weights["en"] == pytest.approx([0.5] * 4)
