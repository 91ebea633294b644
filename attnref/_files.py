"""Reading untrusted files: bounded sizes, bounded JSON, errors that name the file.

Every reader of a file attnref did not write itself (checkpoint configs,
tokenizer files, golden-vector manifests, safetensors headers) goes through
here, so each failure is a ``ValueError`` that names the file (and the field,
where there is one) instead of a ``RecursionError``, ``MemoryError``,
``AttributeError`` or ``TypeError`` from deep inside the parser.

What is bounded:

- size: a file is read only when it is a regular file no larger than the
  caller's ``max_bytes`` (checked before reading, and again on what was read,
  in case the file grew in between);
- nesting: JSON nested deeper than :data:`MAX_JSON_DEPTH` is refused (the
  parser guards its own recursion; what it cannot parse for depth becomes the
  same error);
- duplicates: a JSON object that names a key twice is refused (the reader
  would otherwise keep the last silently);
- non-standard numbers: ``NaN``, ``Infinity`` and ``-Infinity`` (which
  Python's ``json`` accepts but JSON does not) are refused, and so are number
  literals that overflow a float64 (``1e999``, which Python's ``json`` turns
  into infinity) or that have more digits than Python converts to an ``int``
  (4,300 by default, ``sys.get_int_max_str_digits``).
"""
from __future__ import annotations

import json
import math
import os
import stat
from mmap import ACCESS_READ, mmap as memory_map

__all__ = ["MAX_JSON_BYTES", "MAX_JSON_DEPTH", "open_regular", "read_limited",
           "map_whole_file", "check_not_shrunk", "load_json", "parse_json", "field"]

#: The default size limit of a JSON file (configs, tokenizer configs, manifests).
MAX_JSON_BYTES = 16 * 2**20
#: The deepest JSON nesting accepted; real configs and manifests nest a few levels.
MAX_JSON_DEPTH = 64

_REQUIRED = object()


def read_limited(path, max_bytes, *, what="file"):
    """The bytes of the regular file ``path``, refusing anything larger than
    ``max_bytes``.

    Parameters
    ----------
    path : str or os.PathLike
    max_bytes : int
        The largest size accepted.
    what : str
        What the file is, for messages (``"config"``, ``"manifest"``).

    Raises
    ------
    ValueError
        When ``path`` is missing, not a regular file (a directory, a FIFO, a
        device such as ``/dev/zero``), unreadable, or larger than ``max_bytes``.
    """
    stream, size = open_regular(path, what=what)
    with stream:
        if size > max_bytes:
            raise ValueError(f"{path}: the {what} is {size} bytes, more than the "
                             f"{max_bytes} accepted")
        try:
            data = stream.read(max_bytes + 1)
        except OSError as error:
            raise ValueError(f"{path}: cannot read the {what} ({error.strerror or error})") \
                from None
    if len(data) > max_bytes:
        raise ValueError(f"{path}: the {what} grew past the {max_bytes} bytes accepted "
                         "while it was read")
    return data


def open_regular(path, *, what="file"):
    """Open ``path`` for binary reading if it is a regular file.

    The file is opened first and checked after (``fstat`` on the open
    descriptor, non-blocking so that a FIFO cannot hang the open), so a path
    swapped for something else between the check and the read is still caught.

    Parameters
    ----------
    path : str or os.PathLike
    what : str
        What the file is, for messages.

    Returns
    -------
    stream : io.BufferedReader
        The open file (the caller closes it).
    size : int
        Its size in bytes when opened.

    Raises
    ------
    ValueError
        When ``path`` is missing, unreadable or not a regular file (a
        directory, a FIFO, a device such as ``/dev/zero``).
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except (OSError, ValueError) as error:  # ValueError: a path with a NUL byte
        reason = getattr(error, "strerror", None) or error
        raise ValueError(f"{path}: cannot read the {what} ({reason})") from None
    status = os.fstat(descriptor)
    if not stat.S_ISREG(status.st_mode):
        os.close(descriptor)
        raise ValueError(f"{path}: the {what} is not a regular file")
    return os.fdopen(descriptor, "rb"), status.st_size


def map_whole_file(stream, size, path):
    """The open regular file ``stream`` memory-mapped read-only, checked to
    still be ``size`` bytes (its size when opened).

    A mapped file that another process truncates later kills the reader
    with SIGBUS when it touches the lost pages: callers check
    :func:`check_not_shrunk` before each access, which narrows but cannot
    close that window; reading into memory (the readers' default) closes it.
    """
    mapped = memory_map(stream.fileno(), 0, access=ACCESS_READ)
    if len(mapped) != size:
        raise ValueError(f"{path}: the file changed size from {size} to {len(mapped)} bytes "
                         "while it was opened")
    return mapped


def check_not_shrunk(mapped, size, path, what):
    """Refuse to read ``what`` from ``mapped`` when its file is now smaller
    than the ``size`` it was mapped at (a page past the end would SIGBUS)."""
    now = mapped.size()  # the file's size now (fstat), not the map's
    if now < size:
        raise ValueError(f"{path}: {what}: the memory-mapped file shrank from {size} to {now} "
                         "bytes since it was opened; reopen it")


def parse_json(data, *, source, expect=dict):
    """Parse untrusted JSON text or bytes.

    Parameters
    ----------
    data : bytes or str
    source : str
        Where the text came from (a path, "the header of x.safetensors"), for messages.
    expect : type or tuple of types, optional
        The type the top-level value must have (default ``dict``; ``None``
        accepts any).

    Raises
    ------
    ValueError
        On invalid UTF-8 or JSON, nesting deeper than :data:`MAX_JSON_DEPTH`,
        a key named twice in one object, ``NaN``/``Infinity``, a number that
        overflows a float64 or ``int()``, or a top-level value of another type.
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"{source}: not valid UTF-8 ({error})") from None
    try:
        value = json.loads(data, object_pairs_hook=_no_duplicates,
                           parse_constant=_no_constant, parse_float=_finite_float)
    except ValueError as error:  # JSONDecodeError, or an integer of more than 4300 digits
        raise ValueError(f"{source}: not valid JSON ({error})") from None
    except _JSONRefused as error:
        raise ValueError(f"{source}: {error}") from None
    except RecursionError:  # the parser guards its own recursion; deeper than it allows
        raise ValueError(f"{source}: JSON nested more than {MAX_JSON_DEPTH} levels deep")
    depth = _nesting_depth(value)
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"{source}: JSON nested {depth} levels deep, more than the "
                         f"{MAX_JSON_DEPTH} accepted")
    if expect is not None and not isinstance(value, expect):
        wanted = (" or ".join(kind.__name__ for kind in expect)
                  if isinstance(expect, tuple) else expect.__name__)
        raise ValueError(f"{source}: expected {_json_name(wanted)} at the top level, "
                         f"got {_json_name(type(value).__name__)}")
    return value


def load_json(path, *, what="JSON file", max_bytes=MAX_JSON_BYTES, expect=dict):
    """Read and parse the untrusted JSON file ``path``
    (:func:`read_limited`, then :func:`parse_json`)."""
    return parse_json(read_limited(path, max_bytes, what=what), source=str(path),
                      expect=expect)


def field(mapping, name, kinds, *, source, default=_REQUIRED, check=None, expected=None):
    """``mapping[name]``, checked to be of ``kinds`` (and ``check``, if given).

    ``bool`` is not accepted where ``int`` or ``float`` is asked for (JSON
    ``true`` is not a count), and ``int`` is accepted where ``float`` is.

    Parameters
    ----------
    mapping : dict
        A parsed JSON object.
    name : str
        The field.
    kinds : type or tuple of types
    source : str
        The file, for messages.
    default : optional
        Returned when the field is absent (or JSON ``null``); without one, an
        absent field is an error.
    check : callable, optional
        A predicate the value must also satisfy.
    expected : str, optional
        How to say what is expected, when ``check`` narrows ``kinds``.

    Raises
    ------
    ValueError
        Naming ``source``, ``name``, what was expected and what was found.
    """
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if float in kinds and int not in kinds:
        kinds = kinds + (int,)
    value = mapping.get(name)
    if value is None:
        if default is _REQUIRED:
            raise ValueError(f"{source}: the field {name!r} is missing")
        return default
    wrong_kind = not isinstance(value, kinds) or (
        isinstance(value, bool) and bool not in kinds)
    if wrong_kind or (check is not None and not check(value)):
        wanted = expected or " or ".join(_json_name(kind.__name__) for kind in kinds)
        raise ValueError(f"{source}: the field {name!r} must be {wanted}, got {value!r:.80}")
    return value


class _JSONRefused(Exception):
    """Raised inside the parser's hooks; turned into a ValueError naming the file."""


def _no_duplicates(pairs):
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise _JSONRefused(f"the key {key!r} appears twice in one object")
        seen.add(key)
    return dict(pairs)


def _no_constant(name):
    raise _JSONRefused(f"{name} is not a JSON number")


def _finite_float(text):
    value = float(text)
    if not math.isfinite(value):
        raise _JSONRefused(f"the number {text:.40} overflows a float64")
    return value


def _nesting_depth(value):
    """How many arrays and objects deep the parsed ``value`` goes (0 for a scalar)."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        node, depth = pending.pop()
        children = (node.values() if isinstance(node, dict)
                    else node if isinstance(node, list) else None)
        if children is not None:
            deepest = max(deepest, depth)
            pending.extend((child, depth + 1) for child in children)
    return deepest


def _json_name(python_name):
    return {"dict": "an object", "list": "an array", "str": "a string",
            "int": "an integer", "float": "a number", "bool": "a boolean",
            "NoneType": "null"}.get(python_name, python_name)
