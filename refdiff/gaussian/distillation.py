"""Progressive distillation: the target that folds two teacher DDIM steps into one student step.

Salimans & Ho 2022, Progressive Distillation for Fast Sampling of Diffusion Models
(arXiv:2202.00512), sec. 3 and Algorithm 2, in refdiff's names (alpha_t = sqrt(abar_t),
sigma_t = sqrt(1 - abar_t); docs/NOTATION.md). The student takes one DDIM step (eta = 0) from t to
t'' where the teacher takes two, t -> t' -> t'':

    z_t'  = alpha_t' x_hat(z_t)  + (sigma_t'  / sigma_t ) (z_t  - alpha_t  x_hat(z_t))      teacher, DDIM eq. 12
    z_t'' = alpha_t'' x_hat(z_t') + (sigma_t'' / sigma_t') (z_t' - alpha_t' x_hat(z_t'))     teacher, DDIM eq. 12
    x_tilde = (z_t'' - (sigma_t'' / sigma_t) z_t) / (alpha_t'' - (sigma_t'' / sigma_t) alpha_t)   Algorithm 2

x_tilde is the x_0 prediction with which ONE DDIM step from z_t lands exactly on z_t'' (solve the
step's formula for x_hat). The student predicts v (Salimans & Ho 2022 sec. 4), so its regression
target is the v that gives x_tilde:

    v_tilde = (alpha_t z_t - x_tilde) / sigma_t        (x_0 = alpha_t z_t - sigma_t v, appendix D, solved for v)

and the loss is weighted by "truncated SNR" (sec. 4): max(||x - x_hat||^2, ||eps - eps_hat||^2) =
max(SNR_t, 1) ||x - x_hat||^2, which on the v error (x - x_hat = sigma_t (v_hat - v)) is

    w_t = max(SNR_t, 1) sigma_t^2 = max(SNR_t, 1) / (SNR_t + 1)       (SNR_t = alpha_t^2 / sigma_t^2)

The teacher's DDIM steps themselves are refdiff.samplers.ddim.ddim_step (this folder imports no sampler).
"""
import numpy as np


def distillation_target_formula(z_t, z_t2, alpha_t, sigma_t, alpha_t2, sigma_t2):
    """x_tilde = (z_t'' - (sigma_t'' / sigma_t) z_t) / (alpha_t'' - (sigma_t'' / sigma_t) alpha_t)
    (Salimans & Ho 2022 Algorithm 2): the x_0 prediction whose one DDIM step t -> t'' gives z_t''.

    The denominator is sigma_t'' (alpha_t'' / sigma_t'' - alpha_t / sigma_t) > 0: SNR falls with t.
    At t'' = 0 (alpha = 1, sigma = 0) x_tilde = z_t''.
    """
    ratio = sigma_t2 / sigma_t
    return (z_t2 - ratio * z_t) / (alpha_t2 - ratio * alpha_t)


def v_from_x0_formula(z_t, x0, alpha_t, sigma_t):
    """v = (alpha_t z_t - x_0) / sigma_t  (Salimans & Ho 2022 appendix D, x_0 = alpha_t z_t - sigma_t v, solved for v)."""
    return (alpha_t * z_t - x0) / sigma_t


def truncated_snr_weight(snr):
    """w = max(SNR, 1) / (SNR + 1): the truncated-SNR weighting of Salimans & Ho 2022 sec. 4 on a
    v-prediction loss (max(SNR, 1) on the x_0 loss, times sigma^2 = 1 / (SNR + 1))."""
    snr = np.asarray(snr, dtype=np.float64)
    return np.maximum(snr, 1.0) / (snr + 1.0)
