"""DDIM: a non-Markovian reverse process with the DDPM marginals, deterministic for eta = 0.

    x_prev = sqrt(abar_prev) x_0_pred + sqrt(1 - abar_prev - sigma_t^2) eps_pred + sigma_t z     DDIM eq. 12
    sigma_t(eta) = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)          DDIM eq. 16

DDIM writes alpha_t for DDPM's abar_t; refdiff keeps DDPM's abar (docs/NOTATION.md). sigma_t(eta)
is eta times the standard deviation of the DDPM posterior between the two steps, so eta = 1
gives DDPM's variance. Numbers follow diffusers' DDIMScheduler.step (set_alpha_to_one=True:
abar_prev = 1 past the last step). Timesteps are integers 0..T-1; t_prev < 0 is "before the
first step".

Reference: Song, Meng, Ermon 2021, Denoising Diffusion Implicit Models, arXiv:2010.02502
(eqs. 12, 16; sec. 4.2 for the sub-sequence of timesteps).
"""
import numpy as np

from ..backend import per_sample
from ..checks import (
    LEARNED_VARIANCE_TYPES,
    check_eta,
    check_noise_given,
    check_step_arrays,
    check_step_options,
    check_step_timesteps,
    check_t_prev_given,
    check_variance_type,
)
from ..gaussian.learned_variance import split_model_output
from ..gaussian.parameterization import x0_eps_from_model_output
from ..gaussian.posterior import posterior_variance
from .common import clipped, draw_noise, guided
from .registry import register_sampler
from .timesteps import timestep_pairs


def ddim_sigma(abar_t, abar_prev, eta):
    """sigma_t(eta) = eta sqrt(beta_tilde): DDIM eq. 16, whose square root is that of the DDPM
    posterior variance between the two steps (DDPM eq. 7)."""
    return eta * posterior_variance(abar_t, abar_prev) ** 0.5


def ddim_direction_variance(abar_prev, sigma_eta):
    """1 - abar_prev - sigma_t^2, floored at 0: the squared coefficient of eps in DDIM eq. 12
    ("the direction pointing to x_t").

    >= 0 in exact arithmetic for 0 <= eta <= 1; rounding can make it a tiny negative number, where
    diffusers' square root gives NaN. The floor is written (v + |v|) / 2, exact in floating
    point, so that the same line runs on arrays and, compiled, in the kernels.
    """
    v = 1 - abar_prev - sigma_eta * sigma_eta
    return (v + abs(v)) / 2


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
    2. predicted x_0 and eps from the (guided) model output; eps is the unclipped one.
    3. if clip_sample: x_0 clipped to [-clip_sample_range, clip_sample_range].
    4. sigma_t(eta)                                                              DDIM eq. 16
    5. x_prev = sqrt(abar_prev) x_0 + sqrt(1 - abar_prev - sigma_eta^2) eps + sigma_eta noise   DDIM eq. 12

    As diffusers (DDIMScheduler.step, use_clipped_model_output=False): eps is not recomputed
    from the clipped x_0; the noise term is added only when eta > 0. One deviation where
    diffusers gives NaN: 1 - abar_prev - sigma_eta^2, which is >= 0 in exact arithmetic for
    0 <= eta <= 1, is floored at 0 against rounding (ddim_direction_variance).

    x_t, model_output: (B, ...) same shape and dtype, no NaN/inf. t: int or int array (B,) in
    0..T-1; t_prev: int or int array (B,), each < t, negative allowed (see
    samplers.timesteps.previous_timestep). eta in [0, 1]: 0 is deterministic DDIM, 1 has the
    variance of the DDPM posterior. noise: standard normal like x_t, needed only when eta > 0.
    model_output_uncond, guidance_scale: as in ddpm_step. Returns x_prev (B, ...), x_t's dtype.
    """
    x_t, model_output, noise, model_output_uncond = check_step_arrays(x_t, model_output, noise, model_output_uncond)
    clip_sample, clip_sample_range, guidance_scale = check_step_options(
        prediction_type, clip_sample, clip_sample_range, guidance_scale, model_output_uncond)
    eta = check_eta(eta)
    check_t_prev_given(t_prev)
    t, t_prev = check_step_timesteps(t, t_prev, schedule.T, x_t.shape[0])
    check_noise_given(noise, eta > 0, "when eta > 0")

    # 1. abar_t and abar_prev, float64 (B,)
    abar_t, abar_prev = schedule.alphas_cumprod_at(t), schedule.alphas_cumprod_at(t_prev)

    # 2-3. predicted x_0 (clipped) and eps (unclipped)
    model_output = guided(model_output, model_output_uncond, guidance_scale)
    x0_pred, eps_pred = x0_eps_from_model_output(x_t, model_output, abar_t, prediction_type)
    x0_pred = clipped(x0_pred, clip_sample, clip_sample_range)

    # 4. sigma_t(eta)  (DDIM eq. 16)
    sigma_eta = ddim_sigma(abar_t, abar_prev, eta)

    # 5. DDIM eq. 12
    direction_coef = ddim_direction_variance(abar_prev, sigma_eta) ** 0.5
    x_prev = per_sample(abar_prev**0.5, x_t) * x0_pred + per_sample(direction_coef, x_t) * eps_pred
    if eta > 0:
        x_prev = x_prev + per_sample(sigma_eta, x_t) * noise
    return x_prev


@register_sampler("ddim")
def sample_ddim(
    denoise,
    x,
    schedule,
    backend,
    rng,
    steps=None,
    eta=0.0,
    spacing="leading",
    steps_offset=0,
    prediction_type="epsilon",
    clip_sample=True,
    clip_sample_range=1.0,
    guidance_scale=1.0,
    use_clipped_model_output=False,
    first_step=0,
    variance_type="fixed_small",
):
    """DDIM sampling (DDIM eq. 12): deterministic for eta = 0, DDPM-like noise for eta = 1.

    variance_type "learned" / "learned_range": the model outputs 2C channels; DDIM reads the
    first C (eps, x_0 or v) and ignores the learned variance, sigma_t(eta) staying eq. 16's. So does
    diffusers: DDIMScheduler.step has no learned variance, and its pipelines (DeepFloyd IF) split the
    variance channels off before the step (improved DDPM sec. 4's DDIM comparison does the same).

    use_clipped_model_output (diffusers' DDIMScheduler.step option of that name): with
    clip_sample, take eps_pred = (x_t - sqrt(abar_t) clip(x0_pred)) / sqrt(1 - abar_t), the eps
    that agrees with the clipped x0_pred, instead of the raw model eps. Done by handing the step
    the clipped x0_pred as a "sample" prediction. With an imperfect model this keeps x_t from
    running away (the raw eps can overshoot once x_t leaves the data's range; DDPM's posterior
    mean is immune because it only uses the clipped x0_pred).
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    clipped_eps = bool(use_clipped_model_output and clip_sample)
    learned = check_variance_type(variance_type) in LEARNED_VARIANCE_TYPES
    for t, t_prev in timestep_pairs(steps, schedule.T, spacing, steps_offset)[first_step:]:  # img2img starts later
        model_output, model_output_uncond = denoise(x, t)
        if learned:  # the variance channels split off and unused
            model_output = split_model_output(model_output, x.shape[1])[0]
            if model_output_uncond is not None:
                model_output_uncond = split_model_output(model_output_uncond, x.shape[1], "model_output_uncond")[0]
        step_prediction_type, step_clip, step_scale = prediction_type, clip_sample, guidance_scale
        if clipped_eps:  # the clipped x0_pred, given to the step as a "sample" prediction
            model_output = guided(model_output, model_output_uncond, guidance_scale)
            x0_pred, _ = x0_eps_from_model_output(x, model_output, schedule.alphas_cumprod_at(np.full(x.shape[0], t)), prediction_type)
            model_output = clipped(x0_pred, True, clip_sample_range)
            model_output_uncond, step_prediction_type, step_clip, step_scale = None, "sample", False, 1.0
        x = backend.ddim_step(
            x,
            model_output,
            t,
            t_prev,
            schedule,
            eta=eta,
            noise=draw_noise(rng, x) if eta > 0 else None,
            prediction_type=step_prediction_type,
            clip_sample=step_clip,
            clip_sample_range=clip_sample_range,
            model_output_uncond=model_output_uncond,
            guidance_scale=step_scale,
        )
        yield t, x
