"""Hypothesis profiles: ``dev`` (default, randomised), ``ci`` (derandomised,
no deadline) and ``stress`` (2000 examples), chosen by HYPOTHESIS_PROFILE or,
when unset, by CI=true."""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import attnref

# Suppressed health checks, each with its reason:
# too_slow: cases draw arrays from a seed; large drawn shapes make single examples slow.
# function_scoped_fixture: the `backend` and `code_path` fixtures select a C
#   code path once per test; every generated example is meant to run on it.
SUPPRESSED = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
settings.register_profile("dev", max_examples=100, deadline=None,
                          suppress_health_check=SUPPRESSED)
settings.register_profile("ci", max_examples=200, deadline=None, derandomize=True,
                          print_blob=True, suppress_health_check=SUPPRESSED)
settings.register_profile(  # long local searches: HYPOTHESIS_PROFILE=stress
    "stress", max_examples=2000, deadline=None, suppress_health_check=SUPPRESSED)
settings.load_profile(os.environ.get(
    "HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

BACKENDS = ["numpy", "c"]
# the C kernel's code paths each property test runs on (attnref.kernel.CODE_PATHS)
CODE_PATHS = ["portable", "avx2", "avx512"]


@pytest.fixture(params=CODE_PATHS)
def code_path(request):
    """Each C code path in turn, skipped where the CPU or build lacks it (or
    the kernel is not compiled); the default path is restored afterwards."""
    if not attnref.kernel.available():
        pytest.skip(f"C kernel unavailable: {attnref.kernel.info()['reason']}")
    if request.param not in attnref.kernel.supported_code_paths():
        pytest.skip(f"code path {request.param} is not supported on this CPU")
    attnref.kernel.set_code_path(request.param)
    yield request.param
    attnref.kernel.set_code_path("auto")


@pytest.fixture(params=["numpy"] + [f"c-{path}" for path in CODE_PATHS])
def backend(request):
    """The NumPy backend, then the C backend on each of its code paths; the C
    ones are skipped when the kernel is not compiled (and required when
    ATTNREF_REQUIRE_NATIVE is set: see test_kernel.py)."""
    if request.param == "numpy":
        yield "numpy"
        return
    path = request.param[2:]
    if not attnref.kernel.available():
        pytest.skip(f"C kernel unavailable: {attnref.kernel.info()['reason']}")
    if path not in attnref.kernel.supported_code_paths():
        pytest.skip(f"code path {path} is not supported on this CPU")
    attnref.kernel.set_code_path(path)
    yield "c"
    attnref.kernel.set_code_path("auto")


@pytest.fixture
def rng():
    return np.random.default_rng(20261122)
