"""DPM-Solver++: exponential integrators of the diffusion ODE in the data prediction x_0.

Notation (docs/NOTATION.md; DPM-Solver writes alpha_t, sigma_t for signal_scale, noise_std):

    x_t       = signal_scale x_0 + noise_std eps                 DPM-Solver (Lu et al. 2022a) eq. 1
    lambda    = log(signal_scale / noise_std) = -log sigma       DPM-Solver eq. 3 (half log-SNR)
    h         = lambda_next - lambda > 0                         the step, in lambda
    D         = denoised, the x_0 prediction at a grid point     (DPM-Solver++ writes x_theta)

The exact solution of the diffusion ODE written in x_0 (DPM-Solver++, Lu et al. 2022b, eq. 8) is

    x_next = (noise_std_next / noise_std) x + signal_scale_next int_lambda^lambda_next e^(-(lambda_next - l)) D dl

and the solvers differ in how they expand D(l) over the step:

    first order (= DDIM)      x_next = (noise_std_next / noise_std) x - signal_scale_next (e^-h - 1) D       DPM-Solver++ eq. 9
    2M (multistep, midpoint)  D -> D_0 + (D_0 - D_prev) / (2 r),  r = h_prev / h                            DPM-Solver++ Algorithm 2
    3M (multistep)            D_0, D_1, D_2 from the last three, with the phi_2, phi_3 weights               diffusers / k-diffusion
    2S, 3S (singlestep)       the same expansions from one start point, the intermediate points on the grid DPM-Solver++ Algorithm 1;
                                                                                                             DPM-Solver Algorithms 1-2
    SDE (sde-dpmsolver++)     x_next = (noise_std_next / noise_std) e^-h x + signal_scale_next (1 - e^-2h) D
                                       + noise_std_next sqrt(1 - e^-2h) z                                     DPM-Solver++ sec. 5 (eq. 18)

The samplers here get x in k-diffusion's variance-exploding scale x / signal_scale = x_0 + sigma eps
(refdiff.samplers.loop). That is the same process with signal_scale = 1 and noise_std = sigma, and
lambda = -log sigma does not change: the formulas below, written with signal_scale and noise_std as
the papers write them, are called with (1, sigma). In that scale the first-order step is
x_next = (sigma_next / sigma) x + (1 - sigma_next / sigma) D, k-diffusion's form.

Every formula is split in two: the per-step coefficients (functions of signal_scale, noise_std and h,
computed once per step in float64 as Python floats: *_coefficients) and the per-element update, an
arithmetic-only function (*_formula) that runs on NumPy arrays here and, compiled, inside the fused
kernel (kernels/dpmpp_2m_step.py).

Parity: each sampler reproduces diffusers' DPMSolverMultistepScheduler / DPMSolverSinglestepScheduler
(algorithm_type "dpmsolver++" or "sde-dpmsolver++"), their grids and final-step rules included
(tests/test_dpm_solver.py against tests/data/diffusers_dpm_golden.npz). Deliberate differences:
diffusers keeps alphas_cumprod, the sigma grid and every coefficient in float32; refdiff in float64
(its schedules) and in Python floats (the coefficients), so results differ by float32 rounding of
those tables only; and dpmpp_3m_sde's D_2 weight is k-diffusion's, not diffusers' (a sign slip
there: third_order_weight). On the cosine schedule diffusers' multistep scheduler does not round the time of a
Karras sigma but truncates it (it skips .round() for squaredcos_cap_v2); refdiff rounds on every
schedule.

References: Lu, Zhou, Bao, Chen, Li, Zhu 2022a, DPM-Solver, arXiv:2206.00927; Lu et al. 2022b,
DPM-Solver++, arXiv:2211.01095; Crowson, k-diffusion sampling.py (sample_dpmpp_2m, _3m_sde);
diffusers scheduling_dpmsolver_multistep.py, scheduling_dpmsolver_singlestep.py (0.42.1).
"""
import math

import numpy as np

from ..checks import check_choice, check_flag
from ..gaussian.process import DiscreteProcess
from .common import draw_noise, fused
from .grids import Grid, continuous_grid, exponential_sigmas, karras_sigmas, register_grid_family
from .registry import register_sampler
from .timesteps import inference_timesteps

SOLVER_TYPES = ("midpoint", "heun")
FINAL_SIGMAS_TYPES = ("zero", "sigma_min")

# ---- lambda and the step -------------------------------------------------------------------------


def lambda_from_scales(signal_scale, noise_std):
    """lambda = log(signal_scale / noise_std) (DPM-Solver eq. 3); +inf where noise_std = 0 (the data)."""
    return math.inf if noise_std == 0 else math.log(signal_scale / noise_std)


def ve_scales(sigma):
    """(signal_scale, noise_std) = (1, sigma): the variance-exploding view x / signal_scale = x_0 + sigma eps
    in which the samplers get x (EDM sec. 2); lambda = -log sigma is the same as on the model's scale."""
    return 1.0, sigma


# ---- per-step coefficients (float64 scalars) -----------------------------------------------------


def first_order_coefficients(signal_scale_next, noise_std, noise_std_next, h):
    """(noise_ratio, data_coef) of the first-order step x_next = noise_ratio x + data_coef D:
    noise_std_next / noise_std and -signal_scale_next (e^-h - 1)   (DPM-Solver++ eq. 9; DDIM)."""
    return noise_std_next / noise_std, -signal_scale_next * math.expm1(-h)


def sde_first_order_coefficients(signal_scale_next, noise_std, noise_std_next, h):
    """(noise_ratio, data_coef, noise_coef) of the SDE step x_next = noise_ratio x + data_coef D + noise_coef z:
    (noise_std_next / noise_std) e^-h, signal_scale_next (1 - e^-2h), noise_std_next sqrt(1 - e^-2h)
    (DPM-Solver++ sec. 5, SDE-DPM-Solver++1; diffusers' sde-dpmsolver++)."""
    one_minus_e2h = -math.expm1(-2.0 * h)
    return noise_std_next / noise_std * math.exp(-h), signal_scale_next * one_minus_e2h, \
        noise_std_next * math.sqrt(one_minus_e2h)


def second_order_weight(signal_scale_next, h, solver_type, sde=False):
    """The weight of D_1 (the first divided difference in lambda) in a second-order step:
    midpoint: half the first-order data weight, -signal_scale_next (e^-h - 1) / 2   (DPM-Solver++ Algorithm 2);
    heun: signal_scale_next ((e^-h - 1) / h + 1)                 (DPM-Solver++ eq. 9's phi_2 term; DPM-Solver-2 heun);
    the SDE variant with 2h in place of h: signal_scale_next (1 - e^-2h) / 2, or
    signal_scale_next ((1 - e^-2h) / (-2h) + 1)                                      (diffusers' sde-dpmsolver++)."""
    if sde:
        if solver_type == "midpoint":
            return -0.5 * signal_scale_next * math.expm1(-2.0 * h)
        return signal_scale_next * (-math.expm1(-2.0 * h) / (-2.0 * h) + 1.0)
    if solver_type == "midpoint":
        return -0.5 * signal_scale_next * math.expm1(-h)
    return signal_scale_next * (math.expm1(-h) / h + 1.0)


def third_order_weight(signal_scale_next, h, sde=False):
    """The weight of D_2 (the second divided difference) in a third-order step:
    -signal_scale_next ((e^-h - 1 + h) / h^2 - 1/2)            (DPM-Solver++ / DPM-Solver phi_3; diffusers);
    SDE: the same with 2h for h, -signal_scale_next ((e^-2h - 1 + 2h) / (2h)^2 - 1/2)
    = signal_scale_next ((1 - e^-2h - 2h) / (2h)^2 + 1/2)   (k-diffusion sample_dpmpp_3m_sde, eta = 1:
    x - phi_3 d2 with phi_3 = phi_2 / 2h - 1/2). It is the integral of the SDE's kernel 2 e^(-2(h - u))
    against the quadratic term u^2 / 2 of D(lambda_s + u), over h^2: the weight is O(h) and D_2 O(h^2).

    Deliberate difference from diffusers 0.42.1, whose sde-dpmsolver++ third-order step has - 1/2 there
    (diffusers_sde_third_order_weight): an O(1) weight on D_2, which costs the samples their
    covariance (tests/test_sampler_convergence.py: 10-25 standard errors at 20-200 steps on the
    mixture, within sampling error with this weight); tests/test_dpm_solver_parity.py shows that
    refdiff and diffusers differ by this weight only."""
    if sde:
        return signal_scale_next * ((-math.expm1(-2.0 * h) - 2.0 * h) / (2.0 * h) ** 2 + 0.5)
    return -signal_scale_next * ((math.expm1(-h) + h) / h**2 - 0.5)


def diffusers_sde_third_order_weight(signal_scale_next, h):
    """diffusers 0.42.1's weight of D_2 in its sde-dpmsolver++ third-order step (multistep_dpm_solver_
    third_order_update): signal_scale_next ((1 - e^-2h - 2h) / (2h)^2 - 1/2), the sign of the 1/2
    flipped against third_order_weight(sde=True). Not used by the samplers; the parity tests swap it in."""
    return signal_scale_next * ((-math.expm1(-2.0 * h) - 2.0 * h) / (2.0 * h) ** 2 - 0.5)


# ---- per-element updates (arithmetic only: arrays here, float32 scalars in the kernels) ------------


def divided_difference_formula(denoised_newer, denoised_older, inv_r):
    """D_1 = (D_newer - D_older) / r, given 1 / r, r = (lambda_newer - lambda_older) / h
    (DPM-Solver++ Algorithm 2's (1 / (2 r)) (D_0 - D_prev), without the 1/2)."""
    return inv_r * (denoised_newer - denoised_older)


def dpmpp_update_formula(x, noise_ratio, d0, data_coef, d1, d1_coef):
    """x_next = noise_ratio x + data_coef D_0 + d1_coef D_1   (the first- and second-order DPM-Solver++ step)."""
    return noise_ratio * x + data_coef * d0 + d1_coef * d1


def third_order_differences(m0, m1, m2, r0, r1):
    """(D_1, D_2) of the multistep third-order step from the last three predictions m0 (newest), m1, m2:
    D1_0 = (m0 - m1) / r0, D1_1 = (m1 - m2) / r1, D_1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1),
    D_2 = (D1_0 - D1_1) / (r0 + r1)     (diffusers multistep_dpm_solver_third_order_update; k-diffusion)."""
    d1_0, d1_1 = (m0 - m1) / r0, (m1 - m2) / r1
    return d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1), (d1_0 - d1_1) / (r0 + r1)


# ---- one whole step: the twin of the fused dpmpp_2m kernel ------------------------------------------


def dpmpp_2m_coefficients(sigma, sigma_next, sigma_prev=None, solver_type="midpoint"):
    """(noise_ratio, data_coef, d1_coef, inv_r) of the 2M step from sigma to sigma_next in the
    variance-exploding scale (signal_scale = 1, noise_std = sigma), Python floats. sigma_prev None (or
    sigma_next = 0) gives the first-order step (d1_coef = 0)."""
    signal_scale, noise_std = ve_scales(sigma)
    signal_scale_next, noise_std_next = ve_scales(sigma_next)
    lam, lam_next = lambda_from_scales(signal_scale, noise_std), lambda_from_scales(signal_scale_next, noise_std_next)
    h = lam_next - lam
    noise_ratio, data_coef = first_order_coefficients(signal_scale_next, noise_std, noise_std_next, h)
    if sigma_prev is None or sigma_next == 0:
        return noise_ratio, data_coef, 0.0, 0.0
    h_prev = lam - lambda_from_scales(*ve_scales(sigma_prev))
    return noise_ratio, data_coef, second_order_weight(signal_scale_next, h, solver_type), h / h_prev


def dpmpp_2m_step(x, denoised, denoised_prev, sigma, sigma_next, sigma_prev, solver_type="midpoint"):
    """One DPM-Solver++(2M) step (DPM-Solver++ Algorithm 2), x in the variance-exploding scale:

        h = lambda_next - lambda, r = h_prev / h, lambda = -log sigma
        D_1 = (D - D_prev) / r
        x_next = (sigma_next / sigma) x - (e^-h - 1) D + w D_1,   w = -(e^-h - 1) / 2 (midpoint) or (e^-h - 1) / h + 1 (heun)

    x, denoised, denoised_prev: arrays of one shape (x's dtype kept); denoised_prev None for the
    first-order step (the first step, or a final step to sigma_next = 0). sigma > sigma_next >= 0,
    sigma_prev > sigma: Python floats. The twin of the fused kernel refdiff.kernels.dpmpp_2m_step.
    """
    noise_ratio, data_coef, d1_coef, inv_r = dpmpp_2m_coefficients(sigma, sigma_next, sigma_prev, solver_type)
    if denoised_prev is None or d1_coef == 0.0:
        return noise_ratio * x + data_coef * denoised
    d1 = divided_difference_formula(denoised, denoised_prev, inv_r)
    return dpmpp_update_formula(x, noise_ratio, denoised, data_coef, d1, d1_coef)


# ---- the multistep sampler -----------------------------------------------------------------------


def multistep_order(i, steps, solver_order, done, lower_order_final, euler_at_final, final_zero):
    """The order of multistep step i of `steps` (diffusers DPMSolverMultistepScheduler.step): 1 at the
    start (warm-up: `done` steps taken so far), lower at the end: the last step first order with
    euler_at_final, with lower_order_final and fewer than 15 steps, or on a grid ending at sigma = 0;
    the one before it at most second order with lower_order_final and fewer than 15 steps."""
    last = i == steps - 1
    if solver_order == 1 or done < 1 or (last and (euler_at_final or (lower_order_final and steps < 15) or final_zero)):
        return 1
    if solver_order == 2 or done < 2 or (i == steps - 2 and lower_order_final and steps < 15):
        return 2
    return 3


def _multistep(denoise, x, sigmas, rng, solver_order, sde, solver_type, lower_order_final, euler_at_final):
    """DPM-Solver++ multistep (2M, 3M) and SDE-DPM-Solver++ multistep in the variance-exploding scale."""
    check_choice(solver_type, SOLVER_TYPES, "solver_type")
    check_flag(lower_order_final, "lower_order_final")
    check_flag(euler_at_final, "euler_at_final")
    steps = len(sigmas) - 1
    lambdas = [lambda_from_scales(*ve_scales(s)) for s in sigmas]
    history = []  # the latest predictions, newest last
    # dpmpp_2m on a backend with the fused kernel: its steps are dpmpp_2m_step, one launch each (the
    # reference keeps the lines below, which the twin dpmpp_2m_step equals)
    fused_2m = fused(denoise, dpmpp_2m_step) if solver_order == 2 and not sde else None
    fused_2m = None if fused_2m is dpmpp_2m_step else fused_2m
    for i in range(steps):
        history = (history + [denoise(x, i)])[-3:]
        order = multistep_order(i, steps, solver_order, i, lower_order_final, euler_at_final, sigmas[-1] == 0)
        signal_scale_next, noise_std_next = ve_scales(sigmas[i + 1])
        noise_std = sigmas[i]
        h = lambdas[i + 1] - lambdas[i]
        if sde:
            noise_ratio, data_coef, noise_coef = sde_first_order_coefficients(signal_scale_next, noise_std,
                                                                              noise_std_next, h)
        else:
            noise_ratio, data_coef = first_order_coefficients(signal_scale_next, noise_std, noise_std_next, h)
        d0 = history[-1]
        x_next = noise_ratio * x + data_coef * d0
        if fused_2m is not None and h != 0 and order <= 2:  # dpmpp_2m on a device backend: one fused launch
            x_next = fused_2m(x, d0, history[-2] if order == 2 else None, sigmas[i], sigmas[i + 1],
                              sigmas[i - 1] if order == 2 else None, solver_type)
        elif h == 0:  # a step of length 0 (a Karras grid ending at sigma_min, then "sigma_min"): x stays
            x_next = x  # (diffusers' third-order step divides 0 by 0 there)
        elif order == 2:
            inv_r0 = h / (lambdas[i] - lambdas[i - 1])
            d1 = divided_difference_formula(d0, history[-2], inv_r0)
            x_next = dpmpp_update_formula(x, noise_ratio, d0, data_coef, d1,
                                          second_order_weight(signal_scale_next, h, solver_type, sde))
        elif order == 3:
            r0 = (lambdas[i] - lambdas[i - 1]) / h
            r1 = (lambdas[i - 1] - lambdas[i - 2]) / h
            d1, d2 = third_order_differences(d0, history[-2], history[-3], r0, r1)
            x_next = (dpmpp_update_formula(x, noise_ratio, d0, data_coef, d1,
                                           second_order_weight(signal_scale_next, h, "heun", sde))
                      + third_order_weight(signal_scale_next, h, sde) * d2)
        if sde:  # one draw per step, as diffusers (its weight is 0 on a final step to sigma = 0)
            z = draw_noise(rng, x)
            if h != 0:
                x_next = x_next + noise_coef * z
        x = x_next
    return x


@register_sampler("dpmpp_2m", grid="dpm_multistep")
def sample_dpmpp_2m(denoise, x, sigmas, rng, *, solver_type="midpoint", lower_order_final=True,
                    euler_at_final=False, final_sigmas_type="zero"):
    """DPM-Solver++(2M): second-order multistep, one model evaluation per step (DPM-Solver++ Algorithm 2).

        x_{i+1} = (sigma_{i+1} / sigma_i) x_i - (e^-h_i - 1) (D_i + (D_i - D_{i-1}) / (2 r_i)),
        h_i = lambda_{i+1} - lambda_i, r_i = h_{i-1} / h_i, lambda = -log sigma

    The first step is first order (no D_{i-1} yet). Options as diffusers' DPMSolverMultistepScheduler
    (algorithm_type="dpmsolver++", solver_order=2): solver_type "midpoint" (above) or "heun"
    (weight (e^-h - 1) / h + 1 on (D_i - D_{i-1}) / r_i); lower_order_final: a first-order last step
    when there are fewer than 15 steps; euler_at_final: always a first-order last step; a grid ending
    at sigma = 0 always ends with a first-order step (diffusers, k-diffusion); final_sigmas_type
    "zero" or "sigma_min" (the grid's last sigma: 0, or the schedule's smallest; used by the grid).
    Second order (the convergence tests measure it).
    """
    return _multistep(denoise, x, sigmas, rng, 2, False, solver_type, lower_order_final, euler_at_final)


@register_sampler("dpmpp_3m", grid="dpm_multistep")
def sample_dpmpp_3m(denoise, x, sigmas, rng, *, solver_type="midpoint", lower_order_final=True,
                    euler_at_final=False, final_sigmas_type="zero"):
    """DPM-Solver++(3M): third-order multistep as diffusers (solver_order=3) and k-diffusion write it:

        x_{i+1} = (sigma_{i+1} / sigma_i) x_i - (e^-h - 1) D_0 + ((e^-h - 1) / h + 1) D_1
                  - ((e^-h - 1 + h) / h^2 - 1/2) D_2
        D1_0 = (D_i - D_{i-1}) / r0, D1_1 = (D_{i-1} - D_{i-2}) / r1, D_1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1),
        D_2 = (D1_0 - D1_1) / (r0 + r1);  r0 = h_{i-1} / h, r1 = h_{i-2} / h

    Warm-up: first, then second order (solver_type applies to those second-order steps, as in
    diffusers). Options and final-step rules as dpmpp_2m (lower_order_final also makes the step
    before the last second order). D_1 here is a second-order estimate of the
    derivative at the start of the step, but the phi_2 weight is applied to it as if it were exact,
    so the step is second order in practice: measured in the convergence tests, kept for parity.
    """
    return _multistep(denoise, x, sigmas, rng, 3, False, solver_type, lower_order_final, euler_at_final)


@register_sampler("dpmpp_2m_sde", grid="dpm_multistep")
def sample_dpmpp_2m_sde(denoise, x, sigmas, rng, *, solver_type="midpoint", lower_order_final=True,
                        euler_at_final=False, final_sigmas_type="zero"):
    """SDE-DPM-Solver++(2M): the second-order multistep solver of the diffusion SDE (DPM-Solver++ sec. 5;
    diffusers algorithm_type="sde-dpmsolver++", solver_order=2; k-diffusion sample_dpmpp_2m_sde, eta = 1):

        x_{i+1} = (sigma_{i+1} / sigma_i) e^-h x_i + (1 - e^-2h) D_i + w (D_i - D_{i-1}) / r_i
                  + sigma_{i+1} sqrt(1 - e^-2h) z_i
        w = (1 - e^-2h) / 2 (midpoint) or (1 - e^-2h) / (-2h) + 1 (heun)

    One draw z_i from rng per step (also on a last step to sigma = 0, where its weight is 0), as
    diffusers. Options as dpmpp_2m.
    """
    return _multistep(denoise, x, sigmas, rng, 2, True, solver_type, lower_order_final, euler_at_final)


@register_sampler("dpmpp_3m_sde", grid="dpm_multistep")
def sample_dpmpp_3m_sde(denoise, x, sigmas, rng, *, solver_type="midpoint", lower_order_final=True,
                        euler_at_final=False, final_sigmas_type="zero"):
    """SDE-DPM-Solver++(3M): dpmpp_3m's expansion on the SDE (diffusers sde-dpmsolver++, solver_order=3):

        x_{i+1} = (sigma_{i+1} / sigma_i) e^-h x_i + (1 - e^-2h) D_0 + ((1 - e^-2h) / (-2h) + 1) D_1
                  + ((1 - e^-2h - 2h) / (2h)^2 + 1/2) D_2 + sigma_{i+1} sqrt(1 - e^-2h) z_i

    D_1, D_2 as dpmpp_3m; one draw per step. Options as dpmpp_3m. The D_2 weight is k-diffusion's
    (sample_dpmpp_3m_sde); diffusers 0.42.1 writes - 1/2 in place of + 1/2 and its samples lose the
    data's covariance (third_order_weight says more): refdiff matches diffusers up to that weight.
    """
    return _multistep(denoise, x, sigmas, rng, 3, True, solver_type, lower_order_final, euler_at_final)


# ---- the singlestep samplers ---------------------------------------------------------------------


def singlestep_orders(steps, solver_order, lower_order_final, final_zero):
    """The order of each of `steps` model evaluations (diffusers DPMSolverSinglestepScheduler.get_order_list):
    repeating 1, 2, (3): a step of order k uses the k evaluations since its start point; with
    lower_order_final the tail is cut into lower orders so that the last big step ends on the grid's
    end; on a grid ending at sigma = 0 the last evaluation is a first-order step."""
    k = solver_order
    if lower_order_final:
        full, rest = divmod(steps, k)
        if k == 3:
            orders = [1, 2, 3] * (full - 1) + [1, 2] + [1] if rest == 0 else [1, 2, 3] * full + [[1], [1, 2]][rest - 1]
        else:
            orders = [1, 2] * (full - 1) + [1, 1] if rest == 0 else [1, 2] * full + [1]
    else:
        orders = list(range(1, k + 1)) * (steps // k)
    orders = orders[:steps]
    if final_zero:
        orders[-1] = 1
    return orders


def _singlestep(denoise, x, sigmas, rng, solver_order, solver_type, lower_order_final):
    """DPM-Solver++ singlestep (2S, 3S) in the variance-exploding scale, intermediate points on the grid."""
    check_choice(solver_type, SOLVER_TYPES, "solver_type")
    check_flag(lower_order_final, "lower_order_final")
    steps = len(sigmas) - 1
    final_zero = sigmas[-1] == 0
    if not lower_order_final and (steps % solver_order or final_zero):
        raise ValueError(
            f"lower_order_final=False needs a number of steps divisible by the order ({solver_order}, got "
            f"{steps}) and a grid that does not end at sigma = 0 (final_sigmas_type='sigma_min'); diffusers "
            f"switches lower_order_final back to True there")
    orders = singlestep_orders(steps, solver_order, lower_order_final, final_zero)
    lambdas = [lambda_from_scales(*ve_scales(s)) for s in sigmas]
    history, start, x_start = [], 0, x
    for i in range(steps):
        order = orders[i]
        if order == 1:
            start, x_start, history = i, x, []
        history.append(denoise(x, i))
        signal_scale_next, noise_std_next = ve_scales(sigmas[i + 1])
        h = lambdas[i + 1] - lambdas[start]
        noise_ratio, data_coef = first_order_coefficients(signal_scale_next, sigmas[start], noise_std_next, h)
        d0 = history[0]  # the prediction at the start point
        if h == 0:  # a step of length 0 leaves x where it is
            x = x_start
        elif order == 1:
            x = noise_ratio * x_start + data_coef * d0
        elif order == 2:  # DPM-Solver++ Algorithm 1 (2S), the intermediate point at grid point i
            inv_r0 = h / (lambdas[i] - lambdas[start])
            d1 = divided_difference_formula(history[1], d0, inv_r0)
            x = dpmpp_update_formula(x_start, noise_ratio, d0, data_coef, d1,
                                     second_order_weight(signal_scale_next, h, solver_type))
        else:  # 3S (DPM-Solver Algorithm 2 in x_0, as diffusers' singlestep_dpm_solver_third_order_update)
            r0 = (lambdas[i] - lambdas[start]) / h  # the later intermediate point
            r1 = (lambdas[i - 1] - lambdas[start]) / h
            d1_0 = divided_difference_formula(history[1], d0, 1.0 / r1)
            d1_1 = divided_difference_formula(history[2], d0, 1.0 / r0)
            phi2 = second_order_weight(signal_scale_next, h, "heun")
            if solver_type == "midpoint":
                x = dpmpp_update_formula(x_start, noise_ratio, d0, data_coef, d1_1, phi2)
            else:
                d1 = (r0 * d1_0 - r1 * d1_1) / (r0 - r1)
                d2 = 2.0 * (d1_1 - d1_0) / (r0 - r1)
                x = dpmpp_update_formula(x_start, noise_ratio, d0, data_coef, d1, phi2) \
                    + third_order_weight(signal_scale_next, h) * d2
    return x


@register_sampler("dpmpp_2s", grid="dpm_singlestep")
def sample_dpmpp_2s(denoise, x, sigmas, rng, *, solver_type="midpoint", lower_order_final=True,
                    final_sigmas_type="zero"):
    """DPM-Solver++(2S): second-order singlestep (DPM-Solver++ Algorithm 1), as diffusers'
    DPMSolverSinglestepScheduler(solver_order=2) runs it: the grid's points alternate between start
    points s and intermediate points m, and from a start point

        x_m = first-order step s -> m;   D_1 = (D(x_m) - D(x_s)) / r,  r = (lambda_m - lambda_s) / h
        x_t = (sigma_t / sigma_s) x_s - (e^-h - 1) D(x_s) + w D_1,  h = lambda_t - lambda_s
        w = -(e^-h - 1) / 2 (midpoint) or (e^-h - 1) / h + 1 (heun)

    One model evaluation per grid point (steps = NFE). lower_order_final (True here; diffusers'
    default False is switched to True by diffusers whenever it cannot apply, which is always on a grid
    ending at sigma = 0): the tail ends with first-order steps (singlestep_orders). Second order.
    """
    return _singlestep(denoise, x, sigmas, rng, 2, solver_type, lower_order_final)


@register_sampler("dpmpp_3s", grid="dpm_singlestep")
def sample_dpmpp_3s(denoise, x, sigmas, rng, *, solver_type="midpoint", lower_order_final=True,
                    final_sigmas_type="zero"):
    """DPM-Solver++(3S): third-order singlestep (DPM-Solver Algorithm 2 written in x_0, as diffusers'
    DPMSolverSinglestepScheduler(solver_order=3)): start s, intermediate points m1, m2 on the grid,

        x_m1 = first order s -> m1;  x_m2 = second order (2S) s -> m2;  then s -> t with
        D1_0 = (D(x_m1) - D(x_s)) / r1, D1_1 = (D(x_m2) - D(x_s)) / r0  (r_k = (lambda_mk - lambda_s) / h)
        midpoint: x_t = (sigma_t / sigma_s) x_s - (e^-h - 1) D(x_s) + ((e^-h - 1) / h + 1) D1_1
        heun:     ... + ((e^-h - 1) / h + 1) D_1 - ((e^-h - 1 + h) / h^2 - 1/2) D_2,
                  D_1 = (r0 D1_0 - r1 D1_1) / (r0 - r1), D_2 = 2 (D1_1 - D1_0) / (r0 - r1)

    One model evaluation per grid point. Options as dpmpp_2s. Third order.
    """
    return _singlestep(denoise, x, sigmas, rng, 3, solver_type, lower_order_final)


# ---- the grids diffusers' DPM-Solver schedulers build -----------------------------------------------


def dpm_timesteps(steps, T, spacing, steps_offset):
    """The integer timesteps of diffusers' DPM-Solver and UniPC set_timesteps (descending): "linspace"
    (their default) round(linspace(0, T - 1, steps + 1))[::-1][:-1]; "leading" arange(steps + 1) *
    (T // (steps + 1)), reversed, last dropped, + steps_offset; "trailing" as refdiff.inference_timesteps."""
    if spacing == "linspace":
        return np.linspace(0, T - 1, steps + 1).round()[::-1][:-1].astype(np.float64)
    if spacing == "leading":
        return (np.arange(0, steps + 1) * (T // (steps + 1))).round()[::-1][:-1].astype(np.float64) + steps_offset
    return inference_timesteps(steps, T, spacing, steps_offset).astype(np.float64)


def dpm_grid(process, steps, kind, spacing, steps_offset, final_sigmas_type="zero", unipc=False):
    """The grid of diffusers' DPMSolverMultistep/Singlestep and UniPCMultistep schedulers on a DDPM schedule.

    "default": sigma of the schedule at the integer timesteps of `spacing` (dpm_timesteps).
    "karras" / "exponential": sigmas between the schedule's sigma_0 and sigma_{T-1} (the whole table,
    not the ends of the spaced grid), each called at process.t_from_sigma(sigma), rounded to an
    integer for Karras (the quirk: the model sees a rounded t, the solver the exact sigma) and
    truncated for exponential (diffusers casts to int64 without rounding).
    The last sigma: 0 (final_sigmas_type="zero") or sigma_0 ("sigma_min"; UniPC on a Karras or
    exponential grid: that grid's last sigma, which is sigma_0 up to rounding).
    On a continuous process: refdiff.samplers.grids.continuous_grid; "sigma_min" puts its last point
    at sigma(t_min) instead of 0. A grid that ends at sigma_min already (Karras, exponential) and then
    appends sigma_min again has a last step of length 0: refdiff leaves x there unchanged (diffusers'
    third-order and UniPC steps give NaN).
    """
    check_choice(final_sigmas_type, FINAL_SIGMAS_TYPES, "final_sigmas_type")
    if not isinstance(process, DiscreteProcess):
        if final_sigmas_type == "zero":
            return continuous_grid(process, steps, kind)
        grid = continuous_grid(process, steps + 1, kind)  # steps + 1 points down to sigma(t_min), no final 0
        return Grid(grid.sigmas[:-1], grid.times[:-1])
    table = process.sigmas  # ascending in t
    if kind == "default":
        times = dpm_timesteps(steps, process.T, spacing or "linspace", steps_offset)
        sigmas = table[times.astype(np.int64)]
    else:
        make = karras_sigmas if kind == "karras" else exponential_sigmas
        sigmas = make(table[0], table[-1], steps)
        times = np.asarray(process.t_from_sigma(sigmas), dtype=np.float64)
        times = np.round(times) if kind == "karras" else np.trunc(times)
    if final_sigmas_type == "zero":
        last_sigma, last_time = 0.0, 0.0
    else:
        last_sigma = sigmas[-1] if unipc and kind != "default" else table[0]
        last_time = 0.0
    return Grid(np.append(sigmas, last_sigma), np.append(times, last_time))


@register_grid_family("dpm_multistep")
def dpm_multistep_grid(process, steps, kind, spacing, steps_offset, final_sigmas_type="zero"):
    """diffusers' DPMSolverMultistepScheduler.set_timesteps (lambda_min_clipped = -inf): dpm_grid."""
    return dpm_grid(process, steps, kind, spacing, steps_offset, final_sigmas_type)


@register_grid_family("dpm_singlestep")
def dpm_singlestep_grid(process, steps, kind, spacing, steps_offset, final_sigmas_type="zero"):
    """diffusers' DPMSolverSinglestepScheduler.set_timesteps: dpm_grid with "linspace" timesteps only
    (the singlestep scheduler has no timestep_spacing)."""
    if spacing not in (None, "linspace"):
        raise ValueError(f"the DPM-Solver singlestep grid is spaced 'linspace' only (diffusers' "
                         f"DPMSolverSinglestepScheduler), got spacing={spacing!r}")
    return dpm_grid(process, steps, kind, "linspace", steps_offset, final_sigmas_type)
