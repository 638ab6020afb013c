"""The variational bound on -log p(x_0) and bits per dimension (DDPM eq. 5; improved DDPM sec. 2-3).

    L_vlb = L_0 + L_1 + ... + L_{T-1} + L_T                                 improved DDPM eq. 4 (DDPM eq. 5)
    L_0   = -log p(x_0 | x_1)                  the discretized decoder        DDPM eq. 13; improved DDPM eq. 5
    L_t   = KL(q(x_t | x_{t+1}, x_0) || p(x_t | x_{t+1}))   (paper steps)    DDPM eq. 5; improved DDPM eq. 6
    L_T   = KL(q(x_T | x_0) || N(0, I))        the prior term, no parameter   DDPM eq. 5; improved DDPM eq. 7

In refdiff's indices (t = 0..T-1 holds the paper's step t+1, docs/NOTATION.md) the term of index t
is the paper's L_t: index 0 is the decoder, index t >= 1 compares the posterior q(x_{t-1} | x_t, x_0)
(DDPM eqs. 6-7, refdiff.gaussian.posterior) with the model's step, and the prior term reads
abar_{T-1}. The model's step is p(x_{t-1} | x_t) = N(mu_theta, sigma_t^2 I) with

    mu_theta  = mu_tilde_t(x_t, x0_pred)       the posterior mean at the predicted x_0   DDPM eq. 11 (as eq. 7)
    sigma_t^2 = beta_tilde_t ("fixed_small") or beta_t ("fixed_large")                   DDPM sec. 3.2
    log sigma_t^2 = frac log beta_t + (1 - frac) log beta_tilde_t ("learned_range")      improved DDPM eq. 15

as in the improved-DDPM code (gaussian_diffusion.py): "fixed_small" reads the clipped log of
beta_tilde (the schedule's posterior_log_variance_clipped: log beta_tilde_1 at index 0, where
beta_tilde is 0), "fixed_large" log beta_t with beta_tilde_1 at index 0.

Data x_0 are 8-bit images scaled to [-1, 1] (x = k / 127.5 - 1, k = 0..255): the decoder gives each
value the probability of its bin [x - 1/255, x + 1/255], the outer bins extended to -inf and +inf,
so L_vlb bounds the negative log-probability of the discrete data and
bits/dim = L_vlb / (D ln 2) is comparable with the numbers papers report (improved DDPM Table 1-2).

The terms are in nats per sample (summed over the D = prod(x_0.shape[1:]) dimensions). Each KL
term takes one draw x_t ~ q(x_t | x_0): L_vlb of a sample is an unbiased estimate over x_t, exact
in t (every index is visited, as improved DDPM's calc_bpd_loop). Everything is computed in float64.

References
- Ho, Jain, Abbeel 2020, DDPM, arXiv:2006.11239, eqs. 5, 11, 13, sec. 3.2-3.3.
- Nichol, Dhariwal 2021, Improved Denoising Diffusion Probabilistic Models, arXiv:2102.09672,
  sec. 2-3, eqs. 4-7; code: improved_diffusion/losses.py, gaussian_diffusion.py (_vb_terms_bpd,
  _prior_bpd, calc_bpd_loop).
"""
import math

import numpy as np

from ..checks import (check_float_array, check_likelihood_data, check_positive_int, check_prediction_type,
                      check_variance_type)
from .forward import q_sample
from .learned_variance import learned_log_variance, split_model_output
from .parameterization import x0_eps_from_model_output
from .posterior import q_posterior

LOG_2 = math.log(2.0)
BIN_HALF_WIDTH = 1 / 255  # half the width of an 8-bit value's bin on [-1, 1]: [x - 1/255, x + 1/255]
# a bin's probability is floored here before its log is taken, only so that log 0 is never taken
# (the improved-DDPM code clamps at 1e-12, which raises the probability of a bin the model
# misses by more than 27.6 nats and so is not a bound there)
MIN_BIN_PROBABILITY = np.finfo(np.float64).tiny


# ---- the three kinds of term, elementwise ----------------------------------------------------------


def normal_kl(mean_1, log_var_1, mean_2, log_var_2):
    """KL(N(mean_1, e^log_var_1) || N(mean_2, e^log_var_2)) elementwise, in nats:

        1/2 (log_var_2 - log_var_1 + e^(log_var_1 - log_var_2) + (mean_1 - mean_2)^2 e^-log_var_2 - 1)

    (the KL of two Gaussians, improved DDPM code losses.normal_kl; DDPM eq. 5's terms in closed form).
    Arguments broadcast against each other.
    """
    return 0.5 * (log_var_2 - log_var_1 + np.exp(log_var_1 - log_var_2)
                  + (mean_1 - mean_2) ** 2 * np.exp(-log_var_2) - 1.0)


_erfc = np.frompyfunc(math.erfc, 1, 1)


def standard_normal_cdf(z):
    """Phi(z) = erfc(-z / sqrt(2)) / 2, exactly (math.erfc elementwise; float64).

    The improved-DDPM code uses a tanh approximation of Phi (losses.approx_standard_normal_cdf,
    off by up to ~1e-4); refdiff computes the cdf itself. Accurate in the left tail (erfc of a
    large argument does not cancel); use standard_normal_sf on the right.
    """
    return 0.5 * _erfc(-np.asarray(z, dtype=np.float64) / math.sqrt(2.0)).astype(np.float64)


def standard_normal_sf(z):
    """1 - Phi(z) = Phi(-z) = erfc(z / sqrt(2)) / 2, accurate in the right tail (see standard_normal_cdf)."""
    return standard_normal_cdf(-np.asarray(z, dtype=np.float64))


def bin_edges(x0, mean, log_var, bin_half_width=BIN_HALF_WIDTH):
    """(z_plus, z_min): the edges of x_0's bin standardised, (x_0 +- w - mean) / std, with the lower
    edge at -inf where x_0 = -1 and the upper at +inf where x_0 = 1 (read as x_0 < -0.999 and
    x_0 > 0.999, the improved-DDPM code's test, so float32 data work)   (DDPM eq. 13)."""
    std = np.exp(0.5 * log_var)
    z_plus = (x0 + bin_half_width - mean) / std
    z_min = (x0 - bin_half_width - mean) / std
    z_plus = np.where(x0 > 0.999, np.inf, z_plus)     # the last bin extends to +inf   (DDPM eq. 13)
    z_min = np.where(x0 < -0.999, -np.inf, z_min)     # the first bin extends to -inf
    return z_plus, z_min


def bin_probability(x0, mean, log_var, bin_half_width=BIN_HALF_WIDTH):
    """P(x in the bin of x_0) under N(mean, e^log_var), elementwise (DDPM eq. 13):

        Phi((x_0 + w - mean) / std) - Phi((x_0 - w - mean) / std),   w = bin_half_width = 1/255,

    the outer bins extended to -inf and +inf (bin_edges). The difference is taken between upper
    tails where both edges are above the mean, so that it does not cancel.
    """
    z_plus, z_min = bin_edges(x0, mean, log_var, bin_half_width)
    right = z_min > 0
    return np.where(right, standard_normal_sf(z_min) - standard_normal_sf(z_plus),
                    standard_normal_cdf(z_plus) - standard_normal_cdf(z_min))


def discretized_gaussian_log_likelihood(x0, mean, log_var, bin_half_width=BIN_HALF_WIDTH):
    """log p(x_0 | x_1) of 8-bit data in [-1, 1] under N(mean, e^log_var), elementwise, in nats:
    the log of bin_probability (DDPM eq. 13; improved DDPM code losses.discretized_gaussian_log_likelihood,
    which clamps the probability at 1e-12; refdiff only at the smallest positive float64)."""
    return np.log(np.maximum(bin_probability(x0, mean, log_var, bin_half_width), MIN_BIN_PROBABILITY))


# ---- their derivatives in the model's log-variance (the L_vlb part of improved DDPM's hybrid loss) --


def normal_kl_grad_log_var_2(mean_1, log_var_1, mean_2, log_var_2):
    """d KL(N(mean_1, e^log_var_1) || N(mean_2, e^log_var_2)) / d log_var_2, elementwise:

        1/2 (1 - e^(log_var_1 - log_var_2) - (mean_1 - mean_2)^2 e^-log_var_2)

    (normal_kl differentiated; zero where e^log_var_2 = e^log_var_1 + (mean_1 - mean_2)^2, the
    variance that minimises the KL). The gradient of improved DDPM's L_vlb (sec. 3.1) in Sigma_theta."""
    return 0.5 * (1.0 - np.exp(log_var_1 - log_var_2) - (mean_1 - mean_2) ** 2 * np.exp(-log_var_2))


def _z_pdf(z):
    """z phi(z), the standard normal density times z, with 0 at z = +-inf."""
    finite = np.isfinite(z)
    zf = np.where(finite, z, 0.0)
    return np.where(finite, zf * np.exp(-0.5 * zf * zf) / np.sqrt(2 * np.pi), 0.0)


def discretized_gaussian_log_likelihood_grad_log_var(x0, mean, log_var, bin_half_width=BIN_HALF_WIDTH):
    """d log p(x_0 | x_1) / d log_var, elementwise, of discretized_gaussian_log_likelihood:

        P = Phi(z_+) - Phi(z_-),  z_+- = (x_0 +- w - mean) e^(-log_var / 2),  dz / d log_var = -z / 2
        d log P / d log_var = -(z_+ phi(z_+) - z_- phi(z_-)) / (2 P)

    (DDPM eq. 13 differentiated; an infinite edge contributes 0). P is floored as in the forward."""
    z_plus, z_min = bin_edges(x0, mean, log_var, bin_half_width)
    probability = np.maximum(bin_probability(x0, mean, log_var, bin_half_width), MIN_BIN_PROBABILITY)
    return -(_z_pdf(z_plus) - _z_pdf(z_min)) / (2.0 * probability)


# ---- the terms of L_vlb for a sample ----------------------------------------------------------------


def _sum_per_sample(x):
    """Sum over every axis but the batch axis: (B, ...) -> (B,)."""
    return x.reshape(x.shape[0], -1).sum(axis=1)


def prior_kl(x0, schedule):
    """L_T = KL(q(x_T | x_0) || N(0, I)) per sample, in nats (DDPM eq. 5; improved DDPM eq. 7):
    q(x_T | x_0) = N(sqrt(abar_{T-1}) x_0, (1 - abar_{T-1}) I) (DDPM eq. 4 at the last index).
    x0: (B, ...) float array. Returns (B,) float64."""
    x0 = check_float_array(x0, "x0").astype(np.float64)
    abar_last = schedule.alphas_cumprod[-1]
    mean = math.sqrt(abar_last) * x0
    return _sum_per_sample(normal_kl(mean, math.log1p(-abar_last), 0.0, 0.0))


def model_log_variance(t, schedule, variance_type, var_values=None):
    """log sigma_t^2 of the model's step at index t (DDPM sec. 3.2; improved DDPM sec. 3.1 and code):
    "fixed_small" log beta_tilde_t, clipped (log beta_tilde_1 at t = 0: the schedule's
    posterior_log_variance_clipped); "fixed_large" log beta_t, with beta_tilde_1 at t = 0;
    "learned_range" frac log beta_t + (1 - frac) log beta_tilde_t (clipped), frac = (v + 1) / 2
    (improved DDPM eq. 15, their code's min_log / max_log); "learned" v itself.
    var_values: v, the model's variance channels (B, C, ...), needed for the learned types (then
    the result is an array like it; else a float)."""
    log_beta_tilde = float(schedule.posterior_log_variance_clipped[t])
    if variance_type in ("learned", "learned_range"):
        return learned_log_variance(var_values, float(np.log(schedule.betas[t])), log_beta_tilde, variance_type)
    if variance_type == "fixed_small":
        return log_beta_tilde
    if t == 0 and schedule.T > 1:
        return float(np.log(schedule.posterior_variance[1]))
    return float(np.log(schedule.betas[t]))


def model_output_parts(model_output, x_t, variance_type):
    """(output, var_values): a learned-variance model's 2C-channel output split into the output read by
    prediction_type and the variance channels v (improved DDPM sec. 3.1); (model_output, None) for a
    fixed variance_type."""
    if variance_type in ("learned", "learned_range"):
        return split_model_output(model_output, x_t.shape[1])
    return model_output, None


def vlb_term(x0, x_t, t, mean, log_var, schedule):
    """L_t for a batch, in nats per sample (B,): the decoder -log p(x_0 | x_1) where t = 0 (DDPM
    eq. 13), KL(q(x_{t-1} | x_t, x_0) || N(mean, e^log_var)) where t >= 1 (DDPM eqs. 5-7).
    x0, x_t, mean: float64 (B, ...); t: an int or an int array (B,); log_var a number or an array
    broadcasting against x0."""
    return _per_timestep_group(x0, x_t, t, mean, log_var, schedule, _decoder_nll, _posterior_kl, per_sample=True)


def vlb_term_grad_log_var(x0, x_t, t, mean, log_var, schedule):
    """d vlb_term / d log_var, elementwise (B, ...): the gradient that improved DDPM's hybrid loss
    sends into the model's variance through L_vlb (sec. 3.1; mean held fixed: the stop-gradient)."""
    return _per_timestep_group(x0, x_t, t, mean, log_var, schedule, _decoder_nll_grad, _posterior_kl_grad,
                               per_sample=False)


def _decoder_nll(x0, x_t, t, mean, log_var, schedule):
    return -discretized_gaussian_log_likelihood(x0, mean, log_var)                                  # L_0


def _posterior_kl(x0, x_t, t, mean, log_var, schedule):
    true_mean, _, true_log_var = q_posterior(x0, x_t, t, schedule)                                 # DDPM eqs. 6-7
    return normal_kl(true_mean, true_log_var, mean, log_var)                                        # L_t


def _decoder_nll_grad(x0, x_t, t, mean, log_var, schedule):
    return -discretized_gaussian_log_likelihood_grad_log_var(x0, mean, log_var)


def _posterior_kl_grad(x0, x_t, t, mean, log_var, schedule):
    true_mean, _, true_log_var = q_posterior(x0, x_t, t, schedule)
    return normal_kl_grad_log_var_2(true_mean, true_log_var, mean, log_var)


def _per_timestep_group(x0, x_t, t, mean, log_var, schedule, at_zero, above_zero, per_sample):
    """at_zero(...) on the samples whose t = 0 and above_zero(...) on the others (elementwise
    functions of the rows they get), summed per sample if per_sample."""
    t = np.broadcast_to(np.asarray(t), (x0.shape[0],))
    log_var = np.broadcast_to(log_var, x0.shape)
    out = np.empty(x0.shape[0]) if per_sample else np.empty(x0.shape)
    for rows, term in ((t == 0, at_zero), (t > 0, above_zero)):
        if rows.any():
            value = term(x0[rows], x_t[rows], t[rows], mean[rows], log_var[rows], schedule)
            out[rows] = _sum_per_sample(value) if per_sample else value
    return out


def p_mean(model_output, x_t, t, schedule, prediction_type="epsilon", clip_sample=False):
    """mu_theta(x_t, t) = mu_tilde_t(x_t, x0_pred): the posterior mean (DDPM eq. 7, refdiff.gaussian.posterior)
    at the x_0 the model predicts (DDPM eq. 11 for eps; eq. 15 for x0_pred), clipped to [-1, 1] if
    clip_sample (the improved-DDPM evaluation's clip_denoised). t: an int or an int array (B,). float64 (B, ...)."""
    abar_t = np.broadcast_to(schedule.alphas_cumprod[t], (x_t.shape[0],))
    x0_pred, _ = x0_eps_from_model_output(x_t, model_output, abar_t, prediction_type)
    if clip_sample:
        x0_pred = np.clip(x0_pred, -1.0, 1.0)
    return q_posterior(x0_pred, x_t, t, schedule)[0]



def vlb_terms(model, x0, schedule, rng=None, prediction_type="epsilon", variance_type="fixed_small",
              clip_sample=False):
    """The terms of L_vlb per sample, in nats: (terms (B, T), prior (B,)) (DDPM eq. 5; improved DDPM eqs. 4-7).

    terms[:, t] is the paper's L_t: terms[:, 0] = L_0 = -log p(x_0 | x_1), the discretized decoder
    (DDPM eq. 13); terms[:, t] for t >= 1 = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) at one draw
    x_t ~ q(x_t | x_0) (DDPM eq. 4); prior = L_T = KL(q(x_T | x_0) || N(0, I)) (prior_kl).

    model(x, t): the network as a plain function (the sample_loop contract), called with x_t of x0's
    dtype and t a Python int, returning the output read by prediction_type ("epsilon", "sample",
    "v_prediction"); for variance_type "learned" / "learned_range" the output has 2C channels on
    axis 1, the second C the variance values v (improved DDPM sec. 3.1). x0: (B, ...) float array of
    8-bit data in [-1, 1]. rng: a numpy Generator for the draws of x_t (default: a fresh one).
    variance_type: "fixed_small" | "fixed_large" | "learned" | "learned_range" (the model's
    sigma_t^2, model_log_variance). clip_sample: clip x0_pred to [-1, 1] (improved DDPM's
    image_nll.py clips by default; the bound is then that of the clipped model).
    """
    x0 = check_likelihood_data(x0, "x0")
    check_prediction_type(prediction_type)
    check_variance_type(variance_type)
    rng = np.random.default_rng() if rng is None else rng
    x0_64 = x0.astype(np.float64)
    terms = np.empty((x0.shape[0], schedule.T))
    for t in range(schedule.T):
        noise = rng.standard_normal(x0.shape).astype(x0.dtype)
        x_t = q_sample(x0, t, noise, schedule)                                          # DDPM eq. 4
        model_output = np.asarray(model(x_t, t), dtype=np.float64)
        x_t_64 = x_t.astype(np.float64)
        model_output, var_values = model_output_parts(model_output, x_t_64, variance_type)
        mean = p_mean(model_output, x_t_64, t, schedule, prediction_type, clip_sample)
        log_var = model_log_variance(t, schedule, variance_type, var_values)
        terms[:, t] = vlb_term(x0_64, x_t_64, t, mean, log_var, schedule)
    return terms, prior_kl(x0_64, schedule)


def vlb(model, x0, schedule, rng=None, **options):
    """L_vlb = L_0 + ... + L_{T-1} + L_T per sample, in nats (DDPM eq. 5; improved DDPM eq. 4): (B,).
    Arguments as vlb_terms."""
    terms, prior = vlb_terms(model, x0, schedule, rng, **options)
    return terms.sum(axis=1) + prior


def bits_per_dim(model, data, schedule, batch_size=256, rng=None, **options):
    """The mean of L_vlb / (D ln 2) over a dataset: bits per dimension (improved DDPM sec. 2.2,
    Table 1-2; D = the number of values per sample).

    data: (N, ...) float array of 8-bit data in [-1, 1]; evaluated batch_size samples at a time,
    each with T model calls. Other arguments as vlb_terms. Returns a float.
    """
    rng = np.random.default_rng() if rng is None else rng
    return mean_bits_per_dim(data, batch_size, lambda x0: vlb(model, x0, schedule, rng, **options))


def mean_bits_per_dim(data, batch_size, nats):
    """sum of nats(batch) over the dataset / (N D ln 2): bits per dimension from a function giving
    each sample's negative log-likelihood (or bound) in nats, evaluated batch_size samples at a time.

    data: (N, ...) 8-bit data in [-1, 1], checked here; D = the number of values per sample.
    """
    data = check_likelihood_data(data, "data")
    batch_size = check_positive_int(batch_size, "batch_size")
    total = 0.0
    for start in range(0, data.shape[0], batch_size):
        total += float(np.sum(nats(data[start:start + batch_size])))
    return total / (data.shape[0] * int(np.prod(data.shape[1:])) * LOG_2)
