"""The forward (noising) process q of DDPM.

    q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t I)              DDPM eq. 2
    q(x_t | x_0)     = N(sqrt(abar_t) x_0, (1 - abar_t) I)             DDPM eq. 4

Timesteps are integers 0..T-1 (index t = the paper's step t+1). Arrays have shape (B, ...),
dtype float32 or float64, and keep their dtype: the coefficients are gathered per sample from
the float64 schedule, rounded once to the array's dtype and broadcast over (B, 1, ..., 1).
"""
from ..backend import per_sample
from ..checks import check_float_array, check_like, check_timesteps
from .parameterization import training_target, x_t_formula


def q_sample(x0, t, noise, schedule):
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise: a draw of q(x_t | x_0), DDPM eq. 4.

    x0: (B, ...) float32/float64, the clean data.
    t: int or int array (B,) in 0..T-1.
    noise: (B, ...) standard normal draws of x0's shape and dtype.
    Returns x_t: (B, ...) of x0's dtype.
    """
    x0 = check_float_array(x0, "x0")
    noise = check_like(x0, noise, "x0", "noise")
    t = check_timesteps(t, schedule.T, x0.shape[0])
    sqrt_abar = per_sample(schedule.sqrt_alphas_cumprod[t], x0)
    sqrt_one_minus_abar = per_sample(schedule.sqrt_one_minus_alphas_cumprod[t], x0)
    return x_t_formula(x0, noise, sqrt_abar, sqrt_one_minus_abar)  # DDPM eq. 4


def q_step(x_prev, t, noise, schedule):
    """x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) noise: one forward step, DDPM eq. 2.

    Goes from index t-1 to index t; for t = 0, x_prev is the clean data x_0.
    x_prev: (B, ...) float32/float64; t: int or int array (B,) in 0..T-1;
    noise: (B, ...) standard normal, x_prev's shape and dtype. Returns x_t, x_prev's dtype.
    """
    x_prev = check_float_array(x_prev, "x_prev")
    noise = check_like(x_prev, noise, "x_prev", "noise")
    t = check_timesteps(t, schedule.T, x_prev.shape[0])
    sqrt_alpha = per_sample(schedule.alphas[t] ** 0.5, x_prev)
    sqrt_beta = per_sample(schedule.betas[t] ** 0.5, x_prev)
    return sqrt_alpha * x_prev + sqrt_beta * noise


def q_sample_with_target(x0, t, noise, schedule, prediction_type="epsilon"):
    """(x_t, target): q_sample and the regression target of the model, from the same draw.

    x_t as in q_sample (DDPM eq. 4); target as in parameterization.training_target:
      "epsilon"       target = noise                                   (DDPM eq. 14)
      "sample"        target = x_0
      "v_prediction"  target = sqrt(abar_t) noise - sqrt(1 - abar_t) x_0  (Salimans & Ho 2022, sec. 4)
    This is the twin of the fused kernel refdiff.kernels.q_sample_with_target, which reads
    x0 and noise once and writes both outputs. Shapes (B, ...), dtype of x0, target a new array.
    """
    x_t = q_sample(x0, t, noise, schedule)
    target = training_target(x0, noise, t, schedule, prediction_type)
    return x_t, target
