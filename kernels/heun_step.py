"""Fused Heun correction of the probability-flow ODE: the state, its Euler predictor and both x_0
predictions in, the next state out, one pass.

Twin: refdiff.samplers.k_diffusion.heun_step (EDM Algorithm 2 lines 9-11; k-diffusion sample_heun;
diffusers HeunDiscreteScheduler.step, second-order half), x in the variance-exploding scale:
    x_next = x + (sigma_next - sigma) (d + d') / 2,
    d = to_d(x, sigma, D),  d' = to_d(x_euler, sigma_next, D'),  to_d = (x - D) / sigma   (EDM eq. 4)
Per call, once, on the host: half_dt = (sigma_next - sigma) / 2, rounded once to float32 (as are sigma
and sigma_next). Per element, in float32, the twin's own arithmetic-only functions compiled for the
device by kernels/_device.py's device_twin:
    x_next = heun_update_formula(x, to_d(x, sigma, D), to_d(x_euler, sigma_next, D'), half_dt)

Napkin math, per element of float32: reads x, denoised, x_euler, denoised_next (16 B), writes x_next
(4 B): 20 B (the unfused twin: ~6 passes, two subtractions, two divisions, a sum, a product and a
sum: ~4x the traffic).
"""
import numpy as np
from numba import cuda

from refdiff.samplers import k_diffusion

from . import _launch
from ._device import device_twin

to_d = device_twin(k_diffusion.to_d)
heun_update_formula = device_twin(k_diffusion.heun_update_formula)


@cuda.jit
def _heun_step_kernel(x, denoised, x_euler, denoised_next, sigma, sigma_next, half_dt, B, N, x_next):
    for b in range(cuda.blockIdx.y, B, cuda.gridDim.y):
        base = b * N
        for j in range(cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x, N, cuda.gridDim.x * cuda.blockDim.x):
            d = to_d(x[base + j], sigma, denoised[base + j])
            d_next = to_d(x_euler[base + j], sigma_next, denoised_next[base + j])
            x_next[base + j] = heun_update_formula(x[base + j], d, d_next, half_dt)


def heun_step(x, denoised, x_euler, denoised_next, sigma, sigma_next):
    """One fused Heun correction; twin of refdiff.samplers.k_diffusion.heun_step (same arguments and result).

    x, denoised, x_euler, denoised_next: float32 C-contiguous (B, ...) CuPy arrays (NumPy under the
    simulator), one shape; sigma > sigma_next > 0: Python floats. Returns x_next like x.
    """
    x = _launch.check_array(x, "x")
    denoised = _launch.check_like(x, denoised, "x", "denoised")
    x_euler = _launch.check_like(x, x_euler, "x", "x_euler")
    denoised_next = _launch.check_like(x, denoised_next, "x", "denoised_next")
    B, N = _launch.batch_and_size(x)
    x_next = _launch.empty_like(x)
    view = _launch.device_view
    _launch.launch(_heun_step_kernel, B, N, view(_launch.flat(x)), view(_launch.flat(denoised)),
                   view(_launch.flat(x_euler)), view(_launch.flat(denoised_next)),
                   np.float32(sigma), np.float32(sigma_next), np.float32((sigma_next - sigma) / 2),
                   B, N, _launch.output_view(_launch.flat(x_next)))
    return x_next


# numba argument types of each launch above, one signature per @cuda.jit kernel (compiled once);
# read by refdiff.kernels.testing, checked against real launches by tests/test_kernels_launch.py
LAUNCH_SIGNATURES = {
    "_heun_step_kernel": [
        "float32[::1], float32[::1], float32[::1], float32[::1], float32, float32, float32, int64, int64, float32[::1]",
    ],
}
