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

from .common import draw_noise, fused
from .registry import register_sampler

# ---- shared pieces ----------------------------------------------------------------------------


def to_d(x, sigma, denoised):
    """(x - denoised) / sigma: dx / dsigma of the probability-flow ODE (EDM eq. 4; k-diffusion to_d)."""
    return (x - denoised) / sigma


def euler_step(x, denoised, sigma, sigma_next):
    """x + (sigma_next - sigma) (x - denoised) / sigma: one Euler step of the ODE (EDM Algorithm 1, line 5)."""
    return x + (sigma_next - sigma) * to_d(x, sigma, denoised)


def heun_update_formula(x, d, d_next, half_dt):
    """x + half_dt (d + d_next): the trapezoidal rule with half_dt = (sigma_next - sigma) / 2 (EDM Algorithm 2, line 10)."""
    return x + half_dt * (d + d_next)


def heun_step(x, denoised, x_euler, denoised_next, sigma, sigma_next):
    """Heun's second-order correction of an Euler step (EDM Algorithm 2, lines 9-11):

        x_next = x + (sigma_next - sigma) (d + d') / 2,
        d = to_d(x, sigma, denoised),  d' = to_d(x_euler, sigma_next, denoised_next)

    x_euler = euler_step(x, denoised, sigma, sigma_next) and denoised_next = D(x_euler; sigma_next);
    sigma_next > 0 (a step to 0 keeps x_euler: d' is undefined there). (sigma_next - sigma) / 2 is
    formed once, in the scalars' precision (halving is exact, so this equals dt (d + d') / 2).
    """
    return heun_update_formula(x, to_d(x, sigma, denoised), to_d(x_euler, sigma_next, denoised_next),
                               (sigma_next - sigma) / 2)


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
    steps, step = len(sigmas) - 1, fused(denoise, euler_step)  # the fused kernel on a device backend
    for i in range(steps):
        gamma = churn_gamma(sigmas[i], steps, s_churn, s_tmin, s_tmax)
        x, sigma_hat, denoised = churned(denoise, x, i, sigmas[i], gamma, s_noise, rng)
        x = step(x, denoised, sigma_hat, sigmas[i + 1])
    return x


@register_sampler("euler_ancestral", grid="euler")
def sample_euler_ancestral(denoise, x, sigmas, rng, *, eta=1.0, s_noise=1.0):
    """Ancestral Euler: a deterministic Euler step to sigma_down, then fresh noise of std sigma_up
    (k-diffusion sample_euler_ancestral; the noise split of DDIM eq. 16 in sigma):

        sigma_up   = min(sigma_{i+1}, eta sqrt(sigma_{i+1}^2 (sigma_i^2 - sigma_{i+1}^2) / sigma_i^2))
        sigma_down = sqrt(sigma_{i+1}^2 - sigma_up^2)
        x_{i+1}    = x_i + (sigma_down - sigma_i) (x_i - D(x_i; sigma_i)) / sigma_i + s_noise sigma_up z

    One model evaluation and (where sigma_{i+1} > 0) one noise draw per step. Parity: diffusers'
    EulerAncestralDiscreteScheduler (eta = 1, s_noise = 1), which also draws a noise array at the
    last step and multiplies it by sigma_up = 0; refdiff draws none there (as k-diffusion).
    """
    step = fused(denoise, euler_step)  # the fused kernel on a device backend
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, i)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        x = step(x, denoised, sigmas[i], sigma_down)
        if sigmas[i + 1] > 0 and sigma_up > 0:
            x = x + draw_noise(rng, x) * (s_noise * sigma_up)
    return x


@register_sampler("heun", grid="euler")
def sample_heun(denoise, x, sigmas, rng, *, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    """Heun's method (the trapezoidal rule) on the probability-flow ODE, with churn: EDM Algorithm 2.

        sigma_hat, x_hat as in euler (EDM Algorithm 2 lines 4-6)
        d        = (x_hat - D(x_hat; sigma_hat)) / sigma_hat                      line 7
        x'       = x_hat + (sigma_{i+1} - sigma_hat) d                            line 8 (Euler)
        x_{i+1}  = x_hat + (sigma_{i+1} - sigma_hat) (d + d') / 2,                lines 9-11
                   d' = (x' - D(x'; sigma_{i+1})) / sigma_{i+1}, where sigma_{i+1} > 0 (else x' itself)

    Second order; two model evaluations per step, one at the last step (to sigma = 0): 2N - 1 in all.
    Parity: diffusers' HeunDiscreteScheduler (which has no churn: s_churn = 0).
    """
    steps = len(sigmas) - 1
    euler, heun = fused(denoise, euler_step), fused(denoise, heun_step)  # fused kernels on a device backend
    for i in range(steps):
        gamma = churn_gamma(sigmas[i], steps, s_churn, s_tmin, s_tmax)
        x_hat, sigma_hat, denoised = churned(denoise, x, i, sigmas[i], gamma, s_noise, rng)
        x = euler(x_hat, denoised, sigma_hat, sigmas[i + 1])  # line 8
        if sigmas[i + 1] > 0:  # the trapezoidal correction (EDM Algorithm 2, lines 9-11)
            x = heun(x_hat, denoised, x, denoise(x, i + 1), sigma_hat, sigmas[i + 1])
    return x


def lms_coefficient(sigmas, i, j, order):
    """int_{sigma_i}^{sigma_{i+1}} l_j(s) ds with l_j the Lagrange basis polynomial through
    sigma_i, sigma_{i-1}, .., sigma_{i-order+1} that is 1 at sigma_{i-j} (the Adams-Bashforth weight
    of the derivative j steps back; k-diffusion linear_multistep_coeff). Integrated exactly by
    Gauss-Legendre quadrature with `order` nodes (exact for degree order - 1); diffusers and
    k-diffusion use scipy's quad (epsrel 1e-4, exact to rounding for these polynomials)."""
    nodes = [sigmas[i - k] for k in range(order)]
    u, w = np.polynomial.legendre.leggauss(order)
    lo, hi = sigmas[i], sigmas[i + 1]
    s = (hi - lo) / 2 * u + (hi + lo) / 2
    basis = np.ones_like(s)
    for k, node in enumerate(nodes):
        if k != j:
            basis *= (s - node) / (nodes[j] - node)
    return float((hi - lo) / 2 * np.dot(w, basis))


@register_sampler("lms", grid="euler")
def sample_lms(denoise, x, sigmas, rng, *, order=4):
    """Linear multistep (Adams-Bashforth in sigma) on the probability-flow ODE (k-diffusion
    sample_lms; Karras et al. 2022 sec. 3 discuss it as a baseline):

        d_i     = (x_i - D(x_i; sigma_i)) / sigma_i
        x_{i+1} = x_i + sum_{j < min(i + 1, order)} c_{ij} d_{i-j},   c_{ij} = lms_coefficient(sigmas, i, j, .)

    Up to `order` (default 4) derivatives are reused; one model evaluation per step. Parity:
    diffusers' LMSDiscreteScheduler (step(order=4)).
    """
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise ValueError(f"order must be an integer >= 1, got {order!r}")
    ds = []
    for i in range(len(sigmas) - 1):
        ds.append(to_d(x, sigmas[i], denoise(x, i)))
        ds = ds[-order:]
        current_order = min(i + 1, order)
        for j in range(current_order):
            x = x + lms_coefficient(sigmas, i, j, current_order) * ds[-1 - j]
    return x
