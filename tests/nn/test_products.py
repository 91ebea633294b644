"""attnref.nn.products: the split products equal NumPy's, are cut as the
docstring says, hold the BLAS to one thread only while they run, and fall
back to plain ``x @ w`` without an OpenBLAS to hold."""
import os
import threading

import numpy as np
import pytest

import attnref
from attnref.nn import Linear, products


@pytest.fixture
def two_threads():
    threads = attnref.kernel.get_num_threads()
    attnref.kernel.set_num_threads(2)
    yield
    attnref.kernel.set_num_threads(threads)


needs_openblas = pytest.mark.skipif(products.blas_thread_control() is None,
                                    reason="NumPy's BLAS is not an OpenBLAS this finds")


def assert_product(actual, x, weight):
    """``actual`` is ``x @ weight`` within the error bound of a dot product
    of K terms, ``K eps (|x| @ |weight|)`` (Higham, *Accuracy and Stability
    of Numerical Algorithms*, §3.5), twice over: NumPy's product has the same
    bound. A part written to the wrong rows or columns, or not at all,
    is off by O(1)."""
    expected = np.matmul(x, weight)
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    bound = 2 * x.shape[-1] * np.finfo(x.dtype).eps * np.matmul(np.abs(x), np.abs(weight))
    assert np.all(np.abs(actual - expected) <= bound)


def parts_of(monkeypatch):
    """Record the task lists products.matmul hands to run_on_threads."""
    seen = []
    real = products.run_on_threads

    def recording(tasks):
        seen.append(len(tasks))
        real(tasks)

    monkeypatch.setattr(products, "run_on_threads", recording)
    return seen


@needs_openblas
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, parts", [
    ((300, 64, 256), 2),          # many rows, narrow weight: bands of rows
    ((260, 200, 700), 2),         # the weight larger than x: bands of columns
    ((2, 150, 64, 300), 2),       # leading dims
    ((255, 16, 40), 0),           # fewer than MIN_BAND_ROWS rows a thread: plain
    ((3, 512, 4096), 0),          # a decoding step: plain
])
def test_split_products_equal_numpy(shape, parts, dtype, two_threads, monkeypatch):
    monkeypatch.setattr(products, "PARALLEL_MULTIPLY_ADDS", 1 << 16)
    seen = parts_of(monkeypatch)
    rng = np.random.default_rng(0)
    *lead, K, N = shape
    x = rng.standard_normal((*lead, K)).astype(dtype)
    weight = rng.standard_normal((N, K)).astype(dtype).T     # (K, N), as Linear reads it
    assert_product(products.matmul(x, weight), x, weight)
    assert seen == ([parts] if parts else [])


@needs_openblas
def test_one_thread_never_splits(monkeypatch):
    monkeypatch.setattr(products, "PARALLEL_MULTIPLY_ADDS", 1)
    seen = parts_of(monkeypatch)
    threads = attnref.kernel.get_num_threads()
    attnref.kernel.set_num_threads(1)
    try:
        x = np.ones((256, 8), np.float32)
        assert_product(products.matmul(x, np.ones((8, 4), np.float32)), x,
                       np.ones((8, 4), np.float32))
    finally:
        attnref.kernel.set_num_threads(threads)
    assert seen == []


@needs_openblas
def test_column_cuts_fall_on_cache_lines(two_threads, monkeypatch):
    monkeypatch.setattr(products, "PARALLEL_MULTIPLY_ADDS", 1)
    widths = []
    real = products.run_on_threads

    def recording(tasks):
        widths.extend(task.keywords["out"].shape[1] for task in tasks)
        real(tasks)

    monkeypatch.setattr(products, "run_on_threads", recording)
    x = np.ones((256, 8), np.float32)
    weight = np.ones((8, 1000), np.float32)
    assert_product(products.matmul(x, weight), x, weight)
    assert sum(widths) == 1000 and widths[0] % products.COLUMN_ALIGN == 0


@needs_openblas
def test_the_blas_is_held_to_one_thread_only_while_products_run(two_threads, monkeypatch):
    get, set_ = products.blas_thread_control()
    found = get()
    set_(2)
    during = []
    real = products.run_on_threads

    def recording(tasks):
        during.append(get())
        real(tasks)

    monkeypatch.setattr(products, "run_on_threads", recording)
    monkeypatch.setattr(products, "PARALLEL_MULTIPLY_ADDS", 1)
    try:
        x = np.ones((256, 16), np.float32)
        products.matmul(x, np.ones((16, 8), np.float32))
        assert during == [1] and get() == 2
    finally:
        set_(found)


@needs_openblas
def test_a_failing_part_restores_the_blas_and_raises(two_threads, monkeypatch):
    get, set_ = products.blas_thread_control()
    found = get()
    set_(2)

    def failing(tasks):
        raise MemoryError("a part failed")

    monkeypatch.setattr(products, "run_on_threads", failing)
    monkeypatch.setattr(products, "PARALLEL_MULTIPLY_ADDS", 1)
    try:
        with pytest.raises(MemoryError, match="a part failed"):
            products.matmul(np.ones((256, 16), np.float32), np.ones((16, 8), np.float32))
        assert get() == 2
    finally:
        set_(found)


@needs_openblas
def test_overlapping_products_on_several_threads_restore_the_count_once(two_threads,
                                                                         monkeypatch):
    """The first product in flight saves the count, the last one puts it
    back, whatever order they end in."""
    get, set_ = products.blas_thread_control()
    found = get()
    set_(2)
    monkeypatch.setattr(products, "PARALLEL_MULTIPLY_ADDS", 1)
    first_inside, release = threading.Event(), threading.Event()
    real = products.run_on_threads
    counts = []

    def held_open(tasks):
        if threading.current_thread() is not threading.main_thread():
            first_inside.set()
            release.wait(30)
        real(tasks)
        counts.append(get())

    monkeypatch.setattr(products, "run_on_threads", held_open)
    x, weight = np.ones((256, 16), np.float32), np.ones((16, 8), np.float32)
    try:
        worker = threading.Thread(target=products.matmul, args=(x, weight))
        worker.start()
        assert first_inside.wait(30)
        products.matmul(x, weight)          # starts and ends while the worker's is in flight
        release.set()
        worker.join(30)
        assert counts == [1, 1] and get() == 2
    finally:
        release.set()
        set_(found)


def test_without_an_openblas_products_are_plain(two_threads, monkeypatch):
    monkeypatch.setattr(products, "_openblas_files", lambda: [])
    monkeypatch.setattr(products, "_control", None)
    monkeypatch.setattr(products, "PARALLEL_MULTIPLY_ADDS", 1)
    seen = parts_of(monkeypatch)
    assert products.blas_thread_control() is None
    x = np.arange(256 * 8, dtype=np.float64).reshape(256, 8)
    weight = np.arange(8 * 3, dtype=np.float64).reshape(8, 3)
    assert np.array_equal(products.matmul(x, weight), x @ weight)
    assert seen == []


def test_a_library_without_the_functions_is_passed_over(tmp_path, monkeypatch):
    """A file named like OpenBLAS that is not a library, or lacks the
    thread functions, is not taken for one."""
    fake = tmp_path / "libopenblas_fake.so"
    fake.write_bytes(b"not a shared library")
    monkeypatch.setattr(products, "_openblas_files", lambda: [str(fake)])
    monkeypatch.setattr(products, "_control", None)
    assert products.blas_thread_control() is None


@needs_openblas
def test_linear_runs_its_product_through_matmul(two_threads, monkeypatch):
    monkeypatch.setattr(products, "PARALLEL_MULTIPLY_ADDS", 1)
    seen = parts_of(monkeypatch)
    rng = np.random.default_rng(1)
    linear = Linear(rng.standard_normal((48, 16)).astype(np.float32))
    x = rng.standard_normal((256, 16)).astype(np.float32)
    actual = linear(x)
    assert seen == [2]
    assert_product(actual, x, linear.weight.T)


@needs_openblas
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_forked_during_a_product_gets_the_parents_count_back(monkeypatch):
    """The state a fork in the middle of a product leaves: one holder, the
    BLAS on one thread. The child starts with the count found before."""
    get, set_ = products.blas_thread_control()
    found = get()
    set_(2)
    monkeypatch.setattr(products, "_holders", 1)
    monkeypatch.setattr(products, "_found_threads", 2)
    set_(1)
    try:
        pid = os.fork()
        if pid == 0:                                  # the child: report, and leave at once
            os._exit(0 if get() == 2 and products._holders == 0 else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert get() == 1                             # the parent's product is still in flight
    finally:
        set_(found)
