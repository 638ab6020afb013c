"""The score-based samplers (refdiff/samplers/score_sde.py) with the exact score of a Gaussian mixture.

With the mixture's exact denoiser (so the exact score (D - x) / sigma^2), each sampler started from
x_T ~ q(x_T) exactly must give samples whose mixture weights (the mean responsibility, E_q[r_k] =
w_k), mean and covariance (the 2 x 2 entries) are within 5 standard errors of the mixture's: the
same criterion as tests/test_sampler_convergence.py, at step counts where the sampler's own bias
was measured to be under ~3 standard errors (largest |z| over the nine statistics, seed 2):

    score_sde_euler    200 steps, n = 4000: 1.2 (50 steps: 2.4)
    score_sde_pc       100 steps, n = 4000: 2.8 (200 steps: 2.0)
    annealed_langevin  20 levels x 30 steps, n = 1000: 2.6 (slow run: 20 x 100, n = 4000: 1.4)

Plausible mistakes fail the same check (measured |z|): the SDE's Euler-Maruyama step with the
probability-flow drift (half the score term) 38; its noise std missing a factor sqrt(2) 18; the
Langevin corrector's noise sqrt(eps) for sqrt(2 eps) 13; the corrector's step size from the
inverted ratio |g| / |z| (the samples run away: the model sees inf); annealed Langevin with the
drift alpha_i score for alpha_i / 2 score 6-19.
"""
import math

import numpy as np
import pytest

import refdiff as rd
from refdiff.gaussian.process import DiscreteProcess
from refdiff.samplers import SAMPLERS
from refdiff.samplers import score_sde
from refdiff.samplers.common import draw_noise
from refdiff.samplers.registry import register_sampler
from test_sampler_convergence import LINEAR, MIX

# (sampler, steps, options, samples)
SAMPLER_RUNS = [
    ("score_sde_euler", 200, {}, 4000),
    ("score_sde_pc", 100, {}, 4000),
    ("annealed_langevin", 20, {"n_steps_each": 30}, 1000),
]


def sample_mixture(sampler, steps, n, seed=2, **options):
    """n samples by `sampler` from x_T ~ q(x_{T-1}) exactly, the mixture's exact eps as the model."""
    rng = np.random.default_rng(seed)
    process = DiscreteProcess(LINEAR)
    t_last = float(LINEAR.T - 1)
    x_T = MIX.noised(process.signal_scale(t_last), process.noise_std(t_last)).sample(n, rng)
    return rd.sample_loop(MIX.model(LINEAR), x_T, LINEAR, sampler=sampler, steps=steps, rng=rng, **options)


def mixture_z_scores(x0):
    """(estimate - exact) / standard error for the weights (3), the mean (2) and the covariance (4)."""
    centred = x0 - x0.mean(0)
    z = []
    for samples, exact in ((MIX.responsibilities(x0, 1.0, 0.0), MIX.weights), (x0, MIX.mean()),
                           (np.einsum("ni,nj->nij", centred, centred), MIX.covariance())):
        standard_error = samples.std(0, ddof=1) / math.sqrt(samples.shape[0])
        z.append(((samples.mean(0) - exact) / standard_error).ravel())
    return np.concatenate(z)


@pytest.mark.parametrize("sampler, steps, options, n", SAMPLER_RUNS, ids=[row[0] for row in SAMPLER_RUNS])
def test_score_sampler_reproduces_the_mixture(sampler, steps, options, n):
    z = mixture_z_scores(sample_mixture(sampler, steps, n, **options))
    assert np.abs(z).max() <= 5, f"{sampler}: z-scores (weights, mean, covariance) {np.round(z, 1)}"


@pytest.mark.slow
def test_annealed_langevin_with_the_papers_steps_per_level_reproduces_the_mixture():
    """Song & Ermon's n_steps_each = 100 (the default), 20 levels, 4000 samples (measured |z| <= 1.4)."""
    z = mixture_z_scores(sample_mixture("annealed_langevin", 20, 4000))
    assert np.abs(z).max() <= 5, np.round(z, 1)


# ---- plausible mistakes fail the same check ---------------------------------------------------------


def em_with_ode_drift(denoise, x, sigmas, rng):
    """Wrong: the probability-flow drift (sigma^2 - sigma_next^2) score / 2 with the SDE's noise."""
    for i in range(len(sigmas) - 1):
        if sigmas[i + 1] == 0:
            return denoise(x, i)
        score = score_sde.score_from_denoised(x, denoise(x, i), sigmas[i])
        d_var = sigmas[i] ** 2 - sigmas[i + 1] ** 2
        x = x + d_var / 2 * score + math.sqrt(d_var) * draw_noise(rng, x)
    return x


def em_missing_sqrt2(denoise, x, sigmas, rng):
    """Wrong: the noise std sqrt((sigma^2 - sigma_next^2) / 2)."""
    for i in range(len(sigmas) - 1):
        if sigmas[i + 1] == 0:
            return denoise(x, i)
        score = score_sde.score_from_denoised(x, denoise(x, i), sigmas[i])
        d_var = sigmas[i] ** 2 - sigmas[i + 1] ** 2
        x = x + d_var * score + math.sqrt(d_var / 2) * draw_noise(rng, x)
    return x


def pc_with(corrector):
    """score_sde_pc with another corrector step corrector(x, score, noise, snr)."""
    def sample(denoise, x, sigmas, rng, *, snr=0.15):
        for i in range(len(sigmas) - 1):
            score = score_sde.score_from_denoised(x, denoise(x, i), sigmas[i])
            x = corrector(x, score, draw_noise(rng, x), snr)
            if sigmas[i + 1] == 0:
                return denoise(x, i)
            score = score_sde.score_from_denoised(x, denoise(x, i), sigmas[i])
            x = score_sde.reverse_diffusion_step(x, score, sigmas[i], sigmas[i + 1], draw_noise(rng, x))
        return x
    return sample


def corrector_missing_sqrt2(x, score, noise, snr):
    """Wrong: Langevin noise sqrt(eps) instead of sqrt(2 eps)."""
    step_size = score_sde.snr_step_size(score, noise, snr)
    return x + step_size * score + math.sqrt(step_size) * noise


def corrector_inverted_ratio(x, score, noise, snr):
    """Wrong: the step size 2 (snr |g| / |z|)^2."""
    step_size = score_sde.snr_step_size(noise, score, snr)
    return score_sde.langevin_step(x, score, step_size, noise)


def langevin_full_drift(denoise, x, sigmas, rng, *, n_steps_each=30, step_lr=2e-5):
    """Wrong: x + alpha_i score + sqrt(alpha_i) z (the drift of Algorithm 1 without its 1/2)."""
    levels = [i for i in range(len(sigmas)) if sigmas[i] > 0]
    for i in levels:
        alpha = step_lr * (sigmas[i] / sigmas[levels[-1]]) ** 2
        for _ in range(n_steps_each):
            score = score_sde.score_from_denoised(x, denoise(x, i), sigmas[i])
            x = x + alpha * score + math.sqrt(alpha) * draw_noise(rng, x)
    return denoise(x, levels[-1])


MUTANTS = [
    (em_with_ode_drift, 200, 4000),
    (em_missing_sqrt2, 200, 4000),
    (pc_with(corrector_missing_sqrt2), 100, 4000),
    (pc_with(corrector_inverted_ratio), 100, 4000),
    (langevin_full_drift, 20, 1000),
]


@pytest.mark.parametrize("mutant, steps, n", MUTANTS, ids=["em_ode_drift", "em_missing_sqrt2", "corrector_missing_sqrt2",
                                                            "corrector_inverted_ratio", "langevin_full_drift"])
def test_the_mixture_check_fails_for_a_plausible_mistake(mutant, steps, n):
    name = "test_mutant_score_sampler"
    register_sampler(name, grid="euler")(mutant)
    try:
        with np.errstate(all="ignore"):
            z = mixture_z_scores(sample_mixture(name, steps, n))
    except FloatingPointError:  # the samples ran away: the loop refuses the model's inf
        return
    finally:
        SAMPLERS.pop(name)
    assert np.abs(z).max() > 5, np.round(z, 1)


def test_the_real_pc_corrector_matches_the_mutants_shape():
    """The mutants above differ from score_sde_pc in the one line they name: with the real corrector,
    pc_with gives score_sde_pc's samples exactly (same draws, same order)."""
    real = pc_with(lambda x, score, noise, snr: score_sde.langevin_step(
        x, score, score_sde.snr_step_size(score, noise, snr), noise))
    register_sampler("test_pc_copy", grid="euler")(real)
    try:
        np.testing.assert_array_equal(sample_mixture("test_pc_copy", 20, 200), sample_mixture("score_sde_pc", 20, 200))
    finally:
        SAMPLERS.pop("test_pc_copy")


def test_options_are_checked():
    with pytest.raises(ValueError, match="snr"):
        sample_mixture("score_sde_pc", 5, 10, snr=-1.0)
    with pytest.raises(ValueError, match="n_steps_each"):
        sample_mixture("annealed_langevin", 5, 10, n_steps_each=0)
    with pytest.raises(TypeError, match="snr"):
        sample_mixture("score_sde_euler", 5, 10, snr=0.1)
