"""attnref.testing.vectors: golden vectors any language can read, and their
verification."""
import hashlib
import json
import struct

import numpy as np
import pytest

import attnref
from attnref.testing import SUITES, vectors
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
    assert manifest["format_version"] == 1
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
    assert not ok and "causal.npz holds ['enable_gqa.npy', 'is_causal.npy', 'key.npy'" in message
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
            ({"format_version": 2}, r"format_version is 2, this attnref reads version 1"),
            ({"format_version": True}, r"format_version is True, this attnref reads version 1"),
            ({"suite": "huge"}, r"suite must be one of .*, got 'huge'"),
            ({"dtype": "int8"}, r"dtype must be float16, float32 or float64, got 'int8'"),
            ({"cases": {"aligned": {}}}, r"the field 'cases' must be an array")):
        manifest_path.write_text(json.dumps({**manifest, **change}))
        with pytest.raises(ValueError, match=rf"{manifest_path}: {message}"):
            verify(tmp_path, progress=False)


def test_export_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"suite must be one of .*, got 'tiny'"):
        export(tmp_path, "tiny")
    with pytest.raises(ValueError, match=r"dtype must be float16, float32 or float64, got 'int32'"):
        export(tmp_path, "quick", dtype="int32")
    with pytest.raises(ValueError, match=r"seed must be a non-negative integer, got -1"):
        export(tmp_path, "quick", seed=-1)
    with pytest.raises(ValueError, match=r"semantics must be one of .*, got 'tf'"):
        export(tmp_path, "quick", semantics="tf")


def test_plain_numpy_reads_vectors_that_attnref_reproduces_under_the_rule(standard):
    """What a user in another language does: read the arrays, call their
    attention (here attnref's own, C kernel when compiled), compare each
    result with the stored reference against the manifest's bound."""
    directory, manifest = standard
    for entry in manifest["cases"]:
        stored = _load(directory / entry["file"])
        scale = stored.get("scale")
        result = attnref.scaled_dot_product_attention(
            stored["query"], stored["key"], stored["value"], attn_mask=stored.get("attn_mask"),
            is_causal=bool(stored["is_causal"]), scale=None if scale is None else float(scale),
            enable_gqa=bool(stored["enable_gqa"]), return_lse=True)
        assert result.output.dtype == np.float32
        for name, candidate in (("output", result.output), ("lse", result.lse)):
            error = max_abs_error(candidate, stored[name])
            assert error <= entry["tolerance"][name]["bound"], (entry["name"], name, error)
