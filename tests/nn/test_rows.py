"""attnref.nn.rows: blocks cover every row once, on one thread or several,
errors come back, and the modules that use it give the same bits whether
their rows run in blocks, on threads, or all at once."""
import os
import signal
import threading
import time

import numpy as np
import pytest

import attnref
from attnref.nn import GatedFeedForward, RMSNorm, Rotary, rows


@pytest.fixture
def threaded(monkeypatch):
    """Two threads, and every array large enough to be shared among them."""
    monkeypatch.setattr(rows, "PARALLEL_BYTES", 1)
    threads = attnref.kernel.get_num_threads()
    attnref.kernel.set_num_threads(2)
    yield
    attnref.kernel.set_num_threads(threads)


def blocks_of(count, row_bytes):
    seen, lock = [], threading.Lock()

    def work(start, stop):
        with lock:
            seen.append((start, stop, threading.get_ident()))

    rows.for_row_blocks(work, count, row_bytes)
    return seen


@pytest.mark.parametrize("count, row_bytes", [(1, 8), (7, rows.BLOCK_BYTES), (1000, 4096),
                                              (1001, 3 * rows.BLOCK_BYTES // 1000)])
def test_blocks_cover_every_row_once(count, row_bytes, threaded):
    seen = blocks_of(count, row_bytes)
    covered = np.zeros(count, int)
    for start, stop, _ in seen:
        assert 0 <= start < stop <= count
        assert (stop - start) * row_bytes <= max(rows.BLOCK_BYTES, row_bytes)
        covered[start:stop] += 1
    np.testing.assert_array_equal(covered, 1)


def test_large_arrays_run_on_two_threads_and_small_ones_on_the_caller(monkeypatch):
    threads = attnref.kernel.get_num_threads()
    attnref.kernel.set_num_threads(2)
    try:
        large = blocks_of(64, rows.PARALLEL_BYTES // 16)
        small = blocks_of(64, rows.PARALLEL_BYTES // 128)
    finally:
        attnref.kernel.set_num_threads(threads)
    assert len({ident for *_, ident in large}) == 2
    assert {ident for *_, ident in small} == {threading.get_ident()}


def test_no_rows_no_call(threaded):
    assert blocks_of(0, 64) == []


def test_an_error_in_a_block_is_raised_once_both_threads_have_stopped(threaded):
    """8 blocks of 8 rows: the caller runs blocks 0-3 and stops at its error
    in block 0; the other thread runs 4-7 to its error in the last one,
    and has finished when the error reaches the caller."""
    done = []

    def work(start, stop):
        done.append(start)
        if start in (0, 56):
            raise ArithmeticError(f"block at row {start}")

    with pytest.raises(ArithmeticError, match="block at row"):
        rows.for_row_blocks(work, 64, rows.BLOCK_BYTES // 8)
    assert sorted(done) == [0, 32, 40, 48, 56]


def run_modules(seed):
    """Outputs of the modules that use for_row_blocks, on inputs of 300 rows."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 150, 48)).astype(np.float32) * 4
    ffn = GatedFeedForward.init(48, 80, rng=rng)
    norm = RMSNorm(rng.standard_normal(48).astype(np.float32))
    heads = rng.standard_normal((3, 150, 16)).astype(np.float32)
    turned = heads.copy()
    Rotary(16, base=500.0)(turned, 7, out=turned)
    return ffn(x), norm(x), turned


def test_modules_give_the_same_bits_in_blocks_on_threads_and_whole(monkeypatch):
    threads = attnref.kernel.get_num_threads()
    monkeypatch.setattr(rows, "BLOCK_BYTES", 256)
    monkeypatch.setattr(rows, "PARALLEL_BYTES", 1)
    attnref.kernel.set_num_threads(2)
    try:
        in_blocks = run_modules(0)
    finally:
        attnref.kernel.set_num_threads(threads)
    monkeypatch.setattr(rows, "BLOCK_BYTES", 1 << 40)
    monkeypatch.setattr(rows, "PARALLEL_BYTES", 1 << 40)
    for blocked, whole in zip(in_blocks, run_modules(0)):
        np.testing.assert_array_equal(blocked, whole)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_runs_its_blocks_on_threads_of_its_own(threaded):
    names = {thread for _, _, thread in blocks_of(1000, 4096)}
    assert len(names) == 2                                # the parent's pool now exists
    child = os.fork()
    if child == 0:                  # the child: exit 0 once its blocks have all run
        os._exit(0 if sorted(blocks_of(1000, 4096))[-1][1] == 1000 else 1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pid, status = os.waitpid(child, os.WNOHANG)
        if pid:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.01)
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
    pytest.fail("the forked child's blocks never ran (its pool's threads are the parent's)")
