"""Fuzzing attnref.testing.vectors.verify: mutated manifests and archives
are refused (a ValueError, or failing cases), never crash it, and never pass
unless they mean what the untouched directory means.

The directory fuzzed is a real export of a small suite registered for these
tests (every kind of member: a float and a bool mask, a scale, GQA, stored
weights), so that an example costs milliseconds. Examples per property:
ATTNREF_FUZZ_EXAMPLES (default 100). The inputs found to break verify are
kept in tests/fuzz/corpus/vectors/ (see its README.md) and replayed by
:func:`test_corpus_entry_is_refused`.
"""
import copy
import hashlib
import io
import json
import os
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnref.testing import SUITES, Case
from attnref.testing.vectors import MANIFEST, export, verify

EXAMPLES = int(os.environ.get("ATTNREF_FUZZ_EXAMPLES", "100"))
CORPUS = Path(__file__).parent / "corpus" / "vectors"
SUITE = "fuzz"
CASES = (
    Case("gqa_scale", L=2, S=3, E=2, Hq=2, Hkv=1, scale=0.5, description="GQA, scale"),
    Case("float_mask_causal", L=3, S=2, E=2, Ev=3, mask="float", is_causal=True,
         description="float mask, causal, Ev != E"),
    Case("padding", L=2, S=2, E=1, B=2, Hq=1, mask="padding", description="bool padding mask"),
)
# Hypothesis' data_too_large: the byte strategies draw whole archives' worth
# of bytes in some examples, more than its default buffer allows.
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.data_too_large])


class Export(tuple):
    """(directory, manifest) of an export, shown by its directory alone in
    Hypothesis' reports."""

    def __repr__(self):
        return f"Export({self[0]})"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """The fuzz suite registered in attnref's SUITES and exported once."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(SUITES, SUITE, {case.name: case for case in CASES})
        directory = tmp_path_factory.mktemp("pristine")
        manifest = export(directory, SUITE, progress=False)
        assert all(ok for _, ok, _ in verify(directory, progress=False))
        yield Export((directory, manifest))


def verify_overlay(directory, overlay):
    """verify() on a copy of ``directory`` whose files named in ``overlay``
    ({file name: bytes}) are replaced: its results, or the ValueError it
    raised (any other exception propagates and fails the test)."""
    with tempfile.TemporaryDirectory() as scratch:
        copy_ = Path(scratch) / "vectors"
        shutil.copytree(directory, copy_)
        for name, data in overlay.items():
            (copy_ / name).write_bytes(data)
        try:
            results = verify(copy_, progress=False)
        except ValueError as error:
            return error
    assert isinstance(results, list) and results
    for name, ok, message in results:
        assert isinstance(name, str) and isinstance(ok, bool) and isinstance(message, str)
        assert name.isprintable() and "\n" not in message
    return results


def refused(outcome):
    return isinstance(outcome, ValueError) or not all(ok for _, ok, _ in outcome)


def manifest_bytes(manifest):
    return json.dumps(manifest, indent=2).encode()


# --- mutations of the parsed manifest -----------------------------------------------------

json_leaves = (st.none() | st.booleans() | st.integers() | st.integers(-2**70, 2**70)
               | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
json_values = st.recursive(
    json_leaves, lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


def paths(value, prefix=()):
    """Every path (a tuple of keys and indices) into a parsed JSON value."""
    found = [prefix]
    children = (value.items() if isinstance(value, dict)
                else enumerate(value) if isinstance(value, list) else ())
    for key, child in children:
        found += paths(child, prefix + (key,))
    return found


def nearby(value):
    """Values a forger would try in place of ``value``: the same type
    nudged, another type carrying the same content, or anything."""
    if isinstance(value, bool):
        options = [not value, int(value), str(value).lower()]
    elif isinstance(value, (int, float)):
        options = [value + 1, value - 1, -value, value * 2, value / 2, value * 1e9, float(value),
                   str(value), [value], 0, 2**64, 1e308]
    elif isinstance(value, str):
        options = [value + "x", "", value.upper(), "../" + value, "/" + value, value * 100,
                   [value], None, 1]
    elif isinstance(value, list):
        options = [[], value + value[:1], value[::-1], value[1:], {"0": value}, None]
    elif isinstance(value, dict):
        options = [{}, [value], dict(list(value.items())[1:]), None]
    else:
        options = [0, "", [], {}]
    return st.sampled_from(options) | json_values


@st.composite
def mutated_manifests(draw, manifest):
    """``(mutated manifest, path, operation)``: one replacement, deletion,
    insertion or duplication somewhere in ``manifest``."""
    mutated = copy.deepcopy(manifest)
    path = draw(st.sampled_from(paths(manifest)[1:]))
    parent = mutated
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    operation = draw(st.sampled_from(["replace", "delete", "insert", "duplicate"]))
    if operation == "replace":
        parent[key] = draw(nearby(parent[key]))
    elif operation == "delete":
        del parent[key]
    elif operation == "insert" and isinstance(parent, dict):
        parent[draw(st.text(max_size=12).filter(lambda name: name not in parent))] = \
            draw(json_values)
    elif operation == "insert":
        parent.insert(key, draw(json_values))
    elif isinstance(parent, list):
        parent.insert(key, copy.deepcopy(parent[key]))
    else:
        parent[key] = [parent[key], copy.deepcopy(parent[key])]
    return mutated, path, operation


def may_mean_the_same(path, operation):
    """Whether a mutation may leave the vectors' meaning unchanged: a new
    exporting attnref version, another spelling of a file's path, or another
    profile name (an unknown name is a custom profile, which may hold the
    same conventions)."""
    return operation == "replace" and (
        path in (("attnref_version",), ("semantics", "name"))
        or (len(path) == 3 and path[0] == "cases" and path[2] == "file"))


def strict_json(data):
    """``data`` parsed as attnref reads JSON (UTF-8, no key twice), or None."""
    def no_duplicates(pairs):
        if len({key for key, _ in pairs}) != len(pairs):
            raise ValueError("a key appears twice")
        return dict(pairs)
    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=no_duplicates)
    except (ValueError, RecursionError):
        return None


def same_json(first, second):
    """Equal with types told apart (1, 1.0 and true differ)."""
    return json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)


@FUZZ
@given(data=st.data())
def test_a_mutated_manifest_is_refused_unless_it_means_the_same(pristine, data):
    directory, manifest = pristine
    mutated, path, operation = data.draw(mutated_manifests(manifest))
    outcome = verify_overlay(directory, {MANIFEST: manifest_bytes(mutated)})
    if same_json(mutated, manifest):
        assert not refused(outcome), outcome
    elif mutated != manifest and not may_mean_the_same(path, operation):
        assert refused(outcome), (path, operation, outcome)


@FUZZ
@given(data=st.data())
def test_a_manifest_with_mutated_bytes_is_refused_unless_it_parses_the_same(pristine, data):
    directory, manifest = pristine
    mutated = data.draw(mutated_bytes(manifest_bytes(manifest)))
    outcome = verify_overlay(directory, {MANIFEST: mutated})
    if same_json(strict_json(mutated), manifest):
        assert not refused(outcome), outcome


# --- mutations of the archives ------------------------------------------------------------


@st.composite
def mutated_bytes(draw, data):
    """``data`` with bytes flipped, overwritten, inserted or cut, most often
    near the start of a zip record or ``.npy`` header, where the parsers
    look."""
    data = bytearray(data)
    landmarks = [0, len(data)] + [index for marker in (b"PK\x03\x04", b"PK\x01\x02",
                                                       b"PK\x05\x06", b"\x93NUMPY")
                                  for index in _find_all(data, marker)]
    for _ in range(draw(st.integers(1, 4))):
        anchor = draw(st.sampled_from(landmarks))
        start = min(len(data), max(0, anchor + draw(st.integers(-8, 160))))
        operation = draw(st.sampled_from(["flip", "overwrite", "insert", "cut", "truncate"]))
        if operation == "flip" and start < len(data):
            data[start] ^= draw(st.integers(1, 255))
        elif operation == "overwrite":
            patch = draw(st.binary(min_size=1, max_size=16))
            data[start:start + len(patch)] = patch
        elif operation == "insert":
            data[start:start] = draw(st.binary(min_size=1, max_size=64))
        elif operation == "cut":
            del data[start:start + draw(st.integers(1, 64))]
        elif operation == "truncate":
            del data[start:]
    return bytes(data)


def _find_all(data, marker):
    found, index = [], data.find(marker)
    while index >= 0:
        found.append(index)
        index = data.find(marker, index + 1)
    return found


def with_sha256(manifest, case, archive):
    """``manifest`` with the sha256 of ``case``'s archive set to that of
    ``archive``, as a forger who also edits the manifest would."""
    forged = copy.deepcopy(manifest)
    entry = next(entry for entry in forged["cases"] if entry["name"] == case)
    entry["sha256"] = hashlib.sha256(archive).hexdigest()
    return forged


@FUZZ
@given(data=st.data(), case=st.sampled_from([case.name for case in CASES]),
       forge_sha256=st.booleans())
def test_an_archive_with_mutated_bytes_fails_alone(pristine, data, case, forge_sha256):
    directory, manifest = pristine
    original = (directory / f"{case}.npz").read_bytes()
    archive = data.draw(mutated_bytes(original))
    overlay = {f"{case}.npz": archive}
    if forge_sha256:
        overlay[MANIFEST] = manifest_bytes(with_sha256(manifest, case, archive))
    outcome = verify_overlay(directory, overlay)
    assert not isinstance(outcome, ValueError), outcome
    others = [ok for name, ok, _ in outcome if name != case]
    assert all(others), outcome
    if archive != original and not forge_sha256:
        assert not dict((name, ok) for name, ok, _ in outcome)[case]


npy_headers = st.fixed_dictionaries({
    "descr": st.sampled_from(["<f4", "<f8", "<f2", ">f4", "|b1", "<i8", "|O", "<c16", "V8"]),
    "fortran_order": st.booleans(),
    "shape": st.lists(st.integers(0, 2**62) | st.integers(0, 4), max_size=5).map(tuple)})


npy_header_text = st.text(alphabet="{}[]()'\":,#\\ \n0123456789abdefloprst<>|_-", max_size=120)


@st.composite
def mutated_members(draw, archive):
    """An archive rebuilt from ``archive``'s members with one or more
    dropped, renamed, duplicated, deflated, given another ``.npy`` header
    (a well-formed one, or any text), given zip flags (encryption, patched
    data, data descriptor, UTF-8 name) or replaced by random bytes."""
    with zipfile.ZipFile(io.BytesIO(archive)) as source:
        members = [(info.filename, source.read(info), zipfile.ZIP_STORED)
                   for info in source.infolist()]
    flags = {}
    for _ in range(draw(st.integers(1, 3))):
        index = draw(st.integers(0, len(members) - 1))
        name, data, method = members[index]
        operation = draw(st.sampled_from(["drop", "rename", "duplicate", "header", "header text",
                                          "bytes", "deflate", "flags"]))
        if operation == "drop" and len(members) > 1:
            del members[index]
            flags.clear()
        elif operation == "rename":
            members[index] = (draw(st.text(min_size=1, max_size=12)), data, method)
        elif operation == "duplicate":
            members.insert(index, (name, draw(st.sampled_from([data, data[:-1] or b"x"])),
                                   method))
            flags.clear()
        elif operation == "header":
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(header, draw(npy_headers))
            members[index] = (name, header.getvalue() + data[_data_offset(data):], method)
        elif operation == "header text":
            text = draw(npy_header_text).encode()
            members[index] = (name, b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little")
                              + text + data[_data_offset(data):], method)
        elif operation == "bytes":
            members[index] = (name, draw(st.binary(max_size=256)), method)
        elif operation == "deflate":
            members[index] = (name, data, zipfile.ZIP_DEFLATED)
        elif operation == "flags":
            flags[index] = draw(st.sampled_from([0x1, 0x8, 0x20, 0x40, 0x800]))
    rebuilt = io.BytesIO()
    with zipfile.ZipFile(rebuilt, "w") as target, warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Duplicate name", UserWarning)  # wanted here
        for name, data, method in members:
            info = zipfile.ZipInfo(name)
            info.compress_type = method
            target.writestr(info, data)
        offsets = [info.header_offset for info in target.infolist()]
    rebuilt = bytearray(rebuilt.getvalue())
    central = _find_all(rebuilt, b"PK\x01\x02")
    for index, flag in flags.items():   # zipfile writes its own flags: set them afterwards
        for at in (offsets[index] + 6, central[index] + 8):
            rebuilt[at:at + 2] = (int.from_bytes(rebuilt[at:at + 2], "little")
                                  | flag).to_bytes(2, "little")
    return bytes(rebuilt)


def _data_offset(npy):
    """Where the data of a version 1.0 ``.npy`` starts."""
    return 10 + int.from_bytes(npy[8:10], "little")


@FUZZ
@given(data=st.data(), case=st.sampled_from([case.name for case in CASES]))
def test_an_archive_with_mutated_members_never_crashes_verify(pristine, data, case):
    directory, manifest = pristine
    original = (directory / f"{case}.npz").read_bytes()
    archive = data.draw(mutated_members(original))
    outcome = verify_overlay(directory, {
        f"{case}.npz": archive, MANIFEST: manifest_bytes(with_sha256(manifest, case, archive))})
    assert not isinstance(outcome, ValueError), outcome
    assert all(ok for name, ok, _ in outcome if name != case), outcome


# --- the corpus ---------------------------------------------------------------------------


def corpus_entries():
    return sorted(path for path in CORPUS.iterdir() if path.is_dir())


@pytest.mark.parametrize("entry", corpus_entries(), ids=lambda path: path.name)
def test_corpus_entry_is_refused(pristine, entry):
    """Each directory of the corpus holds the files that replace the
    pristine export's (a manifest, archives); verify must refuse them."""
    directory, _ = pristine
    overlay = {path.name: path.read_bytes() for path in entry.iterdir()}
    assert refused(verify_overlay(directory, overlay))
