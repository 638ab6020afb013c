"""The score view of sampling: the reverse SDE, predictor-corrector, annealed Langevin dynamics.

A sampler on sigmas (k-diffusion's shape, refdiff.samplers.loop): x is in the variance-exploding
scale x = x_0 + sigma eps (x_t / signal_scale of any process), where q_sigma(x) is the data blurred
by N(0, sigma^2 I), and the score follows from the x_0 prediction D(x; sigma) = denoise(x, i):

    score(x, sigma) = grad_x log q_sigma(x) = (D(x; sigma) - x) / sigma^2           Tweedie; EDM eq. 3

In this scale every process is the VE SDE dx = sqrt(d[sigma^2]/dt) dw (Song et al. 2021 eq. 9 / 30),
whose reverse-time SDE is (Song et al. 2021 eq. 6, Anderson 1982)

    dx = -d[sigma^2] score(x, sigma) + sqrt(d[sigma^2]/dt) dw_bar,   run from sigma_max down.

The samplers:

    score_sde_euler   the reverse SDE by Euler-Maruyama in sigma^2 (Song et al. 2021 eq. 47, the
                      "reverse diffusion" predictor of Algorithm 2)
    score_sde_pc      predictor-corrector: Langevin corrector steps with step size set by the
                      signal-to-noise ratio snr, then the predictor (Song et al. 2021 Algorithms 2, 4)
    annealed_langevin Langevin dynamics at each noise level of the grid in turn, step size
                      proportional to sigma^2 (Song & Ermon 2019, Algorithm 1)

The grid ends at sigma = 0 (the "euler" family's grids): the step to 0 is the noise-free denoising
step x <- D(x; sigma) = x + sigma^2 score (Tweedie's formula), which the authors' code applies as
its last step (score_sde `denoise=True`, ncsnv2 `denoise=True`; Jolicoeur-Martineau et al. 2021).

References
- Song, Sohl-Dickstein, Kingma, Kumar, Ermon, Poole 2021, Score-Based Generative Modeling through
  Stochastic Differential Equations, arXiv:2011.13456, eqs. 6, 9, 46-47, Algorithms 2-4; code:
  score_sde/sampling.py (ReverseDiffusionPredictor, LangevinCorrector).
- Song, Ermon 2019, Generative Modeling by Estimating Gradients of the Data Distribution (NCSN),
  arXiv:1907.05600, Algorithm 1; Song, Ermon 2020 (NCSNv2), arXiv:2006.09011, sec. 4 (the final
  denoising step).
- diffusers ScoreSdeVeScheduler (step_pred, step_correct; options snr, correct_steps).
"""
import math

import numpy as np

from ..checks import check_positive_int, check_positive_real
from .common import draw_noise
from .registry import register_sampler

# ---- shared pieces -----------------------------------------------------------------------------


def score_from_denoised(x, denoised, sigma):
    """(D(x; sigma) - x) / sigma^2: the score of q_sigma from the x_0 prediction (Tweedie; EDM eq. 3)."""
    return (denoised - x) / sigma**2


def reverse_diffusion_step(x, score, sigma, sigma_next, noise):
    """x + (sigma^2 - sigma_next^2) score + sqrt(sigma^2 - sigma_next^2) noise: one Euler-Maruyama
    step of the reverse VE SDE (Song et al. 2021 eq. 47; Algorithm 2, lines 3-5)."""
    d_var = sigma**2 - sigma_next**2
    return x + d_var * score + math.sqrt(d_var) * noise


def langevin_step(x, score, step_size, noise):
    """x + step_size score + sqrt(2 step_size) noise: one step of Langevin dynamics
    (Song et al. 2021 Algorithm 4, line 5; Song & Ermon 2019 eq. 4 with epsilon = 2 step_size)."""
    return x + step_size * score + math.sqrt(2 * step_size) * noise


def snr_step_size(score, noise, snr):
    """2 (snr |z| / |g|)^2 with |.| the per-sample norm averaged over the batch: the corrector's step
    size (Song et al. 2021 Algorithm 4, line 4, with alpha_i = 1 in the VE scale; as the authors'
    LangevinCorrector and diffusers' ScoreSdeVeScheduler.step_correct, one step size per batch)."""
    grad_norm = np.mean(np.linalg.norm(score.reshape(score.shape[0], -1), axis=1))
    noise_norm = np.mean(np.linalg.norm(noise.reshape(noise.shape[0], -1), axis=1))
    return float(2 * (snr * noise_norm / grad_norm) ** 2)  # a Python float keeps a float32 x float32


def denoising_step(denoise, x, i):
    """x <- D(x; sigma_i) = x + sigma_i^2 score: the last step, to sigma = 0 (Tweedie's formula; the
    final `denoise=True` of the score_sde and ncsnv2 code)."""
    return denoise(x, i)


# ---- the samplers --------------------------------------------------------------------------------


@register_sampler("score_sde_euler", grid="euler")
def sample_score_sde_euler(denoise, x, sigmas, rng):
    """The reverse-time SDE by Euler-Maruyama in sigma^2 (Song et al. 2021 eq. 47, Algorithm 2's
    predictor without a corrector):

        x_{i+1} = x_i + (sigma_i^2 - sigma_{i+1}^2) score(x_i, sigma_i) + sqrt(sigma_i^2 - sigma_{i+1}^2) z,
        score = (D(x_i; sigma_i) - x_i) / sigma_i^2;  the step to sigma = 0: x_{i+1} = D(x_i; sigma_i).

    First order (weak), stochastic; one model evaluation and one noise draw per step.
    """
    for i in range(len(sigmas) - 1):
        x = predictor_step(denoise, x, sigmas, i, rng)
    return x


def predictor_step(denoise, x, sigmas, i, rng):
    """One reverse-diffusion step from sigmas[i] to sigmas[i + 1] (Song et al. 2021 eq. 47), or the
    denoising step x = D(x; sigma_i) where the grid ends at sigma = 0."""
    if sigmas[i + 1] == 0:
        return denoising_step(denoise, x, i)
    score = score_from_denoised(x, denoise(x, i), sigmas[i])
    return reverse_diffusion_step(x, score, sigmas[i], sigmas[i + 1], draw_noise(rng, x))


@register_sampler("score_sde_pc", grid="euler")
def sample_score_sde_pc(denoise, x, sigmas, rng, *, snr=0.15, correct_steps=1):
    """Predictor-corrector sampling (Song et al. 2021 Algorithms 2 and 4): at each noise level,
    correct_steps Langevin corrector steps, then one reverse-diffusion predictor step:

        for j = 1 .. correct_steps:   g = score(x, sigma_i), z ~ N(0, I),
            eps = 2 (snr |z| / |g|)^2,   x = x + eps g + sqrt(2 eps) z           Algorithm 4
        x = x + (sigma_i^2 - sigma_{i+1}^2) score(x, sigma_i) + sqrt(sigma_i^2 - sigma_{i+1}^2) z   Algorithm 2
        (the step to sigma = 0: x = D(x; sigma_i))

    The corrector runs before the predictor at the same sigma_i, in the order of the authors'
    pc_sampler and diffusers' ScoreSdeVePipeline (Algorithm 2 lists it after the predictor, at the
    next level: the same sequence but for the ends). snr: the signal-to-noise ratio r, |eps g| /
    |sqrt(2 eps) z| (0.16 in the paper's VE configs, 0.15 diffusers' default); alpha_i = 1 in the
    VE scale. 1 + correct_steps model evaluations per step.
    """
    snr, correct_steps = check_positive_real(snr, "snr"), check_positive_int(correct_steps, "correct_steps", minimum=0)
    for i in range(len(sigmas) - 1):
        for _ in range(correct_steps):
            score = score_from_denoised(x, denoise(x, i), sigmas[i])
            noise = draw_noise(rng, x)
            x = langevin_step(x, score, snr_step_size(score, noise, snr), noise)
        x = predictor_step(denoise, x, sigmas, i, rng)
    return x


@register_sampler("annealed_langevin", grid="euler")
def sample_annealed_langevin(denoise, x, sigmas, rng, *, step_lr=2e-5, n_steps_each=100):
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1): for each noise level sigma_i > 0
    of the grid, from the largest,

        alpha_i = step_lr sigma_i^2 / sigma_L^2                    (sigma_L the smallest positive level)
        n_steps_each times:  x = x + alpha_i / 2 score(x, sigma_i) + sqrt(alpha_i) z

    then, where the grid ends at sigma = 0, the denoising step x = D(x; sigma_L) (NCSNv2 sec. 4).
    step_lr (epsilon = 2e-5) and n_steps_each (T = 100) are the paper's (and the ncsn code's names);
    the step size scales with sigma_L, so the pair suits a grid whose smallest level is ~0.01.
    n_steps_each model evaluations per level.
    """
    step_lr, n_steps_each = check_positive_real(step_lr, "step_lr"), check_positive_int(n_steps_each, "n_steps_each")
    levels = [i for i in range(len(sigmas)) if sigmas[i] > 0]
    sigma_last = sigmas[levels[-1]]
    for i in levels:
        step_size = step_lr * (sigmas[i] / sigma_last) ** 2 / 2   # alpha_i / 2: langevin_step's step
        for _ in range(n_steps_each):
            score = score_from_denoised(x, denoise(x, i), sigmas[i])
            x = langevin_step(x, score, step_size, draw_noise(rng, x))
    if sigmas[-1] == 0:
        x = denoising_step(denoise, x, levels[-1])
    return x
