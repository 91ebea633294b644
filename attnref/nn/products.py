"""The layers' matrix products, on attnref's threads rather than the BLAS's own.

NumPy hands ``x @ w`` to its BLAS, which runs a large product on a thread
pool of its own. OpenBLAS's workers then keep spinning on their cores for
a while (about 0.1 s by default) before they sleep, waiting for the next
product. A transformer layer alternates products with the attention kernel
and element-wise passes, which run on attnref's threads
(:func:`attnref.kernel.get_num_threads`, :mod:`attnref.nn.rows`): with as
many threads as cores, those then share their cores with spinning BLAS
workers. Measured on 2 cores (Intel Xeon, SmolLM2-135M's attention on a
1,024-token prompt, 2 threads): 5.6 ms alone, 11.4 ms right after a NumPy
product.

So :func:`matmul` does what torch does with its one intra-op pool: while it
runs, the BLAS is held to one thread (its workers stay asleep), and a large
product of many rows is cut into one part per attnref thread, each part
one BLAS call on :func:`attnref.nn.rows.run_on_threads`. Each output
element is still one BLAS dot product over the whole inner dimension.

The BLAS's thread count is set through OpenBLAS's own
``openblas_set_num_threads`` (found in the library NumPy loaded), which is
process-wide: a product another thread runs meanwhile also gets one
thread; the count found is put back when the last of attnref's products in
flight ends. With a BLAS other than OpenBLAS (MKL, Apple's Accelerate) the
products are plain ``x @ w``, as before.
"""
from __future__ import annotations

import ctypes
import math
import os
import threading
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np

from .. import kernel
from .rows import run_on_threads

__all__ = ["matmul", "blas_thread_control", "PARALLEL_MULTIPLY_ADDS", "MIN_BAND_ROWS"]

#: Products of at least this many multiply-adds are split among threads
#: (about 50 us on one core; a hand-off to a Python thread measured 36-120 us).
PARALLEL_MULTIPLY_ADDS = 1 << 22
#: ... when they have at least this many rows per thread. Below it
#: OpenBLAS's own threads cost less than a hand-off to a Python thread per
#: product (36-120 us): SmolLM2's 128-token prompt was 2-5% slower split on
#: 2 threads, its 1,024-token prompt 1-10% faster (benchmarks/RESULTS.md).
#: Every product of a forward pass has the same rows, so a pass never mixes
#: the two (which measured slower than either).
MIN_BAND_ROWS = 128
#: Columns are cut at multiples of this (a cache line of float32).
COLUMN_ALIGN = 16

# (get, set) of the OpenBLAS thread count, in the names each build exports
_THREAD_FUNCTIONS = (
    ("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
    ("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"),
    ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
    ("openblas_get_num_threads", "openblas_set_num_threads"),
)

_hold_lock = threading.Lock()
_holders = 0            # attnref products in flight
_found_threads = 1      # the BLAS's thread count when the first of them began
_control = None         # (get, set), or () when there is none; found on first use


def _openblas_files():
    """Paths of the OpenBLAS libraries NumPy may use, those shipped inside
    NumPy's wheel first (another package may have loaded an OpenBLAS of its
    own): on Linux every one loaded in this process (the memory map), else
    those in NumPy's library folders."""
    package = Path(np.__file__).resolve().parent
    folders = (package.parent / "numpy.libs", package / ".dylibs")
    maps = Path("/proc/self/maps")
    if maps.exists():
        paths = []
        for line in maps.read_text().splitlines():
            path = line.split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
            if "openblas" in os.path.basename(path).lower() and path not in paths:
                paths.append(path)
    else:
        paths = [str(path) for folder in folders if folder.is_dir()
                 for path in sorted(folder.iterdir()) if "openblas" in path.name.lower()]
    return sorted(paths, key=lambda path: not any(path.startswith(str(folder))
                                                  for folder in folders))


def blas_thread_control():
    """``(get, set)``: functions reading and setting the thread count of the
    OpenBLAS that NumPy uses, or None when NumPy's BLAS is not an OpenBLAS
    this can find."""
    global _control
    if _control is None:
        _control = ()
        for path in _openblas_files():
            try:
                library = ctypes.CDLL(path)
            except OSError:
                continue
            for get_name, set_name in _THREAD_FUNCTIONS:
                get, set_ = getattr(library, get_name, None), getattr(library, set_name, None)
                if get is not None and set_ is not None:
                    get.restype, get.argtypes = ctypes.c_int, []
                    set_.restype, set_.argtypes = None, [ctypes.c_int]
                    if get() >= 1:
                        _control = (get, set_)
                        break
            if _control:
                break
    return _control or None


@contextmanager
def _blas_on_one_thread():
    """Holds the BLAS (found by :func:`blas_thread_control`) to one thread
    from the first of attnref's products in flight to the end of the last
    one."""
    global _holders, _found_threads
    get, set_ = _control
    with _hold_lock:
        if _holders == 0:
            _found_threads = get()
            if _found_threads != 1:
                set_(1)
        _holders += 1
    try:
        yield
    finally:
        with _hold_lock:
            _holders -= 1
            if _holders == 0 and _found_threads != 1:
                set_(_found_threads)


def _forget_holders_in_child():
    """A forked child has none of its parent's threads, so none of their
    products in flight: it starts with no holders, and the BLAS thread count
    the parent had before them (a fork in the middle of a product would
    otherwise leave the child's BLAS on one thread for good)."""
    global _hold_lock, _holders
    if _holders and _control:
        _control[1](_found_threads)
    _hold_lock = threading.Lock()
    _holders = 0


if hasattr(os, "register_at_fork"):     # POSIX
    os.register_at_fork(after_in_child=_forget_holders_in_child)


def _bounds(total, parts, align):
    """``parts + 1`` increasing cut points of ``range(total)``, inner ones
    at multiples of ``align`` when ``total`` allows."""
    step = max(align, (total // parts + align - 1) // align * align)
    return [0] + [min(total, step * index) for index in range(1, parts)] + [total]


def matmul(x, weight):
    """``x @ weight``; a large product of many rows on attnref's threads.

    Parameters
    ----------
    x : ndarray, shape (..., K)
    weight : ndarray, shape (K, N)
        Any strides (a transposed ``(N, K)`` weight is read as it is).

    Returns
    -------
    ndarray, shape (..., N)
        ``np.matmul(x, weight)``, each element one BLAS dot product over K.
        A product of at least :data:`PARALLEL_MULTIPLY_ADDS` multiply-adds
        and :data:`MIN_BAND_ROWS` rows per thread is cut into one part per
        thread of :func:`attnref.kernel.get_num_threads`, with the BLAS held
        to one thread: bands of columns when the weight is the larger
        operand (each part then packs only its columns of the weight), else
        bands of rows. Any other product -- or every product, when NumPy's
        BLAS is not an OpenBLAS -- is plain ``x @ weight`` on the BLAS's own
        threads: a decoding step's products of one row are reads of their
        weight, which the BLAS's threads share at a lower cost than a
        hand-off to Python threads.
    """
    K, N = weight.shape
    rows = math.prod(x.shape[:-1])
    threads = kernel.get_num_threads()
    if (threads == 1 or rows < threads * MIN_BAND_ROWS or rows * K * N < PARALLEL_MULTIPLY_ADDS
            or blas_thread_control() is None):
        return np.matmul(x, weight)
    out = np.empty(x.shape[:-1] + (N,), np.result_type(x, weight))
    x_rows, out_rows = x.reshape(rows, K), out.reshape(rows, N)
    by_columns = N > rows
    cuts = _bounds(N, threads, COLUMN_ALIGN) if by_columns else _bounds(rows, threads, 1)
    tasks = []
    for start, stop in zip(cuts, cuts[1:]):
        band = slice(start, stop)
        if stop > start:
            tasks.append(partial(np.matmul, x_rows, weight[:, band], out=out_rows[:, band])
                         if by_columns else
                         partial(np.matmul, x_rows[band], weight, out=out_rows[band]))
    with _blas_on_one_thread():
        run_on_threads(tasks)
    return out
