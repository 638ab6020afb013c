"""Learned variance: the model's reverse-step variance Sigma_theta(x_t, t) (improved DDPM sec. 3.1).

The network outputs 2C channels for C data channels: the usual output (eps, x_0 or v, read by
prediction_type) and C channels v of the variance (code name `var_values`, improved DDPM code's
model_var_values; not the v of v-prediction), split on axis 1 (split_model_output). Two readings
of v, diffusers' DDPMScheduler variance_type names:

    "learned_range":  log Sigma = frac log beta_t + (1 - frac) log beta_tilde_t,  frac = (v + 1) / 2
                      (improved DDPM eq. 15, with v mapped from [-1, 1] to [0, 1] as their code
                      and diffusers do; v is not clipped, so it may step outside the range)
    "learned":        log Sigma = v  (the output is the log-variance itself; improved DDPM's
                      LEARNED, the parameterisation sec. 3.1 found unstable)

v = -1 gives beta_tilde_t (DDPM's lower bound on the reverse variance), v = 1 gives beta_t (its
upper bound); DDPM sec. 3.2.

Strided schedules: for a step from t to t_prev < t - 1, beta_t and beta_tilde_t are those of the
combined step, beta = 1 - abar_t / abar_prev and beta_tilde = (1 - abar_prev) / (1 - abar_t) beta
(refdiff.gaussian.posterior). That is what improved DDPM's respacing does (betas recomputed from
the strided abar) and what diffusers' DDPMScheduler._get_variance computes from its
previous_timestep. Where beta_tilde is 0 (the first step, abar_prev = 1) the caller floors it:
diffusers at 1e-20 (sampling adds no noise there, so it never matters), the bound at
beta_tilde_1 (improved DDPM's posterior_log_variance_clipped; refdiff.gaussian.likelihood).

A difference with diffusers' "learned": diffusers 0.42.1's DDPMScheduler.step takes the
"learned" output as the variance itself (it adds sqrt(v) z), improved DDPM's code as its log
(it adds exp(v / 2) z). refdiff follows improved DDPM: only a log can be any real number the
network outputs. "learned_range" agrees with both.

References
- Nichol, Dhariwal 2021, Improved Denoising Diffusion Probabilistic Models, arXiv:2102.09672,
  sec. 3.1, eq. 15; code: improved_diffusion/gaussian_diffusion.py (p_mean_variance, ModelVarType).
- diffusers 0.42.1, schedulers/scheduling_ddpm.py: DDPMScheduler._get_variance, DDPMScheduler.step.
- Ho, Jain, Abbeel 2020, DDPM, arXiv:2006.11239, sec. 3.2 (the two fixed variances).
"""
import numpy as np

from ..checks import check_learned_output
from .posterior import posterior_variance


def split_model_output(model_output, channels, name="model_output"):
    """(output, var_values): the first C channels of a 2C-channel model output (eps, x_0 or v-prediction)
    and the last C (the variance values), split on axis 1 (diffusers' DDPMScheduler.step:
    torch.split(model_output, C, dim=1)). Works on arrays and on autograd Tensors."""
    check_learned_output(model_output, channels, name)
    return model_output[:, :channels], model_output[:, channels:]


def interpolation_fraction(var_values):
    """frac = (v + 1) / 2: v of [-1, 1] mapped to the interpolation weight of [0, 1] (improved DDPM
    code, p_mean_variance; diffusers DDPMScheduler._get_variance)."""
    return (var_values + 1) / 2


def learned_range_log_variance(var_values, log_beta, log_beta_tilde):
    """log Sigma_theta = frac log beta_t + (1 - frac) log beta_tilde_t, frac = (v + 1) / 2   (improved DDPM eq. 15).

    var_values: v, the model's variance channels (array or Tensor); log_beta, log_beta_tilde: the logs of the
    step's beta_t and beta_tilde_t, numbers or arrays broadcasting against v. Linear in v, so it
    runs on autograd Tensors unchanged (the gradient d log Sigma / dv = (log beta - log beta_tilde) / 2).
    """
    frac = interpolation_fraction(var_values)
    return frac * log_beta + (1 - frac) * log_beta_tilde


def learned_log_variance(var_values, log_beta, log_beta_tilde, variance_type):
    """log Sigma_theta of the model's variance channels var_values (v) for a learned variance_type:
    "learned_range" learned_range_log_variance (eq. 15), "learned" v itself (improved DDPM sec. 3.1)."""
    if variance_type == "learned":
        return var_values
    return learned_range_log_variance(var_values, log_beta, log_beta_tilde)


def step_log_betas(abar_t, abar_prev, floor=1e-20):
    """(log beta, log beta_tilde) of the step from abar_t back to abar_prev (float64):
    beta = 1 - abar_t / abar_prev, beta_tilde = (1 - abar_prev) / (1 - abar_t) beta (DDPM eq. 7),
    floored at `floor` before the log (diffusers' clamp(variance, min=1e-20))."""
    abar_t, abar_prev = np.asarray(abar_t, dtype=np.float64), np.asarray(abar_prev, dtype=np.float64)
    beta = 1 - abar_t / abar_prev
    return np.log(beta), np.log(np.maximum(posterior_variance(abar_t, abar_prev), floor))
