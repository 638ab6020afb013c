"""Test configuration shared by the whole suite.

- Hypothesis: a derandomized "ci" profile (used when CI is set) and a "dev" profile.
- One BLAS thread: the tests multiply small matrices, for which more threads only add
  overhead, and on a busy 2-core machine competing BLAS threads slow them down many times.
- The kernels are Numba CUDA code. Where no GPU is visible they run under Numba's CUDA
  simulator, which must be switched on before numba is first imported: done here.
"""
import os

import pytest
from hypothesis import HealthCheck, settings

from refdiff.backend import cuda_problem  # NumPy only: numba is not imported yet


NO_GPU_PROBLEM = cuda_problem()  # None where CuPy sees a GPU
GPU_VISIBLE = NO_GPU_PROBLEM is None
if not GPU_VISIBLE:
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=40,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture(autouse=True, scope="session")
def _one_blas_thread():
    from threadpoolctl import threadpool_limits  # comes with scikit-learn, a test dependency

    with threadpool_limits(limits=1):
        yield
