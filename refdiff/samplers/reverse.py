"""One reverse (denoising) step: DDPM ancestral sampling, DDIM, classifier-free guidance.

Numbers follow diffusers' DDPMScheduler.step and DDIMScheduler.step (their defaults:
thresholding off, use_clipped_model_output=False, set_alpha_to_one=True), so that samples are
comparable with the most used library. Where the papers and diffusers differ, diffusers is
followed and the docstring says so.

Timesteps are integers 0..T-1 (index t = the paper's step t+1); t_prev < 0 stands for "before the
first step", where abar_prev = 1. t and t_prev are python ints (one step for the whole batch)
or int arrays of shape (B,). Arrays have shape (B, ...), float32 or float64, and keep their
dtype: per-sample coefficients are computed in float64 from the schedule and rounded once.

References
- Ho, Jain, Abbeel 2020, DDPM, arXiv:2006.11239 (eqs. 6-7, 11, 15; Algorithm 2).
- Song, Meng, Ermon 2021, Denoising Diffusion Implicit Models (DDIM), arXiv:2010.02502 (eqs. 12, 16).
- Ho, Salimans 2022, Classifier-Free Diffusion Guidance, arXiv:2207.12598 (eq. 6).
"""
import numbers

import numpy as np

from ..checks import (
    check_choice,
    check_finite,
    check_float_array,
    check_like,
    check_prediction_type,
    check_timesteps,
    per_sample,
)
from ..backend import array_module
from ..gaussian.parameterization import x0_eps_from_model_output

VARIANCE_TYPES = ("fixed_small", "fixed_large")


def classifier_free_guidance(model_output_cond, model_output_uncond, guidance_scale):
    """Guided output = uncond + s (cond - uncond)   (Ho & Salimans 2022, eq. 6 with w = s - 1).

    The paper writes (1 + w) cond - w uncond; diffusers' guidance_scale s = 1 + w, so s = 1
    gives the conditional output, s = 0 the unconditional one. Arrays (B, ...) of the same shape
    and dtype; guidance_scale a finite real number. Returns a new array of that dtype.
    """
    cond = check_finite(check_float_array(model_output_cond, "model_output_cond"), "model_output_cond")
    uncond = check_finite(
        check_like(cond, model_output_uncond, "model_output_cond", "model_output_uncond"), "model_output_uncond"
    )
    scale = _check_real(guidance_scale, "guidance_scale")
    return uncond + scale * (cond - uncond)


def ddpm_step(
    x_t,
    model_output,
    t,
    schedule,
    noise,
    prediction_type="epsilon",
    variance_type="fixed_small",
    clip_sample=True,
    clip_sample_range=1.0,
    t_prev=None,
    model_output_uncond=None,
    guidance_scale=1.0,
):
    """x_{t_prev} drawn from p(x_{t_prev} | x_t): one ancestral step (DDPM Algorithm 2, eqs. 6-7, 15).

    1. abar_t, abar_prev = abar[t_prev] (1 where t_prev < 0); t_prev defaults to t - 1.
       alpha_t = abar_t / abar_prev, beta_t = 1 - alpha_t: for t_prev = t - 1 these are the
       schedule's alpha_t and beta_t, and a strided sampler (t_prev < t - 1) gets the beta of
       the combined step.
    2. predicted x_0 from the model output (DDPM eq. 15 for "epsilon"; "sample"; "v_prediction").
    3. if clip_sample: x_0 clipped to [-clip_sample_range, clip_sample_range].
    4. mean = sqrt(abar_prev) beta_t / (1 - abar_t) x_0 + sqrt(alpha_t) (1 - abar_prev) / (1 - abar_t) x_t
       (the posterior mean, DDPM eq. 7, at the predicted x_0).
    5. variance: "fixed_small" = max((1 - abar_prev) / (1 - abar_t) beta_t, 1e-20) (beta tilde,
       DDPM eq. 7); "fixed_large" = beta_t (DDPM sec. 3.2, sigma^2 = beta).
    6. x_prev = mean + sqrt(variance) noise, except where t == 0, where x_prev = mean.

    As diffusers (DDPMScheduler.step), not the paper: clipping of x_0 (DDPM's code clips, its
    Algorithm 2 does not); the 1e-20 floor; "fixed_large" is the plain beta_t at every step (the
    DDPM code uses beta tilde at the first step); beta_t is recomputed from abar even when not
    strided; noise is added wherever t > 0, also at a final strided step whose t_prev < 0.

    x_t, model_output: (B, ...) same shape and dtype (float32/float64), no NaN/inf.
    t: int or int array (B,) in 0..T-1; t_prev: None, int or int array (B,), each < t.
    noise: standard normal (B, ...) like x_t; may be None only where t == 0 everywhere.
    model_output_uncond: if given, model_output is the conditional output and the step uses
      classifier_free_guidance(model_output, model_output_uncond, guidance_scale).
    Returns x_prev: (B, ...) of x_t's dtype.
    """
    x_t, model_output, noise = _checked_step_arrays(x_t, model_output, noise, model_output_uncond, guidance_scale)
    model_output = _guided(model_output, model_output_uncond, guidance_scale)
    check_prediction_type(prediction_type)
    check_choice(variance_type, VARIANCE_TYPES, "variance_type")
    clip_sample_range = _check_clip(clip_sample, clip_sample_range)
    t, t_prev = _checked_pair_of_timesteps(t, t_prev, schedule, x_t.shape[0])
    if noise is None and (t > 0).any():
        raise ValueError("noise is needed where t > 0 (noise may be None only if t == 0 for every sample)")

    # 1. abar_t, abar_prev and the (possibly strided) step's alpha_t, beta_t: float64, shape (B,)
    abar_t, abar_prev = _alphas_cumprod_pair(schedule, t, t_prev)
    alpha_t = abar_t / abar_prev
    beta_t = 1 - alpha_t

    # 2-3. predicted x_0, clipped
    x0_pred, _ = x0_eps_from_model_output(x_t, model_output, abar_t, prediction_type)
    x0_pred = _clipped(x0_pred, clip_sample, clip_sample_range)

    # 4. posterior mean mu_tilde(x_t, x_0)  (DDPM eq. 7)
    coef_x0 = abar_prev**0.5 * beta_t / (1 - abar_t)
    coef_xt = alpha_t**0.5 * (1 - abar_prev) / (1 - abar_t)
    mean = per_sample(coef_x0, x_t) * x0_pred + per_sample(coef_xt, x_t) * x_t

    # 5. variance of the step
    if variance_type == "fixed_small":
        variance = np.maximum((1 - abar_prev) / (1 - abar_t) * beta_t, 1e-20)  # beta tilde, DDPM eq. 7
    else:
        variance = beta_t  # "fixed_large"

    # 6. add noise where t > 0
    if noise is None:
        return mean
    std = np.where(t > 0, variance**0.5, 0.0)
    return mean + per_sample(std, x_t) * noise


def ddim_step(
    x_t,
    model_output,
    t,
    t_prev,
    schedule,
    eta=0.0,
    noise=None,
    prediction_type="epsilon",
    clip_sample=True,
    clip_sample_range=1.0,
    model_output_uncond=None,
    guidance_scale=1.0,
):
    """x_{t_prev} by the DDIM update (DDIM eq. 12 with sigma_t(eta) of eq. 16).

    1. abar_t, abar_prev = abar[t_prev] (1 where t_prev < 0: diffusers' set_alpha_to_one=True).
    2. predicted x_0 and eps from the model output; eps is the unclipped one.
    3. if clip_sample: x_0 clipped to [-clip_sample_range, clip_sample_range].
    4. sigma^2 = eta^2 (1 - abar_prev) / (1 - abar_t) (1 - abar_t / abar_prev)        DDIM eq. 16
    5. x_prev = sqrt(abar_prev) x_0 + sqrt(1 - abar_prev - sigma^2) eps + sigma noise   DDIM eq. 12
       (the middle term is "the direction pointing to x_t").

    As diffusers (DDIMScheduler.step, use_clipped_model_output=False): eps is not recomputed
    from the clipped x_0; the noise term is added only when eta > 0. One deviation where
    diffusers gives NaN: 1 - abar_prev - sigma^2, which is >= 0 in exact arithmetic for
    0 <= eta <= 1, is floored at 0 against rounding.

    x_t, model_output: (B, ...) same shape and dtype, no NaN/inf. t: int or int array (B,) in
    0..T-1; t_prev: int or int array (B,), each < t, negative allowed (see
    timesteps.previous_timestep). eta in [0, 1]: 0 is deterministic DDIM, 1 has the variance
    of the DDPM posterior. noise: standard normal like x_t, needed only when eta > 0.
    model_output_uncond, guidance_scale: as in ddpm_step. Returns x_prev (B, ...), x_t's dtype.
    """
    x_t, model_output, noise = _checked_step_arrays(x_t, model_output, noise, model_output_uncond, guidance_scale)
    model_output = _guided(model_output, model_output_uncond, guidance_scale)
    check_prediction_type(prediction_type)
    clip_sample_range = _check_clip(clip_sample, clip_sample_range)
    eta = _check_real(eta, "eta")
    if not 0 <= eta <= 1:
        raise ValueError(f"eta must lie in [0, 1] (0: DDIM, 1: DDPM variance), got {eta}")
    if t_prev is None:
        raise ValueError("ddim_step needs t_prev (e.g. timesteps.previous_timestep(t, num_steps, T))")
    t, t_prev = _checked_pair_of_timesteps(t, t_prev, schedule, x_t.shape[0])
    if eta > 0 and noise is None:
        raise ValueError("noise is needed when eta > 0")

    # 1. abar_t, abar_prev: float64, shape (B,)
    abar_t, abar_prev = _alphas_cumprod_pair(schedule, t, t_prev)

    # 2-3. predicted x_0 (clipped) and eps (unclipped)
    x0_pred, eps_pred = x0_eps_from_model_output(x_t, model_output, abar_t, prediction_type)
    x0_pred = _clipped(x0_pred, clip_sample, clip_sample_range)

    # 4. sigma_t(eta)  (DDIM eq. 16)
    sigma = eta * ((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)) ** 0.5

    # 5. DDIM eq. 12
    direction_coef = np.maximum(1 - abar_prev - sigma**2, 0.0) ** 0.5  # "direction pointing to x_t"
    x_prev = per_sample(abar_prev**0.5, x_t) * x0_pred + per_sample(direction_coef, x_t) * eps_pred
    if eta > 0:
        x_prev = x_prev + per_sample(sigma, x_t) * noise
    return x_prev


# ---- plumbing shared by the two steps ------------------------------------------------------


def _alphas_cumprod_pair(schedule, t, t_prev):
    """abar_t and abar_{t_prev} (1 where t_prev < 0), float64 arrays (B,)."""
    abar_t = schedule.alphas_cumprod[t]
    abar_prev = np.where(t_prev >= 0, schedule.alphas_cumprod[np.maximum(t_prev, 0)], 1.0)
    return abar_t, abar_prev


def _checked_step_arrays(x_t, model_output, noise, model_output_uncond, guidance_scale):
    x_t = check_finite(check_float_array(x_t, "x_t"), "x_t")
    model_output = check_finite(check_like(x_t, model_output, "x_t", "model_output"), "model_output")
    if noise is not None:
        noise = check_finite(check_like(x_t, noise, "x_t", "noise"), "noise")
    if model_output_uncond is None and guidance_scale != 1.0:
        raise ValueError(
            f"guidance_scale={guidance_scale!r} needs model_output_uncond (the unconditional output); "
            f"without it, leave guidance_scale at 1.0"
        )
    return x_t, model_output, noise


def _guided(model_output, model_output_uncond, guidance_scale):
    if model_output_uncond is None:
        return model_output
    return classifier_free_guidance(model_output, model_output_uncond, guidance_scale)


def _checked_pair_of_timesteps(t, t_prev, schedule, batch):
    t = check_timesteps(t, schedule.T, batch)
    if t_prev is None:
        return t, t - 1
    t_prev = check_timesteps(t_prev, schedule.T, batch, name="t_prev", allow_negative=True)
    if (t_prev >= t).any():
        i = int(np.flatnonzero(t_prev >= t)[0])
        raise ValueError(
            f"t_prev must be smaller than t (a reverse step), got t={t[i]}, t_prev={t_prev[i]} at sample {i}"
        )
    return t, t_prev


def _check_real(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    return float(value)


def _check_clip(clip_sample, clip_sample_range):
    if not isinstance(clip_sample, (bool, np.bool_)):
        raise TypeError(f"clip_sample must be True or False, got {clip_sample!r}")
    clip_sample_range = _check_real(clip_sample_range, "clip_sample_range")
    if clip_sample and clip_sample_range <= 0:
        raise ValueError(f"clip_sample_range must be > 0, got {clip_sample_range}")
    return clip_sample_range


def _clipped(x0_pred, clip_sample, clip_sample_range):
    if not clip_sample:
        return x0_pred
    return array_module(x0_pred).clip(x0_pred, -clip_sample_range, clip_sample_range)
