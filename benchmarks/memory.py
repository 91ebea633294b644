"""Peak memory of one attention call beyond its inputs and output.

Two methods, each chosen because it sees every allocation of what it measures:

- the C kernel and torch allocate outside Python's allocator (``malloc`` in C,
  torch's CPU allocator), so :func:`in_subprocess` runs the call in a fresh
  Python process: it warms the implementation up on a tiny case (code pages,
  thread pools), builds the inputs, resets the process's peak resident set
  (``VmHWM``, by writing ``5`` to ``/proc/self/clear_refs``), makes the call
  and reads ``VmHWM`` again. Peak minus the resident size before the call
  minus the output's bytes is what the call needed beyond its inputs and
  output. A fresh process, with glibc's mmap threshold fixed
  (``MALLOC_MMAP_THRESHOLD_``, which turns off its dynamic raise), keeps
  pages that earlier allocations freed, and the allocator kept, from being
  reused unseen.
- the NumPy reference allocates every array through NumPy, which reports to
  :mod:`tracemalloc`, so :func:`numpy_peak` traces one call in this process.

The worker side runs as ``python memory.py JSON`` with the arguments of
:func:`in_subprocess` as a JSON object and prints its result as JSON.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np

WARM_UP_LENGTH = 64
MMAP_THRESHOLD = 128 * 1024  # glibc's default, fixed: larger blocks are mmapped and unmapped on free
METHOD_RSS = ("fresh subprocess per measurement: VmHWM (reset through /proc/self/clear_refs) "
              "minus VmRSS before the call, minus the output")
METHOD_TRACEMALLOC = "tracemalloc peak of the call (NumPy reports its arrays to it), minus the output"


def numpy_peak(call):
    """Bytes the NumPy call ``call()`` allocated at its peak beyond its output."""
    tracemalloc.start()
    try:
        output = call()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak - np.asarray(output).nbytes


def in_subprocess(implementation, dtype, shape, causal, gqa, threads):
    """Peak bytes beyond inputs and output of one call, measured in a fresh process.

    Parameters
    ----------
    implementation : ``"c"`` or ``"torch"``
    dtype : ``"float32"`` or ``"float64"``
    shape : ``[B, Hq, Hkv, L, S, D]``
    causal, gqa : bool
        ``is_causal`` and ``enable_gqa`` of the call.
    threads : int

    Returns
    -------
    int, or None when the peak resident set cannot be reset or read (not
    Linux), with the reason on stderr.
    """
    import attnref

    request = dict(implementation=implementation, dtype=dtype, shape=list(shape),
                   causal=causal, gqa=gqa, threads=threads)
    environment = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(MMAP_THRESHOLD))
    package_root = str(Path(attnref.__file__).resolve().parent.parent)  # the same attnref
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [package_root, environment.get("PYTHONPATH")]))
    finished = subprocess.run([sys.executable, __file__, json.dumps(request)],
                              capture_output=True, text=True, env=environment)
    if finished.returncode != 0:
        raise RuntimeError(f"memory worker failed for {request}:\n{finished.stderr}")
    answer = json.loads(finished.stdout)
    if answer["bytes"] is None:
        print(f"memory: not measured: {answer['reason']}", file=sys.stderr)
    return answer["bytes"]


def status_kib(field):
    """A ``/proc/self/status`` field in KiB (``VmRSS``, ``VmHWM``: Linux only)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def _bind(implementation, query, key, value, causal, gqa, threads):
    if implementation == "c":
        import attnref

        attnref.kernel.set_num_threads(threads)
        return lambda: attnref.scaled_dot_product_attention(
            query, key, value, is_causal=causal, enable_gqa=gqa, backend="c")
    import torch

    torch.set_num_threads(threads)
    tensors = [torch.from_numpy(array) for array in (query, key, value)]  # shares memory
    return lambda: torch.nn.functional.scaled_dot_product_attention(
        *tensors, is_causal=causal, enable_gqa=gqa).numpy()


def _inputs(dtype, B, Hq, Hkv, L, S, D):
    rng = np.random.default_rng(0)
    return (rng.standard_normal((B, Hq, L, D), dtype=dtype),
            rng.standard_normal((B, Hkv, S, D), dtype=dtype),
            rng.standard_normal((B, Hkv, S, D), dtype=dtype))


def _worker(request):
    B, Hq, Hkv, L, S, D = request["shape"]
    options = (request["causal"], request["gqa"], request["threads"])
    name, dtype = request["implementation"], request["dtype"]
    warm = _bind(name, *_inputs(dtype, B, Hq, Hkv, WARM_UP_LENGTH, WARM_UP_LENGTH, D), *options)
    warm()
    call = _bind(name, *_inputs(dtype, B, Hq, Hkv, L, S, D), *options)
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # VmHWM := VmRSS
        before = status_kib("VmRSS")
    except OSError as error:
        return {"bytes": None, "reason": f"cannot reset the peak resident set: {error}"}
    output = call()
    peak = status_kib("VmHWM")
    return {"bytes": (peak - before) * 1024 - output.nbytes, "reason": None}


if __name__ == "__main__":
    print(json.dumps(_worker(json.loads(sys.argv[1]))))
