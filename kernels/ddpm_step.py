"""Fused DDPM ancestral step: guidance, predicted x_0, clipping, posterior mean and noise in one pass.

Twin: refdiff.samplers.ddpm.ddpm_step (diffusers DDPMScheduler.step numbers; see its docstring).

Per sample, once, in float64 (then rounded to float32, as the reference rounds them), with the
reference's own functions compiled for the device (kernels/_device.py):
    abar_t, abar_prev = abar[t_prev] (1 where t_prev < 0)
    coef_x0, coef_xt  = posterior_mean_coefficients(abar_t, abar_prev)      DDPM eq. 7
    variance = max(posterior_variance(abar_t, abar_prev), 1e-20)            "fixed_small" (beta tilde)
             = beta_t = 1 - abar_t / abar_prev                              "fixed_large"
    std      = sqrt(variance) where t > 0, else 0
Per element, in float32 (kernels/_device.py predicted_x0_eps):
    out  = uncond + s (cond - uncond)                  if model_output_uncond is given
    x_0  = from out (epsilon / sample / v_prediction), clipped if clip_sample
    x_prev = coef_x0 x_0 + coef_xt x_t + std noise     DDPM Algorithm 2, line 4

Napkin math, per element of float32: reads x_t, model_output, noise (12 B; + 4 B with
model_output_uncond), writes x_prev (4 B): 16 B (20 B guided). Unfused (the reference's
array ops) the same step moves ~10x as many bytes through ~10 launches.
"""
import math

import numpy as np
from numba import cuda

from refdiff import checks
from refdiff.gaussian.parameterization import PREDICTION_CODES

from . import _launch
from ._device import (
    alphas_cumprod_pair,
    f32_sqrt,
    posterior_mean_coefficients,
    posterior_variance,
    predicted_x0_eps,
    sample_timesteps,
)


@cuda.jit
def _ddpm_step_kernel(x_t, model_output, uncond, has_uncond, guidance_scale, noise, has_noise,
                      t, t_scalar, t_per_sample, t_prev, t_prev_scalar, t_prev_mode,
                      alphas_cumprod, T, prediction, variance_code, clip, clip_range, B, N, x_prev):
    for b in range(cuda.blockIdx.y, B, cuda.gridDim.y):
        # per-sample coefficients, float64 -> float32 once
        tb, tpb = sample_timesteps(b, t, t_scalar, t_per_sample, t_prev, t_prev_scalar, t_prev_mode)
        abar_t, abar_prev, valid = alphas_cumprod_pair(alphas_cumprod, T, tb, tpb)
        sqrt_abar = f32_sqrt(abar_t)
        sqrt_one_minus_abar = f32_sqrt(1.0 - abar_t)
        coef_x0_64, coef_xt_64 = posterior_mean_coefficients(abar_t, abar_prev)  # DDPM eq. 7
        coef_x0, coef_xt = np.float32(coef_x0_64), np.float32(coef_xt_64)
        if variance_code == 0:  # samplers.ddpm.ddpm_variance
            variance = max(posterior_variance(abar_t, abar_prev), 1e-20)  # beta tilde, DDPM eq. 7
        else:
            variance = 1.0 - abar_t / abar_prev  # beta_t
        std = f32_sqrt(variance) if tb > 0 else np.float32(0.0)
        if not valid or (tb > 0 and not has_noise):  # bad device-side timesteps, or noise missing
            coef_x0 = np.float32(math.nan)
        base = b * N
        for j in range(cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x, N, cuda.gridDim.x * cuda.blockDim.x):
            x_t_j, x0_j, _ = predicted_x0_eps(x_t, model_output, uncond, has_uncond, guidance_scale, base + j,
                                              sqrt_abar, sqrt_one_minus_abar, prediction, clip, clip_range)
            mean_j = coef_x0 * x0_j + coef_xt * x_t_j  # posterior mean, DDPM eq. 7
            if has_noise:
                mean_j = mean_j + std * noise[base + j]
            x_prev[base + j] = mean_j


def ddpm_step(x_t, model_output, t, schedule, noise, prediction_type="epsilon", variance_type="fixed_small",
              clip_sample=True, clip_sample_range=1.0, t_prev=None, model_output_uncond=None, guidance_scale=1.0):
    """One fused DDPM ancestral step; twin of refdiff.ddpm_step (same arguments and result).

    x_t, model_output, noise, model_output_uncond: float32 C-contiguous (B, ...) CuPy arrays
    (NumPy under the simulator), one shape. t, t_prev: int or int array (B,). noise may be None
    only where t == 0 for every sample. Returns x_prev, a new array like x_t.
    """
    x_t, model_output, noise, uncond = _launch.check_step_arrays(x_t, model_output, noise, model_output_uncond)
    clip_sample, clip_sample_range, guidance_scale = checks.check_step_options(
        prediction_type, clip_sample, clip_sample_range, guidance_scale, uncond)
    checks.check_fixed_variance_type(variance_type, "the fused ddpm_step kernel")
    tables = _launch.schedule_tables(schedule)
    B, N = _launch.batch_and_size(x_t)
    t_arg = _launch.timestep_arg(t, tables.T, B)
    t_prev_arg, t_prev_mode = _launch.t_prev_arg(t_prev, t_arg, tables.T, B)
    checks.check_noise_given(noise, _launch.any_positive(t_arg), "where t > 0 (noise may be None only if t == 0 for every sample)")

    x_prev = _launch.empty_like(x_t)
    view = _launch.device_view
    uncond_view, has_uncond = _launch.optional_array(uncond)
    noise_view, has_noise = _launch.optional_array(noise)
    _launch.launch(
        _ddpm_step_kernel, B, N,
        view(_launch.flat(x_t)), view(_launch.flat(model_output)), uncond_view, has_uncond,
        np.float32(guidance_scale), noise_view, has_noise,
        t_arg.array, t_arg.scalar, t_arg.per_sample, t_prev_arg.array, t_prev_arg.scalar, t_prev_mode,
        tables.alphas_cumprod, tables.T, PREDICTION_CODES[prediction_type],
        _launch.VARIANCE_CODES[variance_type], clip_sample, np.float32(clip_sample_range), B, N,
        _launch.output_view(_launch.flat(x_prev)),
    )
    return x_prev


# numba argument types of each launch above, one signature per @cuda.jit kernel (compiled once);
# read by refdiff.kernels.testing, checked against real launches by tests/test_kernels_launch.py
LAUNCH_SIGNATURES = {
    "_ddpm_step_kernel": [
        "float32[::1], float32[::1], float32[::1], boolean, float32, float32[::1], boolean, "
        "int64[::1], int64, boolean, int64[::1], int64, int64, "
        "float64[::1], int64, int64, int64, boolean, float32, int64, int64, float32[::1]",
    ],
}
