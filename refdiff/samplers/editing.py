"""Image editing with a trained diffusion model: img2img (SDEdit), inpainting (replace, RePaint), super-resolution.

All of it is sampling with a plain model function model(x, t) on a schedule (the contract of
refdiff.samplers.loop); nothing is trained here.

img2img, SDEdit (Meng et al. 2022, sec. 3): noise the input x_input to an intermediate time t0 by
q(x_t0 | x_0), then run the reverse process from t0 to 0 with any registered sampler:

    x_t0 = alpha_t0 x_input + sigma_t0 eps                  (DDPM eq. 4; SDEdit Algorithm 1)
    t0: the point t_start of the sampler's grid of `steps` steps, as diffusers' img2img pipelines'
        get_timesteps: init_timestep = min(int(steps * strength), steps), t_start = steps - init_timestep;
        the sampler runs grid[t_start:] (init_timestep steps). strength 0: the input itself;
        strength 1: plain sampling from pure noise x_T = eps (diffusers' inpainting pipelines'
        is_strength_max), so that it equals rd.sample_loop from the same noise.

Inpainting: x_known is known where the mask m is 1 and filled in where m is 0 (RePaint's m; the
mask of diffusers' RePaintPipeline). On the DDPM/DDIM timesteps (leading spacing, step n = T // steps):

    x_prev_known   = sqrt(abar_prev) x_known + sqrt(1 - abar_prev) eps         RePaint eq. 8 (first line)
    x_prev_unknown = the reverse step from x_t (DDIM eq. 12; eta = 1: DDPM's ancestral step)   eq. 8 (second)
    x_prev         = m * x_prev_known + (1 - m) * x_prev_unknown                eq. 8 (third)

"replace" (the baseline of Lugmayr et al. 2022 sec. 4 and of SDEdit's / Song et al. 2021's
imputation) does only that; at the last step abar_prev = 1, so the known pixels come out exactly.
RePaint (Algorithm 1) also jumps back: after some steps it re-noises x by the forward process

    x_t' ~ q(x_t' | x_t) = N(sqrt(abar_t' / abar_t) x_t, (1 - abar_t' / abar_t) I),  t' > t   (DDPM eq. 2, composed; RePaint eq. 9)

and denoises again, jump_length steps at a time, jump_n_sample times per jump point (the time
schedule of RePaint's get_schedule_jump and diffusers' RePaintScheduler.set_timesteps), so that the
unknown part is harmonised with the known one: resampling pulls it towards the model's conditional.

Super-resolution (SR3, Saharia et al. 2021, sec. 2; the DDPM ports' upscaler): the network sees the
low-resolution image upsampled to the output size, concatenated to x_t on the channel axis:

    model_sr(x_t, t) = model(concat[x_t, up(x_low)], t)        up: nearest-neighbour (upsample_nearest)
    training pairs: x_low = down(x_0), down: the area average of factor x factor blocks (downsample_area)

and is sampled with any sampler.

Deviations from diffusers, on purpose: RePaint's re-noising here goes from the timestep x is at
(t_{k-1} = (k-1) n) to the next one (k n); diffusers' undo_step applies betas[k n : (k+1) n] (the
same thing shifted by n - 1 timesteps; equal for steps = T). The known part draws its own noise
(RePaint Algorithm 1, line 4) where diffusers' step reuses the step's noise.

References: Meng et al. 2022, SDEdit, arXiv:2108.01073; Lugmayr et al. 2022, RePaint,
arXiv:2201.09865 (eq. 8-9, Algorithm 1, sec. 4.2 "Resampling"); Saharia et al. 2021, SR3,
arXiv:2104.07636; Ho et al. 2020, DDPM, eqs. 2 and 4.
"""
import numpy as np

from ..checks import (check_float_array, check_image_factor, check_inpaint_mask, check_positive_int,
                      check_strength)
from .ddim import ddim_step
from .loop import run_sampler, start_point
from .registry import sampler_spec

# ---- img2img (SDEdit) ---------------------------------------------------------------------------


def img2img_first_step(steps, strength):
    """t_start: how many of the grid's `steps` points img2img skips (diffusers' get_timesteps):
    init_timestep = min(int(steps * strength), steps); t_start = steps - init_timestep.
    t_start = steps means no step at all (strength too small): the input is returned."""
    init_timestep = min(int(steps * strength), steps)
    return max(steps - init_timestep, 0)


def noised(x0, signal_scale, noise_std, noise):
    """x_t = alpha_t x0 + sigma_t eps: a draw of q(x_t | x0) (DDPM eq. 4 with alpha_t = sqrt(abar_t),
    sigma_t = sqrt(1 - abar_t); any process's scales)."""
    return signal_scale * x0 + noise_std * noise


def sdedit(model, x_input, process, strength, sampler="ddim", steps=50, rng=None, prediction_type="epsilon",
           **options):
    """img2img by SDEdit (Meng et al. 2022, Algorithm 1): x_input noised to the grid point t_start
    (img2img_first_step), then `sampler` on the rest of its grid of `steps` steps.

    model(x, t), process, sampler, prediction_type, options: as rd.sample_loop (steps None: all T for
    ddpm/ddim). x_input (B, ...) in the model's data scale. strength in [0, 1]: 0 returns x_input,
    1 samples from pure noise (eps drawn from rng first, as rd.sample_loop's x_T). rng: a NumPy
    Generator (the noise of q(x_t0 | x_0) is its first draw). Returns an array like x_input.
    """
    check_float_array(x_input, "x_input")
    strength = check_strength(strength)
    rng = np.random.default_rng() if rng is None else rng
    if steps is None and sampler_spec(sampler).works_on == "timesteps":
        steps = int(process.T)
    steps = check_positive_int(steps, "steps")
    first = img2img_first_step(steps, strength)
    if first >= steps:
        return x_input.copy()
    eps = rng.standard_normal(x_input.shape, dtype=x_input.dtype)
    if first == 0 and strength == 1.0:
        x_start = eps  # pure noise, x_T ~ N(0, I): plain sampling
    else:
        _, signal_scale, noise_std = start_point(process, sampler, steps, first, **options)
        x_start = noised(x_input, signal_scale, noise_std, eps).astype(x_input.dtype)
    x, _ = run_sampler(lambda x, t: (model(x, t), None), x_start, process, sampler, steps, rng, prediction_type,
                       first_step=first, **options)
    return x


# ---- inpainting (replace, RePaint) --------------------------------------------------------------


def repaint_time_schedule(steps, jump_length=10, jump_n_sample=10):
    """The list of RePaint's time indices k (0 .. steps - 1), as get_schedule_jump of the RePaint
    repository and diffusers' RePaintScheduler.set_timesteps (before the multiplication by T // steps):

        jumps at k = 0, jump_length, 2 jump_length, .. < steps - jump_length, jump_n_sample - 1 each;
        from k = steps: go down by 1 (append k); at a jump point with jumps left, go up jump_length
        times by 1 (append each) and come down again.

    After the entry k, x is at the level k - 1 (the entry of a step is the time the model sees).
    Length: steps + 2 (jump_n_sample - 1) jump_length * (number of jump points).
    """
    steps = check_positive_int(steps, "steps")
    jump_length = check_positive_int(jump_length, "jump_length")
    jump_n_sample = check_positive_int(jump_n_sample, "jump_n_sample")
    jumps = {k: jump_n_sample - 1 for k in range(0, steps - jump_length, jump_length)}
    schedule = []
    k = steps
    while k >= 1:
        k -= 1
        schedule.append(k)
        if jumps.get(k, 0) > 0:
            jumps[k] -= 1
            for _ in range(jump_length):
                k += 1
                schedule.append(k)
    return schedule


def repaint_walk(steps, T, jump_length=10, jump_n_sample=10):
    """[(t, t_next)]: the timesteps x moves between, from t = (steps - 1) n down to -1 (x_0),
    n = T // steps: a step when t_next < t (the model called at t), a re-noising when t_next > t.
    The levels are the entries of repaint_time_schedule minus one, times n (-1 stays -1: x_0)."""
    n = T // check_positive_int(steps, "steps")
    levels = [steps - 1] + [k - 1 for k in repaint_time_schedule(steps, jump_length, jump_n_sample)]
    times = [k * n if k >= 0 else -1 for k in levels]
    return list(zip(times[:-1], times[1:]))


def known_part(x_known, t, schedule, noise):
    """x_t^known ~ q(x_t | x_known) = sqrt(abar_t) x_known + sqrt(1 - abar_t) eps (RePaint eq. 8,
    first line; DDPM eq. 4); at t < 0 (past the last step) x_known itself, exactly."""
    if t < 0:
        return x_known
    abar_t = float(schedule.alphas_cumprod[t])
    return (abar_t**0.5 * x_known + (1 - abar_t) ** 0.5 * noise).astype(x_known.dtype)


def combined(mask, x_known_part, x_unknown_part):
    """m * x^known + (1 - m) * x^unknown for a mask m in {0, 1} (RePaint eq. 8, third line), taken
    by selection so that the known pixels are copied exactly."""
    return np.where(mask, x_known_part, x_unknown_part)


def renoised(x_t, t, t_next, schedule, noise):
    """x_{t_next} ~ q(x_{t_next} | x_t) = N(sqrt(abar_next / abar_t) x_t, (1 - abar_next / abar_t) I),
    t_next > t: the forward process over t_next - t steps (DDPM eq. 2 composed; RePaint eq. 9 /
    Algorithm 1 line 11, the jump back). t < 0 is x_0 (abar = 1)."""
    abar_t = 1.0 if t < 0 else float(schedule.alphas_cumprod[t])
    ratio = float(schedule.alphas_cumprod[t_next]) / abar_t
    return (ratio**0.5 * x_t + (1 - ratio) ** 0.5 * noise).astype(x_t.dtype)


def repaint(model, x_known, mask, schedule, steps=None, jump_length=10, jump_n_sample=10, eta=1.0, rng=None,
            prediction_type="epsilon", clip_sample=True, clip_sample_range=1.0, callback=None):
    """Inpainting by RePaint (Lugmayr et al. 2022, Algorithm 1): reverse steps whose known part is
    q(x_prev | x_known) (known_part, combined; eq. 8) and jumps back by the forward process
    (renoised; eq. 9) on the walk of repaint_walk.

    model(x, t): the network at integer timestep t (prediction_type as rd.sample_loop); schedule: a
    NoiseSchedule. x_known (B, ...) in the model's data scale; mask: 1 where x_known is kept, 0
    where it is filled in; x_known's shape, or that without the batch axis, or with 1 channel (it
    broadcasts); values 0 and 1 only. steps: the timesteps used (None: T), leading spacing,
    n = T // steps apart. jump_length, jump_n_sample: RePaint's j and r (sec. 4.2; 10 and 10 in the
    paper); jump_n_sample = 1 is the replace method. eta: the reverse step's noise (DDIM eq. 16;
    1: DDPM's ancestral step, the paper's). clip_sample, clip_sample_range: as rd.ddim_step.
    callback(t, t_next, x): after every move. rng: a NumPy Generator.
    Returns x_0 (B, ...) equal to x_known exactly where mask is 1.
    """
    check_float_array(x_known, "x_known")
    mask = check_inpaint_mask(mask, x_known)
    rng = np.random.default_rng() if rng is None else rng
    steps = schedule.T if steps is None else check_positive_int(steps, "steps")
    walk = repaint_walk(steps, schedule.T, jump_length, jump_n_sample)
    x = rng.standard_normal(x_known.shape, dtype=x_known.dtype)  # x_T ~ N(0, I)

    def draw():
        return rng.standard_normal(x.shape, dtype=x.dtype)

    for t, t_next in walk:
        if t_next < t:  # a reverse step from t to t_next, the known part from q(x_{t_next} | x_known)
            t_batch = np.full(x.shape[0], t, dtype=np.int64)
            unknown = ddim_step(x, model(x, t), t_batch, np.full(x.shape[0], t_next, dtype=np.int64), schedule,
                                eta=eta, noise=draw() if eta > 0 else None, prediction_type=prediction_type,
                                clip_sample=clip_sample, clip_sample_range=clip_sample_range)
            x = combined(mask, known_part(x_known, t_next, schedule, draw()), unknown)
        else:  # RePaint's jump back: the forward process from t to t_next
            x = renoised(x, t, t_next, schedule, draw())
        if callback is not None:
            callback(t, t_next, x)
    return x


def inpaint_replace(model, x_known, mask, schedule, steps=None, eta=1.0, rng=None, prediction_type="epsilon",
                    clip_sample=True, clip_sample_range=1.0, callback=None):
    """Inpainting by replacement: after every reverse step the known region is replaced by a draw of
    q(x_prev | x_known) (RePaint eq. 8 without resampling; the baseline of Lugmayr et al. 2022
    sec. 4): repaint with jump_n_sample = 1. The known pixels come out exactly at the end.
    Arguments as repaint."""
    return repaint(model, x_known, mask, schedule, steps=steps, jump_length=1, jump_n_sample=1, eta=eta, rng=rng,
                   prediction_type=prediction_type, clip_sample=clip_sample, clip_sample_range=clip_sample_range,
                   callback=callback)


# ---- super-resolution (SR3) ---------------------------------------------------------------------


def downsample_area(x, factor):
    """x_low = down(x): the mean of each factor x factor block (area averaging): (B, C, H, W) ->
    (B, C, H / factor, W / factor). The low-resolution input SR3 is trained on (Saharia et al. 2021 sec. 4)."""
    factor = check_image_factor(x, factor, "x")
    B, C, H, W = x.shape
    return x.reshape(B, C, H // factor, factor, W // factor, factor).mean(axis=(3, 5))


def upsample_nearest(x_low, factor):
    """up(x_low): each pixel repeated into a factor x factor block (nearest neighbour):
    (B, C, h, w) -> (B, C, h factor, w factor). down(up(x)) = x exactly."""
    factor = check_positive_int(factor, "factor")
    return np.repeat(np.repeat(x_low, factor, axis=2), factor, axis=3)


def concat_condition(x_t, x_cond):
    """[x_t, x_cond] on the channel axis: the input of a network conditioned by concatenation
    (SR3 sec. 2: "we concatenate the low-resolution image with x_t along the channel dimension")."""
    return np.concatenate([x_t, x_cond], axis=1)


def superres(model, x_low, process, factor, sampler="ddim", steps=50, rng=None, prediction_type="epsilon",
             **options):
    """Super-resolution (SR3, Saharia et al. 2021 sec. 2 and Algorithm 2): x_0 of shape
    (B, C, h factor, w factor) sampled with `sampler` from the model given [x_t, up(x_low)]
    (concat_condition, upsample_nearest).

    model(x, t): a network with 2 C input and C output channels; x_low (B, C, h, w) in the data
    scale; the rest as rd.sample_loop. rng: a NumPy Generator (x_T is its first draw)."""
    check_float_array(x_low, "x_low")
    rng = np.random.default_rng() if rng is None else rng
    x_cond = upsample_nearest(x_low, factor)  # (B, C, H, W)
    x_T = rng.standard_normal(x_cond.shape, dtype=x_low.dtype)
    x, _ = run_sampler(lambda x, t: (model(concat_condition(x, x_cond), t), None), x_T, process, sampler, steps, rng,
                       prediction_type, **options)
    return x


__all__ = ["img2img_first_step", "noised", "sdedit", "repaint_time_schedule", "repaint_walk", "known_part",
           "combined", "renoised", "repaint", "inpaint_replace", "downsample_area", "upsample_nearest",
           "concat_condition", "superres"]
