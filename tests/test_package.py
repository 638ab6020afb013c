"""The package imports with NumPy alone and exposes its kernels as refdiff.kernels."""
import subprocess
import sys


def test_import_refdiff_loads_neither_cupy_nor_numba():
    code = "import sys, refdiff; assert 'cupy' not in sys.modules and 'numba' not in sys.modules"
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
