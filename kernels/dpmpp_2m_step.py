"""Fused DPM-Solver++(2M) update: the state and the two latest x_0 predictions in, the next state out, one pass.

Twin: refdiff.samplers.dpm_solver.dpmpp_2m_step (DPM-Solver++ Algorithm 2 in the variance-exploding
scale; diffusers DPMSolverMultistepScheduler, dpmsolver++, solver_order=2).

Per call, once, in float64 on the host, with the twin's own function (then rounded to float32):
    (noise_ratio, data_coef, d1_coef, inv_r) = dpmpp_2m_coefficients(sigma, sigma_next, sigma_prev, solver_type)
        noise_ratio = sigma_next / sigma, data_coef = -(e^-h - 1), r = h_prev / h,
        d1_coef = -(e^-h - 1) / 2 (midpoint) or (e^-h - 1) / h + 1 (heun); 0 for a first-order step
Per element, in float32, the twin's own arithmetic-only formulas compiled for the device (kernels/_device.py):
    D_1    = divided_difference_formula(D, D_prev, inv_r)              = (D - D_prev) / r
    x_next = dpmpp_update_formula(x, noise_ratio, D, data_coef, D_1, d1_coef)

Napkin math, per element of float32: reads x, denoised, denoised_prev (12 B), writes x_next (4 B):
16 B (first-order step without denoised_prev: 8 + 4 B). The unfused NumPy/CuPy twin makes ~6 passes
(D - D_prev, its scaling, three products, two sums): ~4x the traffic.
"""
import numpy as np
from numba import cuda

from refdiff.samplers import dpm_solver

from . import _launch
from ._device import device_twin

divided_difference_formula = device_twin(dpm_solver.divided_difference_formula)
dpmpp_update_formula = device_twin(dpm_solver.dpmpp_update_formula)


@cuda.jit
def _dpmpp_2m_step_kernel(x, denoised, denoised_prev, noise_ratio, data_coef, d1_coef, inv_r, B, N, x_next):
    for b in range(cuda.blockIdx.y, B, cuda.gridDim.y):
        base = b * N
        for j in range(cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x, N, cuda.gridDim.x * cuda.blockDim.x):
            d0 = denoised[base + j]
            d1 = divided_difference_formula(d0, denoised_prev[base + j], inv_r)
            x_next[base + j] = dpmpp_update_formula(x[base + j], noise_ratio, d0, data_coef, d1, d1_coef)


def dpmpp_2m_step(x, denoised, denoised_prev, sigma, sigma_next, sigma_prev, solver_type="midpoint"):
    """One fused DPM-Solver++(2M) step; twin of refdiff.samplers.dpm_solver.dpmpp_2m_step (same
    arguments and result).

    x, denoised, denoised_prev: float32 C-contiguous (B, ...) CuPy arrays (NumPy under the
    simulator), one shape; denoised_prev None for a first-order step. sigma > sigma_next >= 0 and
    sigma_prev > sigma (None with denoised_prev None): Python floats. Returns x_next like x.
    """
    x = _launch.check_array(x, "x")
    denoised = _launch.check_like(x, denoised, "x", "denoised")
    denoised_prev = _launch.check_optional_like(x, denoised_prev, "x", "denoised_prev")
    noise_ratio, data_coef, d1_coef, inv_r = dpm_solver.dpmpp_2m_coefficients(
        sigma, sigma_next, sigma_prev if denoised_prev is not None else None, solver_type)
    B, N = _launch.batch_and_size(x)
    x_next = _launch.empty_like(x)
    view = _launch.device_view
    _launch.launch(
        _dpmpp_2m_step_kernel, B, N,
        view(_launch.flat(x)), view(_launch.flat(denoised)),
        view(_launch.flat(denoised_prev if denoised_prev is not None else denoised)),
        np.float32(noise_ratio), np.float32(data_coef), np.float32(d1_coef), np.float32(inv_r),
        B, N, _launch.output_view(_launch.flat(x_next)),
    )
    return x_next


# numba argument types of each launch above, one signature per @cuda.jit kernel (compiled once);
# read by refdiff.kernels.testing, checked against real launches by tests/test_kernels_launch.py
LAUNCH_SIGNATURES = {
    "_dpmpp_2m_step_kernel": [
        "float32[::1], float32[::1], float32[::1], float32, float32, float32, float32, int64, int64, float32[::1]",
    ],
}
