"""The forward-process posterior q(x_{t-1} | x_t, x_0), DDPM eqs. 6-7.

    q(x_{t-1} | x_t, x_0) = N(mu_tilde_t(x_t, x_0), beta_tilde_t I)                 DDPM eq. 6
    mu_tilde_t   = sqrt(abar_{t-1}) beta_t / (1 - abar_t) x_0
                 + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) x_t                DDPM eq. 7
    beta_tilde_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t                            DDPM eq. 7

Index t = the paper's step t+1; at t = 0, abar_{t-1} = 1: the mean is x_0 and the variance 0.

The coefficients are written once, as functions of abar_t and abar_prev (the abar of the step
the posterior goes back to): with alpha_t = abar_t / abar_prev and beta_t = 1 - alpha_t they
hold for a single step (abar_prev = abar_{t-1}) and for a strided one (any abar_prev > abar_t),
so the schedule's tables, the DDPM sampler, DDIM's sigma_t(eta) and the fused kernels (which
compile these very functions for the GPU) all read the same lines. They use arithmetic only,
so they work on float64 numbers and arrays alike.
"""
from ..backend import per_sample
from ..checks import check_float_array, check_like, check_timesteps


def posterior_mean_coefficients(abar_t, abar_prev):
    """(coef_x0, coef_xt) of mu_tilde = coef_x0 x_0 + coef_xt x_t   (DDPM eq. 7).

    coef_x0 = sqrt(abar_prev) beta_t / (1 - abar_t),  coef_xt = sqrt(alpha_t) (1 - abar_prev) / (1 - abar_t),
    with alpha_t = abar_t / abar_prev, beta_t = 1 - alpha_t.
    """
    alpha_t = abar_t / abar_prev
    beta_t = 1 - alpha_t
    coef_x0 = abar_prev**0.5 * beta_t / (1 - abar_t)
    coef_xt = alpha_t**0.5 * (1 - abar_prev) / (1 - abar_t)
    return coef_x0, coef_xt


def posterior_variance(abar_t, abar_prev):
    """beta_tilde = (1 - abar_prev) / (1 - abar_t) beta_t, with beta_t = 1 - abar_t / abar_prev   (DDPM eq. 7)."""
    beta_t = 1 - abar_t / abar_prev
    return (1 - abar_prev) / (1 - abar_t) * beta_t


def q_posterior(x0, x_t, t, schedule):
    """(mean, variance, log_variance) of q(x_{t-1} | x_t, x_0), DDPM eqs. 6-7.

    x0, x_t: (B, ...) float32/float64, same shape and dtype; t: int or int array (B,) in 0..T-1.
    mean: (B, ...) mu_tilde_t.
    variance: (B, 1, ..., 1) beta_tilde_t (schedule.posterior_variance[t]), x0's dtype.
    log_variance: (B, 1, ..., 1) schedule.posterior_log_variance_clipped[t]: at t = 0, where the
      variance is 0, the log of the variance at t = 1 (as the DDPM code and diffusers).
    """
    x0 = check_float_array(x0, "x0")
    x_t = check_like(x0, x_t, "x0", "x_t")
    t = check_timesteps(t, schedule.T, x0.shape[0])

    coef_x0 = per_sample(schedule.posterior_mean_coef1[t], x0)
    coef_xt = per_sample(schedule.posterior_mean_coef2[t], x0)
    mean = coef_x0 * x0 + coef_xt * x_t  # DDPM eq. 7
    variance = per_sample(schedule.posterior_variance[t], x0)
    log_variance = per_sample(schedule.posterior_log_variance_clipped[t], x0)
    return mean, variance, log_variance
