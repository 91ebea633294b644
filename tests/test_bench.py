"""attnref.bench and the ``attnref bench`` command (cli.py's bench subcommand):
tiny shapes, one round, no probe unless a test is about it."""
import importlib.util
import json
import sys

import numpy as np
import pytest

from attnref import bench, cli, kernel
from attnref.testing.cases import Case

TINY = dict(dtypes=("float32",), sizes=(16,), head_dims=(8,), thread_counts=(1, 2),
            repeats=1, decode_lengths=(), measure_limits=False)
needs_kernel = pytest.mark.skipif(not kernel.available(), reason="the C kernel is not built")
needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                 reason="torch not installed")


def broken(name):
    """A contender whose output is off by 1: wrong under any rule."""
    def bind(query, key, value, is_causal=False, enable_gqa=False, scale=None):
        return lambda: bench.scaled_dot_product_attention(
            query, key, value, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa,
            backend="numpy") + 1
    return bench.Contender(name, bind, None, "broken")


@needs_kernel
def test_every_ratio_divides_two_medians_of_the_same_run():
    record = bench.run(implementations=("c", "numpy"), **TINY)
    assert [case["causal"] for case in record["cases"]] == [False, True]
    for case in record["cases"]:
        c, numpy = case["results"]["c"], case["results"]["numpy"]
        for threads in (1, 2):
            assert len(c["times_ms"][threads]) == 1
            assert case["c_speedup"][threads]["numpy"] == (
                numpy["median_ms"][threads] / c["median_ms"][threads])
            assert c["gflops"][threads] == case["flops"] / c["median_ms"][threads] / 1e6
        assert c["max_error"] <= c["error_bound"]  # checked before timing
    full = 4 * 8 * 16 * 16 * 8
    assert [case["flops"] for case in record["cases"]] == [full, full // 2]
    json.dumps(record, allow_nan=False)  # JSON-ready


def test_a_wrong_contender_is_not_timed(monkeypatch):
    monkeypatch.setattr(bench, "contenders", lambda names, scores: [broken("numpy")])
    messages = []
    record = bench.run(implementations=("numpy",), progress=messages.append, **TINY)
    result = record["cases"][0]["results"]["numpy"]
    assert result["skipped"] == "wrong" and result["times_ms"] == {}
    assert result["reason"].startswith("wrong at float32 D=8 non-causal N=16 (numpy)")
    assert any(message.startswith("WRONG:") for message in messages)
    assert "wrong" in bench.report(record)


def test_unavailable_contenders_say_why(monkeypatch):
    for name in ("torch", "jax"):
        monkeypatch.setitem(sys.modules, name, None)  # makes `import name` fail
    found = {contender.name: contender for contender in bench.contenders(bench.CONTENDERS)}
    assert found["torch"].bind is None
    assert found["torch"].unavailable.startswith(
        "the torch contender needs torch, which is not installed: pip install torch "
        "--index-url https://download.pytorch.org/whl/cpu")
    assert found["jax"].unavailable.startswith(
        "the jax contender needs jax, which is not installed: pip install jax jaxlib")
    with pytest.raises(ValueError, match=r"implementations must be among .*\['tensorflow'\]"):
        bench.contenders(["c", "tensorflow"])


@needs_kernel
def test_decode_rates_count_the_bytes_of_key_and_value():
    options = dict(TINY, decode_lengths=(64,), sizes=())
    record = bench.run(implementations=("c",), read_bytes=2**20, **options)
    (case,) = record["decode"]
    assert case["kv_bytes"] == 2 * 8 * 64 * 128 * 4 and case["evict_bytes"] == 2**20
    c = case["results"]["c"]
    assert c["gbs"][1] == case["kv_bytes"] / c["median_ms"][1] / 1e6
    assert "decoding, L=1, Hq=32, Hkv=8, D=128" in bench.report(record)


@needs_kernel
def test_shares_of_the_probed_peak_and_bandwidth():
    options = dict(TINY, measure_limits=True, decode_lengths=(64,), thread_counts=(1,))
    record = bench.run(implementations=("c",), probe_seconds=0.005, read_bytes=2**20,
                       **options)
    limits = record["limits"]
    if limits["reason"]:
        pytest.skip(f"probe unavailable: {limits['reason']}")
    assert limits["isa"] == bench.probe.isa_of_code_path(kernel.get_code_path()) or \
        kernel.get_code_path() == "portable"
    result = record["cases"][0]["results"]["c"]
    peak = limits["peak_gflops"]["float32"][1]
    assert result["percent_of_peak"][1] == 100 * result["gflops"][1] / peak
    decode = record["decode"][0]["results"]["c"]
    assert decode["percent_of_read"][1] == 100 * decode["gbs"][1] / limits["read_gbs"][1]
    assert f"machine limits ({limits['isa']}, 1 thread): FMA peak GFLOP/s float32" in \
        bench.report(record)


@needs_kernel
def test_accuracy_measures_each_contender_against_the_exact_reference():
    cases = (Case("tiny", L=4, S=300, E=8, Hq=2), Case("tiny_large", L=4, S=40, E=8, scale=1.0))
    record = bench.run(implementations=("c", "numpy"), accuracy_cases=cases,
                       **dict(TINY, sizes=(), dtypes=("float32", "float64")))
    assert [(row["case"], row["dtype"]) for row in record["accuracy"]] == [
        ("tiny", "float32"), ("tiny", "float64"), ("tiny_large", "float32"),
        ("tiny_large", "float64")]
    for row in record["accuracy"]:
        assert 0 <= row["errors"]["c"] <= row["bound"]
        assert 0 < row["errors"]["numpy"] <= row["bound"]
    table = bench.accuracy_table(record)
    assert table.splitlines()[0].split() == ["case", "dtype", "c", "error", "numpy", "error",
                                             "bound"]


@needs_kernel
@needs_torch
def test_torch_is_held_to_the_row_threads_and_compared():
    record = bench.run(implementations=("c", "torch"), **TINY)
    import torch
    assert torch.get_num_threads() == 2  # the last row's
    case = record["cases"][0]
    assert set(case["c_speedup"][1]) == {"torch"}
    assert record["machine"]["torch"].startswith(torch.__version__)
    assert f"torch {torch.__version__}" in bench.table_tag(record)


@needs_kernel
def test_report_headings_name_the_cpu_the_isa_and_the_versions():
    record = bench.run(implementations=("c", "numpy"), **TINY)
    text = bench.report(record)
    heading = next(line for line in text.splitlines() if line.startswith("== float32, 1 thread"))
    assert bench.probe.cpu_name() in heading and "attnref" in heading
    assert f"c {kernel.info()['path']}" in heading
    markdown = bench.report(record, markdown=True)
    assert "### float32, 2 threads: " in markdown
    assert "| ---: |" in markdown


@needs_kernel
def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    record = bench.run(implementations=("c", "numpy"), **dict(TINY, sizes=(16, 32)))
    bench.plot(record, tmp_path / "bench.png")
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"--plot needs matplotlib.*attnref\[plot\]"):
        bench.plot({}, "unused.png")


# ---- the command


def command(capsys, *argv):
    status = cli.main(["bench", *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@needs_kernel
def test_the_command_prints_tables_progress_and_a_strict_json_record(capsys, tmp_path):
    status, out, err = command(capsys, "--quick", "--no-probe", "--no-decode", "--sizes", "16",
                               "--head-dims", "8", "--implementations", "c", "numpy",
                               "--json", str(tmp_path / "bench.json"))
    assert status == 0
    assert "== float32, 2 threads:" in out and "c/numpy" in out
    assert err.splitlines()[0] == "attnref bench: [1/2] float32 D=8 non-causal N=16"
    record = json.loads((tmp_path / "bench.json").read_text(),
                        parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))
    assert record["settings"]["threads"] == [bench.probe.usable_cores()]
    assert record["settings"]["repeats"] == 3
    assert [case["N"] for case in record["cases"]] == [16, 16]


def test_the_command_exits_1_when_the_kernel_is_wrong(capsys, monkeypatch):
    monkeypatch.setattr(bench, "contenders", lambda names, scores: [broken("c")])
    status, out, _ = command(capsys, "--no-probe", "--no-decode", "--sizes", "16",
                             "--head-dims", "8", "--threads", "1", "--repeats", "1",
                             "--causal", "no")
    assert status == 1 and "wrong" in out


@pytest.mark.parametrize("argv, message", [
    (["--sizes", "0"], "argument --sizes: expected an integer >= 1, got '0'"),
    (["--threads", "two"], "argument --threads: expected an integer >= 1, got 'two'"),
    (["--repeats", "0"], "argument --repeats: expected an integer >= 1, got '0'"),
    (["--dtypes", "float16"], "argument --dtypes: invalid choice: 'float16'"),
    (["--implementations", "tensorflow"], "argument --implementations: invalid choice"),
    (["--causal", "maybe"], "argument --causal: invalid choice: 'maybe'"),
    (["--plot", "/nonexistent/dir/b.png"], "argument --plot: cannot write /nonexistent/dir/b.png"),
    (["--json", "."], "argument --json: . is a directory; expected a file path"),
])
def test_bad_options_are_one_line_and_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", *argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.startswith(f"attnref bench: error: {message}")
    assert err.count("\n") == 1


def test_plot_without_matplotlib_fails_before_any_work(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "--plot", str(tmp_path / "b.png")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert err.startswith("attnref bench: error: --plot needs matplotlib, which is not "
                          "installed: pip install 'attnref[plot]'")
    assert not (tmp_path / "b.png").exists()


def test_float64_inputs_stay_float64_for_every_contender():
    rng = np.random.default_rng(0)
    query, key, value = (rng.standard_normal((1, 2, 5, 4)) for _ in range(3))
    for contender in bench.contenders(("numpy",) + (("c",) if kernel.available() else ())):
        assert contender.bind(query, key, value)().dtype == np.float64


@needs_kernel
@pytest.mark.parametrize("scores", ["fast", "exact"])
def test_the_kernel_runs_in_the_score_mode_asked_for(scores, monkeypatch):
    asked = []
    real = bench.scaled_dot_product_attention

    def spy(*args, **options):
        asked.append(options.get("backend") == "c" and options["scores"])
        return real(*args, **options)
    monkeypatch.setattr(bench, "scaled_dot_product_attention", spy)
    record = bench.run(implementations=("c",), scores=scores, **dict(TINY, causal=(False,)))
    assert record["settings"]["scores"] == scores
    assert record["machine"]["c"].endswith(f"scores={scores}")
    assert scores in asked and set(asked) <= {scores, False}
    with pytest.raises(ValueError, match=r"scores must be one of \('exact', 'fast'\), got 'x'"):
        bench.contenders(["c"], scores="x")
