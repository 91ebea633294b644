"""attnref.models.safetensors: round trips through writers that follow the
format description byte by byte (``conftest.py`` and the helpers below, which
also write BF16 and broken files), and one test per way a file can be broken."""
import json
import signal
import struct
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra.numpy import arrays

from attnref.models.safetensors import DTYPES, load_safetensors, open_safetensors

STORED = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4"}


def header_and_data(tensors, metadata=None):
    """(header dict, data bytes) for ``name -> (dtype, shape, raw bytes)``,
    laid out back to back in the given order."""
    header = {} if metadata is None else {"__metadata__": metadata}
    data, offset = b"", 0
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [offset, offset + len(raw)]}
        data, offset = data + raw, offset + len(raw)
    return header, data


def write(path, header, data, *, pad=0):
    """A safetensors file: 8-byte little-endian length, JSON header, data."""
    text = json.dumps(header).encode() + b" " * pad
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def bf16_bytes(values):
    """BF16 by truncation: the high 16 bits of each float32."""
    return (np.asarray(values, np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()


shapes = st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple)


@pytest.mark.parametrize("dtype", ["F64", "F32", "F16", "I64", "I32"])
@given(data=st.data())
def test_round_trip(tmp_path_factory, save_safetensors, dtype, data):
    stored = np.dtype(STORED[dtype])
    elements = ({"allow_nan": False} if stored.kind == "f"
                else {"min_value": -2**31, "max_value": 2**31 - 1})
    array = data.draw(arrays(stored, shapes, elements=elements))
    path = save_safetensors(tmp_path_factory.mktemp("st") / "t.safetensors",
                            {"t": array.astype(array.dtype.newbyteorder("="))})
    loaded = load_safetensors(path)["t"]
    assert loaded.dtype == DTYPES[dtype][1]
    assert loaded.shape == array.shape
    np.testing.assert_array_equal(loaded, array.astype(DTYPES[dtype][1]))


def test_bf16_is_the_high_half_of_float32(tmp_path):
    exact = np.array([0.0, -0.0, 1.0, -2.5, 3.140625, 2.0**100, -2.0**-100, np.inf, -np.inf],
                     np.float32)  # all representable in bfloat16
    path = write(tmp_path / "b.safetensors",
                 *header_and_data({"b": ("BF16", (3, 3), bf16_bytes(exact))}))
    loaded = load_safetensors(path)["b"]
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, exact.reshape(3, 3))
    nan = write(tmp_path / "n.safetensors",
                *header_and_data({"n": ("BF16", (1,), bf16_bytes([np.nan]))}))
    assert np.isnan(load_safetensors(nan)["n"][0])


def test_several_tensors_metadata_padding_and_lazy_views(tmp_path):
    rng = np.random.default_rng(0)
    weights = rng.standard_normal((3, 4)).astype(np.float32)
    ids = np.arange(5, dtype=np.int64)
    header, data = header_and_data({
        "w": ("F32", weights.shape, weights.tobytes()),
        "empty": ("F32", (0, 7), b""),
        "ids": ("I64", ids.shape, ids.tobytes()),
        "half": ("F16", (2,), np.float16([0.5, -65504]).tobytes()),
    }, metadata={"format": "pt"})
    path = write(tmp_path / "m.safetensors", header, data, pad=5)
    lazy = open_safetensors(path)
    assert lazy.metadata == {"format": "pt"}
    assert list(lazy) == ["w", "empty", "ids", "half"]
    assert lazy.entries["w"] == ("F32", (3, 4))
    assert not lazy["w"].flags.writeable  # a view into the file's read-only bytes
    np.testing.assert_array_equal(lazy["w"], weights)
    assert lazy["empty"].shape == (0, 7)
    np.testing.assert_array_equal(lazy["half"], [0.5, -65504])
    with pytest.raises(KeyError, match="'missing'"):
        lazy["missing"]
    loaded = load_safetensors(path)
    assert "__metadata__" not in loaded
    assert loaded["ids"].dtype == np.int64 and loaded["w"].flags.writeable
    np.testing.assert_array_equal(loaded["ids"], ids)


def test_header_order_need_not_follow_offsets(tmp_path):
    header, data = header_and_data({"a": ("I32", (1,), np.int32([7]).tobytes()),
                                    "b": ("I32", (2,), np.int32([8, 9]).tobytes())})
    reordered = {"b": header["b"], "a": header["a"]}
    loaded = load_safetensors(write(tmp_path / "r.safetensors", reordered, data))
    assert loaded["a"].tolist() == [7] and loaded["b"].tolist() == [8, 9]


def test_agrees_with_the_safetensors_package(tmp_path):
    numpy_io = pytest.importorskip("safetensors.numpy")
    rng = np.random.default_rng(1)
    tensors = {"f64": rng.standard_normal((2, 3)),
               "f32": rng.standard_normal(4).astype(np.float32),
               "f16": rng.standard_normal((1, 2)).astype(np.float16),
               "i64": np.arange(6, dtype=np.int64).reshape(3, 2), "i32": np.int32([-1, 2])}
    path = tmp_path / "p.safetensors"
    numpy_io.save_file(tensors, str(path), metadata={"k": "v"})
    assert open_safetensors(path).metadata == {"k": "v"}
    loaded = load_safetensors(path)
    for name, array in tensors.items():
        np.testing.assert_array_equal(loaded[name], array)


# Each malformed file: (what to write, a phrase the error must contain).
def good_parts():
    return header_and_data({"x": ("F32", (2,), np.float32([1, 2]).tobytes()),
                            "y": ("I32", (1,), np.int32([3]).tobytes())})


def shifted(header, name, offsets):
    header[name]["data_offsets"] = offsets
    return header


def broken_files():
    header, data = good_parts()
    text = json.dumps(header).encode()
    yield "empty", b"", "truncated"
    yield "short length", b"\x05\x00\x00", "truncated"
    yield "header past the end", struct.pack("<Q", 1000) + text, "header needs bytes"
    yield "absurd header length", struct.pack("<Q", 2**40) + text, "exceeds"
    yield "not json", struct.pack("<Q", 5) + b"{oops" + data, "not valid JSON"
    yield "not utf-8", struct.pack("<Q", 2) + b"\xff\xfe" + data, "not valid UTF-8"
    yield "not an object", struct.pack("<Q", 2) + b"[]", "expected an object at the top level"
    duplicate = b'{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},' \
                b'"x":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}'
    yield "duplicate name", struct.pack("<Q", len(duplicate)) + duplicate + bytes(8), \
        "appears twice"
    yield "data truncated", struct.pack("<Q", len(text)) + text + data[:-2], "truncated file"
    yield "trailing bytes", struct.pack("<Q", len(text)) + text + data + b"\0", "trailing bytes"
    for label, mutate, phrase in [
        ("bad metadata", lambda h: {**h, "__metadata__": {"n": 1}}, "__metadata__"),
        ("entry not an object", lambda h: {**h, "x": [1]}, "exactly the keys"),
        ("extra key", lambda h: {**h, "x": {**h["x"], "extra": 0}}, "exactly the keys"),
        ("unknown dtype", lambda h: {**h, "x": {**h["x"], "dtype": "F8_E4M3"}},
         "unsupported dtype"),
        ("negative dim", lambda h: {**h, "x": {**h["x"], "shape": [-2]}}, "non-negative"),
        ("float dim", lambda h: {**h, "x": {**h["x"], "shape": [2.0]}}, "non-negative"),
        ("bool dim", lambda h: {**h, "x": {**h["x"], "shape": [True, 2]}}, "non-negative"),
        ("three offsets", lambda h: shifted(h, "x", [0, 4, 8]), "data_offsets must be"),
        ("reversed offsets", lambda h: shifted(h, "x", [8, 0]), "data_offsets must be"),
        ("size mismatch", lambda h: {**h, "x": {**h["x"], "shape": [3]}}, "needs 12"),
        ("overlap", lambda h: shifted(shifted(h, "x", [0, 8]), "y", [4, 8]), "overlaps"),
    ]:
        bad = json.dumps(mutate(json.loads(text))).encode()
        yield label, struct.pack("<Q", len(bad)) + bad + data, phrase
    gap = json.dumps(shifted(json.loads(text), "y", [12, 16])).encode()
    yield "gap", struct.pack("<Q", len(gap)) + gap + data + bytes(4), "leaves a gap"


@pytest.mark.parametrize("label, blob, phrase", list(broken_files()),
                         ids=[case[0] for case in broken_files()])
def test_malformed_files_raise_naming_the_file(tmp_path, label, blob, phrase):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(blob)
    with pytest.raises(ValueError, match=phrase) as error:
        load_safetensors(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("cut", [1, 7, 8, 20, -1])
def test_every_truncation_of_a_good_file_raises(tmp_path, cut):
    header, data = good_parts()
    blob = write(tmp_path / "good.safetensors", header, data).read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(blob[:cut])
    with pytest.raises(ValueError, match="truncated|not valid JSON"):
        load_safetensors(path)


def test_errors_name_the_tensor(tmp_path):
    header, data = good_parts()
    header["y"]["shape"] = [2]
    with pytest.raises(ValueError, match=r"tensor 'y'.*needs 8"):
        load_safetensors(write(tmp_path / "t.safetensors", header, data))


# Regression cases of issue 14: each was a RecursionError, TypeError or late
# failure that did not name the file, or a crash.
def one_tensor_file(path, **changes):
    """A file whose single tensor ``x`` (F32, shape [2]) has ``changes`` in its entry."""
    header, data = header_and_data({"x": ("F32", (2,), np.float32([1, 2]).tobytes())})
    header["x"].update(changes)
    return write(path, header, data)


def test_deeply_nested_header_is_a_value_error(tmp_path):
    nested = b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    path = tmp_path / "deep.safetensors"
    path.write_bytes(struct.pack("<Q", len(nested)) + nested)
    with pytest.raises(ValueError, match="nested more than 64") as error:
        open_safetensors(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("dtype", [["F32"], {"F32": 1}, 32, None])
def test_dtype_of_another_json_type_is_a_value_error(tmp_path, dtype):
    path = one_tensor_file(tmp_path / "d.safetensors", dtype=dtype)
    with pytest.raises(ValueError, match=r"tensor 'x': unsupported dtype") as error:
        open_safetensors(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("shape, phrase", [
    (str([0, 2**63]), "more elements than an array can index"),
    (str([0, 2**62, 4]), "more elements than an array can index"),
    (str([0] * 33), "at most 32 non-negative integers"),
    ("[2, 1" + "0" * 5000 + "]", "not valid JSON"),   # more digits than int() converts
])
def test_impossible_shapes_are_refused_at_open_naming_the_file(tmp_path, shape, phrase):
    text = ('{"x": {"dtype": "F32", "shape": %s, "data_offsets": [0, 0]}}' % shape).encode()
    path = tmp_path / "s.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text)
    with pytest.raises(ValueError, match=phrase) as error:
        open_safetensors(path)
    assert str(path) in str(error.value)


def test_large_empty_shape_within_numpy_limits_loads(tmp_path):
    header, _ = header_and_data({"x": ("F32", (0,), b"")})
    header["x"]["shape"] = [0, 2**40]
    path = write(tmp_path / "e.safetensors", header, b"")
    assert load_safetensors(path)["x"].shape == (0, 2**40)


@pytest.mark.parametrize("make", [lambda tmp: tmp / "missing.safetensors", lambda tmp: tmp])
def test_missing_file_or_directory_is_a_value_error(tmp_path, make):
    with pytest.raises(ValueError, match="safetensors file") as error:
        open_safetensors(make(tmp_path))
    assert str(make(tmp_path)) in str(error.value)


def test_mmap_gives_the_same_read_only_tensors(tmp_path):
    header, data = good_parts()
    path = write(tmp_path / "m.safetensors", header, data, pad=3)
    mapped, read = open_safetensors(path, mmap=True), open_safetensors(path)
    assert (mapped.mmap, read.mmap) == (True, False)
    for name in read:
        np.testing.assert_array_equal(mapped[name], read[name])
        assert not mapped[name].flags.writeable and not read[name].flags.writeable
    with pytest.raises(TypeError, match="mmap must be True or False"):
        open_safetensors(path, mmap="yes")


def test_default_reader_keeps_what_it_read_when_the_file_changes(tmp_path):
    header, data = good_parts()
    path = write(tmp_path / "c.safetensors", header, data)
    tensors = open_safetensors(path)
    path.write_bytes(b"\0" * 3)
    np.testing.assert_array_equal(tensors["x"], [1, 2])


TRUNCATE_UNDER_THE_READER = """
import os, sys
import numpy as np
from attnref.models import open_safetensors
path, mode = sys.argv[1], sys.argv[2]
tensors = open_safetensors(path, mmap=mode != "read")
early = tensors["w"] if mode == "mmap-view-taken" else None
os.truncate(path, 8)                  # as another process rewriting the file would
try:
    w = tensors["w"] if early is None else early
    print("sum", float(w.sum()))
except ValueError as error:
    print("ValueError", error)
"""


def truncate_under_reader(tmp_path, mode):
    """Run the script above in a child process: open, truncate, touch a tensor."""
    weights = np.ones(1 << 16, np.float32)          # 256 KiB: many pages past the cut
    header, data = header_and_data({"w": ("F32", weights.shape, weights.tobytes())})
    path = write(tmp_path / "w.safetensors", header, data)
    return subprocess.run([sys.executable, "-c", TRUNCATE_UNDER_THE_READER, str(path), mode],
                          capture_output=True, text=True, timeout=120)


def test_truncating_the_file_under_the_default_reader_does_not_crash(tmp_path):
    child = truncate_under_reader(tmp_path, "read")
    assert child.returncode == 0, child.stderr       # was -SIGBUS (exit 135) before
    assert child.stdout.split() == ["sum", "65536.0"]  # read from memory at open


def test_truncating_a_mapped_file_is_caught_before_a_tensor_is_returned(tmp_path):
    child = truncate_under_reader(tmp_path, "mmap")
    assert child.returncode == 0, child.stderr
    assert child.stdout.startswith("ValueError ") and "shrank from" in child.stdout
    assert "w.safetensors: tensor 'w'" in child.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SIGBUS semantics of Linux")
def test_mapped_tensor_taken_before_the_cut_dies_of_sigbus_as_documented(tmp_path):
    child = truncate_under_reader(tmp_path, "mmap-view-taken")
    assert child.returncode == -signal.SIGBUS
