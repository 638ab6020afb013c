"""The package imports with NumPy alone and exposes its kernels as refdiff.kernels."""
import subprocess
import sys


def test_import_refdiff_loads_neither_cupy_nor_numba():
    code = "import sys, refdiff; assert 'cupy' not in sys.modules and 'numba' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_kernel_registry_and_the_numpy_backend_need_no_numba():
    """TWINS is read, and the numpy backend built from it, without importing numba."""
    code = ("import sys; from refdiff.kernels import TWINS; from refdiff.backend import get_backend; "
            "assert all(callable(getattr(get_backend('numpy'), name)) for name in TWINS); "
            "assert 'numba' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_kernel_name_means_the_kernel_even_after_its_file_is_imported():
    """Importing kernels/q_sample.py first must not make refdiff.kernels.q_sample that module."""
    code = ("import os; os.environ['NUMBA_ENABLE_CUDASIM'] = '1'; "
            "from refdiff.kernels.q_sample import _q_sample_kernel; import refdiff.kernels as k; "
            "from refdiff.kernels import q_sample; "
            "assert k.q_sample is q_sample and callable(q_sample) and q_sample.__module__ == 'refdiff.kernels.q_sample'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_kernels_folder_installs_as_refdiff_kernels():
    import refdiff.kernels

    assert refdiff.kernels.__name__ == "refdiff.kernels"
    assert refdiff.kernels.__file__.replace("\\", "/").endswith("kernels/__init__.py")


def test_unknown_attribute_raises_attribute_error():
    import pytest

    import refdiff

    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        refdiff.nonexistent
