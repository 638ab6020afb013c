"""GPU markers for this stream's tests: skip with the reason where no CUDA GPU is visible.

tests/conftest.py decides once whether CuPy sees a GPU (GPU_VISIBLE) and otherwise switches Numba
to its CUDA simulator. Tests that need real device memory use `requires_gpu`:

    from _gpu import requires_gpu

    @requires_gpu
    def test_something_on_the_device(): ...

It adds the `gpu` marker (select with -m gpu) and skips, stating why, where there is no GPU.
"""
import pytest

from conftest import GPU_VISIBLE, NO_GPU_PROBLEM

NO_GPU_REASON = "" if GPU_VISIBLE else f"no GPU: {NO_GPU_PROBLEM}"


# for a whole module: pytestmark = GPU_MARKS
GPU_MARKS = [pytest.mark.gpu, pytest.mark.skipif(not GPU_VISIBLE, reason=NO_GPU_REASON)]


def requires_gpu(test):
    """Mark `test` as a GPU test; skipped with NO_GPU_REASON where no GPU is visible."""
    return pytest.mark.gpu(pytest.mark.skipif(not GPU_VISIBLE, reason=NO_GPU_REASON)(test))
