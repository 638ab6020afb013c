"""Device functions of the kernels: the reference's own formulas, compiled for the GPU.

The per-element and per-sample formulas are not written again here. They live once, in the
reference, as small functions that use arithmetic only (so they run on NumPy arrays there), and
`device_twin` compiles those very functions with numba as inlined device functions:

    guided_output                refdiff.gaussian.guidance              Ho & Salimans 2022, eq. 6
    x0_eps_from_output           refdiff.gaussian.parameterization      DDPM eqs. 4, 15; Salimans & Ho 2022
    x_t_formula                  refdiff.gaussian.parameterization      DDPM eq. 4
    v_from_x0_eps_formula        refdiff.gaussian.parameterization      Salimans & Ho 2022, sec. 4
    posterior_mean_coefficients  refdiff.gaussian.posterior             DDPM eq. 7
    posterior_variance           refdiff.gaussian.posterior             DDPM eq. 7
    ddim_sigma                   refdiff.samplers.ddim                  DDIM eq. 16
    ddim_direction_variance      refdiff.samplers.ddim                  DDIM eq. 12

Per-element functions get float32 scalars; the per-sample coefficients (sqrt_abar =
sqrt(abar_t), sqrt_one_minus_abar = sqrt(1 - abar_t), ...) are computed in float64 once per
sample and rounded once to float32, as the reference rounds them. Prediction types are
refdiff.gaussian.parameterization.PREDICTION_CODES: 0 epsilon, 1 sample, 2 v_prediction.

No float literal appears in float32 arithmetic here: numba types a python float as float64, which
would silently promote the whole expression.
"""
import math
import types

import numpy as np
from numba import cuda

from refdiff.gaussian import guidance, parameterization, posterior
from refdiff.samplers import ddim


def device_twin(fn, **device_callees):
    """`fn` (a reference function that uses arithmetic only) compiled as an inlined numba device
    function. Functions it calls are given as device_callees (name=device function): numba
    resolves a function's globals when it compiles it, so the copy sees them in place of the
    host versions. Under the simulator the copy runs as plain Python."""
    namespace = dict(fn.__globals__, **device_callees)
    copy = types.FunctionType(fn.__code__, namespace, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__doc__ = fn.__doc__
    return cuda.jit(device=True, inline=True)(copy)


guided_output = device_twin(guidance.guided_output)

_conversions = {name: device_twin(getattr(parameterization, name)) for name in (
    "x0_from_eps_formula", "eps_from_x0_formula", "x0_from_v_formula", "eps_from_v_formula")}
x0_eps_from_output = device_twin(parameterization.x0_eps_from_output_formula, **_conversions)
x_t_formula = device_twin(parameterization.x_t_formula)
v_from_x0_eps_formula = device_twin(parameterization.v_from_x0_eps_formula)

posterior_mean_coefficients = device_twin(posterior.posterior_mean_coefficients)
posterior_variance = device_twin(posterior.posterior_variance)
ddim_sigma = device_twin(ddim.ddim_sigma, posterior_variance=posterior_variance)
ddim_direction_variance = device_twin(ddim.ddim_direction_variance)


@cuda.jit(device=True, inline=True)
def clipped(x0, clip, clip_range):
    """x_0 clipped to [-clip_range, clip_range] when clip is set: refdiff.samplers.common.clipped."""
    if clip:
        return min(max(x0, -clip_range), clip_range)
    return x0


@cuda.jit(device=True, inline=True)
def predicted_x0_eps(x_t, model_output, uncond, has_uncond, guidance_scale, i, sqrt_abar, sqrt_one_minus_abar,
                     prediction, clip, clip_range):
    """(x_t[i], x_0, eps) of element i: steps 2-3 that both reverse steps share (refdiff.samplers.ddpm,
    .ddim): the guided output where uncond is given, x_0 and eps read by the prediction type, x_0
    clipped (eps stays unclipped, as diffusers)."""
    out = model_output[i]
    if has_uncond:
        out = guided_output(out, uncond[i], guidance_scale)
    x0, eps = x0_eps_from_output(x_t[i], out, sqrt_abar, sqrt_one_minus_abar, prediction)
    return x_t[i], clipped(x0, clip, clip_range), eps


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
    """(abar_t, abar_prev, valid) in float64; abar_prev = 1 where t_prev < 0 (set_alpha_to_one),
    as NoiseSchedule.alphas_cumprod_at.

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
