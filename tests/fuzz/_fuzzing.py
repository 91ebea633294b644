"""What the file-reader fuzz harnesses share: the property every reader
keeps, a scratch directory, the saved corpus, and strategies for JSON.

The property (issue 14): given any file, a reader returns a valid result or
raises a ``ValueError`` whose message names the file; never another
exception, a crash, a hang or a huge allocation.
"""
import json
import tempfile
from pathlib import Path

from hypothesis import strategies as st

CORPUS = Path(__file__).parent / "corpus"
_SCRATCH = tempfile.TemporaryDirectory(prefix="attnref-fuzz-")


def scratch(name):
    """``name`` in this process's scratch directory (removed when it exits)."""
    return Path(_SCRATCH.name) / name


def corpus(reader):
    """The saved inputs of ``reader`` (``corpus/<reader>/``), sorted by name."""
    return sorted((CORPUS / reader).iterdir())


def value_error_or(read, path):
    """``read(path)``, or None when it raises a ValueError naming ``path``.

    Any other exception propagates, and so fails the harness.
    """
    try:
        return read(path)
    except ValueError as error:
        assert str(path) in str(error), f"the error does not name {path}: {error}"
        return None


# Integers of every size a file can hold, the edges of C and NumPy types first.
edge_integers = (st.sampled_from([-1, 0, 1, 2, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**62,
                                  2**63 - 1, 2**63, 2**64, 10**30])
                 | st.integers())
json_scalars = (st.none() | st.booleans() | edge_integers
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                               max_size=4),
    max_leaves=12)


def nested(depth, opener="[", closer="]"):
    """JSON text nested ``depth`` levels deep."""
    return opener * depth + closer * depth


# JSON texts no encoder writes but a file may hold: deep nesting, the numbers
# Python's parser accepts beyond JSON, duplicate keys, cut-off documents.
odd_json_texts = st.one_of(
    st.integers(60, 3000).map(nested),
    st.integers(60, 3000).map(lambda depth: '{"a":' * depth + "1" + "}" * depth),
    st.sampled_from(["NaN", "[Infinity]", '{"a": -Infinity}', '{"a": 1e999}',
                     '{"a": ' + "9" * 5000 + "}", '{"a": 1, "a": 2}', "", "{", '{"a": }',
                     "\ufeff{}", "[]", "null", "true", "0"]),
    st.text(max_size=40),
)


def json_objects_like(base):
    """JSON objects that start as ``base`` and have some fields deleted, set to
    any JSON value, or added."""
    keys = sorted(base)
    return st.tuples(
        st.lists(st.sampled_from(keys), max_size=3),
        st.dictionaries(st.sampled_from(keys) | st.text(max_size=8), json_values, max_size=3),
    ).map(lambda change: {**{key: value for key, value in base.items()
                             if key not in change[0]}, **change[1]})


def json_documents_like(base):
    """The bytes of a JSON file: ``base`` mutated (:func:`json_objects_like`),
    any JSON value, odd JSON text, or arbitrary bytes."""
    return st.one_of(
        json_objects_like(base).map(lambda value: json.dumps(value).encode()),
        json_values.map(lambda value: json.dumps(value).encode()),
        odd_json_texts.map(str.encode),
        st.binary(max_size=64),
    )


def damaged(draw, blob, kind, *, extend_max=16):
    """``blob`` with the byte-level damage ``kind``: "truncate" (cut
    anywhere), "extend" (random bytes appended), "flip" (one byte changed);
    any other kind leaves it as it is."""
    if kind == "truncate":
        return blob[:draw(st.integers(0, len(blob)))]
    if kind == "extend":
        return blob + draw(st.binary(min_size=1, max_size=extend_max))
    if kind == "flip" and blob:
        at = draw(st.integers(0, len(blob) - 1))
        return blob[:at] + bytes([blob[at] ^ draw(st.integers(1, 255))]) + blob[at + 1:]
    return blob
