"""DDPM: ancestral sampling, one draw of p(x_{t_prev} | x_t) per step (Ho et al. 2020, Algorithm 2).

    x_0_pred = from the model output (eps: DDPM eq. 15; x_0; v: Salimans & Ho 2022)
    x_prev   = mu_tilde(x_t, x_0_pred) + sqrt(variance) z,   z ~ N(0, I)     DDPM eqs. 6-7, Algorithm 2

Numbers follow diffusers' DDPMScheduler.step (defaults: thresholding off), so that samples are
comparable with the most used library; where the paper and diffusers differ, diffusers is
followed and the docstring says so. Timesteps are integers 0..T-1 (index t = the paper's step
t+1); t_prev < 0 stands for "before the first step", where abar_prev = 1.

Reference: Ho, Jain, Abbeel 2020, DDPM, arXiv:2006.11239 (eqs. 6-7, 15; Algorithm 2).
"""
import numpy as np

from ..backend import per_sample
from ..checks import (LEARNED_VARIANCE_TYPES, check_noise_given, check_step_arrays,
                      check_step_options, check_step_timesteps, check_variance_type)
from ..gaussian.guidance import classifier_guided_mean
from ..gaussian.parameterization import x0_eps_from_model_output
from ..gaussian.learned_variance import learned_log_variance, split_model_output, step_log_betas
from ..gaussian.posterior import posterior_mean_coefficients, posterior_variance
from .common import clipped, draw_noise, guided
from .registry import register_sampler
from .timesteps import timestep_pairs


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

    1. abar_t, abar_prev = abar[t_prev] (1 where t_prev < 0); t_prev defaults to t - 1. The
       step's alpha_t = abar_t / abar_prev and beta_t = 1 - alpha_t are the schedule's for
       t_prev = t - 1, and those of the combined step for a strided sampler (t_prev < t - 1).
    2. predicted x_0 from the (guided) model output.
    3. if clip_sample: x_0 clipped to [-clip_sample_range, clip_sample_range].
    4. mean = mu_tilde(x_t, x_0), the posterior mean (DDPM eq. 7) at the predicted x_0.
    5. variance: "fixed_small" = max(beta_tilde, 1e-20) (DDPM eq. 7); "fixed_large" = beta_t
       (DDPM sec. 3.2, sigma^2 = beta); "learned_range": log variance = frac log beta_t +
       (1 - frac) log max(beta_tilde, 1e-20), frac = (v + 1) / 2 (improved DDPM eq. 15, per
       element; refdiff.gaussian.learned_variance); "learned": log variance = v.
    6. x_prev = mean + sqrt(variance) noise, except where t == 0, where x_prev = mean.

    As diffusers (DDPMScheduler.step), not the paper: clipping of x_0 (DDPM's code clips, its
    Algorithm 2 does not); the 1e-20 floor; "fixed_large" is the plain beta_t at every step (the
    DDPM code uses beta tilde at the first step); beta_t is recomputed from abar even when not
    strided; noise is added wherever t > 0, also at a final strided step whose t_prev < 0.

    The learned types read a model_output of 2C channels on axis 1 (C = x_t's): the output, then
    the variance values v, split as diffusers' DDPMScheduler.step does. With guidance only the
    first C channels are guided; v is the conditional output's (as diffusers' DeepFloyd-IF
    pipeline). diffusers' "learned" adds sqrt(v) noise (v read as the variance), refdiff exp(v / 2)
    noise (v read as the log-variance, improved DDPM's LEARNED); "learned_range" agrees.

    x_t, model_output: (B, ...) same shape and dtype (float32/float64), no NaN/inf.
    t: int or int array (B,) in 0..T-1; t_prev: None, int or int array (B,), each < t.
    noise: standard normal (B, ...) like x_t (z of Algorithm 2); may be None only where t == 0.
    model_output_uncond: if given, model_output is the conditional output and the step uses
      the classifier-free-guided output uncond + s (cond - uncond), s = guidance_scale.
    Returns x_prev: (B, ...) of x_t's dtype.
    """
    check_variance_type(variance_type)
    var_values = None
    if variance_type in LEARNED_VARIANCE_TYPES:  # [output, v] on axis 1 (improved DDPM sec. 3.1)
        model_output, var_values = split_model_output(model_output, x_t.shape[1])
        if model_output_uncond is not None:
            model_output_uncond, _ = split_model_output(model_output_uncond, x_t.shape[1], "model_output_uncond")
    x_t, model_output, noise, model_output_uncond = check_step_arrays(x_t, model_output, noise, model_output_uncond)
    clip_sample, clip_sample_range, guidance_scale = check_step_options(
        prediction_type, clip_sample, clip_sample_range, guidance_scale, model_output_uncond)
    t, t_prev = check_step_timesteps(t, t_prev, schedule.T, x_t.shape[0])
    check_noise_given(noise, (t > 0).any(), "where t > 0 (noise may be None only if t == 0 for every sample)")

    # 1. abar_t and abar_prev, float64 (B,)
    abar_t, abar_prev = schedule.alphas_cumprod_at(t), schedule.alphas_cumprod_at(t_prev)

    # 2-3. predicted x_0, clipped
    model_output = guided(model_output, model_output_uncond, guidance_scale)
    x0_pred, _ = x0_eps_from_model_output(x_t, model_output, abar_t, prediction_type)
    x0_pred = clipped(x0_pred, clip_sample, clip_sample_range)

    # 4. posterior mean mu_tilde(x_t, x_0)  (DDPM eq. 7)
    coef_x0, coef_xt = posterior_mean_coefficients(abar_t, abar_prev)
    mean = per_sample(coef_x0, x_t) * x0_pred + per_sample(coef_xt, x_t) * x_t

    # 6. add noise where t > 0
    if noise is None:
        return mean
    if var_values is not None:  # 5. the learned variance, per element  (improved DDPM eq. 15)
        log_beta, log_beta_tilde = step_log_betas(abar_t, abar_prev)
        log_var = learned_log_variance(var_values, per_sample(log_beta, x_t), per_sample(log_beta_tilde, x_t), variance_type)
        std = per_sample(np.where(t > 0, 1.0, 0.0), x_t) * np.exp(0.5 * log_var)
        return mean + std.astype(x_t.dtype, copy=False) * noise
    # 5. variance of the step
    variance = ddpm_variance(abar_t, abar_prev, variance_type)
    std = np.where(t > 0, variance**0.5, 0.0)
    return mean + per_sample(std, x_t) * noise


def step_variance(model_output, x_t, t, t_prev, schedule, variance_type):
    """Sigma_t of the step from t to t_prev (also at t = 0, as guided-diffusion's condition_mean):
    ddpm_variance for a fixed variance_type (a number), exp of the model's learned log-variance
    for a learned one (an array like x_t; improved DDPM eq. 15, the variance channels of model_output)."""
    abar_t, abar_prev = schedule.alphas_cumprod_at(t), schedule.alphas_cumprod_at(t_prev)
    if variance_type not in LEARNED_VARIANCE_TYPES:
        return float(ddpm_variance(abar_t, abar_prev, variance_type))
    _, var_values = split_model_output(model_output, x_t.shape[1])
    log_beta, log_beta_tilde = step_log_betas(abar_t, abar_prev)
    return np.exp(learned_log_variance(var_values, log_beta, log_beta_tilde, variance_type)).astype(x_t.dtype)


def ddpm_variance(abar_t, abar_prev, variance_type):
    """The variance of a DDPM step: "fixed_small" max(beta_tilde, 1e-20) (DDPM eq. 7, floored as
    diffusers), "fixed_large" beta_t = 1 - abar_t / abar_prev (DDPM sec. 3.2)."""
    if variance_type == "fixed_small":
        return np.maximum(posterior_variance(abar_t, abar_prev), 1e-20)
    return 1 - abar_t / abar_prev


@register_sampler("ddpm")
def sample_ddpm(
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
    variance_type="fixed_small",
    clip_sample=True,
    clip_sample_range=1.0,
    guidance_scale=1.0,
    first_step=0,
    classifier_gradient=None,
):
    """DDPM ancestral sampling (DDPM Algorithm 2), over all T steps or a strided sub-sequence.

    x_{t_prev} ~ p(x_{t_prev} | x_t): the posterior q(x_{t_prev} | x_t, x0_pred) with x0_pred from
    the model output (DDPM eqs. 6-7 and 15). With steps < T the step skips from t to t_prev
    (the strided DDPM of diffusers' DDPMScheduler with num_inference_steps). A learned variance
    (variance_type "learned" / "learned_range", 2C-channel outputs) interpolates between the
    strided step's beta and beta_tilde, as diffusers and improved DDPM's respacing do.

    classifier_gradient: None, or a function (x_t, t) -> s grad_x log p_phi(y | x_t) (the scaled
    classifier gradient at the step's input): classifier guidance by Dhariwal & Nichol 2021,
    Algorithm 1, x_{t_prev} ~ N(mean + s Sigma_t grad, Sigma_t). The step draws mean + sqrt(Sigma_t) z,
    so adding Sigma_t s grad to the drawn x_{t_prev} is exactly the draw from the shifted mean, whatever
    clipping did to the mean; Sigma_t is the step's variance: ddpm_variance of t, t_prev for a fixed
    one, the model's (step_variance: improved DDPM eq. 15, per element) for a learned one.
    """
    if eta != 0.0:
        raise ValueError("eta applies to the DDIM sampler; DDPM has no eta (it is DDIM with eta=1)")
    # the fused kernel has the fixed variances only; a learned one runs the reference step
    step = ddpm_step if variance_type in LEARNED_VARIANCE_TYPES else backend.ddpm_step
    for t, t_prev in timestep_pairs(steps, schedule.T, spacing, steps_offset)[first_step:]:  # img2img starts later
        model_output, model_output_uncond = denoise(x, t)
        x_t = x
        x = step(
            x,
            model_output,
            t,
            schedule,
            draw_noise(rng, x),
            prediction_type=prediction_type,
            variance_type=variance_type,
            clip_sample=clip_sample,
            clip_sample_range=clip_sample_range,
            t_prev=t_prev if t_prev != t - 1 else None,
            model_output_uncond=model_output_uncond,
            guidance_scale=guidance_scale,
        )
        if classifier_gradient is not None:  # Algorithm 1: the mean moved by s Sigma_t grad log p_phi(y | x_t)
            variance = step_variance(model_output, x_t, t, t_prev, schedule, variance_type)
            x = classifier_guided_mean(x, variance, classifier_gradient(x_t, t), 1.0)
        yield t, x
