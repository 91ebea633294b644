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
duplicate names (parsed by :func:`attnref._files.parse_json`: nesting and
numbers bounded), every entry has exactly ``dtype``, ``shape`` and
``data_offsets`` of the right JSON types, ``end - begin == prod(shape) *
itemsize`` (an exact integer product, so no overflow, with at most
:data:`MAX_DIMS` dimensions and no more elements than NumPy can index), and
the tensors tile the data buffer exactly (sorted by offset they start at 0,
each begins where the previous ends, and the last ends at the end of the
file). These are the rules the reference Rust implementation enforces
(``InvalidOffset``, ``MetadataIncompleteBuffer``, ``TensorInvalidInfo``). All
of this is checked against the file's size before any tensor memory is
allocated. Any violation raises a ``ValueError`` naming the file and, where
there is one, the tensor and the field.

Reading into memory or mapping
------------------------------
By default the whole file is read into memory when it is opened, so
nothing that happens to the file afterwards (another process truncating or
rewriting it) can affect the tensors; a file cut short or grown while it is
being read is a ``ValueError``. ``mmap=True`` maps the file
instead, which costs no memory up front, but the tensors then *are* the
file's pages: if the file shrinks while it is open (truncated or rewritten
in place by another process), touching a tensor beyond the new end makes the
operating system kill the process with ``SIGBUS``, which Python cannot catch.
The reader checks the file's size before every tensor it returns and raises
a ``ValueError`` when it shrank, but a file cut between that check and the
use of the array still kills the process; and a file rewritten in place
without shrinking silently changes the tensors. Map only files nothing else
writes to.

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

import math
import os
from collections.abc import Mapping

import numpy as np

from .._files import check_not_shrunk, map_whole_file, open_regular, parse_json

__all__ = ["DTYPES", "MAX_DIMS", "SafetensorsFile", "open_safetensors", "load_safetensors"]

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
#: The most dimensions a tensor may have (NumPy 1.x's limit; NumPy 2 allows 64).
MAX_DIMS = 32
# The largest byte count NumPy can index: prod(non-zero dims) * itemsize must
# not exceed it, even for an empty tensor (NumPy refuses such shapes).
_MAX_ARRAY_BYTES = np.iinfo(np.intp).max
_ENTRY_KEYS = {"dtype", "shape", "data_offsets"}


class SafetensorsFile(Mapping):
    """A validated safetensors file; ``file[name]`` returns a tensor.

    F64/F32/I64/I32 tensors are read-only views into the file's bytes (no
    copy; copy them with ``np.array`` to own or modify them), F16/BF16
    tensors are converted to new float32 arrays.

    Parameters
    ----------
    path : str or os.PathLike
    mmap : bool, optional
        False (the default): read the whole file into memory when opened.
        True: memory-map it read-only instead. A mapped file must not change
        while it is open: if another process truncates it, touching a tensor
        can kill the process with ``SIGBUS`` (see the module docstring,
        "Reading into memory or mapping").

    Attributes
    ----------
    path : str
    mmap : bool
    metadata : dict[str, str]
        The header's ``__metadata__`` (empty when absent).
    entries : dict[str, tuple[str, tuple[int, ...]]]
        ``name -> (dtype, shape)`` for every tensor, in header order.

    Raises
    ------
    ValueError
        When the file is missing, not a regular file, truncated, changed
        while it was read, or its header is malformed; the message names the
        file and the tensor. With ``mmap=True``, also on access, when the
        file has shrunk since it was opened.
    """

    def __init__(self, path, *, mmap=False):
        self.path = os.fspath(path)
        if not isinstance(mmap, bool):
            raise TypeError(f"mmap must be True or False, got {mmap!r}")
        self.mmap = mmap
        stream, size = open_regular(self.path, what="safetensors file")
        with stream:
            if size < 8:
                raise ValueError(
                    f"{self.path}: truncated safetensors file: {size} bytes, but the "
                    "header length alone takes 8")
            header_len = int.from_bytes(self._read(stream, 8, "the header length"), "little")
            if header_len > MAX_HEADER_BYTES:
                raise ValueError(
                    f"{self.path}: header length {header_len} exceeds the format's "
                    f"limit of {MAX_HEADER_BYTES} bytes (corrupt or not a safetensors file)")
            if 8 + header_len > size:
                raise ValueError(
                    f"{self.path}: truncated safetensors file: header needs bytes "
                    f"[8, {8 + header_len}) but the file has {size}")
            header = parse_json(self._read(stream, header_len, "the header"),
                                source=f"{self.path}: header")
            self.metadata = _check_metadata(self.path, header.pop("__metadata__", {}))
            self._data_start = 8 + header_len
            self._size = size
            self._spans = _check_entries(self.path, header, size - self._data_start)
            self.entries = {name: (entry["dtype"], tuple(entry["shape"]))
                            for name, entry in header.items()}
            self._buffer = map_whole_file(stream, size, self.path) if mmap else self._read_data(stream)

    def _read(self, stream, count, what):
        """Exactly ``count`` bytes from ``stream``: ``what`` of the file."""
        data = stream.read(count)
        if len(data) != count:
            raise ValueError(f"{self.path}: the file was truncated while {what} was read "
                             f"({len(data)} of {count} bytes)")
        return data

    def _read_data(self, stream):
        """The data buffer, read into memory: bytes ``[8 + N, size)``, read-only."""
        buffer = bytearray(self._size - self._data_start)
        view = memoryview(buffer)
        filled = 0
        while filled < len(buffer):
            count = stream.readinto(view[filled:])
            if not count:
                raise ValueError(
                    f"{self.path}: the file was truncated while it was read: it ended "
                    f"{len(buffer) - filled} bytes before the {self._size} it had when opened")
            filled += count
        if stream.read(1):
            raise ValueError(f"{self.path}: the file grew past the {self._size} bytes it "
                             "had when opened while it was read")
        return view.toreadonly()

    def __getitem__(self, name):
        if name not in self.entries:
            raise KeyError(f"{self.path}: no tensor named {name!r}")
        dtype, shape = self.entries[name]
        stored, returned = DTYPES[dtype]
        begin, end = self._spans[name]
        if end == begin:
            empty = np.empty(shape, returned)
            empty.flags.writeable = False
            return empty
        offset = begin
        if self.mmap:
            check_not_shrunk(self._buffer, self._size, self.path, f"tensor {name!r}")
            offset += self._data_start
        raw = np.frombuffer(self._buffer, dtype=stored, count=(end - begin) // stored.itemsize,
                            offset=offset)
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
        return f"SafetensorsFile({self.path!r}, {len(self)} tensors, mmap={self.mmap})"


def open_safetensors(path, *, mmap=False):
    """Open a safetensors file: validate the header, read (or map) the data.

    Parameters
    ----------
    path : str or os.PathLike
    mmap : bool, optional
        Memory-map the file instead of reading it into memory. Saves memory,
        but the file must not change while it is open: truncated by another
        process, it can kill this one with ``SIGBUS`` (see
        :class:`SafetensorsFile`).

    Returns
    -------
    SafetensorsFile
        A read-only mapping ``name -> ndarray``.

    Raises
    ------
    ValueError
        When the file is missing, truncated or malformed; the message names
        the file and the tensor.
    """
    return SafetensorsFile(path, mmap=mmap)


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
        When the file is missing, truncated or malformed; the message names
        the file and the tensor.

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


def _check_metadata(path, metadata):
    if not isinstance(metadata, dict) or not all(
            isinstance(key, str) and isinstance(value, str)
            for key, value in metadata.items()):
        raise ValueError(
            f"{path}: __metadata__ must be an object of string to string, "
            f"got {metadata!r:.80}")
    return metadata


def _check_entries(path, header, buffer_len):
    """Validate every tensor entry; return ``name -> (begin, end)``."""
    spans = {}
    for name, entry in header.items():
        where = f"{path}: tensor {name!r:.80}"
        if not isinstance(entry, dict) or set(entry) != _ENTRY_KEYS:
            keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
            raise ValueError(
                f"{where}: entry must have exactly the keys {sorted(_ENTRY_KEYS)}, got {keys}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise ValueError(
                f"{where}: unsupported dtype {dtype!r:.80}; attnref reads {sorted(DTYPES)}")
        if (not isinstance(shape, list) or len(shape) > MAX_DIMS
                or not all(_is_count(n) for n in shape)):
            raise ValueError(
                f"{where}: shape must be a list of at most {MAX_DIMS} non-negative "
                f"integers, got {shape!r:.80}")
        itemsize = DTYPES[dtype][0].itemsize
        if math.prod(n for n in shape if n) * itemsize > _MAX_ARRAY_BYTES:
            raise ValueError(
                f"{where}: shape {shape!r:.80} has more elements than an array can index")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(_is_count(n) for n in offsets) or offsets[0] > offsets[1]):
            raise ValueError(
                f"{where}: data_offsets must be [begin, end] with 0 <= begin <= end, "
                f"got {offsets!r:.80}")
        begin, end = offsets
        if end > buffer_len:
            raise ValueError(
                f"{where}: truncated file: data_offsets {offsets} end beyond the "
                f"{buffer_len}-byte data buffer")
        expected = math.prod(shape) * itemsize
        if end - begin != expected:
            raise ValueError(
                f"{where}: data_offsets {offsets} span {end - begin} bytes, but "
                f"shape {shape} of {dtype} needs {expected}")
        spans[name] = (begin, end)
    position = 0
    for name, (begin, end) in sorted(spans.items(), key=lambda item: item[1]):
        if begin != position:
            problem = "overlaps the previous tensor" if begin < position else "leaves a gap"
            raise ValueError(
                f"{path}: tensor {name!r:.80}: data_offsets [{begin}, {end}] {problem} "
                f"(expected to begin at byte {position})")
        position = end
    if position != buffer_len:
        raise ValueError(
            f"{path}: tensors cover {position} bytes of a {buffer_len}-byte data "
            "buffer; the file has trailing bytes the header does not describe")
    return spans


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
