"""The C kernel's code paths run through tests/c/kernel_driver.c, outside
Python: the NEON path (aarch64) under qemu-aarch64 on this x86-64 machine,
and natively whatever paths this CPU has.

Each path must agree with attnref's NumPy reference under the equivalence
rule the Python tests use (:mod:`attnref.testing.tolerance`), as the
portable path does on the same inputs, and give the same bits for every
thread count; its backward likewise, under the gradient rule
(:mod:`attnref.testing.backward`), with exactly zero gradients from fully
masked rows and for keys no row weighs. The emulated tests skip unless ``aarch64-linux-gnu-gcc`` (with
its static C library, Debian's libc6-dev-arm64-cross) and ``qemu-aarch64``
are installed (Debian: gcc-aarch64-linux-gnu, qemu-user); CI installs them.
"""
import os
import platform
import shutil
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

from attnref import kernel, scaled_dot_product_attention as sdpa
from attnref import scaled_dot_product_attention_backward as sdpa_backward
from attnref._validation import sdpa_call
from attnref.testing.backward import gradient_errors, gradient_magnitudes
from attnref.testing.strategies import AttentionCase
from attnref.testing.tolerance import reference_dtype, reference_errors

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
DRIVER = ROOT / "tests" / "c" / "kernel_driver.c"
#: as csrc/build_ffi.py compiles the extension: no FP contraction, which the
#: exact products and sums of the score dot products rely on
FLAGS = ["-O3", "-std=c99", "-ffp-contract=off", "-Wall", "-Wextra", "-Werror"]
#: ATTNREF_BAND_UNBOUNDED of csrc/attnref.h: "no bound" on a side of the band
BAND_UNBOUNDED = 1 << 62
#: cases of random shape after the fixed ones (under qemu, float64: about
#: 0.5 s of CPU each on this project's Xeon)
RANDOM_CASES = 12
#: thread counts every path runs with; the "threads" case is large enough to use them all
THREADS = (1, 2, 3)
#: the cases of cases() the backward runs as well: every option and edge,
#: not the forward's large "threads" case (the backward's units are blocks
#: of keys and of rows, more than 3 in "ragged" and "fused" already), and
#: 4 random ones (under qemu the backward's cases cost about 1 s of CPU
#: each per path)
BACKWARD_CASES = ("ragged", "one_of_each", "wide_rows", "causal_bottom_right",
                  "causal_query_longer", "window", "gqa_causal", "gqa_group_beyond_a_unit",
                  "softcap", "large_scores", "small_scores", "no_keys", "bool_mask",
                  "masked_rows_nan", "bias_mask", "nan_and_inf_inputs", "random_0", "random_1",
                  "random_2", "random_3")
#: the thread counts of the backward: 1 and more than 1 (each run is a
#: forward and two backward calls)
BACKWARD_THREADS = (1, 3)
#: the vector exp's stated bound (csrc/tiled_impl.h), as tests/test_kernel_paths.py checks it
MAX_ULP = 2.0
#: kernel_driver and qemu together: a hung emulator fails the test instead of CI
TIMEOUT = 300


def _case(name, B=1, H=2, Hkv=None, L=16, S=16, E=16, Ev=None, magnitude=1.0, **options):
    """Case ``name``: normal query, key (both times ``magnitude``) and value
    of 4-D shapes, drawn from a seed made of the name."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    Hkv = H if Hkv is None else Hkv
    query = rng.standard_normal((B, H, L, E)) * magnitude
    key = rng.standard_normal((B, Hkv, S, E)) * magnitude
    value = rng.standard_normal((B, Hkv, S, E if Ev is None else Ev))
    if Hkv != H:
        options["enable_gqa"] = True
    return name, AttentionCase(query, key, value, options)


def random_case(index, rng):
    """A case of random shape (L, S, E, Ev in [1, 80), up to 2 batch
    entries and 2 kv heads, up to 3 query heads per kv head) and random
    options: a bool or bias mask, causal (either alignment) or a window,
    softcap, NaN rows."""
    L, S, E, Ev = (int(n) for n in rng.integers(1, 80, 4))
    B, Hkv, group = (int(n) for n in rng.integers(1, (3, 3, 4)))
    options = {}
    if rng.random() < 0.4:
        options["is_causal"] = True
    elif rng.random() < 0.4:
        options["window"] = tuple(int(n) for n in rng.integers(0, 40, 2))
    if options and rng.random() < 0.5:
        options["causal_alignment"] = "bottom_right"
    if rng.random() < 0.3:
        options["softcap"] = float(rng.choice([1.0, 5.0, 30.0]))
    if rng.random() < 0.3:
        options["masked_rows"] = "nan"
    name, case = _case(f"random_{index}", B=B, H=Hkv * group, Hkv=Hkv, L=L, S=S, E=E, Ev=Ev,
                       magnitude=float(rng.choice([0.1, 1.0, 2.0])), **options)
    kind = rng.choice(["none", "bool", "bias"])
    if kind == "bool":
        case.options["attn_mask"] = rng.random((L, S)) < 0.7
    elif kind == "bias":
        case.options["attn_mask"] = np.where(rng.random((B, 1, L, S)) < 0.1, -np.inf,
                                             rng.standard_normal((B, 1, L, S)))
    return name, case


def cases():
    """``{name: AttentionCase}`` in float64, the cases every path runs: ragged E
    and Ev around the vector widths, bool and bias masks, causal (both alignments)
    and window bands, GQA (a group larger than a tile unit too), softcap, masked
    rows (zero and NaN), NaN and inf inputs, one case large enough for three
    threads, then random shapes with random options."""
    rng = np.random.default_rng(15)
    made = [
        _case("ragged", B=2, H=3, L=37, S=53, E=59, Ev=17),
        _case("one_of_each", H=1, L=1, S=1, E=1, Ev=1),
        _case("wide_rows", L=9, S=130, E=100, Ev=67),
        _case("causal_top_left", L=70, S=70, E=32, is_causal=True),
        _case("causal_bottom_right", L=30, S=130, E=24, Ev=40, is_causal=True,
              causal_alignment="bottom_right"),
        _case("causal_query_longer", L=90, S=20, E=8, is_causal=True),
        _case("window", L=100, S=100, E=16, Ev=5, window=(17, 5)),
        _case("gqa_causal", H=8, Hkv=2, L=40, S=65, E=64, Ev=32, is_causal=True),
        _case("gqa_group_beyond_a_unit", H=80, Hkv=1, L=3, S=20, E=8),
        _case("softcap", L=33, S=47, E=48, softcap=5.0, scale=0.5, magnitude=2.0),
        _case("large_scores", L=20, S=40, E=64, scale=1.0, magnitude=0.7),
        _case("small_scores", L=20, S=40, E=3, Ev=9, magnitude=0.1),
        _case("no_keys", L=5, S=0, E=8, Ev=3),
        _case("threads", H=4, L=96, S=96, E=64),
    ]
    _, bool_mask = _case("bool_mask", B=2, L=20, S=70, E=64, Ev=31)
    allowed = rng.random((2, 2, 20, 70)) < 0.6
    allowed[:, :, ::4] = False                       # rows that see no key
    bool_mask.options["attn_mask"] = allowed
    made.append(("bool_mask", bool_mask))
    _, nan_rows = _case("masked_rows_nan", L=12, S=33, E=20, masked_rows="nan")
    nan_rows.options["attn_mask"] = allowed[0, 0, :12, :33]
    made.append(("masked_rows_nan", nan_rows))
    _, bias = _case("bias_mask", L=25, S=66, E=33, Ev=40, is_causal=True)
    bias_values = rng.standard_normal((25, 66)) * 3
    bias_values[rng.random((25, 66)) < 0.2] = -np.inf
    bias_values[::6] = -np.inf                       # rows whose scores are all -inf
    bias.options["attn_mask"] = bias_values
    made.append(("bias_mask", bias))
    _, special = _case("nan_and_inf_inputs", L=24, S=70, E=20, Ev=12)
    hidden = np.ones((24, 70), bool)
    hidden[:, 60:] = False                           # keys no query sees
    special.key[..., 65, :] = np.nan
    special.value[..., 66, :] = np.inf
    special.value[..., 3, 5] = np.inf                # a visible inf value
    special.query[..., 7, :] = np.nan                # a row of NaN scores
    special.options["attn_mask"] = hidden
    made.append(("nan_and_inf_inputs", special))
    return dict(made + [random_case(index, rng) for index in range(RANDOM_CASES)])


def _params(low):
    """The call as kernel_driver's case record: the int64 fields and the
    double fields (see tests/c/kernel_driver.c), and the mask (B, H, L, S)."""
    call = sdpa_call(low.query, low.key, low.value, return_lse=True, **low.options)
    B, H, L, _ = low.query.shape
    mask, kind = None, 0
    if call.mask is not None:
        mask = np.ascontiguousarray(np.broadcast_to(call.mask, (B, H, L, call.S)))
        kind = 1 if mask.dtype == bool else 2
        mask = mask.view(np.uint8) if kind == 1 else mask
    fields = [int(low.query.dtype == np.float64), B, H, L, call.S, call.E, call.Ev,
              call.kv_group, kind, int(call.masked_rows == "nan"), call.diag_offset,
              -BAND_UNBOUNDED if call.band_lower is None else call.band_lower,
              BAND_UNBOUNDED if call.band_upper is None else call.band_upper]
    return np.array(fields, np.int64), np.array([call.scale, call.softcap or 0.0]), mask


def write_cases(path, lows, grad_outs=None):
    """The case file of ``lows`` ({name: case}) for kernel_driver: its sdpa
    file, or with ``grad_outs`` ({name: (B, H, L, Ev) array}) its backward
    file."""
    with open(path, "wb") as file:
        file.write(b"ATTNCASE" if grad_outs is None else b"ATTNGRAD")
        file.write(np.int64(len(lows)).tobytes())
        for name, low in lows.items():
            fields, reals, mask = _params(low)
            file.write(fields.tobytes())
            file.write(reals.tobytes())
            arrays = (low.query, low.key, low.value) + (() if mask is None else (mask,))
            for array in arrays + (() if grad_outs is None else (grad_outs[name],)):
                file.write(np.ascontiguousarray(array).tobytes())


def read_runs(path, lows, paths, threads, shapes):
    """{(case name, path): [arrays for each of ``threads``]} for ``lows``
    ({name: case}), ``shapes(case)`` being the shapes of the arrays one run
    writes, in order; checks that the file holds exactly that."""
    data = Path(path).read_bytes()
    results, at = {}, 0
    for case_name, low in lows.items():
        for name in paths:
            runs = []
            for _ in threads:
                run = []
                for shape in shapes(low):
                    count = int(np.prod(shape))
                    run.append(np.frombuffer(data, low.query.dtype, count, at).reshape(shape))
                    at += run[-1].nbytes
                runs.append(run)
            results[case_name, name] = runs
    assert at == len(data), (at, len(data))
    return results


def _forward_shapes(low):
    """What kernel_driver sdpa writes per run: out (B, H, L, Ev), lse (B, H, L)."""
    B, H, L, _ = low.query.shape
    return [(B, H, L, low.value.shape[-1]), (B, H, L)]


def _environment():
    """The environment without LD_PRELOAD: a sanitizer run preloads its
    runtime, which neither the cross compiler nor qemu can take."""
    return {name: value for name, value in os.environ.items() if name != "LD_PRELOAD"}


def _run(command):
    run = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT,
                         env=_environment())
    assert run.returncode == 0, (command, run.stdout, run.stderr)
    return run.stdout


def build_driver(compiler, output, *extra):
    sources = sorted(str(path) for path in CSRC.glob("*.c"))
    _run([compiler, *FLAGS, *extra, "-I", str(CSRC), str(DRIVER), *sources,
          "-lm", "-lpthread", "-o", str(output)])
    return output


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    """The command prefix that runs kernel_driver for aarch64 under qemu."""
    missing = [tool for tool in ("aarch64-linux-gnu-gcc", "qemu-aarch64")
               if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (Debian: gcc-aarch64-linux-gnu, "
                    "libc6-dev-arm64-cross, qemu-user): the NEON path cannot be emulated")
    # static: qemu-aarch64 then needs no aarch64 dynamic loader or libraries
    driver = build_driver("aarch64-linux-gnu-gcc",
                          tmp_path_factory.mktemp("neon") / "kernel_driver", "-static")
    return ["qemu-aarch64", str(driver)]


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    """The command that runs kernel_driver built for this machine."""
    compiler = next((name for name in (os.environ.get("CC"), "cc", "gcc", "clang")
                     if name and shutil.which(name)), None)
    if compiler is None:
        pytest.skip("no C compiler (CC, cc, gcc or clang) to build kernel_driver")
    return [str(build_driver(compiler, tmp_path_factory.mktemp("native") / "kernel_driver"))]


def check_paths(driver, paths, dtype, tmp_path):
    """Runs every case on ``paths`` through ``driver`` and returns what
    fails: the equivalence rule against the wide reference (output and lse),
    or bits that differ between thread counts."""
    lows = {name: case.astype(dtype) for name, case in cases().items()}
    write_cases(tmp_path / "cases", lows)
    _run([*driver, "sdpa", str(tmp_path / "cases"), str(tmp_path / "results"),
          ",".join(paths), ",".join(map(str, THREADS))])
    results = read_runs(tmp_path / "results", lows, paths, THREADS, _forward_shapes)
    failures = []
    for case_name, low in lows.items():
        wide = low.astype(reference_dtype(dtype))   # the exact answer for the inputs given
        reference = sdpa(wide.query, wide.key, wide.value, backend="numpy", return_lse=True,
                         **wide.options)
        baseline = sdpa(low.query, low.key, low.value, backend="numpy", return_lse=True,
                        **low.options)
        for path in paths:
            (out, lse), *others = results[case_name, path]
            for threads, (other_out, other_lse) in zip(THREADS[1:], others):
                if not (np.array_equal(other_out, out, equal_nan=True)
                        and np.array_equal(other_lse, lse, equal_nan=True)):
                    failures.append(f"{case_name} on {path}: {threads} threads give other bits")
            error, bound = reference_errors(out, reference.output, baseline.output, low.value)
            lse_error, lse_bound = reference_errors(lse, reference.lse, baseline.lse,
                                                    reference.lse)
            if not (error <= bound and lse_error <= lse_bound):
                failures.append(f"{case_name} on {path}: output error {error:.3g} (bound "
                                f"{bound:.3g}), lse error {lse_error:.3g} (bound {lse_bound:.3g})")
    return failures


def test_the_case_record_matches_the_kernel():
    if kernel.available():
        assert kernel._UNBOUNDED == BAND_UNBOUNDED
    fields, reals, mask = _params(cases()["nan_and_inf_inputs"].astype(np.float32))
    assert list(fields) == [0, 1, 2, 24, 70, 20, 12, 1, 1, 0, 0,
                            -BAND_UNBOUNDED, BAND_UNBOUNDED]
    assert reals[0] == np.float64(1 / np.sqrt(20)) and reals[1] == 0
    assert mask.shape == (1, 2, 24, 70) and mask.dtype == np.uint8 and mask[..., 60:].max() == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_neon_path_under_emulation(emulated, dtype, tmp_path):
    assert _run([*emulated, "paths"]).split() == ["portable", "neon"]
    assert check_paths(emulated, ["portable", "neon"], dtype, tmp_path) == []


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_native_paths_through_the_driver(native, dtype, tmp_path):
    paths = _run([*native, "paths"]).split()
    assert paths[0] == "portable"
    if platform.machine() == "x86_64" and kernel.available():
        assert tuple(paths) == kernel.supported_code_paths()
    assert check_paths(native, paths, dtype, tmp_path) == []


def backward_cases():
    """``{name: AttentionCase}`` in float64, the calls the backward runs:
    those of :func:`cases` named in BACKWARD_CASES, then enough (b, kv head)
    pairs for the fused pass (csrc/backward.h: BWD_FUSED_UNITS, 8) with a
    bias mask, softcap and fully masked rows, and more query rows than a dq
    unit (BWD_QBLOCK, 128) under a window and a bool mask."""
    made = {name: case for name, case in cases().items() if name in BACKWARD_CASES}
    rng = np.random.default_rng(18)
    name, fused = _case("fused", B=2, H=8, Hkv=4, L=40, S=70, E=20, Ev=12, softcap=5.0,
                        is_causal=True, causal_alignment="bottom_right")
    bias = rng.standard_normal((2, 1, 40, 70))
    bias[rng.random(bias.shape) < 0.2] = -np.inf
    bias[:, :, ::7] = -np.inf                        # rows whose scores are all -inf
    fused.options["attn_mask"] = bias
    made[name] = fused
    name, blocks = _case("row_blocks", L=150, S=40, E=8, Ev=8, window=(20, 3))
    allowed = rng.random((150, 40)) < 0.8
    allowed[::9] = False                             # rows that see no key
    blocks.options["attn_mask"] = allowed
    made[name] = blocks
    return made


def _grad_out(name, low):
    """The grad_out of case ``name``: standard normal in the shape of the
    output and the case's dtype, from a seed made of the name."""
    B, H, L, _ = low.query.shape
    rng = np.random.default_rng([zlib.crc32(name.encode()), 1])
    return rng.standard_normal((B, H, L, low.value.shape[-1])).astype(low.query.dtype)


def _has_bias(low):
    mask = low.options.get("attn_mask")
    return mask is not None and mask.dtype != bool


def _backward_shapes(low):
    """What kernel_driver backward writes per run: the forward's out and lse,
    then dq, dk, dv and (with a bias mask) dmask given them, then the same
    given out alone."""
    B, H, L, E = low.query.shape
    _, Hkv, S, Ev = low.value.shape
    gradients = [(B, H, L, E), (B, Hkv, S, E), (B, Hkv, S, Ev)] + [(B, H, L, S)] * _has_bias(low)
    return [(B, H, L, Ev), (B, H, L)] + gradients * 2


def _dense(low):
    """``low`` with its mask broadcast to (B, H, L, S), as the driver passes
    it: the bias's gradient is then per score, as the kernel writes it."""
    B, H, L, _ = low.query.shape
    mask = low.options.get("attn_mask")
    if mask is None:
        return low
    dense = np.broadcast_to(mask, (B, H, L, low.key.shape[-2])).copy()
    return AttentionCase(low.query, low.key, low.value, {**low.options, "attn_mask": dense})


def _reference_backward(case, grad_out, out, lse):
    """attnref's NumPy backward of ``case`` (mask dense) in its dtype, given
    the forward's ``out`` and ``lse`` (None: recomputed) in that dtype: dq,
    dk, dv and, with a bias mask, dmask."""
    dtype = case.query.dtype
    grads = sdpa_backward(grad_out.astype(dtype), case.query, case.key, case.value,
                          **case.options, backend="numpy", mask_grad=_has_bias(case),
                          out=out.astype(dtype), lse=None if lse is None else lse.astype(dtype))
    return list(grads[:3]) + ([grads.dmask] if _has_bias(case) else [])


def _magnitudes(wide, grad_out, weights):
    """The gradient rule's gamma of dq, dk, dv (attnref.testing.backward)
    and, with a bias mask, of dmask = P o (dP - D): the largest entry of
    P o (|dO| |V|^T + rowsum(|dO| o P |V|)), its terms in absolute value."""
    inputs = {"query": wide.query, "key": wide.key, "value": wide.value,
              "attn_mask": wide.options.get("attn_mask"),
              "is_causal": wide.options.get("is_causal", False),
              "scale": wide.options.get("scale"), "enable_gqa": wide.options.get("enable_gqa", False),
              "softcap": wide.options.get("softcap"), "window": wide.options.get("window")}
    alignment = wide.options.get("causal_alignment", "top_left")
    magnitudes = gradient_magnitudes(inputs, grad_out, "torch" if alignment == "top_left"
                                     else "flash", wide.query.dtype)
    gammas = [magnitudes[name] for name in ("dq", "dk", "dv")]
    if _has_bias(wide):
        value = np.repeat(np.where(np.isfinite(wide.value), np.abs(wide.value), 0),
                          wide.query.shape[1] // wide.value.shape[1], axis=1)
        grad_out = np.abs(grad_out.astype(wide.query.dtype))
        delta = np.sum(grad_out * (weights @ value), axis=-1, keepdims=True)
        terms = weights * (grad_out @ np.swapaxes(value, -1, -2) + delta)
        gammas.append(float(np.max(terms, initial=0.0)))
    return gammas


def check_backward_paths(driver, paths, dtype, tmp_path):
    """Runs every backward case on ``paths`` through ``driver`` and returns
    what fails: a gradient outside the gradient rule, bits that differ
    between thread counts, a fully masked row whose dq or dmask is not
    exactly 0 (NaN under masked_rows="nan"), or a key no row weighs whose
    dk or dv is not exactly 0.

    The backward is given the forward's out and lse (or out alone), so
    they are inputs of the call as query, key and value are: the rule's
    wide reference and same-dtype baseline are the NumPy backward given
    the same out (and lse), the exact answer for what the kernel was given
    (attnref.testing.tolerance). With the forward's lse the weights are
    exp(s - lse), off by the lse's rounding, about eps |lse| relative;
    against a reference that recomputes the softmax, large scores would
    charge the kernel for the forward's rounding (the "large_scores" case:
    dv at 1.7 to 2.0 times the bound in float64 on every path, portable
    included, and 1.9 times in float32 on the SIMD paths)."""
    lows = {name: case.astype(dtype) for name, case in backward_cases().items()}
    grad_outs = {name: _grad_out(name, low) for name, low in lows.items()}
    write_cases(tmp_path / "cases", lows, grad_outs)
    _run([*driver, "backward", str(tmp_path / "cases"), str(tmp_path / "results"),
          ",".join(paths), ",".join(map(str, BACKWARD_THREADS))])
    results = read_runs(tmp_path / "results", lows, paths, BACKWARD_THREADS, _backward_shapes)
    names = ["dq", "dk", "dv", "dmask"]
    failures = []
    for case_name, low in lows.items():
        grad_out = grad_outs[case_name]
        dense, wide = _dense(low), _dense(low.astype(reference_dtype(dtype)))
        forward = sdpa(wide.query, wide.key, wide.value, backend="numpy", return_lse=True,
                       return_weights=True, **wide.options)
        gammas = _magnitudes(wide, grad_out, forward.weights)
        masked = np.isneginf(forward.lse)                            # (B, H, L)
        B, H, _, _ = low.query.shape
        _, Hkv, S, _ = low.key.shape
        unweighed = np.all(np.all(forward.weights == 0, axis=2).reshape(B, Hkv, H // Hkv, S),
                           axis=2)                                   # (B, Hkv, S)
        for path in paths:
            first, *others = results[case_name, path]
            for threads, other in zip(BACKWARD_THREADS[1:], others):
                if any(a.tobytes() != b.tobytes() for a, b in zip(first, other)):
                    failures.append(f"{case_name} on {path}: {threads} threads give other bits")
            out, lse, *gradients = first
            count = len(gradients) // 2
            for given, run in (("given lse", gradients[:count]), ("no lse", gradients[count:])):
                where = f"{case_name} on {path}, {given}"
                saved = lse if given == "given lse" else None
                reference = _reference_backward(wide, grad_out, out, saved)
                baseline = _reference_backward(dense, grad_out, out, saved)
                for name, candidate, wide_g, same, gamma in zip(names, run, reference, baseline,
                                                                 gammas):
                    error, bound = gradient_errors(candidate, wide_g, same, gamma)
                    if not error <= bound:
                        failures.append(f"{where}: {name} error {error:.3g} (bound {bound:.3g})")
                dq, dk, dv = run[:3]
                rows = [dq[masked]] + ([run[3][masked]] if count == 4 else [])
                zero = low.options.get("masked_rows", "zero") == "zero"
                if not all(np.all(row == 0) if zero else np.all(np.isnan(row)) for row in rows):
                    failures.append(f"{where}: a fully masked row's dq or dmask is not "
                                    f"{'0' if zero else 'NaN'}")
                if not (np.all(dk[unweighed] == 0) and np.all(dv[unweighed] == 0)):
                    failures.append(f"{where}: a key no row weighs has nonzero dk or dv")
    return failures


def test_the_backward_cases_reach_what_is_checked():
    """The backward's cases hold what check_backward_paths judges: fully
    masked rows under both policies, keys no row weighs, a call of the fused
    pass and one of more than one dq unit (csrc/backward.h)."""
    made = backward_cases()
    masked, unweighed = set(), False
    for low in made.values():
        result = sdpa(low.query, low.key, low.value, backend="numpy", return_lse=True,
                      return_weights=True, **low.options)
        if np.isneginf(result.lse).any():
            masked.add(low.options.get("masked_rows", "zero"))
        unweighed |= bool(np.all(result.weights == 0, axis=(0, 1, 2)).any())
    assert masked == {"zero", "nan"} and unweighed
    fused, blocks = made["fused"], made["row_blocks"]
    assert fused.key.shape[0] * fused.key.shape[1] >= 8 and blocks.query.shape[2] > 128


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_neon_backward_under_emulation(emulated, dtype, tmp_path):
    assert check_backward_paths(emulated, ["portable", "neon"], dtype, tmp_path) == []


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_native_backward_paths_through_the_driver(native, dtype, tmp_path):
    assert check_backward_paths(native, _run([*native, "paths"]).split(), dtype, tmp_path) == []


def _exp(driver, x, path, tmp_path):
    with open(tmp_path / "x", "wb") as file:
        file.write(np.array([int(x.dtype == np.float64), x.size], np.int64).tobytes())
        file.write(x.tobytes())
    _run([*driver, "exp", str(tmp_path / "x"), str(tmp_path / "y"), path])
    y = np.fromfile(tmp_path / "y", x.dtype)
    assert y.shape == x.shape
    return y


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_neon_exp_under_emulation(emulated, dtype, tmp_path):
    """The NEON vector exp: within its stated ulp bound on softmax's range,
    and its special values (exp(0) = 1, masked scores weigh 0, NaN stays,
    flush below the smallest normal result, inf above the largest)."""
    info = np.finfo(dtype)
    lo, hi = np.log(float(info.tiny)), np.log(float(info.max))
    rng = np.random.default_rng(8)
    x = np.concatenate([rng.uniform(lo, hi, 100_000), rng.uniform(-1, 1, 20_000),
                        np.linspace(lo, 0, 20_000)]).astype(dtype)
    wide = np.float64 if dtype == np.float32 else np.longdouble
    exact = np.exp(x.astype(wide))
    ulps = np.abs(_exp(emulated, x, "neon", tmp_path).astype(wide) - exact) / \
        np.spacing(exact.astype(dtype)).astype(wide)
    assert ulps.max() <= MAX_ULP, (float(ulps.max()), x[np.argmax(ulps)])
    special = np.array([0.0, -0.0, -np.inf, np.inf, np.nan, 2 * lo, 2 * hi, lo - 0.5], dtype)
    y = _exp(emulated, special, "neon", tmp_path)
    assert y[0] == y[1] == 1 and y[2] == 0 and y[3] == np.inf and np.isnan(y[4])
    assert y[5] == 0 and y[6] == np.inf and y[7] == 0
