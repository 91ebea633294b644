"""attnref.testing.vectors: golden vectors any language can read, and their
verification."""
import hashlib
import io
import json
import os
import re
import struct
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest

import attnref
from attnref.testing import PROFILES, SUITES, Semantics, vectors
from attnref.testing.tolerance import FACTOR, FLOOR_EPS, max_abs_error
from attnref.testing.vectors import export, verify


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """The quick suite exported once: (directory, manifest)."""
    directory = tmp_path_factory.mktemp("quick")
    return directory, export(directory, "quick", progress=False)


@pytest.fixture(scope="module")
def standard(tmp_path_factory):
    """The standard suite exported once: (directory, manifest)."""
    directory = tmp_path_factory.mktemp("standard")
    return directory, export(directory, "standard", progress=False)


def _entry(manifest, name):
    return next(entry for entry in manifest["cases"] if entry["name"] == name)


def _load(path):
    with np.load(path, allow_pickle=False) as stored:
        return {name: stored[name] for name in stored.files}


def _rewrite_case(directory, name, arrays):
    """Replace a case's archive (written by numpy.savez, not attnref) and
    record its new sha256, as someone editing the directory by hand would."""
    path = directory / f"{name}.npz"
    np.savez(path, **arrays)
    manifest_path = directory / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    _entry(manifest, name)["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest_path.write_text(json.dumps(manifest))


def test_manifest_names_the_format_suite_profile_and_rule(quick):
    directory, manifest = quick
    assert json.loads((directory / "manifest.json").read_text()) == manifest
    assert manifest["format"] == "attnref-vectors"
    assert manifest["format_version"] == 2
    assert manifest["attnref_version"] == attnref.__version__
    assert (manifest["suite"], manifest["seed"], manifest["dtype"]) == ("quick", 0, "float32")
    assert manifest["semantics"] == {
        "name": "torch", "mask_true_means": "attend", "causal_alignment": "top_left",
        "masked_rows": "zero",
        "description": "torch.nn.functional.scaled_dot_product_attention (2.5+)"}
    tolerance = manifest["tolerance"]
    assert (tolerance["factor"], tolerance["floor_eps"]) == (FACTOR, FLOOR_EPS)
    assert tolerance["eps"] == float(np.finfo(np.float32).eps)
    assert (tolerance["dtype"], tolerance["reference_dtype"]) == ("float32", "float64")
    assert ("bound = factor * baseline_error + floor_eps * eps * max(1, value_scale)"
            in tolerance["rule"])
    assert manifest["max_weight_entries"] == 65536
    assert [entry["name"] for entry in manifest["cases"]] == list(SUITES["quick"])


def test_case_entries_give_parameters_shapes_and_a_bound(quick):
    _, manifest = quick
    eps = manifest["tolerance"]["eps"]
    for entry in manifest["cases"]:
        case = SUITES["quick"][entry["name"]]
        parameters = entry["parameters"]
        assert entry["file"] == f"{case.name}.npz"
        assert entry["description"] == case.description
        assert entry["requires"] == sorted(case.requires)
        assert (parameters["L"], parameters["S"], parameters["E"], parameters["Ev"]) == (
            case.L, case.S, case.E, case.value_dim)
        assert (parameters["B"], parameters["Hq"], parameters["Hkv"]) == (
            case.B, case.Hq, case.heads_kv)
        assert (parameters["mask"], parameters["content"]) == (case.mask, case.content)
        B, Hq, Hkv, L, S = case.B, case.Hq, case.heads_kv, case.L, case.S
        shapes = {name: tuple(array["shape"]) for name, array in entry["arrays"].items()}
        assert shapes["query"] == (B, Hq, L, case.E)
        assert shapes["key"] == (B, Hkv, S, case.E)
        assert shapes["value"] == (B, Hkv, S, case.value_dim)
        assert shapes["output"] == (B, Hq, L, case.value_dim)
        assert shapes["lse"] == (B, Hq, L)
        assert shapes["weights"] == (B, Hq, L, S)
        assert shapes["is_causal"] == shapes["enable_gqa"] == ()
        assert shapes["grad_out"] == (B, Hq, L, case.value_dim)
        assert (shapes["dq"], shapes["dk"], shapes["dv"]) == (
            (B, Hq, L, case.E), (B, Hkv, S, case.E), (B, Hkv, S, case.value_dim))
        assert entry["arrays"]["grad_out"]["dtype"] == "float32"
        assert set(entry["tolerance"]) == {"output", "lse", "weights", "dq", "dk", "dv"}
        assert entry["arrays"]["query"]["dtype"] == "float32"
        assert entry["arrays"]["output"]["dtype"] == "float64"
        for numbers in entry["tolerance"].values():
            assert numbers["bound"] == pytest.approx(
                FACTOR * numbers["baseline_error"]
                + FLOOR_EPS * eps * max(1.0, numbers["value_scale"]), rel=1e-12)
            assert 0 <= numbers["baseline_error"] < numbers["bound"]


def test_every_file_has_the_sha256_the_manifest_records(quick):
    directory, manifest = quick
    for entry in manifest["cases"]:
        assert hashlib.sha256((directory / entry["file"]).read_bytes()).hexdigest() == \
            entry["sha256"]


def test_the_same_arguments_give_the_same_bytes(tmp_path):
    export(tmp_path / "first", "quick", progress=False)
    export(tmp_path / "second", "quick", progress=False)
    export(tmp_path / "other_seed", "quick", seed=1, progress=False)
    names = sorted(path.name for path in (tmp_path / "first").iterdir())
    assert names == sorted(path.name for path in (tmp_path / "second").iterdir())
    for name in names:
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes()
    assert (tmp_path / "first" / "aligned.npz").read_bytes() != \
        (tmp_path / "other_seed" / "aligned.npz").read_bytes()


def test_archives_can_be_walked_as_docs_vectors_md_describes(quick):
    """Stored members, 30-byte local headers, .npy 1.0 little-endian C order:
    a reader with no zip or npy library gets what numpy.load gets."""
    directory, _ = quick
    archive = (directory / "bool_mask.npz").read_bytes()
    members, offset = {}, 0
    while archive[offset:offset + 4] == b"PK\x03\x04":
        flags, method = struct.unpack_from("<HH", archive, offset + 6)
        size, = struct.unpack_from("<I", archive, offset + 18)
        name_length, extra_length = struct.unpack_from("<HH", archive, offset + 26)
        assert (flags, method, extra_length) == (0, 0, 0)
        name = archive[offset + 30:offset + 30 + name_length].decode()
        start = offset + 30 + name_length
        members[name] = archive[start:start + size]
        offset = start + size
    assert archive[offset:offset + 4] == b"PK\x01\x02"   # the central directory
    loaded = _load(directory / "bool_mask.npz")
    assert list(members) == [f"{name}.npy" for name in loaded]
    descriptors = {"float32": "<f4", "float64": "<f8", "bool": "|b1"}
    for name, array in loaded.items():
        member = members[f"{name}.npy"]
        assert member[:8] == b"\x93NUMPY\x01\x00"
        header_length, = struct.unpack_from("<H", member, 8)
        header = member[10:10 + header_length].decode("ascii")
        assert f"'descr': '{descriptors[array.dtype.name]}'" in header
        assert "'fortran_order': False" in header
        assert (10 + header_length) % 64 == 0
        data = np.frombuffer(member[10 + header_length:], dtype=descriptors[array.dtype.name])
        assert np.array_equal(data.reshape(array.shape), array)


def test_absent_members_mean_none(standard):
    directory, _ = standard
    aligned = _load(directory / "aligned.npz")
    assert "attn_mask" not in aligned and "scale" not in aligned
    assert aligned["is_causal"].shape == () and not aligned["is_causal"]
    overridden = _load(directory / "scale_override.npz")
    assert overridden["scale"].dtype == np.float64 and overridden["scale"] == 0.3
    assert not _load(directory / "aligned.npz")["enable_gqa"]
    assert _load(directory / "gqa.npz")["enable_gqa"]


def test_the_mask_is_written_in_the_profiles_polarity(tmp_path):
    export(tmp_path, "quick", semantics="torch_mha", progress=False)
    case_mask = SUITES["quick"]["bool_mask"].inputs(0, "float32")["attn_mask"]
    stored = _load(tmp_path / "bool_mask.npz")["attn_mask"]
    assert stored.dtype == bool and np.array_equal(stored, ~case_mask)
    float_mask = SUITES["quick"]["float_mask"].inputs(0, "float32")["attn_mask"]
    assert np.array_equal(_load(tmp_path / "float_mask.npz")["attn_mask"], float_mask)
    assert verify(tmp_path, progress=False) == [
        (name, True, "matches the manifest and attnref") for name in SUITES["quick"]]


def test_weights_are_kept_only_when_small(tmp_path, monkeypatch):
    monkeypatch.setattr(vectors, "MAX_WEIGHT_ENTRIES", 1024)
    manifest = export(tmp_path, "quick", progress=False)
    for entry in manifest["cases"]:
        p = entry["parameters"]
        small = p["B"] * p["Hq"] * p["L"] * p["S"] <= 1024
        assert ("weights" in entry["arrays"]) == small
        assert ("weights" in _load(tmp_path / entry["file"])) == small
    assert not any("weights" in entry["arrays"] for entry in manifest["cases"][:2])
    assert all(ok for _, ok, _ in verify(tmp_path, progress=False))


def test_weights_follow_the_profiles_fully_masked_rows(tmp_path):
    """Under "jax" a row with no visible key averages every value: its
    weights are 1/S, its lse -inf, and output = weights @ value throughout."""
    export(tmp_path, "quick", semantics="jax", progress=False)
    stored = _load(tmp_path / "fully_masked_rows.npz")
    masked = np.isneginf(stored["lse"])
    assert masked.any()
    S = stored["key"].shape[-2]
    assert np.all(stored["weights"][masked] == 1.0 / S)
    np.testing.assert_allclose(stored["weights"] @ stored["value"].astype(np.float64),
                               stored["output"], atol=1e-15)


@pytest.mark.parametrize("dtype, reference_dtype",
                         [("float16", "float64"), ("float64", "longdouble")])
@pytest.mark.parametrize("semantics", ["flash", "onnx"])
def test_other_dtypes_and_profiles_export_and_verify(tmp_path, dtype, reference_dtype, semantics):
    manifest = export(tmp_path, "quick", dtype=dtype, semantics=semantics, progress=False)
    assert manifest["tolerance"]["reference_dtype"] == reference_dtype
    assert manifest["semantics"]["causal_alignment"] == "bottom_right"
    stored = _load(tmp_path / "causal.npz")
    assert stored["query"].dtype == np.dtype(dtype) and stored["output"].dtype == np.float64
    assert all(ok for _, ok, _ in verify(tmp_path, progress=False))


def test_verify_passes_a_fresh_export_and_reports_progress(tmp_path, capsys):
    export(tmp_path, "quick")
    results = verify(tmp_path)
    assert [name for name, _, _ in results] == list(SUITES["quick"])
    assert all(ok for _, ok, _ in results)
    stderr = capsys.readouterr().err.splitlines()
    assert stderr[0].startswith("[1/8] aligned -> ") and stderr[0].endswith("aligned.npz")
    assert stderr[8:] == [f"[{position}/8] {name}: ok"
                          for position, name in enumerate(SUITES["quick"], 1)]


def test_verify_reports_a_file_whose_bytes_changed(tmp_path):
    export(tmp_path, "quick", progress=False)
    path = tmp_path / "causal.npz"
    archive = bytearray(path.read_bytes())
    archive[200] ^= 1                                    # inside query's data
    path.write_bytes(bytes(archive))
    results = dict((name, (ok, message)) for name, ok, message in verify(tmp_path, progress=False))
    ok, message = results.pop("causal")
    assert not ok and "sha256 of causal.npz is" in message
    assert "causal.npz is not a readable .npz: Bad CRC-32 for file 'query.npy'" in message
    assert all(ok for ok, _ in results.values())


def test_verify_reports_a_changed_reference_even_with_a_matching_sha256(tmp_path):
    export(tmp_path, "quick", progress=False)
    arrays = _load(tmp_path / "gqa.npz")
    arrays["output"][0, 3, 5, 7] += 1e-9                # far below any float32 bound
    _rewrite_case(tmp_path, "gqa", arrays)
    arrays = _load(tmp_path / "odd_lengths.npz")
    arrays["key"][0, 0, 0, 0] = np.nextafter(arrays["key"][0, 0, 0, 0], np.float32(np.inf))
    _rewrite_case(tmp_path, "odd_lengths", arrays)
    results = {name: (ok, message) for name, ok, message in verify(tmp_path, progress=False)}
    ok, message = results["gqa"]
    assert not ok and "sha256" not in message
    assert message.startswith("output is 1e-09 from attnref's reference, more than the "
                              "float64 bound")
    ok, message = results["odd_lengths"]
    assert not ok and message.startswith("key differs from the input attnref")
    assert results["aligned"] == (True, "matches the manifest and attnref")


def test_verify_reports_missing_and_unexpected_members(tmp_path):
    export(tmp_path, "quick", progress=False)
    arrays = _load(tmp_path / "causal.npz")
    del arrays["lse"]
    arrays["weights"] = arrays["weights"][..., :-1]
    _rewrite_case(tmp_path, "causal", arrays)
    (tmp_path / "aligned.npz").unlink()
    manifest_path = tmp_path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    _entry(manifest, "gqa")["parameters"]["Hkv"] = 4
    manifest_path.write_text(json.dumps(manifest))
    results = {name: (ok, message) for name, ok, message in verify(tmp_path, progress=False)}
    assert results["aligned"] == (False, f"{tmp_path / 'aligned.npz'} not found")
    ok, message = results["causal"]
    assert not ok and ("causal.npz holds ['dk.npy', 'dq.npy', 'dv.npy', 'enable_gqa.npy', "
                       "'grad_out.npy', 'is_causal.npy', 'key.npy'" in message)
    assert ("weights.npy in causal.npz is '<f8' (1, 2, 33, 32) in C order, the case expects "
            "'<f8' (1, 2, 33, 33) in C order" in message)
    ok, message = results["gqa"]
    assert not ok and message.startswith("the manifest's parameters differ from the case")
    assert "'Hkv': 2" in message


def test_verify_rejects_a_malformed_directory_naming_the_path(tmp_path):
    manifest_path = tmp_path / "manifest.json"
    with pytest.raises(ValueError, match=r"manifest\.json not found: .* is not a golden-vector"):
        verify(tmp_path)
    manifest_path.write_text("{not json")
    with pytest.raises(ValueError, match=rf"{manifest_path}: not valid JSON"):
        verify(tmp_path)
    manifest = export(tmp_path, "quick", progress=False)
    for change, message in (
            ({"format": "npz"}, r"format is 'npz', expected 'attnref-vectors'"),
            ({"format_version": 3}, r"format_version is 3, this attnref reads versions 1 and 2"),
            ({"format_version": True},
             r"format_version is True, this attnref reads versions 1 and 2"),
            ({"suite": "huge"}, r"suite must be one of .*, got 'huge'"),
            ({"dtype": "int8"}, r"dtype must be one of \('float16', 'bfloat16', 'float32', "
                                r"'float64'\), got 'int8'"),
            ({"cases": {"aligned": {}}}, r"the field 'cases' must be an array")):
        manifest_path.write_text(json.dumps({**manifest, **change}))
        with pytest.raises(ValueError, match=rf"{manifest_path}: {message}"):
            verify(tmp_path, progress=False)


def test_export_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"suite must be one of .*, got 'tiny'"):
        export(tmp_path, "tiny")
    with pytest.raises(ValueError, match=r"dtype must be one of .*'bfloat16'.*, got 'int32'"):
        export(tmp_path, "quick", dtype="int32")
    with pytest.raises(ValueError, match=r"seed must be a non-negative integer, got -1"):
        export(tmp_path, "quick", seed=-1)
    with pytest.raises(ValueError, match=r"semantics must be one of .*, got 'tf'"):
        export(tmp_path, "quick", semantics="tf")
    for version in (0, 3, True):
        with pytest.raises(ValueError, match=rf"format_version must be one of \(1, 2\), got "
                                             rf"{version}"):
            export(tmp_path, "quick", format_version=version)


def test_plain_numpy_reads_vectors_that_attnref_reproduces_under_the_rule(standard):
    """What a user in another language does: read the arrays, call their
    attention (here attnref's own, C kernel when compiled), compare each
    result with the stored reference against the manifest's bound."""
    directory, manifest = standard
    for entry in manifest["cases"]:
        stored = _load(directory / entry["file"])
        scale, softcap, window = (stored.get(name) for name in ("scale", "softcap", "window"))
        extras = {"softcap": None if softcap is None else float(softcap),
                  "window": None if window is None else tuple(None if side < 0 else int(side)
                                                              for side in window)}
        result = attnref.scaled_dot_product_attention(
            stored["query"], stored["key"], stored["value"], attn_mask=stored.get("attn_mask"),
            is_causal=bool(stored["is_causal"]), scale=None if scale is None else float(scale),
            enable_gqa=bool(stored["enable_gqa"]), return_lse=True, **extras)
        assert result.output.dtype == np.float32
        for name, candidate in (("output", result.output), ("lse", result.lse)):
            error = max_abs_error(candidate, stored[name])
            assert error <= entry["tolerance"][name]["bound"], (entry["name"], name, error)
        gradients = attnref.scaled_dot_product_attention_backward(
            stored["grad_out"], stored["query"], stored["key"], stored["value"],
            attn_mask=stored.get("attn_mask"), is_causal=bool(stored["is_causal"]),
            scale=None if scale is None else float(scale), enable_gqa=bool(stored["enable_gqa"]),
            **extras)
        for name, candidate in zip(("dq", "dk", "dv"), gradients):
            assert candidate.dtype == np.float32
            error = max_abs_error(candidate, stored[name])
            assert error <= entry["tolerance"][name]["bound"], (entry["name"], name, error)


# --- verify trusts nothing in the directory (issue 14) ------------------------------------


@pytest.fixture
def exported(tmp_path):
    """A fresh export of the quick suite: (directory, manifest)."""
    directory = tmp_path / "vectors"
    return directory, export(directory, "quick", progress=False)


def _edit_manifest(directory, change):
    """Apply ``change`` to the parsed manifest and write it back."""
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def _results(directory):
    return {name: (ok, message) for name, ok, message in verify(directory, progress=False)}


def _only_failure(directory, name):
    """The message of ``name``, after checking that it alone fails."""
    results = _results(directory)
    ok, message = results.pop(name)
    assert not ok
    assert all(ok for ok, _ in results.values()), results
    return message


def _set(path, value):
    """A manifest change setting the field at ``path`` (keys and indices) to ``value``."""
    def change(manifest):
        node = manifest
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return change


def _members(path):
    """The raw bytes of every member of an archive, in order."""
    with zipfile.ZipFile(path) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def _write_members(directory, name, members):
    """Write a case's archive from raw members (stored) and record its sha256."""
    path = directory / f"{name}.npz"
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in members.items():
            archive.writestr(member, data)
    _record_sha256(directory, name)


def _record_sha256(directory, name):
    digest = hashlib.sha256((directory / f"{name}.npz").read_bytes()).hexdigest()
    _edit_manifest(directory, lambda manifest: _entry(manifest, name).update(sha256=digest))


def test_a_loosened_or_tightened_bound_is_reported(exported):
    directory, manifest = exported
    bound = _entry(manifest, "gqa")["tolerance"]["output"]["bound"]
    _edit_manifest(directory, lambda m: _entry(m, "gqa")["tolerance"]["output"].update(bound=1e9))
    assert _only_failure(directory, "gqa") == (
        f"tolerance.output.bound is 1000000000.0, attnref computes {bound!r}, a looser bound")
    _edit_manifest(directory, lambda m: _entry(m, "gqa")["tolerance"]["output"].update(
        bound=bound / 2))
    assert _only_failure(directory, "gqa").endswith(", a tighter bound")


@pytest.mark.parametrize("number", ["baseline_error", "value_scale"])
def test_an_edited_measurement_behind_a_bound_is_reported(exported, number):
    directory, manifest = exported
    stored = _entry(manifest, "causal")["tolerance"]["lse"][number]
    _edit_manifest(directory, lambda m: _entry(m, "causal")["tolerance"]["lse"].update(
        {number: stored * 3}))
    assert _only_failure(directory, "causal") == (
        f"tolerance.lse.{number} is {stored * 3!r}, attnref computes {stored!r}")


def test_a_reference_dropped_from_the_tolerance_is_reported(exported):
    directory, _ = exported
    _edit_manifest(directory, lambda m: _entry(m, "bool_mask")["tolerance"].pop("weights"))
    assert _only_failure(directory, "bool_mask") == (
        "the manifest's tolerance covers ['dk', 'dq', 'dv', 'lse', 'output'], the references "
        "are ['dk', 'dq', 'dv', 'lse', 'output', 'weights']")


def test_a_nan_bound_is_refused_as_json(exported):
    directory, _ = exported
    path = directory / "manifest.json"
    text, replaced = re.subn(r'("bound": )[-+.0-9e]+', r"\1NaN", path.read_text(), count=1)
    assert replaced == 1
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"{path}: NaN is not a JSON number"):
        verify(directory, progress=False)


@pytest.mark.parametrize("field, value", [
    ("factor", 1e9), ("factor", 0), ("floor_eps", 400.0), ("eps", 1.0),
    ("rule", "anything within 1e9 passes"), ("dtype", "float64"),
    ("reference_dtype", "float32")])
def test_an_edited_rule_is_refused(exported, field, value):
    directory, _ = exported
    _edit_manifest(directory, _set(["tolerance", field], value))
    with pytest.raises(ValueError, match=rf"manifest\.json: the field 'tolerance\.{field}' is "
                                         rf".*: a manifest cannot change the rule"):
        verify(directory, progress=False)


def test_an_edited_weight_limit_semantics_or_seed_is_refused(exported):
    directory, manifest = exported
    for change, message in (
            (_set(["max_weight_entries"], 0), "the field 'max_weight_entries' is 0, attnref's "
                                              "is 65536"),
            (_set(["semantics", "masked_rows"], "nan"), "the field 'semantics' names attnref's "
                                                        "profile 'torch' but differs from it"),
            (_set(["semantics", "masked_rows"], "garbage"), "the field 'semantics.masked_rows' "
                                                            "must be one of"),
            (_set(["seed"], -1), "the field 'seed' must be a non-negative integer, got -1")):
        _edit_manifest(directory, lambda m: m.update(manifest))
        _edit_manifest(directory, change)
        with pytest.raises(ValueError, match=message):
            verify(directory, progress=False)


def test_an_edited_description_capability_or_array_table_is_reported(exported):
    directory, _ = exported
    _edit_manifest(directory, _set(["cases", 0, "description"], "anything"))
    _edit_manifest(directory, lambda m: _entry(m, "gqa")["requires"].remove("gqa"))
    _edit_manifest(directory, _set(["cases", 2, "arrays", "query", "shape"], [1, 2, 33, 65]))
    results = _results(directory)
    assert results["aligned"] == (False, "the manifest's description 'anything' is not the "
                                         "case's 'L = S = 64, E = 64'")
    assert results["gqa"] == (False, "the manifest's requires ['l_ne_s'] is not what the case "
                                     "needs: ['gqa', 'l_ne_s']")
    ok, message = results["causal"]
    assert not ok and message.startswith("the manifest describes ['query'] otherwise than "
                                         "the case's arrays")


def test_an_empty_case_list_fails_every_case(exported):
    directory, _ = exported
    _edit_manifest(directory, _set(["cases"], []))
    assert verify(directory, progress=False) == [
        (name, False, "missing: the manifest must list every case of suite 'quick'")
        for name in SUITES["quick"]]


def test_a_removed_case_fails(exported):
    directory, _ = exported
    _edit_manifest(directory, lambda m: m["cases"].pop(3))
    assert _only_failure(directory, "gqa") == (
        "missing: the manifest must list every case of suite 'quick'")


def test_a_moved_repeated_or_renamed_case_fails(exported):
    directory, _ = exported
    _edit_manifest(directory, lambda m: m["cases"].append(m["cases"].pop(0)))
    assert _only_failure(directory, "aligned") == (
        "listed as cases[7], out of the order of suite 'quick', where it is case 1 of 8")
    _edit_manifest(directory, lambda m: m["cases"].insert(0, m["cases"].pop()))
    _edit_manifest(directory, lambda m: m["cases"].append(m["cases"][2]))
    assert _only_failure(directory, "causal") == "listed again as cases[8]"
    _edit_manifest(directory, lambda m: m["cases"].pop())
    _edit_manifest(directory, _set(["cases", 1, "name"], "odd\x1b[2J"))
    results = verify(directory, progress=False)
    assert [name for name, _, _ in results] == list(SUITES["quick"]) + ["'odd\\x1b[2J'"]
    assert results[1] == ("odd_lengths", False,
                          "missing: the manifest must list every case of suite 'quick'")
    assert results[-1][1:] == (False, f"cases[1]: suite 'quick' of attnref "
                                      f"{attnref.__version__} has no case 'odd\\x1b[2J'")


@pytest.mark.parametrize("file", ["../../../../etc/passwd", "/etc/passwd", "/proc/self/environ",
                                  "C:\\passwd", "sub\\aligned.npz", "", "aligned.npz\x00"])
def test_a_file_outside_the_directory_is_never_read(exported, file):
    directory, _ = exported
    _edit_manifest(directory, _set(["cases", 0, "file"], file))
    message = _only_failure(directory, "aligned")
    assert message == (f"the file {file!r} is not a relative path inside {directory} "
                       "('/' as separator, no '..'): refused")


def test_a_link_out_of_the_directory_is_not_followed(exported, tmp_path):
    directory, _ = exported
    outside = tmp_path / "secret.npz"
    (directory / "aligned.npz").rename(outside)
    (directory / "aligned.npz").symlink_to(outside)
    assert _only_failure(directory, "aligned") == (
        f"{directory / 'aligned.npz'} leads to {outside}, outside {directory}: refused")
    (directory / "aligned.npz").unlink()
    (directory / "aligned.npz").symlink_to("/proc/self/environ")
    assert "outside" in _only_failure(directory, "aligned")
    (directory / "aligned.npz").unlink()
    (directory / "aligned.npz").symlink_to("aligned.npz")   # a loop
    assert "cannot resolve" in _only_failure(directory, "aligned")


def test_a_link_or_subdirectory_inside_the_directory_is_followed(exported):
    directory, _ = exported
    (directory / "cases").mkdir()
    (directory / "aligned.npz").rename(directory / "cases" / "aligned.npz")
    (directory / "aligned.npz").symlink_to(directory / "cases" / "aligned.npz")
    _edit_manifest(directory, _set(["cases", 1, "file"], "cases/../odd_lengths.npz"))
    (directory / "causal.npz").rename(directory / "cases" / "causal.npz")
    _edit_manifest(directory, _set(["cases", 2, "file"], "cases/causal.npz"))
    results = _results(directory)
    assert results.pop("odd_lengths")[0] is False               # '..' is refused even inside
    assert all(ok for ok, _ in results.values())


def test_a_fifo_or_directory_is_not_read(exported):
    directory, _ = exported
    (directory / "aligned.npz").unlink()
    os.mkfifo(directory / "aligned.npz")                      # opening it would block
    assert _only_failure(directory, "aligned").endswith("the archive is not a regular file")
    _edit_manifest(directory, _set(["cases", 0, "file"], "."))
    assert _only_failure(directory, "aligned").endswith("the archive is not a regular file")


def test_a_huge_archive_is_refused_before_reading(exported):
    directory, _ = exported
    with open(directory / "aligned.npz", "r+b") as stream:
        stream.truncate(4 * 2**30)                            # sparse: no GiB is written
    message = _only_failure(directory, "aligned")
    assert re.fullmatch(r".*aligned\.npz: the archive is 4294967296 bytes, more than the "
                        r"\d+ accepted", message)


def _deflated(chunks):
    """A raw deflate stream of the concatenated ``chunks`` (which may add up
    to far more than memory holds: they are compressed one by one)."""
    compressor, stream = zlib.compressobj(9, zlib.DEFLATED, -15), []
    for chunk in chunks:
        stream.append(compressor.compress(chunk))
    return b"".join(stream) + compressor.flush()


def _zip(members):
    """A zip archive of ``(name, method, payload, declared_size, crc)``
    members, written by hand so that a member can declare what it likes."""
    local, central = b"", b""
    for name, method, payload, size, crc in members:
        name = name.encode()
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0x21,
                               crc, len(payload), size, len(name), 0, 0, 0, 0, 0,
                               len(local)) + name
        local += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc,
                             len(payload), size, len(name), 0) + name + payload
    return local + central + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members),
                                         len(members), len(central), len(local), 0)


def _stored(members):
    return [(name, 0, data, len(data), zlib.crc32(data)) for name, data in members.items()]


def test_a_member_declaring_a_huge_size_is_refused_unread(exported):
    directory, _ = exported
    members = _members(directory / "aligned.npz")
    query = members.pop("query.npy")
    bomb = ("query.npy", 8, _deflated([query]), 2 * 2**30, zlib.crc32(query))
    (directory / "aligned.npz").write_bytes(_zip([bomb] + _stored(members)))
    _record_sha256(directory, "aligned")
    limit = 12 + vectors.NPY_HEADER_LIMIT + 1 * 2 * 64 * 64 * 4      # query (B, Hq, L, E) float32
    assert _only_failure(directory, "aligned") == (
        f"query.npy in aligned.npz declares 2147483648 bytes, more than the {limit} a float32 "
        f"array of shape (1, 2, 64, 64) takes as .npy")



def _peak_memory(function):
    """``(function(), peak bytes traced while it ran)``."""
    tracemalloc.start()
    try:
        return function(), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_member_inflating_past_its_declared_size_is_cut_there(exported):
    """A deflate stream of 64 MiB that declares the size query.npy should
    have: verify reads the declared bytes (a valid .npy of zeros) and no
    more, so the case fails on its values and the peak memory is that of
    verifying the untouched directory."""
    directory, _ = exported
    _, untouched_peak = _peak_memory(lambda: verify(directory, progress=False))
    members = _members(directory / "aligned.npz")
    query = members.pop("query.npy")
    header = query[:len(query) - 1 * 2 * 64 * 64 * 4]
    zeros = bytes(2**20)
    stream = _deflated([header] + [zeros] * 64)
    declared = header + bytes(len(query) - len(header))
    bomb = ("query.npy", 8, stream, len(query), zlib.crc32(declared))
    (directory / "aligned.npz").write_bytes(_zip([bomb] + _stored(members)))
    assert len(stream) < 2**17
    _record_sha256(directory, "aligned")
    message, peak = _peak_memory(lambda: _only_failure(directory, "aligned"))
    assert message == (f"query differs from the input attnref {attnref.__version__} generates "
                       f"for this case")
    assert peak < untouched_peak + 2**20, (peak, untouched_peak)


def test_an_npy_header_declaring_8_tib_is_refused_without_allocating(exported):
    directory, _ = exported
    members = _members(directory / "aligned.npz")
    huge = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        huge, {"descr": "<f4", "fortran_order": False, "shape": (1, 2, 2**30, 1024)})
    members["query.npy"] = huge.getvalue() + bytes(1 * 2 * 64 * 64 * 4)
    _write_members(directory, "aligned", members)
    assert _only_failure(directory, "aligned") == (
        "query.npy in aligned.npz is '<f4' (1, 2, 1073741824, 1024) in C order, the case "
        "expects '<f4' (1, 2, 64, 64) in C order")


def test_a_pickled_member_is_never_unpickled(exported, tmp_path):
    directory, _ = exported
    marker = tmp_path / "unpickled"

    class Touch:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    member = io.BytesIO()
    np.save(member, np.array([Touch()], dtype=object), allow_pickle=True)
    members = _members(directory / "aligned.npz")
    members["query.npy"] = member.getvalue()
    _write_members(directory, "aligned", members)
    assert _only_failure(directory, "aligned") == (
        "query.npy in aligned.npz is '|O' (1,) in C order, the case expects '<f4' "
        "(1, 2, 64, 64) in C order")
    assert not marker.exists()


def test_other_npy_layouts_and_members_are_reported(exported):
    directory, _ = exported
    arrays = _load(directory / "aligned.npz")
    members = _members(directory / "aligned.npz")
    fortran, big_endian, short = io.BytesIO(), io.BytesIO(), members["key.npy"][:-4]
    np.lib.format.write_array(fortran, np.asfortranarray(arrays["query"]))
    np.lib.format.write_array(big_endian, arrays["value"].astype(">f4"))
    members.update({"query.npy": fortran.getvalue(), "value.npy": big_endian.getvalue(),
                    "key.npy": short, "extra.npy": b"", "output.npy": b"\x93NUMPY\x03\x00"})
    _write_members(directory, "aligned", members)
    message = _only_failure(directory, "aligned")
    for problem in (
            "aligned.npz holds ['dk.npy', 'dq.npy', 'dv.npy', 'enable_gqa.npy', 'extra.npy', "
            "'grad_out.npy', 'is_causal.npy', 'key.npy', 'lse.npy', 'output.npy', 'query.npy', "
            "'value.npy', 'weights.npy'], expected ['dk.npy', 'dq.npy', 'dv.npy', "
            "'enable_gqa.npy', 'grad_out.npy', 'is_causal.npy', 'key.npy', 'lse.npy', "
            "'output.npy', 'query.npy', 'value.npy', 'weights.npy']",
            "query.npy in aligned.npz is '<f4' (1, 2, 64, 64) in Fortran order",
            "value.npy in aligned.npz is '>f4' (1, 2, 64, 64) in C order",
            "key.npy in aligned.npz holds 32764 bytes of data, '<f4' (1, 2, 64, 64) takes 32768",
            "output.npy in aligned.npz is .npy version (3, 0), attnref reads 1.0 and 2.0"):
        assert problem in message
    with zipfile.ZipFile(directory / "aligned.npz", "a") as archive, \
            pytest.warns(UserWarning, match="Duplicate name: 'lse.npy'"):
        archive.writestr("lse.npy", members["lse.npy"])       # a second member of one name
    _record_sha256(directory, "aligned")
    assert "'lse.npy', 'lse.npy'" in _only_failure(directory, "aligned")


def test_a_compressed_archive_of_the_same_arrays_verifies(exported):
    directory, _ = exported
    np.savez_compressed(directory / "aligned.npz", **_load(directory / "aligned.npz"))
    _record_sha256(directory, "aligned")
    assert all(ok for ok, _ in _results(directory).values())


def test_an_archive_that_is_not_a_zip_is_reported(exported):
    directory, _ = exported
    archive = (directory / "aligned.npz").read_bytes()
    (directory / "aligned.npz").write_bytes(b"PK\x03\x04 not a zip")
    _record_sha256(directory, "aligned")
    assert _only_failure(directory, "aligned") == (
        "aligned.npz is not a readable .npz: File is not a zip file")
    central = archive.index(b"PK\x01\x02")                  # needs zip version 6.4 to extract
    (directory / "aligned.npz").write_bytes(archive[:central + 6] + struct.pack("<H", 64)
                                            + archive[central + 8:])
    _record_sha256(directory, "aligned")
    assert _only_failure(directory, "aligned") == (
        "aligned.npz is not a readable .npz: zip file version 6.4")


@pytest.mark.parametrize("change, message", [
    (_set(["cases", 0, "name"], ["aligned"]),
     r"the field 'cases\[0\]\.name' must be a string, got \['aligned'\]"),
    (_set(["cases", 1, "file"], 3), r"the field 'cases\[1\]\.file' must be a string, got 3"),
    (_set(["cases", 1], "odd_lengths"),
     r"the field 'cases\[1\]' must be an object, got 'odd_lengths'"),
    (_set(["cases"], None), r"the field 'cases' is missing"),
    (_set(["seed"], "0"), r"the field 'seed' must be an integer, got '0'"),
    (_set(["seed"], 0.0), r"the field 'seed' must be an integer, got 0\.0"),
    (_set(["suite"], ["quick"]), r"the field 'suite' must be a string"),
    (_set(["semantics"], ["torch"]), r"the field 'semantics' must be an object"),
    (_set(["tolerance", "factor"], "2"), r"the field 'tolerance\.factor' must be a number"),
    (_set(["cases", 2, "parameters", "is_causal"], 1),
     r"the field 'cases\[2\]\.parameters\.is_causal' must be a boolean, got 1"),
    (_set(["cases", 2, "parameters", "scale"], "0.3"),
     r"the field 'cases\[2\]\.parameters\.scale' must be a number or an integer, got '0\.3'"),
    (_set(["cases", 0, "arrays", "query", "shape"], "1, 2"),
     r"the field 'cases\[0\]\.arrays\.query\.shape' must be an array"),
    (_set(["cases", 0, "arrays", "query", "shape"], [1, 2, 64.0, 64]),
     r"the field 'cases\[0\]\.arrays\.query\.shape\[2\]' must be an integer, got 64\.0"),
    (_set(["cases", 0, "requires"], "gqa"), r"the field 'cases\[0\]\.requires' must be an array"),
    (_set(["cases", 0, "tolerance", "output", "bound"], "1e9"),
     r"the field 'cases\[0\]\.tolerance\.output\.bound' must be a number or an integer, "
     r"got '1e9'"),
    (_set(["cases", 0, "tolerance", "output"], 1e9),
     r"the field 'cases\[0\]\.tolerance\.output' must be an object"),
    (_set(["extra"], 1), r"unknown field 'extra'"),
    (_set(["cases", 0, "bounds"], {}), r"unknown field 'cases\[0\]\.bounds'"),
    (_set(["cases", 0, "tolerance", "output", "slack"], 1.0),
     r"unknown field 'cases\[0\]\.tolerance\.output\.slack'"),
    (lambda m: m["cases"][0].pop("sha256"), r"the field 'cases\[0\]\.sha256' is missing"),
    (lambda m: m["tolerance"].pop("rule"), r"the field 'tolerance\.rule' is missing"),
    (lambda m: m.pop("format_version"), r"format_version is None"),
])
def test_a_malformed_manifest_is_one_value_error_naming_the_file_and_field(exported, change,
                                                                             message):
    directory, _ = exported
    _edit_manifest(directory, change)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(directory))}/manifest\.json: "
                                         rf"{message}"):
        verify(directory, progress=False)


@pytest.mark.parametrize("text, message", [
    pytest.param('{"cases": ' + "[" * 10000 + "]" * 10000 + "}",
                 "JSON nested more than 64 levels deep", id="10000 deep"),
    pytest.param('{"format": "attnref-vectors", "cases": ' + "[" * 70 + "]" * 70 + "}",
                 "JSON nested 71 levels deep", id="71 deep"),
    pytest.param("[]", "expected an object at the top level, got an array", id="array"),
    pytest.param('{"format": "attnref-vectors", "format_version": 1, "seed": ' + "9" * 5000
                 + "}", "not valid JSON .*4300 digits", id="5000-digit seed"),
    pytest.param('{"format": "attnref-vectors", "format": "x"}', "the key 'format' appears twice",
                 id="duplicate key"),
    pytest.param(b'{"format": "\xff"}', "not valid UTF-8", id="not UTF-8"),
])
def test_a_manifest_that_is_not_bounded_json_is_refused(exported, text, message):
    directory, _ = exported
    path = directory / "manifest.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ValueError, match=rf"{path}: {message}"):
        verify(directory, progress=False)


def test_a_manifest_link_out_of_the_directory_or_a_huge_manifest_is_refused(exported, tmp_path):
    directory, _ = exported
    path = directory / "manifest.json"
    path.rename(tmp_path / "elsewhere.json")
    path.symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(ValueError, match=r"manifest\.json leads to .*elsewhere\.json, outside"):
        verify(directory, progress=False)
    path.unlink()
    with open(path, "wb") as stream:
        stream.truncate(4 * 2**30)
    with pytest.raises(ValueError, match=r"the manifest is 4294967296 bytes, more than the "
                                         r"16777216 accepted"):
        verify(directory, progress=False)
    path.unlink()
    os.mkfifo(path)                                           # opening it would block
    with pytest.raises(ValueError, match=r"manifest\.json: the manifest is not a regular file"):
        verify(directory, progress=False)


def test_a_directory_reached_through_a_link_verifies(exported, tmp_path):
    directory, _ = exported
    (tmp_path / "link").symlink_to(directory)
    assert all(ok for _, ok, _ in verify(tmp_path / "link", progress=False))


def test_export_replaces_a_link_instead_of_writing_through_it(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    directory = tmp_path / "vectors"
    directory.mkdir()
    (directory / "aligned.npz").symlink_to(victim)
    (directory / "manifest.json").symlink_to(victim)
    export(directory, "quick", progress=False)
    assert victim.read_text() == "keep me"
    assert not (directory / "aligned.npz").is_symlink()
    assert sorted(path.name for path in directory.iterdir()) == sorted(
        ["manifest.json"] + [f"{name}.npz" for name in SUITES["quick"]])
    assert all(ok for _, ok, _ in verify(directory, progress=False))


# --- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("semantics", list(PROFILES))
def test_every_dtype_and_profile_round_trips(tmp_path, dtype, semantics):
    export(tmp_path, "quick", dtype=dtype, semantics=semantics, seed=3, progress=False)
    assert verify(tmp_path, progress=False) == [
        (name, True, "matches the manifest and attnref") for name in SUITES["quick"]]


def test_bfloat16_vectors_hold_the_bits_of_the_inputs_and_round_trip(tmp_path):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    manifest = export(tmp_path, "quick", dtype="bfloat16", progress=False)
    assert manifest["dtype"] == "bfloat16"
    assert manifest["tolerance"]["eps"] == 2.0 ** -7
    entry = _entry(manifest, "aligned")
    assert entry["arrays"]["query"]["dtype"] == "bfloat16"
    stored = _load(tmp_path / "aligned.npz")
    assert stored["query"].dtype == np.dtype("<u2")       # .npy cannot name bfloat16
    inputs = SUITES["quick"]["aligned"].inputs(0, ml_dtypes.bfloat16)
    np.testing.assert_array_equal(stored["query"], inputs["query"].view(np.uint16))
    # the bits widen to float32 without ml_dtypes, as docs/vectors.md says
    widened = (stored["value"].astype("<u4") << 16).view("<f4")
    np.testing.assert_array_equal(widened, inputs["value"].astype(np.float32))
    assert verify(tmp_path, progress=False) == [
        (name, True, "matches the manifest and attnref") for name in SUITES["quick"]]
    # an archive holding float16 where the manifest says bfloat16 fails, by name
    members = _members(tmp_path / "aligned.npz")
    as_float16 = io.BytesIO()
    np.lib.format.write_array(as_float16, inputs["key"].astype(np.float16))
    _write_members(tmp_path, "aligned", {**members, "key.npy": as_float16.getvalue()})
    assert "key.npy in aligned.npz is '<f2' (1, 2, 64, 64) in C order, the case expects " \
           "'<u2' (1, 2, 64, 64) in C order" in _only_failure(tmp_path, "aligned")


def test_a_custom_profile_round_trips_and_a_wrong_one_fails(tmp_path):
    custom = Semantics("mine", "masked_out", "bottom_right", "nan", "a profile of my own")
    export(tmp_path, "quick", semantics=custom, progress=False)
    assert all(ok for _, ok, _ in verify(tmp_path, progress=False))
    _edit_manifest(tmp_path, _set(["semantics", "masked_rows"], "zero"))
    failed = [name for name, ok, _ in verify(tmp_path, progress=False) if not ok]
    assert failed == ["fully_masked_rows"]     # the one case with a row that sees no key


def test_the_standard_suite_round_trips(standard):
    directory, _ = standard
    assert all(ok for _, ok, _ in verify(directory, progress=False))


def test_the_full_suite_round_trips(tmp_path):
    # format 1: the forward's references; the gradients (format 2) round-trip on the
    # standard suite above, as their long double backward on the 512 x 512 cases of
    # the full suite would triple this test's time
    export(tmp_path, "full", dtype="float16", semantics="onnx", progress=False, format_version=1)
    results = verify(tmp_path, progress=False)
    assert [name for name, _, _ in results] == list(SUITES["full"])
    assert all(ok for _, ok, _ in results)


@pytest.mark.parametrize("header, problem", [
    pytest.param("{'descr': '<f4', (", "('EOF in multi-line statement', (2, 0))",
                 id="does not tokenize"),
    pytest.param("{[]: 1}", "unhashable type: 'list'", id="unhashable key"),
    pytest.param("1" * 4097, "Header info length (4097) is large and may not be safe to load "
                             "securely. To allow loading", id="too long"),
])
def test_an_npy_header_numpy_cannot_parse_is_one_line(exported, header, problem):
    directory, _ = exported
    members = _members(directory / "aligned.npz")
    query = members["query.npy"]
    members["query.npy"] = (b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header))
                            + header.encode() + query[-1 * 2 * 64 * 64 * 4:])
    _write_members(directory, "aligned", members)
    message = _only_failure(directory, "aligned")
    assert message.startswith(
        f"query.npy in aligned.npz has no readable .npy header: {problem}"), message
    assert "\n" not in message


@pytest.mark.parametrize("flag", [0x1, 0x20, 0x40])
def test_an_encrypted_or_patched_member_is_not_read(exported, flag):
    directory, _ = exported
    members = _members(directory / "aligned.npz")
    query = members.pop("query.npy")
    flagged = _zip([("query.npy", 0, query, len(query), zlib.crc32(query))] + _stored(members))
    central = flagged.index(b"PK\x01\x02")
    flagged = (flagged[:6] + struct.pack("<H", flag) + flagged[8:central + 8]
               + struct.pack("<H", flag) + flagged[central + 10:])
    (directory / "aligned.npz").write_bytes(flagged)
    _record_sha256(directory, "aligned")
    assert _only_failure(directory, "aligned") == (
        f"query.npy in aligned.npz is encrypted or patched (zip flags {flag:#06x}), which "
        f"attnref does not read")


def test_a_name_or_path_with_control_characters_is_printed_as_a_repr(exported):
    directory, _ = exported
    (directory / "aligned.npz").rename(directory / "a\x1b[2J\n.npz")
    _edit_manifest(directory, _set(["cases", 0, "file"], "a\x1b[2J\n.npz"))
    _edit_manifest(directory, _set(["cases", 0, "sha256"], "\x1b[31m"))
    message = _only_failure(directory, "aligned")
    assert message.isprintable() and message.startswith('"sha256 of a\\x1b[2J\\n.npz is ')
    assert "\x1b" not in message and message.endswith(r"the manifest says '\\x1b[31m'" + '"')


def test_format_version_1_is_still_written_and_verified(tmp_path):
    """Version 1 (before gradients): no grad_out, dq, dk or dv, the rule's
    earlier text; verify reads it as it did, and a version 1 manifest
    stating version 2's rule, or listing gradients, is refused."""
    manifest = export(tmp_path, "quick", format_version=1, progress=False)
    assert manifest["format_version"] == 1 and manifest["tolerance"]["rule"] == vectors.RULE_V1
    for entry in manifest["cases"]:
        assert not {"grad_out", "dq", "dk", "dv"} & set(entry["arrays"])
        assert not {"dq", "dk", "dv"} & set(entry["tolerance"])
        assert not {"grad_out", "dq"} & set(_load(tmp_path / entry["file"]))
    assert all(ok for _, ok, _ in verify(tmp_path, progress=False))
    manifest_path = tmp_path / "manifest.json"
    manifest_path.write_text(json.dumps({**manifest, "tolerance": {
        **manifest["tolerance"], "rule": vectors.RULE}}))
    with pytest.raises(ValueError, match="a manifest cannot change the rule"):
        verify(tmp_path, progress=False)
    manifest_path.write_text(json.dumps({**manifest, "format_version": 2, "tolerance": {
        **manifest["tolerance"], "rule": vectors.RULE}}))
    results = dict((name, message) for name, _, message in verify(tmp_path, progress=False))
    assert "the manifest describes ['dk', 'dq', 'dv', 'grad_out']" in results["aligned"]


def test_version_1_and_2_share_their_forward_bytes(tmp_path):
    """A version 2 archive is the version 1 archive plus grad_out and the
    gradients: the forward's inputs and references are the same arrays."""
    export(tmp_path / "one", "quick", format_version=1, progress=False)
    export(tmp_path / "two", "quick", progress=False)
    for name in SUITES["quick"]:
        one, two = _load(tmp_path / "one" / f"{name}.npz"), _load(tmp_path / "two" / f"{name}.npz")
        assert set(two) - set(one) == {"grad_out", "dq", "dk", "dv"}
        for member, array in one.items():
            assert array.tobytes() == two[member].tobytes(), (name, member)


def test_verify_reports_a_changed_gradient(tmp_path):
    manifest = export(tmp_path, "quick", progress=False)
    stored = _load(tmp_path / "gqa.npz")
    stored["dk"] = stored["dk"] * (1 + 1e-9)                      # far beyond float64 rounding
    _rewrite_case(tmp_path, "gqa", stored)
    results = {name: (ok, message) for name, ok, message in verify(tmp_path, progress=False)}
    assert not results["gqa"][0]
    assert re.search(r"dk is \S+ from attnref's reference, more than the float64 bound",
                     results["gqa"][1])
    assert sum(not ok for ok, _ in results.values()) == 1 and len(manifest["cases"]) == 8
