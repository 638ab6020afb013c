"""Samplers: the reverse process as loops over the reference steps, and a registry of them.

A sampler turns pure noise x_T into a sample x_0 by calling the model at a sequence of timesteps
and applying one reverse update per call. Every sampler here is a generator function

    sampler(denoise, x, schedule, backend, rng, steps=None, **options)
        yields (t, x) after each update, the last x being the sample

    denoise(x_t, t) -> (model_output, model_output_uncond)
        the model evaluated at the int timestep t; model_output_uncond is None without
        classifier-free guidance, else the null-label output (the step combines the two:
        uncond + s * (cond - uncond), Ho & Salimans 2022 eq. 6)
    backend: refdiff.backend.Backend, whose fused ddpm_step / ddim_step are used (the reference
        functions on "numpy", the CUDA kernels on "cuda")
    rng: the backend's random generator, for the noise of stochastic steps

Samplers register under a name with @register_sampler("name"), so a new one (DPM-Solver++,
Euler, ...) plugs into GaussianDiffusion.sample(sampler="name") without touching the model or
the diffusion class. Timesteps are integers 0..T-1 (index t is the paper's step t+1); t_prev < 0
means "before the first step" (alphas_cumprod_prev = 1).

References: DDPM (Ho et al. 2020) Algorithm 2; DDIM (Song et al. 2021) eq. 12; timestep
spacings as in diffusers (leading / trailing / linspace, steps_offset), Lin et al. 2023 Table 2.
"""
import numpy as np

from ..backend import array_module
from ..gaussian.parameterization import x0_from_eps, x0_from_v
from .reverse import classifier_free_guidance
from .timesteps import inference_timesteps

SAMPLERS = {}


def register_sampler(name):
    """Decorator: register a sampler generator function under `name` (replacing any previous one)."""

    def register(fn):
        SAMPLERS[name] = fn
        return fn

    return register


def get_sampler(name):
    """The sampler registered as `name`; a clear error lists the known names otherwise."""
    if callable(name):
        return name
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}: registered samplers are {sorted(SAMPLERS)}")
    return SAMPLERS[name]


def timestep_pairs(steps, T, spacing="leading", steps_offset=0):
    """[(t, t_prev)] for sampling in `steps` steps out of T: t descending, t_prev the next t (-1 last).

    The sub-sequence tau of DDIM sec. 4.2, chosen by inference_timesteps. t_prev is the next
    timestep of the sequence, which equals diffusers' previous_timestep (t - T // steps) for the
    "leading" and "trailing" spacings and is the right one for "linspace" too.
    """
    if steps is None:
        steps = T
    if not isinstance(steps, (int, np.integer)) or not 1 <= steps <= T:
        raise ValueError(f"steps must be an integer in [1, T={T}], got {steps!r}")
    ts = [int(t) for t in inference_timesteps(int(steps), T, spacing=spacing, steps_offset=steps_offset)]
    return list(zip(ts, ts[1:] + [-1]))


def _noise(rng, x):
    return rng.standard_normal(x.shape, dtype=x.dtype)


@register_sampler("ddpm")
def ddpm(
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
    **options,
):
    """DDPM ancestral sampling (DDPM Algorithm 2), over all T steps or a strided sub-sequence.

    x_{t_prev} ~ p(x_{t_prev} | x_t): the posterior q(x_{t_prev} | x_t, x0_hat) with x0_hat from
    the model output (DDPM eqs. 6-7 and 15). With steps < T the step skips from t to t_prev
    (the strided DDPM of diffusers' DDPMScheduler with num_inference_steps).
    """
    if eta != 0.0:
        raise ValueError("eta applies to the DDIM sampler; DDPM has no eta (it is DDIM with eta=1)")
    for t, t_prev in timestep_pairs(steps, schedule.T, spacing, steps_offset):
        model_output, model_output_uncond = denoise(x, t)
        x = backend.ddpm_step(
            x,
            model_output,
            t,
            schedule,
            _noise(rng, x),
            prediction_type=prediction_type,
            variance_type=variance_type,
            clip_sample=clip_sample,
            clip_sample_range=clip_sample_range,
            t_prev=t_prev if t_prev != t - 1 else None,
            model_output_uncond=model_output_uncond,
            guidance_scale=guidance_scale,
        )
        yield t, x


@register_sampler("ddim")
def ddim(
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
    **options,
):
    """DDIM sampling (DDIM eq. 12): deterministic for eta = 0, DDPM-like noise for eta = 1.

    x_{t_prev} = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma_t^2) eps_hat + sigma_t z,
    sigma_t = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)   (DDIM eq. 16).

    use_clipped_model_output (diffusers' DDIMScheduler.step option of that name): with
    clip_sample, take eps_hat = (x_t - sqrt(abar_t) clip(x0_hat)) / sqrt(1 - abar_t), the eps
    that agrees with the clipped x0_hat, instead of the raw model eps. Done by handing the step
    the clipped x0_hat as a "sample" prediction. With an imperfect model this keeps x_t from
    running away (the raw eps can overshoot once x_t leaves the data's range; DDPM's posterior
    mean is immune because it only uses the clipped x0_hat).
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    clipped_eps = bool(use_clipped_model_output and clip_sample)
    for t, t_prev in timestep_pairs(steps, schedule.T, spacing, steps_offset):
        model_output, model_output_uncond = denoise(x, t)
        if clipped_eps:
            model_output = _clipped_x0(x, model_output, model_output_uncond, guidance_scale, t, schedule,
                                       prediction_type, clip_sample_range)
            model_output_uncond, step_prediction_type, step_clip, step_scale = None, "sample", False, 1.0
        else:
            step_prediction_type, step_clip, step_scale = prediction_type, clip_sample, guidance_scale
        x = backend.ddim_step(
            x,
            model_output,
            t,
            t_prev,
            schedule,
            eta=eta,
            noise=_noise(rng, x) if eta > 0 else None,
            prediction_type=step_prediction_type,
            clip_sample=step_clip,
            clip_sample_range=clip_sample_range,
            model_output_uncond=model_output_uncond,
            guidance_scale=step_scale,
        )
        yield t, x


def _clipped_x0(x_t, model_output, model_output_uncond, guidance_scale, t, schedule, prediction_type, clip_range):
    """clip(x0_hat) from the (guided) model output: the first steps of DDIMScheduler.step."""
    if model_output_uncond is not None:
        model_output = classifier_free_guidance(model_output, model_output_uncond, guidance_scale)
    t_batch = array_module(x_t).full(x_t.shape[0], t, dtype=np.int64)
    if prediction_type == "epsilon":
        x0 = x0_from_eps(x_t, model_output, t_batch, schedule)
    elif prediction_type == "v_prediction":
        x0 = x0_from_v(x_t, model_output, t_batch, schedule)
    else:
        x0 = model_output
    return array_module(x0).clip(x0, -clip_range, clip_range)
