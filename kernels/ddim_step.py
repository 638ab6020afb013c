"""Fused DDIM step: guidance, predicted x_0 and eps, clipping, and the DDIM update in one pass.

Twin: refdiff.samplers.ddim.ddim_step (diffusers DDIMScheduler.step numbers, use_clipped_model_output=False).

Per sample, once, in float64 (then rounded to float32, as the reference rounds them), with the
reference's own functions compiled for the device (kernels/_device.py):
    abar_t, abar_prev = abar[t_prev] (1 where t_prev < 0: set_alpha_to_one)
    sigma_eta      = ddim_sigma(abar_t, abar_prev, eta)                     DDIM eq. 16
    direction_coef = sqrt(ddim_direction_variance(abar_prev, sigma_eta))    "direction pointing to x_t"
Per element, in float32 (kernels/_device.py predicted_x0_eps):
    out  = uncond + s (cond - uncond)                  if model_output_uncond is given
    (x_0, eps) from out (epsilon / sample / v_prediction); x_0 clipped if clip_sample, eps not
    x_prev = sqrt(abar_prev) x_0 + direction_coef eps (+ sigma_eta noise when eta > 0)      DDIM eq. 12

Napkin math, per element of float32: reads x_t and model_output (8 B; + 4 B with
model_output_uncond, + 4 B noise when eta > 0), writes x_prev (4 B): 12 B for deterministic
DDIM (eta = 0), up to 20 B guided with noise.
"""
import math

import numpy as np
from numba import cuda

from refdiff import checks
from refdiff.gaussian.parameterization import PREDICTION_CODES

from . import _launch
from ._device import alphas_cumprod_pair, ddim_direction_variance, ddim_sigma, f32_sqrt, predicted_x0_eps, sample_timesteps


@cuda.jit
def _ddim_step_kernel(x_t, model_output, uncond, has_uncond, guidance_scale, noise, has_noise, eta,
                      t, t_scalar, t_per_sample, t_prev, t_prev_scalar, t_prev_mode,
                      alphas_cumprod, T, prediction, clip, clip_range, B, N, x_prev):
    for b in range(cuda.blockIdx.y, B, cuda.gridDim.y):
        # per-sample coefficients, float64 -> float32 once
        tb, tpb = sample_timesteps(b, t, t_scalar, t_per_sample, t_prev, t_prev_scalar, t_prev_mode)
        abar_t, abar_prev, valid = alphas_cumprod_pair(alphas_cumprod, T, tb, tpb)
        sqrt_abar = f32_sqrt(abar_t)
        sqrt_one_minus_abar = f32_sqrt(1.0 - abar_t)
        sigma_eta = ddim_sigma(abar_t, abar_prev, eta)  # DDIM eq. 16
        sqrt_abar_prev = f32_sqrt(abar_prev)
        direction_coef = f32_sqrt(ddim_direction_variance(abar_prev, sigma_eta))
        noise_coef = np.float32(sigma_eta)
        if not valid:  # timesteps outside the schedule or t_prev >= t (device-side t only)
            sqrt_abar_prev = np.float32(math.nan)
        base = b * N
        for j in range(cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x, N, cuda.gridDim.x * cuda.blockDim.x):
            _, x0_j, eps_j = predicted_x0_eps(x_t, model_output, uncond, has_uncond, guidance_scale, base + j,
                                              sqrt_abar, sqrt_one_minus_abar, prediction, clip, clip_range)
            x_prev_j = sqrt_abar_prev * x0_j + direction_coef * eps_j  # DDIM eq. 12
            if has_noise:
                x_prev_j = x_prev_j + noise_coef * noise[base + j]
            x_prev[base + j] = x_prev_j


def ddim_step(x_t, model_output, t, t_prev, schedule, eta=0.0, noise=None, prediction_type="epsilon",
              clip_sample=True, clip_sample_range=1.0, model_output_uncond=None, guidance_scale=1.0):
    """One fused DDIM step; twin of refdiff.ddim_step (same arguments and result).

    x_t, model_output, noise, model_output_uncond: float32 C-contiguous (B, ...) CuPy arrays
    (NumPy under the simulator), one shape. t: int or int array (B,) in 0..T-1; t_prev: int or
    int array (B,), each < t, negative allowed (abar_prev = 1). eta in [0, 1]; noise needed only
    when eta > 0 (and ignored when eta == 0, as in the reference). Returns x_prev like x_t.
    """
    x_t, model_output, noise, uncond = _launch.check_step_arrays(x_t, model_output, noise, model_output_uncond)
    clip_sample, clip_sample_range, guidance_scale = checks.check_step_options(
        prediction_type, clip_sample, clip_sample_range, guidance_scale, uncond)
    eta = checks.check_eta(eta)
    checks.check_t_prev_given(t_prev)
    tables = _launch.schedule_tables(schedule)
    B, N = _launch.batch_and_size(x_t)
    t_arg = _launch.timestep_arg(t, tables.T, B)
    t_prev_arg, t_prev_mode = _launch.t_prev_arg(t_prev, t_arg, tables.T, B)
    checks.check_noise_given(noise, eta > 0, "when eta > 0")

    x_prev = _launch.empty_like(x_t)
    view = _launch.device_view
    uncond_view, has_uncond = _launch.optional_array(uncond)
    noise_view, has_noise = _launch.optional_array(noise if eta > 0 else None)
    _launch.launch(
        _ddim_step_kernel, B, N,
        view(_launch.flat(x_t)), view(_launch.flat(model_output)), uncond_view, has_uncond,
        np.float32(guidance_scale), noise_view, has_noise, eta,
        t_arg.array, t_arg.scalar, t_arg.per_sample, t_prev_arg.array, t_prev_arg.scalar, t_prev_mode,
        tables.alphas_cumprod, tables.T, PREDICTION_CODES[prediction_type],
        clip_sample, np.float32(clip_sample_range), B, N, _launch.output_view(_launch.flat(x_prev)),
    )
    return x_prev


# numba argument types of each launch above, one signature per @cuda.jit kernel (compiled once);
# read by refdiff.kernels.testing, checked against real launches by tests/test_kernels_launch.py
LAUNCH_SIGNATURES = {
    "_ddim_step_kernel": [
        "float32[::1], float32[::1], float32[::1], boolean, float32, float32[::1], boolean, float64, "
        "int64[::1], int64, boolean, int64[::1], int64, int64, "
        "float64[::1], int64, int64, boolean, float32, int64, int64, float32[::1]",
    ],
}
