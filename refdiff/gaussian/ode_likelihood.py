"""The exact log-likelihood of a diffusion model through its probability-flow ODE (Song et al. 2021, app. D).

The probability-flow ODE carries x at t_min to x at t_max deterministically; the change of
variables for an ODE (the instantaneous change of variables, Chen et al. 2018 Theorem 1) gives

    log p_0(x(t_min)) = log p_T(x(t_max)) + int_{t_min}^{t_max} div f(x(t), t) dt        Song et al. 2021 eq. 39

integrated together with the ODE itself (the state is (x, the integral)). refdiff writes it in the
variance-exploding scale y = x / signal_scale = x_0 + sigma eps (EDM sec. 2), where every process
has the same ODE, with time u = log sigma:

    dy/du = -1/2 d[sigma^2]/du score(y, sigma) = -sigma^2 score(y, sigma)    Song et al. 2021 eq. 13, VE SDE
    score(y, sigma) = (D(y; sigma) - y) / sigma^2                           Tweedie; EDM eq. 3
    div_y (dy/du) = -sigma^2 div score = -sigma^2 (tr dD/dy - d) / sigma^2   d = the dimension of y

so the drift is y - D and its divergence d - tr dD/dy. D is read from the model's output by the
prediction type (refdiff.gaussian.parameterization), a linear function of (x, output) with x = a y:
D = c_x x + c_out output, and tr dD/dy = a (c_x d + c_out tr d output / dx). The model therefore
only has to give the trace of its own Jacobian, exactly or estimated:

    exact        tr J = sum_i e_i^T J e_i, column by column: d Jacobian-vector products
    hutchinson   tr J ~= v^T J v, E[v v^T] = I (Rademacher +-1 or Gaussian probes; Hutchinson 1990,
                 Skilling 1989; FFJORD, Grathwohl et al. 2019 sec. 3.1): one product, unbiased

A plain function model(x, t) gets its products by central finite differences in float64
(finite_difference_trace; error O(h^2) + O(eps/h), h = cbrt(eps) max(1, max|x|)); a refdiff
network gets them through the autograd (refdiff.nn.jacobian, GaussianDiffusion.model_trace).
The probes are drawn once per solve and held fixed, so the ODE the adaptive solver sees is smooth.

The prior: y(t_max) ~ N(0, sigma_max^2 I) (x(t_max) ~ N(0, noise_std^2 I): N(0, I) on a VP process,
N(0, sigma_max^2 I) on VE; Song et al. app. D), then log p(x) = log p(y) - d log signal_scale.

The solver: Dormand-Prince 5(4) (Dormand & Prince 1980; Hairer, Norsett, Wanner, Solving ODEs I,
sec. II.5, Table 5.2), an embedded Runge-Kutta pair: the fifth-order solution is kept (local
extrapolation), the difference to the fourth-order one estimates the local error, and the step
is accepted when that error, per sample, in the RMS norm weighted by atol + rtol |state|, is <= 1
(Hairer I, sec. II.4, eqs. 4.10-4.13). The state includes the integral, so the tolerance
applies to the log-likelihood too; the global error is then of the order of the tolerance
(measured: tests/test_ode_likelihood.py).

The data likelihood: Song et al. evaluate log p at t_min = eps > 0 and take it as that of the data;
refdiff evaluates at the process's t_min (on a DDPM schedule index 0, sigma_0 ~ 0.01 for the linear
schedule). bits/dim of 8-bit data (ode_bits_per_dim) uses uniform dequantization inside the same
bins rd.bits_per_dim uses (width 2/255 around k / 127.5 - 1): by Jensen,
-log P(k) <= E_u[-log p(x + u)] - d log(2/255), u ~ U(-1/255, 1/255)^d, so both numbers bound the
same -log2 P(k) per dimension and can be compared (Ho et al. 2019 (Flow++) sec. 3.1; Song et al. app. D).

References
- Song, Sohl-Dickstein, Kingma, Kumar, Ermon, Poole 2021, Score-Based Generative Modeling through
  Stochastic Differential Equations, arXiv:2011.13456, sec. 4.3, eqs. 13, 39-40, app. D.2.
- Chen, Rubanova, Bettencourt, Duvenaud 2018, Neural ODEs, arXiv:1806.07366, Theorem 1.
- Grathwohl, Chen, Bettencourt, Sutskever, Duvenaud 2019, FFJORD, arXiv:1810.01367, sec. 3.1.
- Hutchinson 1990, A stochastic estimator of the trace of the influence matrix, Commun. Stat.
- Dormand, Prince 1980, A family of embedded Runge-Kutta formulae, J. Comp. Appl. Math. 6(1).
- Hairer, Norsett, Wanner 1993, Solving Ordinary Differential Equations I, sec. II.4-II.5.
"""
import math

import numpy as np

from ..checks import check_choice, check_float_array, check_positive_int, check_positive_real
from .likelihood import BIN_HALF_WIDTH, mean_bits_per_dim  # the 8-bit bins of rd.bits_per_dim
from .parameterization import x0_from_model_output
from .process import as_process

LOG_2PI = math.log(2 * math.pi)

# ---- Dormand-Prince 5(4): the Butcher tableau (Hairer I, Table 5.2) -----------------------------

DOPRI_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
DOPRI_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
DOPRI_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)         # order 5
DOPRI_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)  # order 4
DOPRI_ORDER = 5  # of the solution kept; the error estimate is O(h^5), so steps scale by err^(-1/5)


def dopri5_step(f, z, u, h):
    """One Dormand-Prince step for dz/du = f(z, u): (z_5, z_5 - z_4), the fifth-order solution and
    the local error estimate (Hairer I, sec. II.5, Table 5.2). Seven evaluations of f (the last
    stage is f at the new point, reusable as the next first stage: FSAL, not used here)."""
    k = []
    for c, a in zip(DOPRI_C, DOPRI_A):
        k.append(f(z + h * sum(a_j * k_j for a_j, k_j in zip(a, k)) if a else z, u + c * h))
    z5 = z + h * sum(b * k_i for b, k_i in zip(DOPRI_B5, k) if b)
    z4 = z + h * sum(b * k_i for b, k_i in zip(DOPRI_B4, k) if b)
    return z5, z5 - z4


def error_norm(error, z, z_new, rtol, atol):
    """max over samples of sqrt(mean_i (error_i / (atol + rtol max(|z_i|, |z_new_i|)))^2): a step is
    accepted at <= 1 (Hairer I, eq. 4.11, per sample so that no sample's error hides in the batch)."""
    scale = atol + rtol * np.maximum(np.abs(z), np.abs(z_new))
    return float(np.sqrt(np.mean(np.square(error / scale), axis=1)).max())


def solve_ode(f, z, u_start, u_end, rtol, atol, max_steps=10000):
    """z(u_end) for dz/du = f(z, u), z(u_start) = z (B, n) float64, by Dormand-Prince 5(4) with
    adaptive steps: h_new = h min(5, max(0.2, 0.9 err^(-1/5))) (Hairer I, eqs. 4.12-4.13).
    The first step is 1/100 of the interval. Returns (z, number of evaluations of f, accepted steps)."""
    u, h = u_start, (u_end - u_start) / 100
    evaluations = steps = 0
    while (u_end - u) * np.sign(u_end - u_start) > 1e-12 * abs(u_end - u_start):
        if steps + 1 > max_steps:
            raise RuntimeError(f"solve_ode: more than {max_steps} steps (rtol={rtol}, atol={atol}); loosen them")
        h = np.sign(h) * min(abs(h), abs(u_end - u))
        z_new, error = dopri5_step(f, z, u, h)
        evaluations += len(DOPRI_C)
        err = error_norm(error, z, z_new, rtol, atol)
        if err <= 1:
            z, u, steps = z_new, u + h, steps + 1
        h = h * min(5.0, max(0.2, 0.9 * (err if err > 0 else 1e-10) ** (-1 / DOPRI_ORDER)))
    return z, evaluations, steps


# ---- the probability-flow ODE in the variance-exploding scale, time u = log sigma --------------


def pf_ode_coefficient(sigma):
    """-1/2 d[sigma^2]/du = -1/2 (2 sigma^2) = -sigma^2 at u = log sigma: the probability-flow ODE's
    factor of the score (Song et al. 2021 eq. 13 with f = 0, g^2 = d[sigma^2]/du for the VE SDE)."""
    return -0.5 * (2 * sigma**2)


def pf_ode_drift(y, denoised, sigma):
    """dy/du = -1/2 d[sigma^2]/du score, score = (D - y) / sigma^2 (Tweedie): = y - D. (B, ...)."""
    return pf_ode_coefficient(sigma) * (denoised - y) / sigma**2


def pf_ode_divergence(trace_denoised, d, sigma):
    """div_y (dy/du) = -1/2 d[sigma^2]/du div score, div score = (tr dD/dy - d) / sigma^2: = d - tr dD/dy. (B,)."""
    return pf_ode_coefficient(sigma) * (trace_denoised - d) / sigma**2


def denoiser_coefficients(signal_scale, noise_std, prediction_type):
    """(c_x, c_out) with D = c_x x + c_out output: the x_0 prediction is linear in (x, output) for
    every prediction type, so the coefficients are read off the formula itself (x0_from_model_output
    at (1, 0) and (0, 1)) rather than written out a second time."""
    one, zero = np.ones(1), np.zeros(1)
    c_x = float(x0_from_model_output(one, zero, signal_scale, noise_std, prediction_type)[0])
    c_out = float(x0_from_model_output(zero, one, signal_scale, noise_std, prediction_type)[0])
    return c_x, c_out


def gaussian_log_prob(y, std):
    """log N(y; 0, std^2 I) per sample: -|y|^2 / (2 std^2) - d/2 log(2 pi std^2). (B,)."""
    flat = y.reshape(y.shape[0], -1)
    d = flat.shape[1]
    return -0.5 * np.square(flat).sum(axis=1) / std**2 - 0.5 * d * (LOG_2PI + 2 * math.log(std))


# ---- traces of a model's Jacobian -----------------------------------------------------------------


def draw_probes(shape, rng, distribution="rademacher", n=1):
    """n probes v (n, *shape) with E[v v^T] = I: Rademacher (+-1, each with probability 1/2) or
    standard Gaussian (Hutchinson 1990; FFJORD sec. 3.1). float64."""
    if distribution == "rademacher":
        return rng.integers(0, 2, size=(n, *shape)).astype(np.float64) * 2 - 1
    return rng.standard_normal((n, *shape))


def finite_difference_trace(model):
    """model_trace(x, t, probes) -> (output, trace) for a plain function model(x, t), by central
    differences in float64: J v ~= (model(x + h v) - model(x - h v)) / 2h, h = cbrt(eps) max(1, max|x|)
    (the step that balances the O(h^2) truncation against the O(eps / h) rounding).

    probes None: the exact trace sum_i (J e_i)_i, column by column (2d calls); probes (n, B, ...):
    the Hutchinson estimate mean_j v_j . J v_j (2n calls)."""

    def model_trace(x, t, probes=None):
        x = np.asarray(x, dtype=np.float64)
        out = np.asarray(model(x, t), dtype=np.float64)
        h = np.cbrt(np.finfo(np.float64).eps) * max(1.0, float(np.abs(x).max()))
        flat = x.reshape(x.shape[0], -1)
        if probes is None:
            trace = np.zeros(x.shape[0])
            for i in range(flat.shape[1]):
                step = np.zeros_like(flat)
                step[:, i] = h
                plus = np.asarray(model((flat + step).reshape(x.shape), t), dtype=np.float64)
                minus = np.asarray(model((flat - step).reshape(x.shape), t), dtype=np.float64)
                trace += (plus - minus).reshape(flat.shape)[:, i] / (2 * h)
            return out, trace
        estimates = []
        for v in probes:
            jvp = (np.asarray(model(x + h * v, t), dtype=np.float64) - np.asarray(model(x - h * v, t), dtype=np.float64)) / (2 * h)
            estimates.append((v * jvp).reshape(x.shape[0], -1).sum(axis=1))
        return out, np.mean(estimates, axis=0)

    return model_trace


# ---- the log-likelihood -----------------------------------------------------------------------------


def ode_log_likelihood(model, x, process, prediction_type="epsilon", divergence="exact", model_trace=None,
                       probe="rademacher", n_probes=1, rng=None, rtol=1e-5, atol=1e-5, t_min=None, t_max=None,
                       prior_log_prob=None, return_stats=False):
    """log p(x) at t_min per sample, in nats, by the probability-flow ODE (Song et al. 2021 appendix D, eq. 39): (B,).

    model(x, t): the sample_loop contract (x in the model's scale, t a Python float in the process's
    units; output read by prediction_type: "epsilon", "sample", "v_prediction", "flow").
    x: (B, ...) float array, the points at t_min in the model's scale. process: a refdiff process or
    NoiseSchedule. divergence: "exact" (the Jacobian's trace, column by column) or "hutchinson"
    (n_probes probes of kind `probe`, "rademacher" or "gaussian", drawn from rng once per call).
    model_trace(x, t, probes) -> (output, trace of d output / dx): how the trace is taken; default
    finite_difference_trace(model); a refdiff network's comes from GaussianDiffusion.model_trace
    (the autograd). rtol, atol: the solver's tolerances (solve_ode). t_min, t_max: the ends
    (default the process's). prior_log_prob(y, sigma_max): log p_T in the variance-exploding scale
    (default log N(y; 0, sigma_max^2 I)).
    With return_stats, also a dict: nfe (evaluations of the ODE's right-hand side), steps.
    """
    x = check_float_array(x, "x")
    check_choice(divergence, ("exact", "hutchinson"), "divergence")
    check_choice(probe, ("rademacher", "gaussian"), "probe")
    n_probes = check_positive_int(n_probes, "n_probes")
    rtol, atol = check_positive_real(rtol, "rtol"), check_positive_real(atol, "atol")
    process = as_process(process)
    t_min = process.t_min if t_min is None else t_min
    t_max = process.t_max if t_max is None else t_max
    model_trace = finite_difference_trace(model) if model_trace is None else model_trace
    rng = np.random.default_rng() if rng is None else rng
    B, shape = x.shape[0], x.shape[1:]
    d = int(np.prod(shape))
    probes = None if divergence == "exact" else draw_probes(x.shape, rng, probe, n_probes)

    def rhs(z, u):
        """d/du (y, integral) = (y - D, d - tr dD/dy) at sigma = e^u; z = (y flattened, integral): (B, d + 1)."""
        sigma = math.exp(u)
        a, s = (float(v) for v in process.scales_from_sigma(sigma))
        t = float(process.t_from_sigma(sigma))
        y = z[:, :d].reshape(x.shape)
        out, trace_out = model_trace(y * a, t, probes)
        out = np.asarray(out, dtype=np.float64)
        c_x, c_out = denoiser_coefficients(a, s, prediction_type)
        denoised = c_x * (y * a) + c_out * out                             # D = x0_from_model_output
        trace_denoised = a * (c_x * d + c_out * np.asarray(trace_out, dtype=np.float64))  # tr dD/dy
        dz = np.empty_like(z)
        dz[:, :d] = pf_ode_drift(y, denoised, sigma).reshape(B, d)
        dz[:, d] = pf_ode_divergence(trace_denoised, d, sigma)
        return dz

    sigma_min, sigma_max = float(process.sigma(t_min)), float(process.sigma(t_max))
    a_min = float(process.scales_from_sigma(sigma_min)[0])
    z = np.zeros((B, d + 1))
    z[:, :d] = x.reshape(B, d).astype(np.float64) / a_min                 # y = x / signal_scale
    z, nfe, steps = solve_ode(rhs, z, math.log(sigma_min), math.log(sigma_max), rtol, atol)
    y_end, integral = z[:, :d].reshape(x.shape), z[:, d]
    prior = gaussian_log_prob(y_end, sigma_max) if prior_log_prob is None else prior_log_prob(y_end, sigma_max)
    log_p = prior + integral - d * math.log(a_min)    # Song eq. 39, then x = a y: log p(x) = log p(y) - d log a
    return (log_p, {"nfe": nfe, "steps": steps}) if return_stats else log_p


def ode_bits_per_dim(model, data, process, batch_size=256, rng=None, **options):
    """Bits/dim of 8-bit data in [-1, 1] by the probability-flow ODE (Song et al. 2021 appendix D), with
    uniform dequantization in rd.bits_per_dim's bins (Flow++ sec. 3.1; module docstring):

        bpd = mean over data of (-log p(x + u) + d log(255/2)) / (d ln 2),   u ~ U(-1/255, 1/255)^d

    an upper bound on -log2 P(k) / d, as rd.bits_per_dim's. data (N, ...); rng draws the
    dequantization noise and the probes. Other options as ode_log_likelihood. Returns a float."""
    rng = np.random.default_rng() if rng is None else rng

    def nats(batch):
        x = batch.astype(np.float64)
        x = x + rng.uniform(-BIN_HALF_WIDTH, BIN_HALF_WIDTH, size=x.shape)   # uniform dequantization
        log_p = ode_log_likelihood(model, x, process, rng=rng, **options)
        return -log_p + x[0].size * math.log(1 / (2 * BIN_HALF_WIDTH))      # (B,)

    return mean_bits_per_dim(data, batch_size, nats)
