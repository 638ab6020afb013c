"""Improved DDPM's hybrid loss for a learned variance: L_hybrid = L_simple + lambda L_vlb (sec. 3.1).

    L_simple = mean || eps - eps_theta(x_t, t) ||^2                            DDPM eq. 14
    L_vlb    = L_0 + ... + L_T,  estimated as T L_t at t ~ Uniform              improved DDPM eqs. 4-7
    L_hybrid = L_simple + lambda L_vlb,   lambda = 0.001                         improved DDPM eq. 16

The model outputs 2C channels [eps_theta, v]. L_vlb sees the mean part through a stop-gradient
(the mean is detached: "we apply a stop-gradient to the mu_theta(x_t, t) output for the L_vlb
term", sec. 3.1), so the mean learns from L_simple only and the variance from L_vlb only.

Units follow improved DDPM's code (gaussian_diffusion.py training_losses): L_t is in bits per
dimension (the nats of the term over D ln 2, _vb_terms_bpd's mean_flat(kl) / log 2) and L_simple
is the mean over dimensions, and the code adds terms["vb"] * num_timesteps / 1000 (LossType.
RESCALED_MSE, the hybrid objective). With L_vlb ~ T L_t that is lambda T L_t with lambda = 1/1000,
so the per-sample weight here is vlb_weight * T, and vlb_weight = 0.001 reproduces their loss.

The L_t terms themselves are refdiff.gaussian.likelihood's (vlb_term: the decoder at t = 0, the
Gaussian KL above) and so is their derivative in the model's log-variance (vlb_term_grad_log_var):
one autograd op takes log Sigma_theta and returns L_t; the interpolation of improved DDPM eq. 15
in front of it (refdiff.gaussian.learned_variance) runs on the autograd, so the gradient reaches v.

Reference: Nichol, Dhariwal 2021, Improved Denoising Diffusion Probabilistic Models,
arXiv:2102.09672, sec. 3.1, eqs. 15-16; code: improved_diffusion/gaussian_diffusion.py (training_losses).
"""
import numpy as np

from ..backend import array_module, to_numpy
from ..gaussian.learned_variance import learned_log_variance
from ..gaussian.likelihood import LOG_2, p_mean, vlb_term, vlb_term_grad_log_var
from ..nn.autograd import Tensor


def vlb_term_bits(log_var, mean, x0, x_t, t, schedule):
    """L_t per sample in bits per dimension, (B,) Tensor, as a function of the model's log-variance
    (an autograd op): forward refdiff.gaussian.likelihood.vlb_term / (D ln 2), backward its
    vlb_term_grad_log_var / (D ln 2). mean (the model's mu_theta), x0, x_t: constant arrays (B, ...);
    t: int array (B,); log_var: Tensor (B, ...). The terms are computed on the host in float64."""
    xp = array_module(log_var.data)
    host = [np.asarray(to_numpy(a), dtype=np.float64) for a in (log_var.data, mean, x0, x_t)]
    log_var_64, mean_64, x0_64, x_t_64 = host
    t = np.asarray(to_numpy(t))
    D = int(np.prod(x0_64.shape[1:]))
    args = (x0_64, x_t_64, t, mean_64, log_var_64, schedule)
    bits = vlb_term(*args) / (D * LOG_2)                     # L_t in bits/dim, (B,)
    grad = vlb_term_grad_log_var(*args) / (D * LOG_2)        # d L_t / d log_var, (B, ...)
    out = log_var._child(xp.asarray(bits, dtype=log_var.dtype), log_var)

    def backward():  # dL_t/dlog_var, per element, times the incoming gradient of each sample's L_t
        g = xp.asarray(grad, dtype=log_var.dtype)
        log_var._accumulate(out.grad.reshape((-1,) + (1,) * (g.ndim - 1)) * g)

    return out._set_backward(backward)


def vlb_loss(model_output, var_values, x0, x_t, t, schedule, prediction_type, variance_type):
    """L_t per sample (bits/dim, (B,) Tensor) with the stop-gradient on the mean (improved DDPM sec. 3.1):
    mu_theta from the detached model_output (its first C channels), log Sigma_theta from the variance
    channels var_values (v, a Tensor) by eq. 15 on the autograd, L_t by vlb_term_bits."""
    xp = array_module(var_values.data)
    output = to_numpy(model_output.detach().data if isinstance(model_output, Tensor) else model_output)
    x_t_host = np.asarray(to_numpy(x_t), dtype=np.float64)
    t_host = np.asarray(to_numpy(t))
    # mu_theta = mu_tilde(x_t, x0_pred) of the detached output, unclipped (their clip_denoised=False)
    mean = p_mean(np.asarray(output, dtype=np.float64), x_t_host, t_host, schedule, prediction_type)
    shape = (-1,) + (1,) * (var_values.ndim - 1)
    log_beta = xp.asarray(np.log(schedule.betas[t_host]).reshape(shape), dtype=var_values.dtype)      # (B, 1, ...)
    log_beta_tilde = xp.asarray(schedule.posterior_log_variance_clipped[t_host].reshape(shape), dtype=var_values.dtype)
    log_var = learned_log_variance(var_values, log_beta, log_beta_tilde, variance_type)             # eq. 15
    return vlb_term_bits(log_var, mean, x0, x_t, t_host, schedule)


def hybrid_loss(simple, vlb_bits, T, vlb_weight):
    """L_hybrid = L_simple + lambda T mean_b L_t (improved DDPM eq. 16, with L_vlb ~ T L_t; their code's
    terms["vb"] * num_timesteps / 1000 for lambda = 0.001). simple: 0-d Tensor; vlb_bits: (B,) Tensor."""
    return simple + vlb_bits.mean() * (vlb_weight * T)
