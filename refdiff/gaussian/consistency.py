"""Consistency models: the consistency function, its distillation and training losses' pieces.

Song, Dhariwal, Chen, Sutskever 2023, Consistency Models (arXiv:2303.01469), sec. 3 eq. 5 and
appendix C, on EDM's variance-exploding scale x = x_0 + sigma eps (refdiff.gaussian.process.EDMProcess),
with sigma_min = eps the smallest noise level:

    f_theta(x, sigma) = c_skip(sigma) x + c_out(sigma) F_theta(x, sigma)                     eq. 5
    c_skip(sigma) = sigma_data^2 / ((sigma - sigma_min)^2 + sigma_data^2)                    appendix C
    c_out(sigma)  = sigma_data (sigma - sigma_min) / sqrt(sigma_data^2 + sigma^2)            appendix C

c_skip(sigma_min) = 1 and c_out(sigma_min) = 0, so f_theta(x, sigma_min) = x whatever F_theta gives:
the boundary condition f(x, eps) = x (sec. 3) holds exactly. They are EDM's c_skip / c_out (Table 1)
with sigma shifted by sigma_min.

Consistency distillation (Algorithm 2) and training (Algorithm 3) on the boundaries
sigma_min = sigma_1 < ... < sigma_N = sigma_max (sec. 5; refdiff.consistency.consistency_boundaries):

    x_{n+1} = x + sigma_{n+1} z                          z ~ N(0, I), n ~ U{1, ..., N-1}
    x_hat_n = one ODE step of the teacher sigma_{n+1} -> sigma_n          (CD, Algorithm 2; EDM's Heun or Euler)
            = x + sigma_n z                               (CT, Algorithm 3: the same z, an unbiased score estimate)
    L      = lambda(sigma_n) d(f_theta(x_{n+1}, sigma_{n+1}), f_theta-(x_hat_n, sigma_n))     eq. 7 / eq. 10
    theta- <- stopgrad(mu theta- + (1 - mu) theta)        after every optimizer step (target_update_formula)

with d the squared L2 distance, lambda = 1 (the paper's choices for the toy-sized runs here; LPIPS
needs a pretrained image network and is refused, refdiff.consistency). Consistency training's
schedules (appendix C): N(k) = ceil(sqrt(k / K ((s_1 + 1)^2 - s_0^2) + s_0^2) - 1) + 1 and
mu(k) = exp(s_0 log mu_0 / N(k)).
The teacher's ODE step itself is refdiff.samplers.k_diffusion's euler_step / heun_step (this folder
imports no sampler).
"""
import numpy as np


def consistency_c_skip(sigma, sigma_min=0.002, sigma_data=0.5):
    """c_skip(sigma) = sigma_data^2 / ((sigma - sigma_min)^2 + sigma_data^2)   (Song et al. 2023 appendix C)."""
    d = np.asarray(sigma, dtype=np.float64) - sigma_min
    return sigma_data**2 / (d * d + sigma_data**2)


def consistency_c_out(sigma, sigma_min=0.002, sigma_data=0.5):
    """c_out(sigma) = sigma_data (sigma - sigma_min) / sqrt(sigma_data^2 + sigma^2)   (Song et al. 2023 appendix C)."""
    sigma = np.asarray(sigma, dtype=np.float64)
    return sigma_data * (sigma - sigma_min) / np.sqrt(sigma_data**2 + sigma * sigma)


def consistency_function_formula(x, network_output, c_skip, c_out):
    """f(x, sigma) = c_skip(sigma) x + c_out(sigma) F(x, sigma)   (Song et al. 2023 eq. 5)."""
    return c_skip * x + c_out * network_output


def network_target_formula(f_target, x, c_skip, c_out):
    """F_target = (f_target - c_skip x) / c_out: the network output whose f (eq. 5) is f_target.

    With it, c_out^2 mean_i (F - F_target)^2 = mean_i (f_theta - f_target)^2 exactly: the squared L2
    distance of eq. 7 becomes a weighted regression of the network's output (weight c_out(sigma)^2,
    c_out > 0 for sigma > sigma_min)."""
    return (f_target - c_skip * x) / c_out


def renoise_std(sigma, sigma_min):
    """sqrt(sigma^2 - sigma_min^2): the noise that takes a sample to level sigma in multistep
    consistency sampling, x_sigma = x + sqrt(sigma^2 - sigma_min^2) z   (Song et al. 2023 Algorithm 1)."""
    return float(np.sqrt(max(sigma * sigma - sigma_min * sigma_min, 0.0)))


def target_update_formula(theta_minus, theta, mu):
    """theta- <- mu theta- + (1 - mu) theta: the target network's EMA (Song et al. 2023 Algorithm 2-3,
    the last line of the loop). mu = 0 makes theta- a stop-gradient copy of theta."""
    return mu * theta_minus + (1.0 - mu) * theta


def ct_num_boundaries(k, K, s0=2, s1=150):
    """N(k) = ceil(sqrt(k / K ((s_1 + 1)^2 - s_0^2) + s_0^2) - 1) + 1: consistency training's
    discretization at training step k of K (Song et al. 2023 appendix C; s_0 = 2, s_1 = 150)."""
    return int(np.ceil(np.sqrt(k / K * ((s1 + 1) ** 2 - s0**2) + s0**2) - 1)) + 1


def ct_target_decay(n_boundaries, s0=2, mu0=0.9):
    """mu(k) = exp(s_0 log mu_0 / N(k)): consistency training's target EMA rate (Song et al. 2023
    appendix C; mu_0 = 0.9); it grows towards 1 as N(k) grows."""
    return float(np.exp(s0 * np.log(mu0) / n_boundaries))
