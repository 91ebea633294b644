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


def _prose():
    """Varied real English prose of about 1,700 demo tokens: attnref's own module docs."""
    import attnref.html_report
    import attnref.models.bert
    import attnref.nn.trace
    import attnref.report
    return " ".join(" ".join(module.__doc__.split()) for module in (
        attnref.report, attnref.html_report, attnref.models.bert, attnref.nn.trace))


def test_report_says_loudly_that_it_read_only_the_first_window(capsys):
    from attnref.models.demo import demo_tokenize
    prose = _prose()
    total = len(demo_tokenize(prose)[0])
    status, out, err = run(capsys, "report", prose, "--model", "demo", "--max-tokens", "40")
    note = (f"read 40 of the input's {total} tokens ([CLS] and [SEP] included; --max-tokens "
            f"40): this report covers only those; --stride N reads all of it")
    assert status == 0 and note in err and out.startswith(f"== attnref demo (constructed heads) "
                                                          f"{note}")
    status, out, _ = run(capsys, "report", prose, "--model", "demo", "--max-tokens", "40",
                         "--json")
    data = json.loads(out)
    assert data["text"] == " ".join(demo_tokenize(prose)[0][1:39])     # only what was read
    window = data["window"]
    assert (window["read"], window["tokens_total"], window["start"], window["stop"]) == (
        40, total, 0, 38)


def test_report_with_stride_reports_every_window(capsys, tmp_path):
    from attnref.models.demo import demo_tokenize
    prose = _prose()
    words = demo_tokenize(prose)[0][1:-1]
    status, out, err = run(capsys, "report", prose, "--model", "demo", "--max-tokens", "130",
                           "--stride", "100", "--json", "--html", str(tmp_path / "x.html"))
    reports = json.loads(out)
    spans = [(r["window"]["start"], r["window"]["stop"]) for r in reports]
    assert status == 0 and spans[0] == (0, 128) and spans[-1][1] == len(words)
    assert all(b[0] - a[0] == 100 for a, b in zip(spans, spans[1:]))     # overlap 28 tokens
    for number, (report, (start, stop)) in enumerate(zip(reports, spans), 1):
        assert report["tokens"] == ["[CLS]"] + words[start:stop] + ["[SEP]"]
        assert f"read window {number} of {len(spans)}: text tokens {start} to {stop - 1} " \
               f"of {len(words)}" in err
        page = (tmp_path / f"x-{number}.html").read_text(encoding="utf-8")
        assert f"the model read <b>{stop - start + 2} of {len(words) + 2} tokens</b>" in page
    status, out, _ = run(capsys, "report", prose, "--model", "demo", "--max-tokens", "130",
                         "--stride", "100")
    headers = [line for line in out.splitlines() if line.startswith("== window ")]
    assert status == 0 and headers == [f"== window {number} of {len(spans)}: text tokens "
                                       f"{start} to {stop - 1} of {len(words)} (--max-tokens "
                                       f"130, --stride 100)"
                                       for number, (start, stop) in enumerate(spans, 1)]


def test_report_reads_a_sentence_pair(capsys):
    status, out, _ = run(capsys, "report", "The cat sat.", "--pair", "It was hungry.",
                         "--model", "demo", "--json")
    data = json.loads(out)
    assert status == 0 and "window" not in data
    assert data["tokens"] == ["[CLS]", "The", "cat", "sat", ".", "[SEP]", "It", "was", "hungry",
                              ".", "[SEP]"]
    assert data["text"] == "The cat sat. [SEP] It was hungry."
    status, out, err = run(capsys, "report", "a b c d e", "--pair", "f g", "--model", "demo",
                           "--max-tokens", "8", "--json")
    window = json.loads(out)["window"]
    assert (window["read"], window["tokens_total"]) == (8, 10) and "start" not in window
    assert "the pair was cut longest-first" in err


@pytest.mark.parametrize("options, message", [
    (["--max-tokens", "300"], r"--max-tokens must be between 3 and 256 \(attnref demo "
                              r"\(constructed heads\) reads at most 256 tokens"),
    (["--max-tokens", "2"], "--max-tokens must be between 3 and 256"),
    (["--max-tokens", "3", "--pair", "b"], "--max-tokens must be between 4 and 256"),
    (["--stride", "0"], r"--stride must be between 1 and 254 \(--max-tokens 256 minus"),
    (["--stride", "9", "--max-tokens", "10"], "--stride must be between 1 and 8 .* got 9"),
    (["--stride", "5", "--pair", "b"], "--stride reads one text in windows; it cannot be "
                                       "combined with --pair"),
    (["--pair", " \n"], r"--pair must be a non-empty second sentence, got ' \\n'; leave "
                        "--pair out"),
])
def test_report_window_options_are_checked(options, message):
    """Checked before the model runs, as ValueError (one line, exit 2 in main)."""
    import argparse
    from attnref.models import DemoModel
    arguments = argparse.Namespace(text="a", pair=None, max_tokens=None, stride=None)
    for name, value in zip(options[::2], options[1::2]):
        setattr(arguments, name[2:].replace("-", "_"),
                value if name == "--pair" else int(value))
    with pytest.raises(ValueError, match=message):
        next(cli._report_inputs(DemoModel(), arguments))
