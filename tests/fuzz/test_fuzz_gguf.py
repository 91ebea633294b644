"""Fuzz harness of the GGUF reader (attnref.models.gguf): counts, lengths,
value types, nested arrays, dimensions, tensor types, offsets, alignment and
truncation, read into memory and memory-mapped. See docs/fuzzing.md."""
import os
import struct

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from attnref.models.gguf import read_gguf

from ._fuzzing import corpus, damaged, edge_integers, scratch, value_error_or

EXAMPLES = int(os.environ.get("ATTNREF_FUZZ_EXAMPLES", "100"))
READER = "gguf"


def check(path, mmap=False):
    """The property: a valid file whose every tensor dequantises to a float32
    array of its declared shape, or a ValueError naming the file."""
    gguf = value_error_or(lambda where: read_gguf(where, mmap=mmap), path)
    if gguf is None:
        return
    assert gguf.version in (2, 3)
    for name, info in gguf.tensors.items():
        array = gguf.tensor(name)
        assert array.shape == info.shape and array.dtype == np.float32


# value types of docs/gguf.md: code -> struct format of a scalar
SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
           12: "d"}
STRING, ARRAY = 8, 9
# GGML type id -> (values, bytes) per block, the types attnref reads
TENSOR_TYPES = {0: (1, 4), 1: (1, 2), 30: (1, 2), 8: (32, 34), 2: (32, 18), 3: (32, 20),
                6: (32, 22), 7: (32, 24), 10: (256, 84), 11: (256, 110), 12: (256, 144),
                13: (256, 176), 14: (256, 210)}


def field(kind, fmt, value):
    """One segment of the file: a numeric field that damage may change."""
    return [(kind, fmt, struct.pack("<" + fmt, value))]


def raw(data):
    return [("raw", None, data)]


def string(text):
    data = text.encode("utf-8", "surrogatepass")
    return field("length", "Q", len(data)) + raw(data)


@st.composite
def values(draw, code, depth=0):
    """The segments of a metadata value of type ``code``."""
    if code == STRING:
        return string(draw(st.text(max_size=6)))
    if code == ARRAY:
        element = draw(st.sampled_from(sorted(SCALARS) + [STRING]
                                       + ([ARRAY] if depth < 2 else [])))
        count = draw(st.integers(0, 3))
        items = [segment for _ in range(count)
                 for segment in draw(values(element, depth + 1))]
        return field("type", "I", element) + field("count", "Q", count) + items
    fmt = SCALARS[code]
    if fmt in "fd":
        value = draw(st.floats(width=32 if fmt == "f" else 64))
    elif fmt == "?":
        value = draw(st.booleans())
    else:
        bits = struct.calcsize(fmt) * 8
        low, high = (-2**(bits - 1), 2**(bits - 1) - 1) if fmt.islower() else (0, 2**bits - 1)
        value = draw(st.integers(low, high))
    return field("value", fmt, value)


@st.composite
def gguf_segments(draw):
    """A well-formed GGUF file of up to three metadata entries and three small
    tensors, as a list of segments ``(kind, struct format, bytes)``."""
    alignment = draw(st.sampled_from([None, 1, 8, 32, 64]))
    entries = []
    if alignment is not None:
        entries.append(string("general.alignment") + field("type", "I", 4)
                       + field("alignment", "I", alignment))
    for index in range(draw(st.integers(0, 3))):
        code = draw(st.sampled_from(sorted(SCALARS) + [STRING, ARRAY]))
        entries.append(string(f"k{index}") + field("type", "I", code) + draw(values(code)))
    step = alignment or 32
    infos, data = [], b""
    for index in range(draw(st.integers(0, 3))):
        type_id = draw(st.sampled_from(sorted(TENSOR_TYPES)))
        block_values, block_bytes = TENSOR_TYPES[type_id]
        ne = [block_values * draw(st.integers(0, 2))] + draw(st.lists(st.integers(0, 2),
                                                                      max_size=2))
        count = int(np.prod(ne)) // block_values
        data += b"\0" * (-len(data) % step)
        infos.append(string(f"t{index}") + field("dims", "I", len(ne))
                     + [segment for n in ne for segment in field("ne", "Q", n)]
                     + field("type", "I", type_id) + field("offset", "Q", len(data)))
        data += draw(st.binary(min_size=count * block_bytes, max_size=count * block_bytes))
    header = (raw(b"GGUF") + field("version", "I", draw(st.sampled_from([2, 3])))
              + field("count", "Q", len(infos)) + field("count", "Q", len(entries)))
    segments = header + [s for entry in entries for s in entry] + [s for i in infos for s in i]
    size = sum(len(segment[2]) for segment in segments)
    return segments + raw(b"\0" * (-size % step) + data)


DAMAGE = ["none", "field", "truncate", "extend", "flip"]


@st.composite
def gguf_files(draw):
    """The bytes of a well-formed file (:func:`gguf_segments`), then one kind of
    damage drawn from DAMAGE: a numeric field (count, length, type, dimension,
    offset, alignment, value) set to another value of its width, a cut at any
    byte, bytes appended, or a byte flipped."""
    segments = draw(gguf_segments())
    damage = draw(st.sampled_from(DAMAGE))
    fields = [index for index, (kind, _, _) in enumerate(segments) if kind != "raw"]
    if damage == "field" and fields:
        index = draw(st.sampled_from(fields))
        kind, fmt, _ = segments[index]
        bits = struct.calcsize(fmt) * 8
        value = draw(edge_integers | st.integers(0, 300)) % 2**bits
        segments[index] = (kind, fmt, value.to_bytes(bits // 8, "little"))
    blob = b"".join(segment[2] for segment in segments)
    return damaged(draw, blob, damage, extend_max=40)


@pytest.mark.parametrize("mmap", [False, True])
@settings(max_examples=EXAMPLES, deadline=None)
@given(blob=gguf_files())
def test_damaged_files(mmap, blob):
    path = scratch("damaged.gguf")
    path.write_bytes(blob)
    check(path, mmap)


@settings(max_examples=EXAMPLES, deadline=None)
@given(blob=st.binary(max_size=256))
def test_arbitrary_bytes(blob):
    path = scratch("bytes.gguf")
    path.write_bytes(blob)
    check(path)


@settings(max_examples=EXAMPLES, deadline=None)
@given(head=st.sampled_from([b"GGUF\x02\0\0\0", b"GGUF\x03\0\0\0"]), rest=st.binary(max_size=256))
def test_arbitrary_bytes_after_a_valid_magic_and_version(head, rest):
    path = scratch("after-header.gguf")
    path.write_bytes(head + rest)
    check(path)


@pytest.mark.parametrize("mmap", [False, True])
@pytest.mark.parametrize("case", corpus(READER), ids=lambda case: case.name)
def test_corpus(case, mmap):
    check(case, mmap)
