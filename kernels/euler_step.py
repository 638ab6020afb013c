"""Fused Euler step of the probability-flow ODE: the state and the x_0 prediction in, the next state out.

Twin: refdiff.samplers.k_diffusion.euler_step (EDM Algorithm 1 line 5; k-diffusion sample_euler;
diffusers EulerDiscreteScheduler.step), x in the variance-exploding scale:
    x_next = x + (sigma_next - sigma) to_d(x, sigma, D),   to_d = (x - D) / sigma   (EDM eq. 4)
Per element, in float32, the twin's own arithmetic-only functions (euler_step calling to_d) compiled
for the device by kernels/_device.py's device_twin; sigma and sigma_next rounded once to float32.

Napkin math, per element of float32: reads x and denoised (8 B), writes x_next (4 B): 12 B
(the unfused twin: three passes, ~3x the traffic).
"""
import numpy as np
from numba import cuda

from refdiff.samplers import k_diffusion

from . import _launch
from ._device import device_twin

to_d = device_twin(k_diffusion.to_d)
euler_step_formula = device_twin(k_diffusion.euler_step, to_d=to_d)


@cuda.jit
def _euler_step_kernel(x, denoised, sigma, sigma_next, B, N, x_next):
    for b in range(cuda.blockIdx.y, B, cuda.gridDim.y):
        base = b * N
        for j in range(cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x, N, cuda.gridDim.x * cuda.blockDim.x):
            x_next[base + j] = euler_step_formula(x[base + j], denoised[base + j], sigma, sigma_next)


def euler_step(x, denoised, sigma, sigma_next):
    """One fused Euler step; twin of refdiff.samplers.k_diffusion.euler_step (same arguments and result).

    x, denoised: float32 C-contiguous (B, ...) CuPy arrays (NumPy under the simulator), one shape;
    sigma > 0 and sigma_next >= 0: Python floats. Returns x_next like x.
    """
    x = _launch.check_array(x, "x")
    denoised = _launch.check_like(x, denoised, "x", "denoised")
    B, N = _launch.batch_and_size(x)
    x_next = _launch.empty_like(x)
    view = _launch.device_view
    _launch.launch(_euler_step_kernel, B, N, view(_launch.flat(x)), view(_launch.flat(denoised)),
                   np.float32(sigma), np.float32(sigma_next), B, N, _launch.output_view(_launch.flat(x_next)))
    return x_next


# numba argument types of each launch above, one signature per @cuda.jit kernel (compiled once);
# read by refdiff.kernels.testing, checked against real launches by tests/test_kernels_launch.py
LAUNCH_SIGNATURES = {
    "_euler_step_kernel": ["float32[::1], float32[::1], float32, float32, int64, int64, float32[::1]"],
}
