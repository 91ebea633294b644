"""Fuzz harness of the safetensors reader (attnref.models.safetensors): header
bytes, the length field, offsets, dtypes, shapes and truncation, read into
memory and memory-mapped. See docs/fuzzing.md."""
import json
import math
import os
import struct

import pytest
from hypothesis import given, settings, strategies as st

from attnref.models.safetensors import DTYPES, open_safetensors

from ._fuzzing import corpus, damaged, edge_integers, json_values, odd_json_texts, scratch, \
    value_error_or

EXAMPLES = int(os.environ.get("ATTNREF_FUZZ_EXAMPLES", "100"))
READER = "safetensors"


def check(path, mmap=False):
    """The property: a valid file whose every tensor has its declared shape and
    dtype, or a ValueError naming the file."""
    tensors = value_error_or(lambda where: open_safetensors(where, mmap=mmap), path)
    if tensors is None:
        return
    for name, (dtype, shape) in tensors.entries.items():
        array = tensors[name]
        assert array.shape == shape and array.dtype == DTYPES[dtype][1]


dtype_names = sorted(DTYPES)
# what a damaged entry field may hold instead of the right value
damaged_fields = {
    "dtype": st.sampled_from(dtype_names + ["F8_E4M3", "f32", "", "BOOL"]) | json_values,
    "shape": st.lists(st.integers(0, 4) | edge_integers, max_size=5) | json_values,
    "data_offsets": st.lists(st.integers(0, 64) | edge_integers, max_size=3) | json_values,
}
DAMAGE = ["none", "field", "entry", "header text", "length", "truncate", "extend", "flip"]


@st.composite
def safetensors_files(draw):
    """The bytes of a well-formed file of up to three small tensors, then one
    kind of damage drawn from DAMAGE."""
    header, data = {}, b""
    for index in range(draw(st.integers(0, 3))):
        dtype = draw(st.sampled_from(dtype_names))
        shape = draw(st.lists(st.integers(0, 3), max_size=3))
        size = math.prod(shape) * DTYPES[dtype][0].itemsize
        header[f"t{index}"] = {"dtype": dtype, "shape": shape,
                               "data_offsets": [len(data), len(data) + size]}
        data += draw(st.binary(min_size=size, max_size=size))
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.dictionaries(st.text(max_size=4),
                                                      st.text(max_size=4) | json_values,
                                                      max_size=2))
    damage = draw(st.sampled_from(DAMAGE))
    tensors = [name for name in header if name != "__metadata__"]
    if damage == "field" and tensors:
        key = draw(st.sampled_from(sorted(damaged_fields)))
        header[draw(st.sampled_from(tensors))][key] = draw(damaged_fields[key])
    elif damage == "entry":
        header[draw(st.sampled_from(tensors + ["__metadata__", "x"]))] = draw(json_values)
    text = (draw(odd_json_texts) if damage == "header text" else json.dumps(header)).encode()
    text += b" " * draw(st.integers(0, 3))
    length = len(text)
    if damage == "length":
        length = draw(st.integers(max(0, length - 9), length + 9) | st.integers(0, 2**64 - 1))
    blob = struct.pack("<Q", length) + text + data
    return damaged(draw, blob, damage)


@pytest.mark.parametrize("mmap", [False, True])
@settings(max_examples=EXAMPLES, deadline=None)
@given(blob=safetensors_files())
def test_damaged_files(mmap, blob):
    path = scratch("damaged.safetensors")
    path.write_bytes(blob)
    check(path, mmap)


@settings(max_examples=EXAMPLES, deadline=None)
@given(blob=st.binary(max_size=256))
def test_arbitrary_bytes(blob):
    path = scratch("bytes.safetensors")
    path.write_bytes(blob)
    check(path)


@settings(max_examples=EXAMPLES, deadline=None)
@given(header=odd_json_texts | json_values.map(json.dumps), data=st.binary(max_size=16))
def test_arbitrary_headers(header, data):
    text = header.encode()
    path = scratch("header.safetensors")
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    check(path)


@pytest.mark.parametrize("mmap", [False, True])
@pytest.mark.parametrize("case", corpus(READER), ids=lambda case: case.name)
def test_corpus(case, mmap):
    check(case, mmap)
