"""refdiff.kernels: fused Numba CUDA kernels, each the twin of a reference function.

Installed from the repository's `kernels/` folder as the subpackage `refdiff.kernels`.
Every function here has exactly the signature of its NumPy twin in `refdiff` and computes the
same thing; tests/test_kernels*.py swaps one for the other.
"""
