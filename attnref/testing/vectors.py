"""Golden vectors: every case of a suite as files any language can read.

:func:`export` writes one ``.npz`` per case (the inputs exactly as an
implementation receives them under a semantics profile, and attnref's
reference output, log-sum-exp and, when small, weights in float64; from
format version 2 on also a ``grad_out`` and the gradients ``dq``, ``dk``,
``dv`` of :mod:`attnref.testing.backward`) and a
``manifest.json`` that describes them, carries each file's sha256 and states
the tolerance rule with every number needed to apply it without attnref.
:func:`verify` re-checks such a directory against attnref, trusting nothing
in it: every number of the manifest is recomputed, the case list is held to
the suite it names, and the archives are read as untrusted files (only
regular files inside the directory, sizes and array headers checked against
the case before anything is decompressed or allocated). The format is
specified in ``docs/vectors.md``.

Shape letters as in :mod:`attnref.core`: B batch, Hq query heads, Hkv
key/value heads, L query length, S key length, E query/key head dim, Ev value
head dim.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import json
import math
import os
import sys
import tempfile
import tokenize
import zipfile
import zlib
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np

from .. import __version__
from .._files import field, load_json, read_limited
from ..core import scaled_dot_product_attention
from .backward import case_grad_out, gradient_magnitudes, reference_gradients
from .conformance import _suite, input_dtype
from .semantics import ALIGNMENTS, PROFILES, REFERENCE_FIELDS, Semantics, profile
from .tolerance import (FACTOR, FLOOR_EPS, equivalence_bound, max_abs_error,
                        reference_dtype)

FORMAT = "attnref-vectors"
FORMAT_VERSION = 2
"""What :func:`export` writes by default. Version 2 adds ``grad_out`` and
the gradients ``dq``, ``dk``, ``dv``; version 1 has neither."""
FORMAT_VERSIONS = (1, 2)
"""The versions :func:`verify` reads (and :func:`export` writes)."""
GRADIENTS = ("dq", "dk", "dv")
MANIFEST = "manifest.json"
MAX_WEIGHT_ENTRIES = 65536
"""Weights are stored when B * Hq * L * S is at most this (512 KiB in float64)."""
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
"""Every archive member's timestamp (the earliest a zip can hold), so the
same arguments give the same bytes."""
NPY_HEADER_LIMIT = 4096
"""The longest ``.npy`` header dictionary :func:`verify` reads (attnref's
are 118 bytes; NumPy pads them to a multiple of 64)."""
NPY_PREAMBLE = 12
"""The bytes before a ``.npy`` header dictionary, at most: magic (6),
version (2) and header length (2 in version 1.0, 4 in 2.0)."""
ZIP_MEMBER_OVERHEAD = 1024
"""The bytes an archive member may take beyond its data: local header (30)
and central directory entry (46), its name twice, extra fields such as
zip64 records, and a data descriptor (up to 24)."""
ZIP_TRAILER = 65535 + 22 + 56 + 20
"""The bytes after the central directory, at most: the end record (22) with
the longest comment a zip holds (65535), and the zip64 end record (56) and
locator (20)."""
RULE_V1 = (
    "A candidate array x (the output; lse and weights likewise) passes a case when "
    "max |x - reference| <= bound, where bound = factor * baseline_error + floor_eps * "
    "eps * max(1, value_scale). reference is the array stored in the case's file: "
    "attnref's NumPy reference computed in reference_dtype from these very inputs and "
    "rounded to float64. baseline_error is max |x_d - reference| for attnref's NumPy "
    "reference x_d run in dtype on the same inputs, value_scale is max |reference| over "
    "its finite entries, eps is the machine epsilon of dtype. A NaN where the reference "
    "has a number, or a number where it has NaN, fails whatever the bound; positions "
    "where both are NaN, or both the same infinity, agree.")
RULE = RULE_V1 + (
    " The gradients dq, dk and dv (of sum(grad_out * output) with respect to query, key "
    "and value) pass under the same formula with one change: their value_scale is gamma, "
    "the largest entry of the gradient's formula with every term taken in absolute value "
    "(gamma_dv = max P^T |grad_out|, gamma_dq = max scale M |K|, gamma_dk = max scale M^T "
    "|Q|, M = P o (|grad_out| |V|^T + rowsum(|grad_out| o P |V|)), P the weights, summed "
    "over the query heads of each key/value head), computed in reference_dtype: dq and dk "
    "come out of a cancellation, so their rounding scales with these terms, not with "
    "their own size.")
"""The rule's text for the current version (:data:`RULE_V1` for version 1)."""


@dataclasses.dataclass(frozen=True)
class _ArrayOf:
    """Schema of a JSON array whose every item follows ``item``."""
    item: object


@dataclasses.dataclass(frozen=True)
class _ObjectOf:
    """Schema of a JSON object with any keys, every value following ``item``."""
    item: object


# The manifest's schema (format_version 1): a dict is an object with exactly
# these fields, a type (or tuple of types; NoneType = may be null) a leaf
# checked by attnref._files.field.
_SEMANTICS_FIELDS = {name: str for name in REFERENCE_FIELDS}
_SEMANTICS_CHOICES = {"mask_true_means": ("attend", "masked_out"),
                      "causal_alignment": ALIGNMENTS,
                      "masked_rows": ("zero", "nan", "uniform")}
_RULE_FIELDS = {"rule": str, "factor": float, "floor_eps": float, "eps": float, "dtype": str,
                "reference_dtype": str}
_PARAMETER_FIELDS = {"L": int, "S": int, "E": int, "Ev": int, "B": int, "Hq": int, "Hkv": int,
                     "mask": str, "content": str, "is_causal": bool,
                     "scale": (float, type(None)), "enable_gqa": bool}
_REFERENCE_NUMBERS = {"baseline_error": float, "value_scale": float, "bound": float}
_CASE_FIELDS = {"name": str, "file": str, "sha256": str, "description": str,
                "parameters": _PARAMETER_FIELDS, "requires": _ArrayOf(str),
                "arrays": _ObjectOf({"shape": _ArrayOf(int), "dtype": str}),
                "tolerance": _ObjectOf(_REFERENCE_NUMBERS)}
_MANIFEST_FIELDS = {"format": str, "format_version": int, "attnref_version": str,
                    "suite": str, "seed": int, "dtype": str, "semantics": _SEMANTICS_FIELDS,
                    "tolerance": _RULE_FIELDS, "max_weight_entries": int,
                    "cases": _ArrayOf(_CASE_FIELDS)}
# What the zipfile module raises on a corrupt archive or member (a bad CRC,
# a truncated or inconsistent header, a deflate stream that is not one, a
# name that is not UTF-8, a member needing a zip version it does not know).
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError,
               NotImplementedError)
# What NumPy's .npy header reader raises on a header that is not one: it
# evaluates the header with ast.literal_eval (TypeError for an unhashable
# key) and, when that fails, retries after tokenizing it (TokenError).
_NPY_HEADER_ERRORS = (ValueError, TypeError, SyntaxError, tokenize.TokenError)
# Zip general-purpose flags verify does not read: encryption (bit 0),
# compressed patched data (bit 5), strong encryption (bit 6).
_UNREAD_ZIP_FLAGS = 0x1 | 0x20 | 0x40


def export(directory, suite="standard", *, seed=0, dtype="float32", semantics="torch",
           progress=True, format_version=FORMAT_VERSION):
    """Write a suite's golden vectors to ``directory``.

    Parameters
    ----------
    directory : str or path
        Created when missing; files of the same names are replaced (a
        symbolic link of such a name is replaced by the file, never written
        through).
    suite : {"quick", "standard", "full"}
    seed : int
        Together with a case's name, fixes its inputs.
    dtype : {"float16", "bfloat16", "float32", "float64"}
        The dtype of query, key, value, a float mask and ``grad_out``
        (bfloat16 is ml_dtypes', stored as its bit patterns: see
        :func:`_stored_dtype`).
    semantics : {"torch", "torch_mha", "jax", "flash", "onnx"} or Semantics
        The conventions the inputs are written in (bool mask polarity) and the
        reference is computed under (causal alignment, fully masked rows).
    progress : bool
        One line per case on stderr.
    format_version : {1, 2}
        2 (the default) also stores ``grad_out`` and the float64 gradients
        ``dq``, ``dk``, ``dv`` (:mod:`attnref.testing.backward`); 1 writes
        the earlier format, without them, for readers not yet updated.

    Returns
    -------
    manifest : dict
        What ``manifest.json`` holds.

    Notes
    -----
    The same arguments give the same bytes: members are stored uncompressed
    with a fixed timestamp, arrays little-endian in C order, and the manifest
    holds nothing that depends on the time or the path.
    """
    cases = _suite(suite)
    dtype = input_dtype(dtype)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    semantics = profile(semantics)
    if isinstance(format_version, bool) or format_version not in FORMAT_VERSIONS:
        raise ValueError(f"format_version must be one of {FORMAT_VERSIONS}, got "
                         f"{format_version!r}")
    wide_dtype = reference_dtype(dtype)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    entries = []
    for position, case in enumerate(cases.values(), 1):
        inputs = _case_inputs(case, seed, dtype, format_version)
        wide = _reference_arrays(inputs, semantics, wide_dtype)
        baseline = _reference_arrays(inputs, semantics, dtype)
        scales = _value_scales(inputs, semantics, wide_dtype, wide)
        arrays = {**_input_arrays(inputs, semantics),
                  **{name: array.astype(np.float64) for name, array in wide.items()}}
        archive = _npz_bytes(arrays)
        file_name = f"{case.name}.npz"
        _write_replacing(directory / file_name, archive)
        entries.append({
            "name": case.name,
            "file": file_name,
            "sha256": hashlib.sha256(archive).hexdigest(),
            "description": case.description,
            "parameters": _parameters(case),
            "requires": sorted(case.requires),
            "arrays": _array_table(arrays),
            "tolerance": {name: _tolerance(baseline[name], wide[name], scales[name])
                          for name in wide},
        })
        if progress:
            print(f"[{position}/{len(cases)}] {case.name} -> {directory / file_name}",
                  file=sys.stderr, flush=True)
    manifest = {
        "format": FORMAT,
        "format_version": format_version,
        "attnref_version": __version__,
        "suite": suite,
        "seed": int(seed),
        "dtype": dtype.name,
        "semantics": semantics.reference_conventions(),
        "tolerance": _rule_numbers(dtype, format_version),
        "max_weight_entries": MAX_WEIGHT_ENTRIES,
        "cases": entries,
    }
    text = json.dumps(manifest, indent=2, allow_nan=False) + "\n"
    _write_replacing(directory / MANIFEST, text.encode("utf-8"))
    return manifest


def verify(directory, *, progress=True):
    """Re-check a directory written by :func:`export`, trusting nothing in it.

    The manifest is read as untrusted JSON (at most 16 MiB, nesting bounded)
    and must follow the format's schema exactly: every field present, of its
    type, and no other. Its rule (``factor``, ``floor_eps``, ``eps``, the
    rule's text, the dtypes) and ``max_weight_entries`` must be attnref's,
    and a ``semantics`` named after one of attnref's profiles must be that
    profile. The cases must be the suite's, each once and in suite order.

    For each case, everything is recomputed from (suite, name, seed, dtype,
    semantics), never read from the manifest: its description, parameters,
    capabilities, the table of arrays and the tolerance numbers
    (``baseline_error``, ``value_scale``, ``bound`` of every reference, as
    :func:`export` computes them on this machine), each compared with what
    the manifest states. The archive is read only when it is a regular file
    inside ``directory`` (after resolving symbolic links) no larger than its
    arrays need; each zip member only when its declared size fits the array
    the case expects (and never past that size, whatever the stream holds);
    each ``.npy`` only when its header gives the expected dtype and shape,
    and without unpickling. Then the sha256; the inputs bit for bit against
    those attnref generates; and each stored reference judged as a float64
    candidate under the tolerance rule (error against attnref's long double
    reference <= 2 x the error of its float64 reference +
    ``4 eps max(1, value_scale)``, a gradient's value scale being its gamma
    from :func:`attnref.testing.backward.gradient_magnitudes`), which absorbs
    the last-bit differences another BLAS gives. Format versions 1 and 2
    (:data:`FORMAT_VERSIONS`) are read, each with its own arrays and rule
    text.

    Parameters
    ----------
    directory : str or path
    progress : bool
        One line per case on stderr.

    Returns
    -------
    list of (str, bool, str)
        ``(case name, ok, message)``: one per case of the suite, in suite
        order (a case the manifest does not list fails), then one per
        manifest entry naming a case the suite does not have (each fails;
        its name cut to 80 characters). A name or message that is not
        printable (a newline, a terminal escape) is given as its repr.

    Raises
    ------
    ValueError
        Naming the manifest and the field, when ``directory`` has no manifest
        (or one that is a link out of it, not a regular file, too large, not
        JSON), one of another format or version, one that breaks the schema,
        or one whose suite, dtype, seed, semantics, rule or
        ``max_weight_entries`` attnref does not have.
    """
    directory = Path(directory)
    manifest, cases, dtype, semantics = _read_manifest(directory)
    listing = _listing(manifest["cases"], cases, manifest["suite"])
    results = []
    for position, (name, entry, problems) in enumerate(listing, 1):
        if entry is not None:
            problems = problems + _case_problems(directory, entry, cases[name], manifest["seed"],
                                                 dtype, semantics, manifest["format_version"])
        ok = not problems
        message = _printable("; ".join(problems)) if problems else \
            "matches the manifest and attnref"
        results.append((name, ok, message))
        if progress:
            print(f"[{position}/{len(listing)}] {name}: "
                  f"{'ok' if ok else 'FAILED: ' + message}", file=sys.stderr, flush=True)
    return results


def _stored_dtype(name):
    """The little-endian dtype an array of dtype ``name`` is stored in: a
    bfloat16 array (which NumPy's .npy header cannot name) as its bit
    patterns, uint16."""
    return np.dtype("<u2") if name == "bfloat16" else np.dtype(name).newbyteorder("<")


def _rule_numbers(dtype, format_version):
    """The manifest's ``tolerance`` field: the rule (as ``format_version``
    states it) and its constants for ``dtype`` inputs."""
    wide_dtype = reference_dtype(dtype)
    return {
        "rule": RULE if format_version >= 2 else RULE_V1,
        "factor": FACTOR,
        "floor_eps": FLOOR_EPS,
        "eps": float(np.finfo(dtype).eps),
        "dtype": dtype.name,
        # "float128" or "float96" by size, extended precision in fact
        "reference_dtype": "longdouble" if wide_dtype.itemsize > 8 else wide_dtype.name,
    }


def _case_inputs(case, seed, dtype, format_version):
    """A case's inputs (:meth:`~attnref.testing.Case.inputs`), with its
    ``grad_out`` (:func:`attnref.testing.backward.case_grad_out`) from
    format version 2 on."""
    inputs = case.inputs(seed, dtype)
    if format_version >= 2:
        inputs["grad_out"] = case_grad_out(case, seed, dtype)
    return inputs


def _input_arrays(inputs, semantics):
    """The inputs as ``semantics`` hands them to an implementation, one array
    per argument (an argument that is None is left out), then ``grad_out``
    when the inputs have one."""
    (query, key, value), options = semantics.arguments(inputs)
    arrays = {"query": query, "key": key, "value": value}
    if options["attn_mask"] is not None:
        arrays["attn_mask"] = options["attn_mask"]
    arrays["is_causal"] = np.array(options["is_causal"], dtype=bool)
    if options["scale"] is not None:
        arrays["scale"] = np.array(options["scale"], dtype=np.float64)
    arrays["enable_gqa"] = np.array(options["enable_gqa"], dtype=bool)
    if "softcap" in options:
        arrays["softcap"] = np.array(options["softcap"], dtype=np.float64)
    if "window" in options:  # (left, right); -1 leaves a side unbounded, as ONNX's windows
        arrays["window"] = np.array([-1 if side is None else side for side in options["window"]],
                                    dtype=np.int64)
    if "grad_out" in inputs:
        arrays["grad_out"] = inputs["grad_out"]
    return arrays


def _stores_weights(rows, S):
    """Whether a case's weights are stored: ``rows`` = B * Hq * L query rows
    of ``S`` keys, at most :data:`MAX_WEIGHT_ENTRIES` entries."""
    return rows * S <= MAX_WEIGHT_ENTRIES


def _reference_arrays(inputs, semantics, dtype):
    """attnref's output (B, Hq, L, Ev), lse (B, Hq, L) and, when at most
    ``MAX_WEIGHT_ENTRIES``, weights (B, Hq, L, S) for one case under
    ``semantics``, computed in ``dtype``; with a ``grad_out`` in the inputs,
    also the gradients dq (B, Hq, L, E), dk (B, Hkv, S, E) and dv (B, Hkv,
    S, Ev) of :func:`attnref.testing.backward.reference_gradients`.

    The lse is the log-sum-exp of the visible scaled scores: ``-inf`` for a
    fully masked row under every profile. The weights of such a row follow
    the profile's output (0, NaN, or uniform ``1/S``), so that
    ``output = weights @ value`` row by row.
    """
    output = semantics.reference(inputs, dtype)
    query, key, value = (inputs[name].astype(dtype) for name in ("query", "key", "value"))
    mask = inputs["attn_mask"]
    if mask is not None and mask.dtype != bool:
        mask = mask.astype(dtype)
    S = key.shape[-2]
    with_weights = _stores_weights(math.prod(output.shape[:-1]), S)
    result = scaled_dot_product_attention(
        query, key, value, attn_mask=mask, is_causal=inputs["is_causal"],
        scale=inputs["scale"], enable_gqa=inputs["enable_gqa"], return_weights=with_weights,
        softcap=inputs["softcap"], window=inputs["window"], return_lse=True, backend="numpy",
        causal_alignment=semantics.alignment(query.shape[-2], S))
    arrays = {"output": output, "lse": result.lse}
    if with_weights:
        masked = np.isneginf(result.lse)[..., None]                # (B, Hq, L, 1)
        fill = _masked_row_weight(semantics.masked_rows, S)
        arrays["weights"] = np.where(masked, fill, result.weights).astype(result.weights.dtype)
    if "grad_out" in inputs:
        arrays.update(reference_gradients(inputs, inputs["grad_out"], semantics, dtype))
    return arrays


def _value_scales(inputs, semantics, dtype, references):
    """Each reference's ``value_scale``: ``max |reference|`` over its finite
    entries, and for a gradient its gamma
    (:func:`attnref.testing.backward.gradient_magnitudes`, in ``dtype``)."""
    scales = {name: _largest_finite(array) for name, array in references.items()}
    if "grad_out" in inputs:
        scales.update(gradient_magnitudes(inputs, inputs["grad_out"], semantics, dtype))
    return scales


def _largest_finite(array):
    """``max |array|`` over its finite entries (0 when there are none)."""
    return float(np.max(np.abs(array[np.isfinite(array)]), initial=0.0))


def _reference_table(case, format_version):
    """The manifest's description of a case's stored references, from its
    shape parameters alone: output (B, Hq, L, Ev), lse (B, Hq, L), when
    stored weights (B, Hq, L, S), and from format version 2 on dq (B, Hq,
    L, E), dk (B, Hkv, S, E), dv (B, Hkv, S, Ev), all float64."""
    B, Hq, Hkv, L, S = case.B, case.Hq, case.heads_kv, case.L, case.S
    shapes = {"output": [B, Hq, L, case.value_dim], "lse": [B, Hq, L]}
    if _stores_weights(B * Hq * L, S):
        shapes["weights"] = [B, Hq, L, S]
    if format_version >= 2:
        shapes.update(dq=[B, Hq, L, case.E], dk=[B, Hkv, S, case.E],
                      dv=[B, Hkv, S, case.value_dim])
    return {name: {"shape": shape, "dtype": "float64"} for name, shape in shapes.items()}


def _masked_row_weight(masked_rows, S):
    """The weight of every key in a fully masked row under a profile."""
    match masked_rows:
        case "zero":
            return 0.0
        case "nan":
            return np.nan
        case "uniform":
            return 1.0 / max(S, 1)  # S = 0 leaves no weight to fill
        case _:
            raise ValueError(
                f"masked_rows must be 'zero', 'nan' or 'uniform', got {masked_rows!r}")


def _tolerance(baseline, wide, value_scale):
    """The rule's numbers for one reference array: ``baseline`` computed in
    the candidate's dtype, ``wide`` in the reference dtype, ``value_scale``
    from :func:`_value_scales`."""
    baseline_error = max_abs_error(baseline, wide)
    return {"baseline_error": baseline_error, "value_scale": value_scale,
            "bound": equivalence_bound(baseline_error, baseline.dtype, value_scale)}


def _parameters(case):
    """A case's shapes and conditions, with defaults resolved."""
    return {"L": case.L, "S": case.S, "E": case.E, "Ev": case.value_dim, "B": case.B,
            "Hq": case.Hq, "Hkv": case.heads_kv, "mask": case.mask, "content": case.content,
            "is_causal": case.is_causal, "scale": case.scale,
            "enable_gqa": case.heads_kv != case.Hq}


def _array_table(arrays):
    """``{name: {"shape": [...], "dtype": "float32"}}`` for the manifest."""
    return {name: {"shape": list(array.shape), "dtype": array.dtype.name}
            for name, array in arrays.items()}


def _npz_bytes(arrays):
    """An ``.npz`` archive of ``arrays`` that depends on nothing else.

    Each array becomes a ``.npy`` member (format 1.0, little-endian, C
    order), stored uncompressed under a fixed timestamp; members under 4 GiB
    need no zip64 records and no data descriptors.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            if array.dtype.name == "bfloat16":
                array = np.asarray(array, order="C").view(np.uint16)   # its bits
            array = np.asarray(array, dtype=_stored_dtype(array.dtype.name), order="C")
            member = io.BytesIO()
            np.lib.format.write_array(member, array, version=(1, 0), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_DATE_TIME)
            info.external_attr = 0o644 << 16    # rw-r--r-- when unzipped
            archive.writestr(info, member.getvalue())
    return buffer.getvalue()


def _write_replacing(path, data):
    """Write ``data`` to a new file in ``path``'s directory, then rename it
    over ``path``: whatever ``path`` was (a symbolic link too) is replaced,
    never written through, and a reader never sees half a file."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(data)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def _read_manifest(directory):
    """``(manifest, cases, dtype, semantics)`` of ``directory``.

    Raises a ValueError naming the manifest (and the field) unless it is a
    regular file inside ``directory``, of this format and version, follows
    the schema, and names a suite, dtype, seed, semantics, rule and weight
    limit attnref has.
    """
    path = directory / MANIFEST
    if not path.exists():
        raise ValueError(f"{path} not found: {directory} is not a golden-vector directory "
                         f"written by attnref.testing.vectors.export")
    _inside(directory, MANIFEST)
    manifest = load_json(path, what="manifest")
    found = manifest.get("format")
    if found != FORMAT:
        raise ValueError(f"{path}: format is {found!r:.80}, expected {FORMAT!r}")
    version = manifest.get("format_version")
    if isinstance(version, bool) or version not in FORMAT_VERSIONS:
        raise ValueError(f"{path}: format_version is {version!r:.80}, this attnref reads "
                         f"versions {' and '.join(map(str, FORMAT_VERSIONS))}")
    _check_json(manifest, _MANIFEST_FIELDS, str(path), "")
    try:
        cases = _suite(manifest["suite"])
        dtype = input_dtype(manifest["dtype"])
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    if manifest["seed"] < 0:
        raise ValueError(f"{path}: the field 'seed' must be a non-negative integer, got "
                         f"{manifest['seed']}")
    semantics = _manifest_semantics(manifest["semantics"], path)
    fixed = {f"tolerance.{name}": (manifest["tolerance"][name], expected, "the rule")
             for name, expected in _rule_numbers(dtype, version).items()}
    fixed["max_weight_entries"] = (manifest["max_weight_entries"], MAX_WEIGHT_ENTRIES,
                                   "which weights are stored")
    for name, (stored, expected, meaning) in fixed.items():
        if stored != expected:
            raise ValueError(f"{path}: the field {name!r} is {stored!r:.80}, attnref's is "
                             f"{expected!r:.80}: a manifest cannot change {meaning}")
    return manifest, cases, dtype, semantics


def _check_json(value, schema, source, where):
    """Raise a ValueError naming ``source`` and the field ``where`` (a path
    such as ``cases[3].parameters.L``) unless the parsed JSON ``value``
    follows ``schema``: a dict (an object with exactly these fields),
    :class:`_ArrayOf`, :class:`_ObjectOf`, or the kinds of a leaf (a type or
    tuple of types, ``NoneType`` among them when it may be null)."""
    if isinstance(schema, dict):
        value = field({where: value}, where, dict, source=source)
        for key in value:
            if key not in schema:
                raise ValueError(f"{source}: unknown field {_member(where, key)!r:.80}")
        for key, item in schema.items():
            if key not in value:
                raise ValueError(f"{source}: the field {_member(where, key)!r} is missing")
            _check_json(value[key], item, source, _member(where, key))
    elif isinstance(schema, _ArrayOf):
        for index, item in enumerate(field({where: value}, where, list, source=source)):
            _check_json(item, schema.item, source, f"{where}[{index}]")
    elif isinstance(schema, _ObjectOf):
        for key, item in field({where: value}, where, dict, source=source).items():
            _check_json(item, schema.item, source, _member(where, key))
    else:
        kinds = schema if isinstance(schema, tuple) else (schema,)
        if type(None) in kinds:
            field({where: value}, where, tuple(kind for kind in kinds if kind is not type(None)),
                  source=source, default=None)
        else:
            field({where: value}, where, kinds, source=source)


def _member(where, key):
    """The path of field ``key`` of the object at path ``where``."""
    return f"{where}.{key}" if where else key


def _manifest_semantics(fields, path):
    """The manifest's ``semantics`` as a :class:`Semantics`; a ValueError
    when a convention has no meaning, or when it names one of attnref's
    profiles and differs from it."""
    for name, choices in _SEMANTICS_CHOICES.items():
        if fields[name] not in choices:
            raise ValueError(f"{path}: the field 'semantics.{name}' must be one of {choices}, "
                             f"got {fields[name]!r:.80}")
    semantics = Semantics(**fields)
    known = PROFILES.get(semantics.name)
    if known is not None and known.reference_conventions() != fields:
        raise ValueError(f"{path}: the field 'semantics' names attnref's profile "
                         f"{semantics.name!r} but differs from it: "
                         f"{known.reference_conventions()}")
    return known or semantics


def _listing(entries, cases, suite):
    """Pair the manifest's entries with the suite's cases.

    Returns ``(name, entry, problems)`` for every case of the suite, in suite
    order (``entry`` is the first listing the case, None when none does),
    then ``(name, None, problems)`` for every entry naming a case the suite
    lacks. A case listed twice, or out of the suite's order, has a problem
    saying so; out of order are the cases outside a longest run of listed
    cases that keeps the suite's order, so one case moved is one problem.
    """
    first, problems = {}, {name: [] for name in cases}
    for index, entry in enumerate(entries):
        name = entry["name"]
        if name in first and name in cases:
            problems[name].append(f"listed again as cases[{index}]")
        first.setdefault(name, index)
    suite_order = {name: index for index, name in enumerate(cases)}
    listed = [name for name in first if name in cases]
    kept = _longest_increasing([suite_order[name] for name in listed])
    for index, name in enumerate(listed):
        if index not in kept:
            problems[name].append(f"listed as cases[{first[name]}], out of the order of "
                                  f"suite {suite!r}, where it is case {suite_order[name] + 1} "
                                  f"of {len(cases)}")
    listing = []
    for name in cases:
        if name in first:
            listing.append((name, entries[first[name]], problems[name]))
        else:
            listing.append((name, None, [f"missing: the manifest must list every case of "
                                         f"suite {suite!r}"]))
    listing += [(_printable(entry["name"])[:80], None,
                 [f"cases[{index}]: suite {suite!r} of attnref {__version__} has no case "
                  f"{entry['name']!r:.80}"])
                for index, entry in enumerate(entries) if entry["name"] not in cases]
    return listing


def _printable(text):
    """``text`` (holding a name or path from the directory) as it can be
    printed on one line: itself when printable, else its repr, so that no
    newline or terminal escape reaches the output."""
    return text if text.isprintable() else repr(text)


def _longest_increasing(values):
    """The positions of one longest strictly increasing subsequence of
    ``values`` (a set; quadratic, for the length of a suite)."""
    length, previous = [1] * len(values), [-1] * len(values)
    for end in range(len(values)):
        for start in range(end):
            if values[start] < values[end] and length[start] + 1 > length[end]:
                length[end], previous[end] = length[start] + 1, start
    kept = set()
    position = max(range(len(values)), key=length.__getitem__, default=-1)
    while position >= 0:
        kept.add(position)
        position = previous[position]
    return kept


def _case_problems(directory, entry, case, seed, dtype, semantics, format_version):
    """Everything wrong with one listed case (empty when nothing is)."""
    inputs = _case_inputs(case, seed, dtype, format_version)
    expected_inputs = _input_arrays(inputs, semantics)
    expected_table = {**_array_table(expected_inputs), **_reference_table(case, format_version)}
    wide_dtype = reference_dtype(dtype)
    # the references in every dtype the checks need, each computed once: the
    # manifest's numbers (dtype against its reference dtype) and the stored
    # references' judgement (float64 against long double)
    references = {each: _reference_arrays(inputs, semantics, each) for each in
                  {dtype, wide_dtype, np.dtype(np.float64), reference_dtype(np.float64)}}
    scales = {each: _value_scales(inputs, semantics, each, references[each])
              for each in {wide_dtype, reference_dtype(np.float64)}}
    tolerance = {name: _tolerance(references[dtype][name], wide, scales[wide_dtype][name])
                 for name, wide in references[wide_dtype].items()}
    problems = _entry_problems(entry, case, expected_table, tolerance)
    try:
        path = _inside(directory, entry["file"])
        archive = read_limited(path, _archive_limit(expected_table), what="archive")
    except ValueError as error:
        return problems + [str(error)]
    digest = hashlib.sha256(archive).hexdigest()
    if digest != entry["sha256"]:
        problems.append(f"sha256 of {path.name} is {digest}, the manifest says "
                        f"{entry['sha256']!r:.80}")
    arrays, archive_problems = _read_archive(archive, expected_table, path.name)
    return (problems + archive_problems
            + _array_problems(arrays, expected_inputs, references[np.dtype(np.float64)],
                              references[reference_dtype(np.float64)],
                              scales[reference_dtype(np.float64)]))


def _entry_problems(entry, case, expected_table, tolerance):
    """Where the manifest's entry states otherwise than attnref recomputes
    for the case: description, parameters, capabilities, arrays and the
    tolerance numbers."""
    problems = []
    if entry["description"] != case.description:
        problems.append(f"the manifest's description {entry['description']!r:.80} is not the "
                        f"case's {case.description!r}")
    if entry["parameters"] != _parameters(case):
        problems.append(f"the manifest's parameters differ from the case attnref "
                        f"{__version__} defines: {_parameters(case)}")
    if entry["requires"] != sorted(case.requires):
        problems.append(f"the manifest's requires {entry['requires']!r:.80} is not what the "
                        f"case needs: {sorted(case.requires)}")
    listed = entry["arrays"]
    misdescribed = sorted(name for name in set(listed) | set(expected_table)
                          if listed.get(name) != expected_table.get(name))
    if misdescribed:
        problems.append(f"the manifest describes {misdescribed!r:.200} otherwise than the "
                        f"case's arrays: {expected_table}")
    stored = entry["tolerance"]
    if set(stored) != set(tolerance):
        problems.append(f"the manifest's tolerance covers {sorted(stored)!r:.200}, the "
                        f"references are {sorted(tolerance)}")
    for name in sorted(set(stored) & set(tolerance)):
        for number, recomputed in tolerance[name].items():
            if stored[name][number] != recomputed:
                looseness = ("" if number != "bound" else
                             ", a looser bound" if stored[name][number] > recomputed
                             else ", a tighter bound")
                problems.append(f"tolerance.{name}.{number} is {stored[name][number]!r:.40}, "
                                f"attnref computes {recomputed!r}{looseness}")
    return problems


def _inside(directory, name):
    """The real path of the file ``name`` (from a manifest) inside ``directory``.

    Raises a ValueError when ``name`` is not a plain relative path (empty,
    absolute, with a drive, a ``..`` part, a backslash or a NUL), does not
    exist, or resolves (symbolic links followed) outside ``directory``.
    """
    relative = PurePosixPath(name)
    if (not name or "\x00" in name or "\\" in name or relative.is_absolute()
            or PureWindowsPath(name).drive or ".." in relative.parts):
        raise ValueError(f"the file {name!r:.80} is not a relative path inside {directory} "
                         f"('/' as separator, no '..'): refused")
    root = directory.resolve()
    try:
        resolved = (root / relative).resolve(strict=True)
    except FileNotFoundError:
        raise ValueError(f"{directory / relative} not found") from None
    except (OSError, RuntimeError) as error:  # a loop of links is a RuntimeError before 3.13
        raise ValueError(f"{directory / relative}: cannot resolve ({error})") from None
    if not resolved.is_relative_to(root):
        raise ValueError(f"{directory / relative} leads to {resolved}, outside {directory}: "
                         f"refused")
    return resolved


def _npy_bytes(description):
    """The data bytes of an array of ``description`` ({"shape", "dtype"})."""
    return math.prod(description["shape"]) * _stored_dtype(description["dtype"]).itemsize


def _archive_limit(expected_table):
    """The largest archive :func:`verify` reads for a case whose arrays are
    ``expected_table``: every ``.npy`` at its longest header, plus the
    zip's per-member and trailing records."""
    return (sum(NPY_PREAMBLE + NPY_HEADER_LIMIT + _npy_bytes(description) + ZIP_MEMBER_OVERHEAD
                for description in expected_table.values()) + ZIP_TRAILER)


def _read_archive(archive, expected_table, file_name):
    """``(arrays, problems)`` of an ``.npz`` held in memory: the members
    ``NAME.npy`` of ``expected_table``, each read only when it agrees with it.

    Only stored and deflated members are read, never past the size of the
    array the case expects (a member declaring more is refused unread; one
    whose stream holds more than it declares is cut at the declaration).
    """
    try:
        zipped = zipfile.ZipFile(io.BytesIO(archive))
    except _ZIP_ERRORS as error:
        return {}, [f"{file_name} is not a readable .npz: {_one_line(error)}"]
    members = zipped.infolist()
    wanted = {f"{name}.npy": name for name in expected_table}
    counts = collections.Counter(member.filename for member in members)
    problems = []
    if sorted(counts.elements()) != sorted(wanted):
        held = sorted(counts.elements())
        shown = held[:20] + ([f"... {len(held) - 20} more"] if len(held) > 20 else [])
        problems.append(f"{file_name} holds {shown}, expected {sorted(wanted)}")
    arrays = {}
    for member in members:
        name = wanted.get(member.filename)
        if name is None or counts[member.filename] > 1:
            continue
        label = f"{member.filename} in {file_name}"
        try:
            array, problem = _read_member(zipped, member, expected_table[name], label)
        except _ZIP_ERRORS as error:
            array, problem = None, f"{file_name} is not a readable .npz: {_one_line(error)}"
        if problem:
            problems.append(problem)
        else:
            arrays[name] = array
    return arrays, problems


def _read_member(zipped, member, description, label):
    """``(array, None)``, or ``(None, problem)`` when the zip member is not
    a ``.npy`` of ``description`` ({"shape", "dtype"})."""
    limit = NPY_PREAMBLE + NPY_HEADER_LIMIT + _npy_bytes(description)
    if member.flag_bits & _UNREAD_ZIP_FLAGS:
        return None, (f"{label} is encrypted or patched (zip flags {member.flag_bits:#06x}), "
                      f"which attnref does not read")
    if member.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        return None, (f"{label} uses compression method {member.compress_type}; attnref "
                      f"reads stored (0) and deflated (8) members")
    if member.file_size > limit:
        return None, (f"{label} declares {member.file_size} bytes, more than the {limit} a "
                      f"{description['dtype']} array of shape {tuple(description['shape'])} "
                      f"takes as .npy")
    with zipped.open(member) as stream:
        data = stream.read(limit)  # never past the limit, whatever the stream inflates to
    return _npy_array(data, description, label)


def _npy_array(data, description, label):
    """``(array, None)`` from the bytes of a ``.npy`` whose header gives the
    dtype and shape of ``description`` (little-endian, C order) and whose
    data has exactly their size; else ``(None, problem)``."""
    shape = tuple(description["shape"])
    dtype = _stored_dtype(description["dtype"])
    stream = io.BytesIO(data)
    readers = {(1, 0): np.lib.format.read_array_header_1_0,
               (2, 0): np.lib.format.read_array_header_2_0}
    try:
        version = np.lib.format.read_magic(stream)
        if version not in readers:
            return None, f"{label} is .npy version {version}, attnref reads 1.0 and 2.0"
        found_shape, fortran_order, found_dtype = readers[version](
            stream, max_header_size=NPY_HEADER_LIMIT)
    except _NPY_HEADER_ERRORS as error:
        return None, f"{label} has no readable .npy header: {_one_line(error)}"
    if (found_dtype.str, found_shape, fortran_order) != (dtype.str, shape, False):
        order = "Fortran" if fortran_order else "C"
        return None, (f"{label} is {found_dtype.str!r:.40} {found_shape!r:.80} in {order} "
                      f"order, the case expects {dtype.str!r} {shape} in C order")
    held, size = len(data) - stream.tell(), _npy_bytes(description)
    if held != size:
        return None, f"{label} holds {held} bytes of data, {dtype.str!r} {shape} takes {size}"
    stream.seek(0)
    array = np.lib.format.read_array(stream, allow_pickle=False, max_header_size=NPY_HEADER_LIMIT)
    if description["dtype"] == "bfloat16":
        array = array.view(input_dtype("bfloat16"))
    return array, None


def _one_line(error):
    """A library's error message on one line of at most 200 characters."""
    return f"{' '.join(str(error).split()):.200}"


def _array_problems(arrays, expected_inputs, baseline, wide, scales):
    """Where the arrays read differ from the inputs attnref generates (bit
    for bit) or from its references (``wide``, long double, whose value
    scales are ``scales``) beyond the float64 rule (``baseline``: the same
    references in float64)."""
    problems = []
    for input_name, expected in expected_inputs.items():
        if input_name in arrays and not _identical(arrays[input_name], expected):
            problems.append(f"{input_name} differs from the input attnref {__version__} "
                            f"generates for this case")
    for reference_name in [name for name in wide if name in arrays]:
        stored, recomputed = arrays[reference_name], wide[reference_name]
        error = max_abs_error(stored, recomputed)
        bound = _tolerance(baseline[reference_name], recomputed, scales[reference_name])["bound"]
        if not error <= bound:
            problems.append(f"{reference_name} is {error:.3g} from attnref's reference, more "
                            f"than the float64 bound {bound:.3g}")
    return problems


def _identical(stored, expected):
    """Same dtype, shape and bytes (so NaN payloads and -0.0 count too)."""
    expected = np.asarray(expected, dtype=expected.dtype.newbyteorder("<"), order="C")
    return (stored.dtype == expected.dtype and stored.shape == expected.shape
            and stored.tobytes() == expected.tobytes())
