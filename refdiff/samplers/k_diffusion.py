"""The Euler family on sigmas: euler, euler_ancestral, heun, lms (k-diffusion's names and shape).

Every sampler integrates the probability-flow ODE of the variance-exploding view x = x_0 + sigma eps
(EDM eq. 4 with s(t) = 1, sigma(t) = t, written in sigma; x here is the model's x / signal_scale):

    dx / dsigma = (x - D(x; sigma)) / sigma                                    EDM eq. 4 / Algorithm 1

D(x; sigma) = denoise(x, i) is the x_0 prediction at grid point i. One function per sampler,
fn(denoise, x, sigmas, rng, *, options) -> x at sigmas[-1]; sigmas is a tuple of Python floats,
descending, usually ending at 0 (refdiff.samplers.grids). The options keep diffusers' names
(s_churn, s_tmin, s_tmax, s_noise, eta, order).

Parity: each sampler reproduces diffusers' scheduler of the same name on the same grid (its
docstring says which, and where it deliberately differs); diffusers keeps sigmas in float32 and
upcasts the state to float32, refdiff keeps sigmas in float64 and the state in x's dtype.

References: Karras, Aittala, Aila, Laine 2022, Elucidating the Design Space of Diffusion-Based
Generative Models (EDM), arXiv:2206.00364; Crowson, k-diffusion (k_diffusion/sampling.py);
diffusers' EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, HeunDiscreteScheduler,
LMSDiscreteScheduler.
"""
import math

import numpy as np

from .common import draw_noise
from .registry import register_sampler

# ---- shared pieces ----------------------------------------------------------------------------


def to_d(x, sigma, denoised):
    """(x - denoised) / sigma: dx / dsigma of the probability-flow ODE (EDM eq. 4; k-diffusion to_d)."""
    return (x - denoised) / sigma


def euler_step(x, denoised, sigma, sigma_next):
    """x + (sigma_next - sigma) (x - denoised) / sigma: one Euler step of the ODE (EDM Algorithm 1, line 5)."""
    return x + (sigma_next - sigma) * to_d(x, sigma, denoised)


def get_ancestral_step(sigma, sigma_next, eta=1.0):
    """(sigma_down, sigma_up): a step to sigma_next split into a deterministic step to sigma_down and
    fresh noise of std sigma_up, sigma_down^2 + sigma_up^2 = sigma_next^2 (k-diffusion
    get_ancestral_step; the DDPM posterior's split of the noise for eta = 1, DDIM eq. 16)."""
    if not eta:
        return sigma_next, 0.0
    sigma_up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    sigma_down = math.sqrt(sigma_next**2 - sigma_up**2)
    return sigma_down, sigma_up


def churn_gamma(sigma, steps, s_churn, s_tmin, s_tmax):
    """gamma_i = min(s_churn / N, sqrt(2) - 1) where s_tmin <= sigma <= s_tmax, else 0 (EDM Algorithm 2, line 4)."""
    return min(s_churn / steps, 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0


def churned(denoise, x, i, sigma, gamma, s_noise, rng):
    """(x_hat, sigma_hat, D(x_hat; sigma_hat)): EDM Algorithm 2 lines 4-7. sigma_hat = (1 + gamma) sigma,
    x_hat = x + sqrt(sigma_hat^2 - sigma^2) s_noise z; for gamma = 0, x itself at grid point i."""
    if gamma <= 0:
        return x, sigma, denoise(x, i)
    sigma_hat = sigma * (gamma + 1)
    x = x + draw_noise(rng, x) * (s_noise * math.sqrt(sigma_hat**2 - sigma**2))
    return x, sigma_hat, denoise.at(x, sigma_hat, i=i)


# ---- the samplers -------------------------------------------------------------------------------


@register_sampler("euler", grid="euler")
def sample_euler(denoise, x, sigmas, rng, *, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    """Euler's method on the probability-flow ODE, with EDM's optional churn (EDM Algorithm 2 with the
    second-order correction left out; k-diffusion sample_euler):

        sigma_hat = (1 + gamma_i) sigma_i,  x_hat = x_i + sqrt(sigma_hat^2 - sigma_i^2) s_noise z   (churn)
        x_{i+1}   = x_hat + (sigma_{i+1} - sigma_hat) (x_hat - D(x_hat; sigma_hat)) / sigma_hat

    First order; one model evaluation per step. Parity: diffusers' EulerDiscreteScheduler (s_churn =
    0). With churn, diffusers calls the model at the x and sigma from before the churn and only then
    adds the noise; refdiff follows EDM and k-diffusion (the model sees x_hat at sigma_hat).
    """
    steps = len(sigmas) - 1
    for i in range(steps):
        gamma = churn_gamma(sigmas[i], steps, s_churn, s_tmin, s_tmax)
        x, sigma_hat, denoised = churned(denoise, x, i, sigmas[i], gamma, s_noise, rng)
        x = euler_step(x, denoised, sigma_hat, sigmas[i + 1])
    return x
