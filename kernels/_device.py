"""Device functions shared by the reverse-step kernels: one copy of each per-element formula.

Each mirrors a reference function line for line (named in its docstring). Arguments and
results are float32 scalars; the per-sample coefficients (alpha = sqrt(abar_t),
sigma = sqrt(1 - abar_t), ...) arrive already rounded to float32 from float64, as the reference
rounds them. Prediction types are the codes of kernels/_launch.py: 0 epsilon, 1 sample,
2 v_prediction.

No float literal appears in float32 arithmetic here: numba types a python float as float64, which
would silently promote the whole expression.
"""
import math

import numpy as np
from numba import cuda


@cuda.jit(device=True, inline=True)
def guided_output(cond, uncond, guidance_scale):
    """uncond + s (cond - uncond): refdiff.samplers.reverse.classifier_free_guidance (Ho & Salimans 2022, eq. 6)."""
    return uncond + guidance_scale * (cond - uncond)


@cuda.jit(device=True, inline=True)
def x0_eps_from_model_output(x_t, model_output, alpha, sigma, prediction):
    """(x_0, eps) from the network output: refdiff.gaussian.parameterization.x0_eps_from_model_output.

    epsilon:      x_0 = (x_t - sigma out) / alpha,   eps = out                 DDPM eq. 15
    sample:       x_0 = out,   eps = (x_t - alpha x_0) / sigma                 DDPM eq. 4
    v_prediction: x_0 = alpha x_t - sigma out,   eps = alpha out + sigma x_t   Salimans & Ho 2022
    """
    if prediction == 0:
        return (x_t - sigma * model_output) / alpha, model_output
    if prediction == 1:
        return model_output, (x_t - alpha * model_output) / sigma
    return alpha * x_t - sigma * model_output, alpha * model_output + sigma * x_t


@cuda.jit(device=True, inline=True)
def clipped(x0, clip, clip_range):
    """x_0 clipped to [-clip_range, clip_range] when clip is set (as np.clip in the reference)."""
    if clip:
        return min(max(x0, -clip_range), clip_range)
    return x0


@cuda.jit(device=True, inline=True)
def sample_timesteps(b, t, t_scalar, t_per_sample, t_prev, t_prev_scalar, t_prev_mode):
    """(t_b, t_prev_b) of sample b. t_prev_mode: 0 t - 1 (the default), 1 scalar, 2 per sample."""
    tb = t[b] if t_per_sample else t_scalar
    if t_prev_mode == 0:
        return tb, tb - 1
    if t_prev_mode == 1:
        return tb, t_prev_scalar
    return tb, t_prev[b]


@cuda.jit(device=True, inline=True)
def alphas_cumprod_pair(alphas_cumprod, T, tb, tpb):
    """(abar_t, abar_prev, valid) in float64; abar_prev = 1 where t_prev < 0 (set_alpha_to_one).

    valid is False for timesteps outside the schedule or t_prev >= t: the caller writes NaN then
    (a device-side timestep array is not range-checked on the host).
    """
    valid = tb >= 0 and tb < T and tpb < tb
    if not valid:
        return 0.5, 1.0, False
    abar_prev = 1.0
    if tpb >= 0:
        abar_prev = alphas_cumprod[tpb]
    return alphas_cumprod[tb], abar_prev, True


@cuda.jit(device=True, inline=True)
def f32_sqrt(v):
    """sqrt in float64, rounded once to float32 (the reference's per_sample(values ** 0.5))."""
    return np.float32(math.sqrt(v))
