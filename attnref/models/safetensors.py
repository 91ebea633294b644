"""A pure-NumPy reader for the safetensors checkpoint format.

File layout (https://github.com/huggingface/safetensors, "Format"):

====================  =====================================================
bytes ``[0, 8)``      ``N``, the header length, unsigned 64-bit little-endian
bytes ``[8, 8+N)``    a UTF-8 JSON object (may be right-padded with spaces):
                      ``{"__metadata__": {str: str}, name: {"dtype": ...,
                      "shape": [...], "data_offsets": [begin, end]}, ...}``
bytes ``[8+N, end)``  the data buffer; each tensor's bytes are
                      ``buffer[begin:end]``, row-major, little-endian
====================  =====================================================

The reader checks everything the format promises before it touches a tensor:
the header length fits the file, the header is a JSON object without
duplicate names, every entry has exactly ``dtype``, ``shape`` and
``data_offsets``, ``end - begin == prod(shape) * itemsize``, and the tensors
tile the data buffer exactly (sorted by offset they start at 0, each begins
where the previous ends, and the last ends at the end of the file). These are
the rules the reference Rust implementation enforces (``InvalidOffset``,
``MetadataIncompleteBuffer``, ``TensorInvalidInfo``). Any violation raises a
``ValueError`` naming the file and, where there is one, the tensor.

Dtypes read, and what they become:

=====  =========================================================
F64    float64
F32    float32
F16    float32 (exact: every half value is a float32 value)
BF16   float32, by shifting the 16 bits into the high half of a uint32
I64    int64
I32    int32
=====  =========================================================
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping

import numpy as np

__all__ = ["DTYPES", "SafetensorsFile", "open_safetensors", "load_safetensors"]

# safetensors dtype -> (stored little-endian dtype, dtype returned)
DTYPES = {
    "F64": (np.dtype("<f8"), np.dtype(np.float64)),
    "F32": (np.dtype("<f4"), np.dtype(np.float32)),
    "F16": (np.dtype("<f2"), np.dtype(np.float32)),
    "BF16": (np.dtype("<u2"), np.dtype(np.float32)),
    "I64": (np.dtype("<i8"), np.dtype(np.int64)),
    "I32": (np.dtype("<i4"), np.dtype(np.int32)),
}

# The reference implementation refuses headers above 100 MB; so does attnref,
# so a corrupt length field cannot make it allocate gigabytes.
MAX_HEADER_BYTES = 100_000_000
_ENTRY_KEYS = {"dtype", "shape", "data_offsets"}


class SafetensorsFile(Mapping):
    """A validated safetensors file whose tensors are read on access.

    The file is memory-mapped read-only; ``file[name]`` returns the tensor.
    F64/F32/I64/I32 tensors are read-only views into the map (no copy;
    copy them with ``np.array`` to own or modify them), F16/BF16 tensors are
    converted to new float32 arrays.

    Parameters
    ----------
    path : str or os.PathLike

    Attributes
    ----------
    path : str
    metadata : dict[str, str]
        The header's ``__metadata__`` (empty when absent).
    entries : dict[str, tuple[str, tuple[int, ...]]]
        ``name -> (dtype, shape)`` for every tensor, in header order.

    Raises
    ------
    ValueError
        When the file is truncated or its header is malformed; the message
        names the file and the tensor.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        size = os.stat(self.path).st_size
        if size < 8:
            raise ValueError(
                f"{self.path}: truncated safetensors file: {size} bytes, but the "
                "header length alone takes 8")
        self._map = np.memmap(self.path, dtype=np.uint8, mode="r")  # (size,)
        header_len = int(self._map[:8].view("<u8")[0])
        if header_len > MAX_HEADER_BYTES:
            raise ValueError(
                f"{self.path}: header length {header_len} exceeds the format's "
                f"limit of {MAX_HEADER_BYTES} bytes (corrupt or not a safetensors file)")
        if 8 + header_len > size:
            raise ValueError(
                f"{self.path}: truncated safetensors file: header needs bytes "
                f"[8, {8 + header_len}) but the file has {size}")
        header = _parse_header(self.path, self._map[8:8 + header_len].tobytes())
        self.metadata = _check_metadata(self.path, header.pop("__metadata__", {}))
        self._data_start = 8 + header_len
        self._spans = _check_entries(self.path, header, size - self._data_start)
        self.entries = {name: (entry["dtype"], tuple(entry["shape"]))
                        for name, entry in header.items()}

    def __getitem__(self, name):
        if name not in self.entries:
            raise KeyError(f"{self.path}: no tensor named {name!r}")
        dtype, shape = self.entries[name]
        stored, returned = DTYPES[dtype]
        begin, end = self._spans[name]
        raw = self._map[self._data_start + begin:self._data_start + end].view(stored)
        if dtype == "BF16":
            values = (raw.astype(np.uint32) << 16).view(np.float32)
        else:
            values = raw.astype(returned, copy=False)
        return values.reshape(shape)

    def __iter__(self):
        return iter(self.entries)

    def __len__(self):
        return len(self.entries)

    def __repr__(self):
        return f"SafetensorsFile({self.path!r}, {len(self)} tensors)"


def open_safetensors(path):
    """Open a safetensors file lazily: validate the header, map the data.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    SafetensorsFile
        A read-only mapping ``name -> ndarray`` whose tensors are read on
        access (see :class:`SafetensorsFile`).
    """
    return SafetensorsFile(path)


def load_safetensors(path):
    """Read every tensor of a safetensors file into memory.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    dict[str, numpy.ndarray]
        Writable arrays owning their data, in header order; F16 and BF16
        become float32 (see the module table).

    Raises
    ------
    ValueError
        When the file is truncated or malformed; the message names the file
        and the tensor.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> header = b'{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
    >>> blob = len(header).to_bytes(8, "little") + header + np.float32([1, 2]).tobytes()
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "x.safetensors"
    >>> _ = path.write_bytes(blob)
    >>> load_safetensors(path)
    {'x': array([1., 2.], dtype=float32)}
    """
    tensors = SafetensorsFile(path)
    return {name: np.array(tensors[name]) for name in tensors}


def _parse_header(path, raw):
    """The header bytes as a dict; rejects non-JSON, non-objects, duplicates."""
    def no_duplicates(pairs):
        names = [name for name, _ in pairs]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"{path}: header names {repeated} more than once")
        return dict(pairs)

    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates)
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: header is not valid UTF-8 ({error})") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: header is not valid JSON ({error})") from None
    if not isinstance(header, dict):
        raise ValueError(
            f"{path}: header must be a JSON object, got {type(header).__name__}")
    return header


def _check_metadata(path, metadata):
    if not isinstance(metadata, dict) or not all(
            isinstance(key, str) and isinstance(value, str)
            for key, value in metadata.items()):
        raise ValueError(
            f"{path}: __metadata__ must be an object of string to string, "
            f"got {metadata!r}")
    return metadata


def _check_entries(path, header, buffer_len):
    """Validate every tensor entry; return ``name -> (begin, end)``."""
    spans = {}
    for name, entry in header.items():
        where = f"{path}: tensor {name!r}"
        if not isinstance(entry, dict) or set(entry) != _ENTRY_KEYS:
            keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
            raise ValueError(
                f"{where}: entry must have exactly the keys {sorted(_ENTRY_KEYS)}, got {keys}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in DTYPES:
            raise ValueError(
                f"{where}: unsupported dtype {dtype!r}; attnref reads {sorted(DTYPES)}")
        if not isinstance(shape, list) or not all(_is_count(n) for n in shape):
            raise ValueError(
                f"{where}: shape must be a list of non-negative integers, got {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(_is_count(n) for n in offsets) or offsets[0] > offsets[1]):
            raise ValueError(
                f"{where}: data_offsets must be [begin, end] with 0 <= begin <= end, "
                f"got {offsets!r}")
        begin, end = offsets
        expected = math.prod(shape) * DTYPES[dtype][0].itemsize
        if end - begin != expected:
            raise ValueError(
                f"{where}: data_offsets {offsets} span {end - begin} bytes, but "
                f"shape {shape} of {dtype} needs {expected}")
        if end > buffer_len:
            raise ValueError(
                f"{where}: truncated file: data_offsets {offsets} end beyond the "
                f"{buffer_len}-byte data buffer")
        spans[name] = (begin, end)
    position = 0
    for name, (begin, end) in sorted(spans.items(), key=lambda item: item[1]):
        if begin != position:
            problem = "overlaps the previous tensor" if begin < position else "leaves a gap"
            raise ValueError(
                f"{path}: tensor {name!r}: data_offsets [{begin}, {end}] {problem} "
                f"(expected to begin at byte {position})")
        position = end
    if position != buffer_len:
        raise ValueError(
            f"{path}: tensors cover {position} bytes of a {buffer_len}-byte data "
            "buffer; the file has trailing bytes the header does not describe")
    return spans


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
