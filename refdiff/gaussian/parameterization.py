"""What the network predicts: eps, x_0, v or the score, and the conversions between them.

All follow from x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (DDPM eq. 4). With
alpha = sqrt(abar_t) and sigma = sqrt(1 - abar_t) (so alpha^2 + sigma^2 = 1):

    x_0   = (x_t - sigma eps) / alpha                 DDPM eq. 15
    eps   = (x_t - alpha x_0) / sigma                 DDPM eq. 4 solved for eps
    v     = alpha eps - sigma x_0                     Salimans & Ho 2022, sec. 4 / appendix D
    x_0   = alpha x_t - sigma v                       Salimans & Ho 2022, appendix D
    eps   = alpha v + sigma x_t                       (same, solved for eps)
    score = grad log q(x_t | x_0) = -eps / sigma      Dhariwal & Nichol 2021, sec. 4.2

Arrays have shape (B, ...), float32 or float64, and keep their dtype; t is an int or an int
array (B,) in 0..T-1. prediction_type names the model's output as in diffusers:
"epsilon", "sample" (x_0) or "v_prediction".

With a zero-terminal-SNR schedule, alpha = 0 at t = T-1 and x_0 cannot be read from eps there
(division by zero, as in diffusers): use "v_prediction" with such schedules.
"""
from ..checks import check_float_array, check_like, check_prediction_type, check_timesteps, per_sample

# ---- the formulas, on per-sample coefficients alpha = sqrt(abar_t), sigma = sqrt(1 - abar_t) ----


def _x0_from_eps(x_t, eps, alpha, sigma):
    return (x_t - sigma * eps) / alpha  # DDPM eq. 15


def _eps_from_x0(x_t, x0, alpha, sigma):
    return (x_t - alpha * x0) / sigma  # DDPM eq. 4 solved for eps


def _v_from_x0_eps(x0, eps, alpha, sigma):
    return alpha * eps - sigma * x0  # Salimans & Ho 2022 sec. 4


def _x0_from_v(x_t, v, alpha, sigma):
    return alpha * x_t - sigma * v  # Salimans & Ho 2022 appendix D


def _eps_from_v(x_t, v, alpha, sigma):
    return alpha * v + sigma * x_t


def _coefficients(x, t, schedule, name):
    """alpha = sqrt(abar_t), sigma = sqrt(1 - abar_t) per sample, in x's dtype, shape (B, 1, ...)."""
    t = check_timesteps(t, schedule.T, x.shape[0], name=name)
    return per_sample(schedule.sqrt_alphas_cumprod[t], x), per_sample(schedule.sqrt_one_minus_alphas_cumprod[t], x)


def _pair(a, b, name_a, name_b):
    check_float_array(a, name_a)
    check_like(a, b, name_a, name_b)


# ---- the public conversions ----------------------------------------------------------------


def x0_from_eps(x_t, eps, t, schedule):
    """x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)   (DDPM eq. 15). Shapes (B, ...), x_t's dtype."""
    _pair(x_t, eps, "x_t", "eps")
    return _x0_from_eps(x_t, eps, *_coefficients(x_t, t, schedule, "t"))


def eps_from_x0(x_t, x0, t, schedule):
    """eps = (x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t)   (DDPM eq. 4 solved for eps)."""
    _pair(x_t, x0, "x_t", "x0")
    return _eps_from_x0(x_t, x0, *_coefficients(x_t, t, schedule, "t"))


def v_from_x0_eps(x0, eps, t, schedule):
    """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0   (Salimans & Ho 2022, sec. 4)."""
    _pair(x0, eps, "x0", "eps")
    return _v_from_x0_eps(x0, eps, *_coefficients(x0, t, schedule, "t"))


def x0_from_v(x_t, v, t, schedule):
    """x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v   (Salimans & Ho 2022, appendix D)."""
    _pair(x_t, v, "x_t", "v")
    return _x0_from_v(x_t, v, *_coefficients(x_t, t, schedule, "t"))


def eps_from_v(x_t, v, t, schedule):
    """eps = sqrt(abar_t) v + sqrt(1 - abar_t) x_t   (Salimans & Ho 2022, appendix D, solved for eps)."""
    _pair(x_t, v, "x_t", "v")
    return _eps_from_v(x_t, v, *_coefficients(x_t, t, schedule, "t"))


def score_from_eps(eps, t, schedule):
    """score = grad_x log q(x_t | x_0) = -eps / sqrt(1 - abar_t)   (Dhariwal & Nichol 2021, sec. 4.2)."""
    check_float_array(eps, "eps")
    _, sigma = _coefficients(eps, t, schedule, "t")
    return -eps / sigma


def eps_from_score(score, t, schedule):
    """eps = -sqrt(1 - abar_t) score   (Dhariwal & Nichol 2021, sec. 4.2, solved for eps)."""
    check_float_array(score, "score")
    _, sigma = _coefficients(score, t, schedule, "t")
    return -sigma * score


def training_target(x0, noise, t, schedule, prediction_type):
    """The regression target of the network for a draw x_t = q_sample(x0, t, noise).

      "epsilon"       noise                                           (DDPM eq. 14, L_simple)
      "sample"        x_0
      "v_prediction"  sqrt(abar_t) noise - sqrt(1 - abar_t) x_0       (Salimans & Ho 2022, sec. 4)
    x0, noise: (B, ...) same shape and dtype; t: int or int array (B,). Returns a new array.
    """
    check_prediction_type(prediction_type)
    _pair(x0, noise, "x0", "noise")
    t = check_timesteps(t, schedule.T, x0.shape[0])
    if prediction_type == "epsilon":
        return noise.copy()
    if prediction_type == "sample":
        return x0.copy()
    return _v_from_x0_eps(x0, noise, *_coefficients(x0, t, schedule, "t"))


def x0_eps_from_model_output(x_t, model_output, alphas_cumprod_t, prediction_type):
    """(x_0, eps) predicted from the network output, given abar_t per sample (float64, shape (B,)).

    The first steps of diffusers' DDPMScheduler.step / DDIMScheduler.step:
      "epsilon":      x_0 = (x_t - sqrt(1 - abar) out) / sqrt(abar),  eps = out
      "sample":       x_0 = out,                      eps = (x_t - sqrt(abar) x_0) / sqrt(1 - abar)
      "v_prediction": x_0 = sqrt(abar) x_t - sqrt(1 - abar) out,  eps = sqrt(abar) out + sqrt(1 - abar) x_t
    Inputs are trusted (checked by the caller); abar_t is taken as given, so strided samplers
    can pass any value. Returns arrays of x_t's dtype.
    """
    alpha = per_sample(alphas_cumprod_t**0.5, x_t)
    sigma = per_sample((1 - alphas_cumprod_t) ** 0.5, x_t)
    if prediction_type == "epsilon":
        return _x0_from_eps(x_t, model_output, alpha, sigma), model_output
    if prediction_type == "sample":
        return model_output, _eps_from_x0(x_t, model_output, alpha, sigma)
    if prediction_type == "v_prediction":
        return _x0_from_v(x_t, model_output, alpha, sigma), _eps_from_v(x_t, model_output, alpha, sigma)
    check_prediction_type(prediction_type)
