"""UniPC: a unified predictor-corrector of any order for the diffusion ODE in the data prediction x_0.

Notation as refdiff.samplers.dpm_solver (signal_scale, noise_std, lambda = -log sigma, h = lambda_next -
lambda, D = denoised = the x_0 prediction). UniPC (Zhao, Bai, Rao, Zhou, Lu 2023) adds to the
first-order (DDIM) step a combination of divided differences of past predictions:

    D1_k = (D_{i-k} - D_i) / r_k,   r_k = (lambda_{i-k} - lambda_i) / h                 UniPC Algorithm 2
    UniP-p (predictor):  x_{i+1} = (noise_std_{i+1} / noise_std_i) x_i - signal_scale_{i+1} (e^-h - 1) D_i
                                   - signal_scale_{i+1} B(h) sum_k rho^p_k D1_k              UniPC eq. 7 / Algorithm 2
    UniC-p (corrector):  x_i^c   = the same step from x_{i-1} to x_i, with D_i (evaluated at the
                                   predicted x_i) as one more difference, weight rho^c_p       UniPC eq. 8 / Algorithm 2
    rho: the solution of R rho = b, R_{jk} = r_k^(j-1), b_j = phi_{j+1}(-h) j! / B(h)     UniPC eq. 9 (B(h) version)
    B(h) = e^-h - 1 ("bh2", refdiff's only one; "bh1" is B(h) = -h)                     UniPC sec. 3.3, app. C

as diffusers' UniPCMultistepScheduler(predict_x0=True, solver_type="bh2") computes it: the model is
evaluated at the predicted x_i, that evaluation corrects x_i (UniC) and is reused, without a new
evaluation, by the next predictor (UniPC's "no extra NFE"). For order 2 the predictor takes rho = 1/2
and a first-order corrector rho = 1/2 (diffusers' simplification). Warm-up: the order grows by one per
step; with lower_order_final the last steps shrink to the steps left.

The sampler gets x in the variance-exploding scale (signal_scale = 1, noise_std = sigma; see
refdiff.samplers.dpm_solver). The per-step coefficients are computed once per step in float64
(unipc_coefficients); the update itself is one arithmetic-only line (unipc_update_formula).

Parity: diffusers' UniPCMultistepScheduler (bh2, solver_order 2 and 3) with its grid
(refdiff.samplers.dpm_solver.dpm_grid, unipc=True; Karras times rounded, exponential truncated);
tests/test_dpm_solver_parity.py. diffusers keeps its tables and the rho solve in float32, refdiff in float64.

Reference: Zhao, Bai, Rao, Zhou, Lu 2023, UniPC: A Unified Predictor-Corrector Framework for Fast
Sampling of Diffusion Models, arXiv:2302.04867; diffusers scheduling_unipc_multistep.py (0.42.1).
"""
import math

import numpy as np

from ..checks import check_choice, check_flag, check_int_choice
from .dpm_solver import FINAL_SIGMAS_TYPES, dpm_grid, lambda_from_scales, ve_scales
from .grids import register_grid_family
from .registry import register_sampler

SOLVER_ORDERS = (1, 2, 3)


def unipc_coefficients(h, rks, order, corrector):
    """(h_phi_1, B_h, rhos) of a UniP-p or UniC-p step with B(h) = e^-h - 1 (bh2), in the x_0 form:

        h_phi_1 = e^-h - 1 = B_h
        b_j = h phi_{j+1}(-h) j! / B_h, built by phi_{k+1} = (phi_k - 1/k!) / (-h), j = 1..p   UniPC eq. 9
        R_jk = r_k^(j-1), r = (r_1, .., r_{p-1}, 1)
        predictor: rho = R[:p-1, :p-1]^-1 b[:p-1]  (1/2 for p = 2);  corrector: rho = R^-1 b  (1/2 for p = 1)

    h: the step in lambda (> 0, may be inf at a final sigma = 0); rks: r_1..r_{p-1}. Python floats
    and a float64 array.
    """
    hh = -h
    h_phi_1 = math.expm1(hh)
    b_h = h_phi_1  # bh2
    rks = np.append(np.asarray(rks, dtype=np.float64), 1.0)
    h_phi_k, factorial = h_phi_1 / hh - 1, 1
    R, b = [], []
    for j in range(1, order + 1):
        R.append(rks ** (j - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= j + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    R, b = np.array(R), np.array(b)
    if corrector:
        rhos = np.array([0.5]) if order == 1 else np.linalg.solve(R, b)
    elif order == 1:
        rhos = np.zeros(0)
    else:
        rhos = np.array([0.5]) if order == 2 else np.linalg.solve(R[:-1, :-1], b[:-1])
    return h_phi_1, b_h, rhos


def unipc_update_formula(x, noise_ratio, denoised, data_coef, correction, correction_coef):
    """x_next = noise_ratio x + data_coef D + correction_coef sum_k rho_k D1_k   (UniPC Algorithm 2:
    noise_ratio = noise_std_next / noise_std, data_coef = -signal_scale_next (e^-h - 1),
    correction_coef = -signal_scale_next B(h))."""
    return noise_ratio * x + data_coef * denoised + correction_coef * correction


def _unipc_step(x, lambdas, sigmas, history, i, target, order, denoised_target=None):
    """UniP (denoised_target None) from grid point i to `target`, or UniC: the same step with
    denoised_target = D at the target as the last difference. history: predictions, newest (at i) last."""
    signal_scale_next, noise_std_next = ve_scales(sigmas[target])
    h = lambdas[target] - lambdas[i]
    if h == 0:  # a step of length 0 (see dpm_grid) leaves x where it is
        return x
    m0 = history[-1]
    rks, d1s = [], []
    for k in range(1, order):
        rk = (lambdas[i - k] - lambdas[i]) / h
        rks.append(rk)
        d1s.append((history[-(k + 1)] - m0) / rk)
    h_phi_1, b_h, rhos = unipc_coefficients(h, rks, order, corrector=denoised_target is not None)
    correction = 0.0 * m0
    for rho, d1 in zip(rhos, d1s):
        correction = correction + float(rho) * d1
    if denoised_target is not None:
        correction = correction + float(rhos[-1]) * (denoised_target - m0)
    noise_ratio = noise_std_next / sigmas[i]
    return unipc_update_formula(x, noise_ratio, m0, -signal_scale_next * h_phi_1, correction,
                                -signal_scale_next * b_h)


@register_sampler("unipc", grid="unipc")
def sample_unipc(denoise, x, sigmas, rng, *, solver_order=2, lower_order_final=True, final_sigmas_type="zero"):
    """UniPC-p with B(h) = e^-h - 1 (bh2), one model evaluation per step (UniPC Algorithm 2; diffusers
    UniPCMultistepScheduler, predict_x0=True):

        for i = 0 .. N-1:
            D_i = D(x_i; sigma_i)                           (at the predicted x_i)
            x_i <- UniC-q(x_{i-1} -> x_i, with D_i)        (i > 0; q the order of the last predictor)
            x_{i+1} = UniP-p(x_i -> sigma_{i+1})            (p = min(solver_order, i + 1[, N - i]))

    solver_order 1, 2 or 3 (order of accuracy p + 1 with the corrector: 2 is UniPC-2, 3 UniPC-3);
    lower_order_final (default True): the order of step i at most N - i, so the last step is first
    order. lower_order_final=False on a grid that ends at sigma = 0 is refused: the last predictor would
    divide by a step of infinite length (diffusers returns inf / NaN there).

    Measured order (tests/test_sampler_convergence.py: the exact mixture, N steps uniform in log sigma
    from 20 to 0.05, RMS error against the probability-flow ODE; slopes per doubling of N):
      solver_order=2: 3.0 over N = 8 .. 128 (UniC's extra order), 2.25 from 128 to 256.
      solver_order=3: 4.3, 3.8, then 2.2, 2.3, 2.1 over N = 8 .. 256. Not a mistake of the
        implementation (it agrees with diffusers on whole loops, orders 2 and 3): with
        lower_order_final the last step is UniP-1, the first-order DPM-Solver++ / DDIM step, and no
        evaluation follows to correct it. Its local error O(h^2) is the whole error left once the
        higher-order part is small: the last step alone, from the exact solution at sigma_{N-1},
        misses by 8.2e-6 at N = 128 and 2.0e-6 at N = 256, against 8.8e-6 and 2.0e-6 for the whole
        run. diffusers applies this rule at every N for UniPC (not only below 15 steps as for
        DPM-Solver), so refdiff keeps it.
      solver_order=3, lower_order_final=False (sigma_min grid): 4.2, 4.9, 2.7, 3.6, 3.8. The warm-up
        keeps it below 4: the first step is UniP-1 corrected by UniC-1, second order (local O(h^3)),
        so its error is O(h^3) while the later steps' is O(h^4); the two terms of different order
        (and sign) give the irregular slopes.
    """
    check_int_choice(solver_order, SOLVER_ORDERS, "solver_order")
    check_flag(lower_order_final, "lower_order_final")
    steps = len(sigmas) - 1
    if not lower_order_final and solver_order > 1 and sigmas[-1] == 0 and steps > 1:
        raise ValueError("unipc with lower_order_final=False needs a grid that does not end at sigma = 0 "
                         "(final_sigmas_type='sigma_min'): its last step would be of infinite length in lambda")
    lambdas = [lambda_from_scales(*ve_scales(s)) for s in sigmas]
    history, x_last, order_last = [], None, 1
    for i in range(steps):
        denoised = denoise(x, i)
        if i > 0:  # UniC: correct x_i with the evaluation just made
            x = _unipc_step(x_last, lambdas, sigmas, history, i - 1, i, order_last, denoised_target=denoised)
        history = (history + [denoised])[-solver_order:]
        order = min(solver_order, steps - i) if lower_order_final else solver_order
        order = min(order, i + 1)
        x_last, order_last = x, order
        x = _unipc_step(x, lambdas, sigmas, history, i, i + 1, order)
    return x


@register_grid_family("unipc")
def unipc_grid(process, steps, kind, spacing, steps_offset, final_sigmas_type="zero"):
    """diffusers' UniPCMultistepScheduler.set_timesteps: refdiff.samplers.dpm_solver.dpm_grid with UniPC's
    final sigma_min rule (the Karras or exponential grid's own last sigma)."""
    check_choice(final_sigmas_type, FINAL_SIGMAS_TYPES, "final_sigmas_type")
    return dpm_grid(process, steps, kind, spacing, steps_offset, final_sigmas_type, unipc=True)
