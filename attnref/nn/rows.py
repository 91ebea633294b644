"""Element-wise work cut into blocks of rows: each block sized for the core's
cache, and large arrays spread over several threads.

A NumPy ufunc runs on one core over the whole array: a chain of passes
(SiLU's negate, exp, add and divide, the rotary embedding's products)
streams a ``(T, F)`` array through memory once per pass. Run on blocks of
about :data:`BLOCK_BYTES` per row range, the chain keeps each block in the
L2 cache from one pass to the next. NumPy releases the GIL inside each
ufunc loop, so the blocks of a large array also run on several threads at
once -- as torch runs its element-wise kernels on its intra-op pool -- here
as many as the C kernel uses (:func:`attnref.kernel.get_num_threads`).
The result does not depend on the blocking: every row is computed by the
same operations whichever block holds it.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from .. import kernel

__all__ = ["for_row_blocks", "run_on_threads", "BLOCK_BYTES", "PARALLEL_BYTES"]

#: Bytes of one operand's rows per block (a few operands fit in a 1-2 MiB L2).
BLOCK_BYTES = 1 << 18
#: Arrays of at least this many bytes per operand are shared among threads;
#: below it a thread's hand-off costs more than its half of the work saves.
PARALLEL_BYTES = 1 << 20

_pool_lock = threading.Lock()
_pools = {}            # {workers: ThreadPoolExecutor}, each made on first use


def _workers(count):
    """The shared pool of ``count`` threads. A pool is kept for each count
    asked for (they are few, and idle threads cost nothing), so a caller
    never submits to a pool that another caller, asking for a new count,
    has shut down."""
    with _pool_lock:
        if count not in _pools:
            _pools[count] = ThreadPoolExecutor(count, thread_name_prefix="attnref-rows")
        return _pools[count]


def _forget_pool_in_child():
    """A forked child has none of its parent's threads (a task given to the
    parent's pools would never run there) and may hold the lock as it was:
    it starts over."""
    global _pools, _pool_lock
    _pool_lock = threading.Lock()
    _pools = {}


if hasattr(os, "register_at_fork"):     # POSIX
    os.register_at_fork(after_in_child=_forget_pool_in_child)


def for_row_blocks(work, rows, row_bytes):
    """Call ``work(start, stop)`` once for each block of rows ``start:stop``;
    the blocks cover ``range(rows)`` without overlap.

    ``row_bytes`` is the size of one row of the largest operand; blocks hold
    about :data:`BLOCK_BYTES` of it (at least one row). When ``rows *
    row_bytes >= PARALLEL_BYTES`` and the kernel's thread count is above 1,
    consecutive blocks are split into one run per thread, the calling thread
    taking the first: ``work`` must then write disjoint rows and only call
    NumPy (no nested :func:`for_row_blocks`). Returns when every block is
    done. A block that raises ends its thread's run; the exception is
    raised once every thread has stopped, so no block still writes.
    """
    if rows <= 0:
        return
    block = max(1, BLOCK_BYTES // max(1, row_bytes))
    starts = range(0, rows, block)
    threads = min(kernel.get_num_threads(), len(starts))
    if threads == 1 or rows * row_bytes < PARALLEL_BYTES:
        _run(work, starts, block, rows)
        return
    runs = [starts[len(starts) * index // threads:len(starts) * (index + 1) // threads]
            for index in range(threads)]
    run_on_threads([partial(_run, work, run, block, rows) for run in runs])


def run_on_threads(tasks):
    """Call every one of ``tasks`` (callables of no argument) at once: the
    first on the calling thread, the others on a shared pool of
    ``len(tasks) - 1`` threads. Returns when all are done; a task that
    raises does not stop the others, and its exception is raised once every
    task has stopped (so none still writes). The tasks must only call code
    that releases the GIL (NumPy) to run in parallel, and must not call
    :func:`run_on_threads` themselves."""
    if len(tasks) == 1:
        tasks[0]()
        return
    futures = [_workers(len(tasks) - 1).submit(task) for task in tasks[1:]]
    try:
        tasks[0]()
    finally:
        errors = [future.exception() for future in futures]   # waits for each
    for error in errors:
        if error is not None:
            raise error


def _run(work, starts, block, rows):
    for start in starts:
        work(start, min(start + block, rows))
