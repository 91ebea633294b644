"""The fused C kernel: loading, layout, and the call into C.

This is the only module that imports the compiled CFFI extension
``attnref._kernel`` (built from ``csrc/`` at install). When it is missing,
:func:`available` is False, :func:`info` says why, and ``backend="auto"``
uses the NumPy reference.

Arrays reach C as a base pointer plus int64 element strides for
``[batch, head, row]`` (``0`` = broadcast; the mask also has a key stride),
so broadcast and strided operands are never copied. The one layout C cannot
read is a query, key or value row whose elements are not adjacent; such an
operand is copied without its broadcast dims. Leading dims other than heads
are merged where their strides allow; any that cannot be merged are looped
over here, one C call each.

A long call runs as several C calls over bounded pieces of its rows (about
:data:`CHUNK_WORK` multiply-adds per thread each, split where the tiled
paths' units split, so the bits are those of one call), with the GIL
released in each: Ctrl-C (KeyboardInterrupt) stops it between two pieces,
well within a second. A long backward call is cut the same way, into runs
of whole (batch entry, kv head) pairs (a pair's gradients need all its rows
and keys), so Ctrl-C waits at most one run: of about the same work, or of
one pair, or of ``attnref_backward_fused_pairs`` pairs when the call has
that many (then each run fuses its passes as the whole call would).

Environment:
``ATTNREF_NUM_THREADS``: default thread count (else ``os.cpu_count()``).
``ATTNREF_DISABLE_KERNEL=1``: behave as if the extension were not built.
``ATTNREF_KERNEL_PATH``: the code path, one of :data:`CODE_PATHS` (default
``auto``, the fastest the CPU supports; see :func:`set_code_path`). A name
that is unknown or that this CPU cannot run leaves ``import attnref`` working
with the kernel unavailable (a RuntimeWarning at import, and :func:`info`
says why): falling back to another path would make a forced path's results
and timings silently those of another.

The extension is refused (unavailable, and :func:`info` says why) when it
was built from other sources: in a checkout, when its recorded sha256 of
``csrc/`` (:mod:`attnref._kernel_sources`) differs from the checkout's.
When the build failed at install, the reason setup.py recorded (the error,
the compiler and its first error lines) is :func:`info`'s ``reason``.
"""
from __future__ import annotations

import importlib.util
import itertools
import math
import os
import sys
import warnings
from pathlib import Path

import numpy as np

from ._files import field, load_json
from ._kernel_sources import sources_sha256
from ._validation import unbroadcast

__all__ = ["available", "info", "unsupported_reason", "attention",
           "get_num_threads", "set_num_threads", "CODE_PATHS", "supported_code_paths",
           "get_code_path", "set_code_path", "exp"]

#: The kernel's code paths, as named by :func:`set_code_path`: ``portable``
#: (scalar C99, one row at a time: the plain twin), ``avx2`` (tiled, AVX2 +
#: FMA) and ``avx512`` (tiled, AVX-512F) on x86-64, ``neon`` (tiled, NEON) on
#: aarch64; ``auto`` picks the fastest the CPU supports. Every path computes
#: the same contract; results are bit-identical across thread counts within
#: a path, not across paths. A name's index is its ``ATTNREF_PATH_*`` value.
CODE_PATHS = ("auto", "portable", "avx2", "avx512", "neon")


#: Written next to the extension by setup.py when the build fails.
BUILD_FAILURE_REPORT = "_kernel_build_failure.json"
_REBUILD = ("It is built from csrc/ at install: reinstall (pip install -v shows the "
            "build), or in a checkout run `python setup.py build_ext --inplace`.")


def _load():
    """``(ffi, lib, None)`` of the compiled extension, or ``(None, None, why not)``."""
    if os.environ.get("ATTNREF_DISABLE_KERNEL", "") not in ("", "0"):
        return None, None, "disabled by ATTNREF_DISABLE_KERNEL"
    try:
        if importlib.util.find_spec(f"{__package__}._kernel") is None:
            return None, None, _build_failure()
        from . import _kernel
    except ImportError as error:
        return None, None, (
            f"the compiled extension attnref._kernel is not importable ({error}). {_REBUILD}")
    stale = _stale(_kernel)
    if stale is not None:
        return None, None, stale
    return _kernel.ffi, _kernel.lib, None


def _build_failure():
    """Why the extension is missing: the failure setup.py recorded, if any."""
    report = Path(__file__).with_name(BUILD_FAILURE_REPORT)
    if not report.exists():
        return ("the compiled extension attnref._kernel is not installed (no C compiler "
                f"at install time?). {_REBUILD}")
    try:
        details = load_json(report, what="build report", max_bytes=2**16)
        error = field(details, "error", str, source=str(report))
        compiler = field(details, "compiler", str, source=str(report), default="unknown")
        command = field(details, "command", str, source=str(report), default=None)
        output = field(details, "output", list, source=str(report), default=[],
                       check=lambda lines: all(isinstance(line, str) for line in lines),
                       expected="an array of strings")
    except ValueError as error:
        return f"the C kernel failed to build, and its build report is unreadable: {error}"
    printed = "".join(f"\n    {line}" for line in output) if output else " nothing"
    ran = f"\n  command: {command}" if command else ""
    return (f"the C kernel failed to build at install: {error}\n  compiler: {compiler}{ran}\n"
            f"  it printed:{printed}\n  {_REBUILD}")


def _stale(module):
    """Why ``module`` (the loaded extension) was built from other sources
    than this attnref's, or None."""
    try:
        built_from = module.ffi.string(module.lib.attnref_build_sources()).decode()
    except AttributeError:
        return (f"the compiled extension {module.__file__} is older than this attnref "
                f"(it does not record its sources). {_REBUILD}")
    csrc = Path(__file__).resolve().parent.parent / "csrc"
    if not (csrc / "build_ffi.py").is_file() or not (csrc / "attnref.h").is_file():
        return None   # installed: the extension came with the package
    try:
        checkout = sources_sha256(csrc)
    except OSError as error:
        return f"the sources in {csrc} cannot be read to check the compiled extension ({error})"
    if checkout == built_from:
        return None
    return (f"the compiled extension {module.__file__} was built from other sources than "
            f"{csrc} (sha256 {built_from[:12]}, the checkout's is {checkout[:12]}). {_REBUILD}")


_ffi, _lib, _unavailable_reason = _load()
_UNBOUNDED = _lib.attnref_band_unbounded() if _lib is not None else None

_ERRORS = {
    1: "a required pointer was NULL",
    2: "a size was negative or E < 1",
    3: "an element offset overflows int64 (arrays too large)",
    4: "an option was out of range",
    5: "the kernel ran out of memory for its scratch buffers",
    6: "a worker thread could not be started (reserved; not returned today)",
}
_ENTRIES = {np.dtype(np.float32): ("float", "attnref_sdpa_f32"),
            np.dtype(np.float64): ("double", "attnref_sdpa_f64")}


def _default_threads():
    """ATTNREF_NUM_THREADS, else the CPU count. A bad value warns and is
    ignored: like a bad ATTNREF_KERNEL_PATH, it must not break ``import attnref``."""
    cpus = min(os.cpu_count() or 1, MAX_THREADS)
    configured = os.environ.get("ATTNREF_NUM_THREADS", "")
    if configured:
        try:
            return _check_threads(int(configured))
        except (TypeError, ValueError):
            warnings.warn(f"attnref: ATTNREF_NUM_THREADS must be an int in [1, {MAX_THREADS}], "
                          f"got {configured!r}; using {cpus} threads", RuntimeWarning,
                          stacklevel=2)
    return cpus


#: The most threads a call may ask for (C takes an int32; no CPU comes near).
MAX_THREADS = 1024


def _check_threads(threads):
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)):
        raise TypeError(f"threads must be an int in [1, {MAX_THREADS}], got "
                        f"{type(threads).__name__}")
    if not 1 <= threads <= MAX_THREADS:
        raise ValueError(f"threads must be an int in [1, {MAX_THREADS}], got {threads}")
    return int(threads)


_threads = _default_threads()
#: The ATTNREF_PATH_* code of the path calls run on (set_code_path). Each
#: call passes it to C in its parameters, so a path chosen by one thread
#: never changes a call another thread is running.
_path = 0


def available():
    """True when the compiled kernel is loaded and usable."""
    return _lib is not None


def get_num_threads():
    """Threads the kernel uses (results do not depend on it)."""
    return _threads


def set_num_threads(threads):
    """Set the kernel's thread count (an int in ``[1, MAX_THREADS]``).

    Safe while other threads call: a call reads the count once, at its start.
    """
    global _threads
    _threads = _check_threads(threads)


def _path_code(name):
    if name not in CODE_PATHS:
        raise ValueError(f"code path must be one of {CODE_PATHS}, got {name!r}")
    return CODE_PATHS.index(name)


def supported_code_paths():
    """The code paths this build and CPU can run (besides ``auto``)."""
    if not available():
        return ()
    return tuple(name for name in CODE_PATHS[1:]
                 if _lib.attnref_path_supported(_path_code(name)))


def get_code_path():
    """The name of the code path in use (``portable``, ``avx2``, ``avx512`` or ``neon``)."""
    if not available():
        raise RuntimeError(f"the C kernel is unavailable: {_unavailable_reason}")
    return _ffi.string(_lib.attnref_kernel_path()).decode().split(" ")[0]


def set_code_path(name):
    """Use code path ``name`` (one of :data:`CODE_PATHS`) from now on.

    Raises ValueError for an unknown name or a path this CPU (or build)
    cannot run, RuntimeError when the kernel is unavailable. Safe while other
    threads call: a call reads the path once, at its start, and runs on it
    to the end.
    """
    global _path
    code = _path_code(name)
    if not available():
        raise RuntimeError(f"the C kernel is unavailable: {_unavailable_reason}")
    if _lib.attnref_select_path(code) != _lib.ATTNREF_OK:
        raise ValueError(f"code path {name!r} is not supported here; supported: "
                         f"{supported_code_paths()}")
    _path = _path_code(get_code_path())


def _path_from_environment():
    """Select the code path ATTNREF_KERNEL_PATH names: None, or why it cannot be."""
    name = os.environ.get("ATTNREF_KERNEL_PATH", "") or "auto"
    try:
        set_code_path(name)
    except ValueError as error:
        return (f"ATTNREF_KERNEL_PATH={name!r} cannot be used: {error}. Unset it, or set "
                "it to auto or a supported path, to use the kernel.")
    return None


if available():
    _unavailable_reason = _path_from_environment()
    if _unavailable_reason is not None:
        _ffi = _lib = None
        warnings.warn(f"attnref: the C kernel is unavailable: {_unavailable_reason}",
                      RuntimeWarning, stacklevel=2)


def exp(x):
    """``exp`` of a float32 or float64 array by the code path in use: the
    vectorised exponential its softmax uses (libm's on the portable path).

    Exposed so that its accuracy can be measured; ``csrc/simd.h`` states it.
    """
    x = np.asarray(x)
    if x.dtype not in _ENTRIES:
        raise TypeError(f"x must be float32 or float64, got dtype {x.dtype}")
    if not available():
        raise RuntimeError(f"the C kernel is unavailable: {_unavailable_reason}")
    x = np.ascontiguousarray(x)
    out = np.empty_like(x)
    c_type = _ENTRIES[x.dtype][0]
    entry = _lib.attnref_exp_f32 if x.dtype == np.float32 else _lib.attnref_exp_f64
    entry(_ffi.cast(c_type + " *", _ffi.from_buffer(out, require_writable=True)),
          _ffi.cast(c_type + " *", _ffi.from_buffer(x)), x.size)
    return out


def info():
    """What the kernel is: a dict with ``available``, ``reason`` (why not:
    disabled, not built and why the build failed, built from other sources,
    or a bad ATTNREF_KERNEL_PATH), ``path`` (the code path the C library
    runs), ``supported`` (the paths this CPU can run), ``threads``,
    ``module`` (the extension's file) and ``build`` (how the extension was
    built: ``compiler``, ``flags`` (with any ATTNREF_SANITIZE flags) and
    ``sources``, the sha256 of ``csrc/``; None when there is no extension)."""
    return {
        "available": available(),
        "reason": _unavailable_reason,
        "path": _ffi.string(_lib.attnref_kernel_path()).decode() if available() else None,
        "supported": supported_code_paths(),
        "threads": _threads,
        "module": getattr(sys.modules.get(__package__ + "._kernel"), "__file__", None),
        "build": _build_details(),
    }


def _build_details():
    """How the loaded extension was built (see :func:`info`), or None."""
    module = sys.modules.get(f"{__package__}._kernel")
    if module is None or not hasattr(module.lib, "attnref_build_sources"):
        return None
    return {name: module.ffi.string(getattr(module.lib, f"attnref_build_{name}")()).decode().strip()
            for name in ("compiler", "flags", "sources")}


def unsupported_reason(call):
    """None when the kernel can serve ``call`` (an ``SdpaCall``), else why not."""
    if not available():
        return f"the C kernel is unavailable: {_unavailable_reason}"
    if call.dropout_p > 0:
        return "dropout_p > 0 runs on the NumPy reference only"
    if call.return_weights:
        return "return_weights=True: the kernel never forms the (L, S) weights"
    if call.compute_dtype not in _ENTRIES:
        return f"no kernel entry for dtype {call.compute_dtype}"
    return None


def attention(call, *, threads=None, out=None, lse_out=None):
    """Run the C kernel on a validated ``SdpaCall``.

    Parameters
    ----------
    call : attnref._validation.SdpaCall
    threads : int in [1, MAX_THREADS], optional
        Defaults to :func:`get_num_threads`.
    out, lse_out : ndarray, optional
        Where to write the output ``batch + (L, Ev)`` and the lse ``batch + (L,)``:
        C-contiguous, writeable, of the compute dtype, and sharing no memory
        with any input. The lse is computed only when ``lse_out`` is given or
        ``call.return_lse`` is set. A call interrupted by KeyboardInterrupt
        leaves them untouched: a call of more than one C call computes into
        its own buffers and copies into these at the end.

    Returns
    -------
    (output, lse) : lse is None unless requested. A call whose output and
    lse are empty returns at once, without entering C. Without ``out``, the
    output is laid out as the query orders heads and positions
    (:func:`_empty_in_rows_order`).
    """
    reason = unsupported_reason(call)
    if reason is not None:
        raise RuntimeError(reason)
    threads = _threads if threads is None else _check_threads(threads)
    path = _path
    dtype = call.compute_dtype
    c_type, entry = _ENTRIES[dtype]
    arrays = {"q": _rows_adjacent(call.query, dtype), "k": _rows_adjacent(call.key, dtype),
              "v": _rows_adjacent(call.value, dtype)}
    if call.mask is not None:
        arrays["mask"] = (_aligned(call.mask, np.bool_).view(np.uint8)
                          if call.mask.dtype == bool else _aligned(call.mask, dtype))
    inputs = list(arrays.values())
    arrays["out"] = (_output("out", out, call.output_shape, dtype, inputs) if out is not None
                     else _empty_in_rows_order(call.output_shape, dtype, arrays["q"]))
    if lse_out is not None or call.return_lse:
        arrays["lse"] = _output("lse_out", lse_out, call.lse_shape, dtype,
                                inputs + [arrays["out"]])
    output, lse = arrays["out"], arrays.get("lse")
    if output.size == 0 and (lse is None or lse.size == 0):
        return output, lse

    params, loops, spans, strides = _plan(call, arrays, threads, path)
    run = getattr(_lib, entry)
    if not loops and len(spans) == 1:   # the common case, kept lean: small calls are wrapper-bound
        bases = {name: _pointer(array, "uint8_t" if array.dtype == np.uint8 else c_type,
                                writable=name in ("out", "lse"))
                 for name, array in arrays.items()}
        _raise_for(run(params, bases["out"], bases.get("lse", _ffi.NULL), bases["q"],
                       bases["k"], bases["v"], bases.get("mask", _ffi.NULL)))
        return output, lse
    if out is not None or lse_out is not None:
        # an interrupt between pieces must leave the caller's buffers untouched
        arrays["out"] = np.empty_like(output)
        if lse is not None:
            arrays["lse"] = np.empty_like(lse)
    bases = {name: _pointer(array, "uint8_t" if array.dtype == np.uint8 else c_type,
                            writable=name in ("out", "lse"))
             for name, array in arrays.items()}
    for index in itertools.product(*(range(size) for size, _ in loops)):
        at = {name: base + sum(i * step[name] for i, (_, step) in zip(index, loops))
              for name, base in bases.items()}
        # KeyboardInterrupt arrives between two C calls (each releases the GIL)
        for piece, offset in _pieces(params, spans, strides, call.kv_group):
            _raise_for(run(piece, at["out"] + offset["out"],
                           at["lse"] + offset["lse"] if "lse" in at else _ffi.NULL,
                           at["q"] + offset["q"], at["k"] + offset["k"], at["v"] + offset["v"],
                           at["mask"] + offset["mask"] if "mask" in at else _ffi.NULL))
    if arrays["out"] is not output:
        np.copyto(output, arrays["out"])
        if lse is not None:
            np.copyto(lse, arrays["lse"])
    return output, lse


def attention_backward(call, grad_out, out, lse=None, *, threads=None, mask_grad=False):
    """The C kernel's backward pass (``csrc/backward.c``, on the code path
    :func:`set_code_path` chose, as the forward) on a validated
    ``SdpaCall``: ``(dq, dk, dv)`` in the dense shapes ``batch + (L, E)``,
    ``batch[:-1] + (Hkv, S, E)`` and ``batch[:-1] + (Hkv, S, Ev)``, summed
    over GQA groups (the caller reduces broadcast dims).

    ``grad_out`` and ``out`` (the forward's output) are ``batch + (L, Ev)``
    in the compute dtype; ``lse`` (``batch + (L,)``), when given, makes the
    weights ``exp(s - lse)``, else they come from each row's maximum and sum.
    Operands are passed as dense copies of their broadcast shapes; the result
    is bit-identical for any thread count, and whether or not a long call
    is cut into runs of (batch entry, kv head) pairs (:func:`_pair_runs`;
    KeyboardInterrupt stops it between two). With ``mask_grad``, a fourth
    array: the gradient of the scores after softcap, dense
    ``batch + (L, S)`` (the caller reduces it to the mask's shape); else None.
    """
    reason = unsupported_reason(call)
    if reason is not None:
        raise RuntimeError(reason)
    threads = _threads if threads is None else _check_threads(threads)
    dtype = call.compute_dtype
    c_type, entry = _ENTRIES[dtype]
    batch = call.batch_shape or (1,)
    H, G = batch[-1], call.kv_group
    B, Hkv = int(np.prod(batch[:-1])), batch[-1] // G
    kv_batch = batch[:-1] + (Hkv,)

    def dense(array, shape, array_dtype=dtype):
        return np.ascontiguousarray(np.broadcast_to(array, shape), dtype=array_dtype)

    arrays = {"q": dense(call.query, batch + (call.L, call.E)),
              "k": dense(call.key, kv_batch + (call.S, call.E)),
              "v": dense(call.value, kv_batch + (call.S, call.Ev)),
              "grad_out": dense(grad_out, batch + (call.L, call.Ev)),
              "out": dense(out, batch + (call.L, call.Ev))}
    if lse is not None:
        arrays["lse"] = dense(lse, batch + (call.L,))
    if call.mask is not None:
        mask_shape = batch + (call.L, call.S)
        arrays["mask"] = (dense(call.mask, mask_shape, np.bool_).view(np.uint8)
                          if call.mask.dtype == bool else dense(call.mask, mask_shape))
    # C zeroes the gradients before it sums into them
    dq = np.empty(batch + (call.L, call.E), dtype)
    dk = np.empty(kv_batch + (call.S, call.E), dtype)
    dv = np.empty(kv_batch + (call.S, call.Ev), dtype)
    path = _path
    params = _new_params(call, B, H, G, call.mask, threads, path)
    params.q_stride = [H * call.L * call.E, call.L * call.E, call.E]
    params.k_stride = [Hkv * call.S * call.E, call.S * call.E, call.E]
    params.v_stride = [Hkv * call.S * call.Ev, call.S * call.Ev, call.Ev]
    params.out_stride = [H * call.L * call.Ev, call.L * call.Ev, call.Ev]
    params.lse_stride = [H * call.L, call.L, 1]
    params.mask_stride = [H * call.L * call.S, call.L * call.S, call.S, 1]
    dmask = np.empty(batch + (call.L, call.S), dtype) if mask_grad else None
    arrays.update(dq=dq, dk=dk, dv=dv)
    if dmask is not None:
        arrays["dmask"] = dmask
    pointers = {name: _pointer(array, "uint8_t" if array.dtype == np.uint8 else c_type,
                               writable=name in ("dq", "dk", "dv", "dmask"))
                for name, array in arrays.items()}
    run = getattr(_lib, entry.replace("sdpa", "sdpa_backward"))
    # Every operand is dense [pair, ...] with pair = (batch entry, kv head), the
    # G query heads of a kv head adjacent: a run of pairs is a call of its own.
    # KeyboardInterrupt arrives between two C calls (each releases the GIL).
    pairs = B * Hkv
    per_pair = {name: array.size // pairs if pairs else 0 for name, array in arrays.items()}
    pair_work = 3 * G * call.L * (call.S * (call.E + call.Ev) + 1)
    for first, last in _pair_runs(pairs, pair_work, threads, path):
        params.B, params.H = 1, (last - first) * G
        at = {name: pointer + first * per_pair[name] for name, pointer in pointers.items()}
        _raise_for(run(params, at["dq"], at["dk"], at["dv"], at["grad_out"], at["out"],
                       at.get("lse", _ffi.NULL), at["q"], at["k"], at["v"],
                       at.get("mask", _ffi.NULL), at.get("dmask", _ffi.NULL)))
    return dq, dk, dv, dmask


def _pair_runs(pairs, pair_work, threads, path):
    """The ``(first, last)`` runs of a backward call's ``pairs`` (batch
    entry, kv head) that its C calls cover, each of about
    :data:`CHUNK_WORK` multiply-adds per thread (``pair_work`` per pair,
    about three forwards': the backward's five to seven products per score
    against two).

    When the whole call has at least ``attnref_backward_fused_pairs`` pairs,
    so does every run (the last joins the one before if shorter): each C
    call then takes the passes the whole call would, and the bits are one
    call's. A run is at least one pair, so a call of one pair (or, with the
    fused passes, of fewer than twice their pairs) is one C call however
    long it takes.
    """
    work = CHUNK_WORK // 32 if path == _lib.ATTNREF_PATH_PORTABLE else CHUNK_WORK
    step = max(1, work * threads // max(1, pair_work))
    fused = _lib.attnref_backward_fused_pairs(path)
    keep_fused = 0 < fused <= pairs      # the whole call fuses: so must every run
    if keep_fused:
        step = max(step, fused)
    starts = list(range(0, pairs, step))
    if keep_fused and len(starts) > 1 and pairs - starts[-1] < fused:
        starts.pop()
    return list(zip(starts, starts[1:] + [pairs]))


def _new_params(call, B, H, kv_group, mask, threads, path):
    """A new ``attnref_params`` with what the forward and the backward share:
    the sizes (B, H loops folded as the caller says), the mask's kind (None,
    bool or its uint8 view, else a float bias), the masked-row policy, scale,
    softcap, band, thread count and code path. Strides and the score mode are
    the caller's."""
    params = _ffi.new("attnref_params *")
    params.B, params.H, params.L, params.S = B, H, call.L, call.S
    params.E, params.Ev, params.kv_group = call.E, call.Ev, kv_group
    params.mask_kind = (_lib.ATTNREF_MASK_NONE if mask is None else
                        _lib.ATTNREF_MASK_BOOL if mask.dtype in (np.bool_, np.uint8) else
                        _lib.ATTNREF_MASK_BIAS)
    params.masked_rows = (_lib.ATTNREF_ROWS_ZERO if call.masked_rows == "zero"
                          else _lib.ATTNREF_ROWS_NAN)
    params.scale = call.scale
    params.softcap = call.softcap or 0.0
    params.diag_offset = call.diag_offset
    params.band_lower = -_UNBOUNDED if call.band_lower is None else call.band_lower
    params.band_upper = _UNBOUNDED if call.band_upper is None else call.band_upper
    params.threads = threads
    params.path = path
    return params


#: Multiply-adds per thread in one C call of a long call on the tiled paths:
#: about 0.04 s on avx512 and 0.1 s on avx2 (measured on this project's
#: Xeon), so KeyboardInterrupt waits at most that long and a mid-size call
#: (B=1, H=8, L=S=1024, D=64 on 2 threads) is still one C call. The portable
#: path, about 30x slower, takes 1/32 of it per call.
CHUNK_WORK = 1 << 30

_PLANS = {}          # (call's sizes and options, operands' layouts, threads, path) -> plan
_PLANS_LIMIT = 256   # small calls repeat the same few shapes; a plan is ~200 bytes


def _plan(call, arrays, threads, path):
    """The C parameter struct of a call, its batch loops, the spans of rows
    its C calls cover and the operands' strides, cached by everything they
    depend on: the plan for repeated calls of one shape is built once (the
    wrapper's cost matters for small calls)."""
    key = (call.L, call.S, call.E, call.Ev, call.kv_group, call.batch_shape, call.masked_rows,
           call.scores, call.scale, call.softcap, call.diag_offset, call.band_lower, call.band_upper,
           threads, path, CHUNK_WORK, tuple((name, array.dtype.char, array.shape, array.strides)
                                for name, array in arrays.items()))
    plan = _PLANS.get(key)
    if plan is not None:
        return plan
    loops, (B, H), strides = _layout(call, arrays)
    params = _new_params(call, B, H, call.kv_group, arrays.get("mask"), threads, path)
    params.scores = (_lib.ATTNREF_SCORES_FAST if call.scores == "fast"
                     else _lib.ATTNREF_SCORES_EXACT)
    for name in strides:
        setattr(params, f"{name}_stride", strides[name])
    work = CHUNK_WORK // 32 if path == _lib.ATTNREF_PATH_PORTABLE else CHUNK_WORK
    block = _lib.attnref_row_block(call.kv_group, path)
    spans = _spans(B, H, call.L, call.S * (call.E + call.Ev) + 1, max(1, work) * threads,
                   call.kv_group, block, threads)
    if len(_PLANS) >= _PLANS_LIMIT:
        _PLANS.clear()
    _PLANS[key] = plan = params, loops, spans, strides
    return plan


def _spans(B, H, L, row_work, work, kv_group, block, threads):
    """The ``(b0, b1, h0, h1, i0, i1)`` ranges of batch entries, heads and
    positions of a call's C calls, each of about ``work`` multiply-adds
    (``row_work`` per row) at most, but at least ``threads`` tiled units
    when the call has them (a C call shares its units among its threads:
    fewer would leave threads idle, as a long row's unit alone can exceed
    ``work``).

    Splits keep the tiled units whole, so every row sees the same key tiles
    in the same order and the result is bit-identical to one C call: whole
    batch entries first, then whole kv groups of heads (query head ``h``
    reads kv head ``h // kv_group``), then positions at multiples of
    ``block`` (``attnref_row_block``: a tiled unit's positions, 1 on the
    portable path), no piece shorter than that block (so each piece takes
    the code path the whole call takes). Pieces of one level are as even as
    whole items make them: as many as the budget needs, the items spread
    over them (8 heads that fit 7 to a call are 4 + 4, not 7 + 1, which
    would leave a thread idle through the second call). Each piece holds
    whole rounds of units, a multiple of ``threads`` of them, where its
    items allow it, rounded up over the budget: a call's threads take its
    units from a shared counter, so 3 equal units on 2 threads take as long
    as 4 (a 2-thread call of 8 heads, L = S = 8192, D = 128, was cut into
    pieces of 3 units; one of 32 heads, L = 1280, of 5 heads of 5 units).
    """
    rows = max(1, work // row_work)
    if B * H * L <= rows:
        return [(0, B, 0, H, 0, L)]
    groups, units = H // kv_group, -(-L // block)      # per batch entry, per kv group
    if H * L <= rows:
        step = _even_step(B, rows // (H * L), _rounds(groups * units, threads))
        return [(b, min(B, b + step), 0, H, 0, L) for b in range(0, B, step)]
    if kv_group * L <= rows:
        step = _even_step(groups, rows // (kv_group * L), _rounds(units, threads)) * kv_group
        return [(b, b + 1, h, min(H, h + step), 0, L)
                for b in range(B) for h in range(0, H, step)]
    step = _even_step(units, rows // (kv_group * block), _rounds(1, threads)) * block
    starts = list(range(0, L, step))
    if len(starts) > 1 and L - starts[-1] < block:
        # a piece shorter than a block would be a call with few rows per kv
        # group, which C computes on its decoding path: it joins the one before
        starts.pop()
    ends = starts[1:] + [L]
    return [(b, b + 1, h, h + kv_group, i, end)
            for b in range(B) for h in range(0, H, kv_group) for i, end in zip(starts, ends)]


def _rounds(units, threads):
    """The fewest items of ``units`` units each that make whole rounds of
    ``threads`` units (one for every thread): any multiple of it gives each
    thread a unit at least."""
    return threads // math.gcd(units, threads)


def _even_step(count, most, multiple):
    """Items per piece when ``count`` items go at most ``most`` to a piece
    (as many pieces as that takes, all but the last of one size), rounded
    up to a multiple of ``multiple`` (which wins over ``most``)."""
    pieces = -(-count // max(1, most))
    step = -(-count // pieces)
    return min(count, -(-step // multiple) * multiple)


def _pieces(params, spans, strides, kv_group):
    """The C parameters and element offsets of each span (see :func:`_spans`)."""
    for b0, b1, h0, h1, i0, i1 in spans:
        piece = _ffi.new("attnref_params *")
        piece[0] = params[0]
        piece.B, piece.H, piece.L = b1 - b0, h1 - h0, i1 - i0
        piece.diag_offset = params.diag_offset + i0   # row i of the piece is row i0 + i
        offset = {name: b0 * step[0] + (h0 // kv_group if name in ("k", "v") else h0) * step[1]
                  + (0 if name in ("k", "v") else i0 * step[2])
                  for name, step in strides.items()}
        yield piece, offset


def _raise_for(status):
    if status != _lib.ATTNREF_OK:
        raise RuntimeError(f"attnref C kernel failed (code {status}): "
                           f"{_ERRORS.get(status, 'unknown error')}")


def _rows_adjacent(array, dtype):
    """``array`` of exactly ``dtype``, aligned, with the elements of each row
    (the last dim) adjacent, as C reads query, key and value rows. Any other
    strides, broadcast (0) and negative included, are kept; otherwise the
    array is copied without its broadcast dims (:func:`_compact`)."""
    if (array.dtype == dtype and array.flags.aligned
            and (array.shape[-1] <= 1 or array.strides[-1] == array.itemsize)):
        return array
    return _compact(array, dtype, keep_last=True)


def _aligned(array, dtype):
    """``array`` of exactly ``dtype`` and aligned, whatever its strides (as C
    reads the mask); otherwise copied without its broadcast dims."""
    if array.dtype == dtype and array.flags.aligned:
        return array
    return _compact(array, dtype, keep_last=False)


def _compact(array, dtype, keep_last):
    """A C-contiguous, aligned copy of ``array`` in ``dtype`` that keeps its
    broadcast dims (stride 0) as views: the copy costs the unbroadcast size
    (a wrong dtype is converted, never reinterpreted). With ``keep_last`` the
    last dim is copied whole even when broadcast, so its elements are adjacent."""
    base = unbroadcast(array, keep_last)
    return np.broadcast_to(np.require(base, dtype, ["C", "A"]), array.shape)


def _pointer(array, c_type, writable):
    """A C pointer to ``array``'s element 0, for any strides. The array must
    outlive the pointer."""
    if array.flags.c_contiguous:
        return _ffi.from_buffer(c_type + "[]", array, require_writable=writable)
    return _ffi.cast(c_type + " *", array.ctypes.data)


def _empty_in_rows_order(shape, dtype, query):
    """A new output ``batch + (L, Ev)`` laid out as ``query`` orders its heads
    and positions: when ``query``'s head axis steps less than its position
    axis (the heads are views of one projection, ``(..., L, H*E)``), the
    output is ``(..., L, H, Ev)`` in memory, its heads put back in front by
    a view, so merging the heads again (``(..., L, H*Ev)``) needs no copy,
    as torch's CPU attention allocates its output. The C kernel writes any
    strides; the values do not depend on the layout."""
    if (query.ndim < 3 or query.shape[-3] == 1 or query.shape[-2] == 1
            or abs(query.strides[-3]) >= abs(query.strides[-2])):
        return np.empty(shape, dtype)
    return np.empty(shape[:-3] + (shape[-2], shape[-3], shape[-1]), dtype).swapaxes(-3, -2)


def _output(name, array, shape, dtype, inputs):
    """Validate a caller's output buffer, or allocate one (C-contiguous)."""
    if array is None:
        return np.empty(shape, dtype)
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(array).__name__}")
    if array.shape != tuple(shape) or array.dtype != dtype:
        raise ValueError(
            f"{name} must have shape {tuple(shape)} and dtype {dtype}, got "
            f"shape {array.shape} and dtype {array.dtype}")
    if not (array.flags.c_contiguous and array.flags.writeable and array.flags.aligned):
        raise ValueError(f"{name} must be C-contiguous, aligned and writeable")
    for other in inputs:
        if np.shares_memory(array, other):
            raise ValueError(f"{name} shares memory with an input; pass a separate buffer")
    return array


def _batch_strides(array, batch, trailing):
    """Element strides of ``array`` seen as ``batch + its last `trailing` dims``,
    with 0 where a dim has size 1 (broadcast, or never stepped over). The
    validation has checked that the shapes broadcast."""
    missing = len(batch) + trailing - array.ndim
    return [0] * missing + [0 if size == 1 else step // array.itemsize
                            for size, step in zip(array.shape, array.strides)]


def _layout(call, arrays):
    """Strides for C: ``[batch, head, row]`` (+ ``key`` for the mask).

    Heads (the last batch dim; GQA indexes it) stay their own dim. The batch
    dims before them merge into one dim B wherever every operand's strides
    allow; dims that cannot merge come back as ``loops``, a list of
    ``(size, {name: element step})`` that the caller iterates.

    Returns ``(loops, (B, H), {name: strides})``.
    """
    batch = call.batch_shape or (1,)
    kv_batch = batch[:-1] + (batch[-1] // call.kv_group,)
    full = {name: _batch_strides(array, kv_batch if name in ("k", "v") else batch,
                                 1 if name == "lse" else 2)
            for name, array in arrays.items()}
    merged = []
    for dim, size in enumerate(batch[:-1]):
        if size == 1:
            continue
        step = {name: strides[dim] for name, strides in full.items()}
        if merged and all(merged[-1][1][name] == step[name] * size for name in step):
            merged[-1] = (merged[-1][0] * size, step)
        else:
            merged.append((size, step))
    B, b_step = merged.pop() if merged else (1, {name: 0 for name in full})
    heads = len(batch) - 1
    strides = {name: [b_step[name]] + s[heads:heads + (3 if name == "mask" else 2)]
               for name, s in full.items()}
    return merged, (B, batch[-1]), strides
