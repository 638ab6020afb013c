"""What the network predicts: eps, x_0, v or the score, and the conversions between them.

All follow from x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (DDPM eq. 4). In code
sqrt_abar = sqrt(abar_t) and sqrt_one_minus_abar = sqrt(1 - abar_t) (their squares sum to 1;
VDM and DPM-Solver call them alpha_t and sigma_t, see docs/NOTATION.md):

    x_0   = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)       DDPM eq. 15
    eps   = (x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t)       DDPM eq. 4 solved for eps
    v     = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0           Salimans & Ho 2022, sec. 4 / appendix D
    x_0   = sqrt(abar_t) x_t - sqrt(1 - abar_t) v             Salimans & Ho 2022, appendix D
    eps   = sqrt(abar_t) v + sqrt(1 - abar_t) x_t             (same, solved for eps)
    x_t   = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps           DDPM eq. 4 (drawn by refdiff.gaussian.forward)
    score = grad log q(x_t | x_0) = -eps / sqrt(1 - abar_t)   Dhariwal & Nichol 2021, sec. 4.2
    u     = eps - x_0 (the flow-matching velocity)            Liu et al. 2022 eq. 1; Lipman et al. 2023 eq. 23
    x_0   = (x_t - sqrt(1 - abar_t) u) / (sqrt(abar_t) + sqrt(1 - abar_t))   (x_t written with eps = u + x_0)
    eps   = (x_t + sqrt(abar_t) u) / (sqrt(abar_t) + sqrt(1 - abar_t))

The same formulas hold for every process of refdiff.gaussian.process: call them with
(signal_scale(t), noise_std(t)) in place of (sqrt(abar_t), sqrt(1 - abar_t)). On the flow path
(signal_scale = 1 - t, noise_std = t) the velocity formulas reduce to x_0 = x_t - t u.

Arrays have shape (B, ...), float32 or float64, and keep their dtype; t is an int or an int
array (B,) in 0..T-1. prediction_type names the model's output as in diffusers:
"epsilon", "sample" (x_0) or "v_prediction"; the samplers of refdiff.sample_loop also read
"flow" (the velocity u = eps - x_0 of flow matching, diffusers' FlowMatchEulerDiscreteScheduler).

With a zero-terminal-SNR schedule, sqrt(abar_t) = 0 at t = T-1 and x_0 cannot be read from eps there
(division by zero, as in diffusers): use "v_prediction" with such schedules.
"""
from ..backend import per_sample
from ..checks import check_float_array, check_like, check_prediction_type, check_timesteps

# ---- the formulas, on per-sample coefficients sqrt_abar = sqrt(abar_t), sqrt_one_minus_abar = sqrt(1 - abar_t)
# Arithmetic only: the same lines run on arrays here and, compiled by numba, on float32 scalars
# inside the fused kernels (kernels/_device.py).


def x_t_formula(x0, eps, sqrt_abar, sqrt_one_minus_abar):
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps   (DDPM eq. 4)."""
    return sqrt_abar * x0 + sqrt_one_minus_abar * eps


def x0_from_eps_formula(x_t, eps, sqrt_abar, sqrt_one_minus_abar):
    """x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)   (DDPM eq. 15)."""
    return (x_t - sqrt_one_minus_abar * eps) / sqrt_abar


def eps_from_x0_formula(x_t, x0, sqrt_abar, sqrt_one_minus_abar):
    """eps = (x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t)   (DDPM eq. 4 solved for eps)."""
    return (x_t - sqrt_abar * x0) / sqrt_one_minus_abar


def v_from_x0_eps_formula(x0, eps, sqrt_abar, sqrt_one_minus_abar):
    """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0   (Salimans & Ho 2022, sec. 4)."""
    return sqrt_abar * eps - sqrt_one_minus_abar * x0


def x0_from_v_formula(x_t, v, sqrt_abar, sqrt_one_minus_abar):
    """x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v   (Salimans & Ho 2022, appendix D)."""
    return sqrt_abar * x_t - sqrt_one_minus_abar * v


def eps_from_v_formula(x_t, v, sqrt_abar, sqrt_one_minus_abar):
    """eps = sqrt(abar_t) v + sqrt(1 - abar_t) x_t   (Salimans & Ho 2022, appendix D, solved for eps)."""
    return sqrt_abar * v + sqrt_one_minus_abar * x_t


def x0_from_flow_formula(x_t, u, sqrt_abar, sqrt_one_minus_abar):
    """x_0 = (x_t - sqrt(1 - abar_t) u) / (sqrt(abar_t) + sqrt(1 - abar_t)), u = eps - x_0
    (Liu et al. 2022 eq. 1: x_t = (1 - t) x_0 + t eps on the flow path, where this is x_t - t u)."""
    return (x_t - sqrt_one_minus_abar * u) / (sqrt_abar + sqrt_one_minus_abar)


def eps_from_flow_formula(x_t, u, sqrt_abar, sqrt_one_minus_abar):
    """eps = (x_t + sqrt(abar_t) u) / (sqrt(abar_t) + sqrt(1 - abar_t)), u = eps - x_0
    (Liu et al. 2022 eq. 1 solved for eps)."""
    return (x_t + sqrt_abar * u) / (sqrt_abar + sqrt_one_minus_abar)


def flow_from_x0_eps_formula(x0, eps):
    """u = eps - x_0: the velocity d x_t / dt of the straight path x_t = (1 - t) x_0 + t eps
    (Liu et al. 2022 eq. 1; Lipman et al. 2023 eq. 23 with sigma_min = 0)."""
    return eps - x0


def _coefficients(x, t, schedule, name):
    """sqrt(abar_t), sqrt(1 - abar_t) per sample, in x's dtype, shape (B, 1, ...)."""
    t = check_timesteps(t, schedule.T, x.shape[0], name=name)
    return per_sample(schedule.sqrt_alphas_cumprod[t], x), per_sample(schedule.sqrt_one_minus_alphas_cumprod[t], x)


def _pair(a, b, name_a, name_b):
    check_float_array(a, name_a)
    check_like(a, b, name_a, name_b)


# ---- the public conversions ----------------------------------------------------------------


def x0_from_eps(x_t, eps, t, schedule):
    """x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)   (DDPM eq. 15). Shapes (B, ...), x_t's dtype."""
    _pair(x_t, eps, "x_t", "eps")
    return x0_from_eps_formula(x_t, eps, *_coefficients(x_t, t, schedule, "t"))


def eps_from_x0(x_t, x0, t, schedule):
    """eps = (x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t)   (DDPM eq. 4 solved for eps)."""
    _pair(x_t, x0, "x_t", "x0")
    return eps_from_x0_formula(x_t, x0, *_coefficients(x_t, t, schedule, "t"))


def v_from_x0_eps(x0, eps, t, schedule):
    """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0   (Salimans & Ho 2022, sec. 4)."""
    _pair(x0, eps, "x0", "eps")
    return v_from_x0_eps_formula(x0, eps, *_coefficients(x0, t, schedule, "t"))


def x0_from_v(x_t, v, t, schedule):
    """x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v   (Salimans & Ho 2022, appendix D)."""
    _pair(x_t, v, "x_t", "v")
    return x0_from_v_formula(x_t, v, *_coefficients(x_t, t, schedule, "t"))


def eps_from_v(x_t, v, t, schedule):
    """eps = sqrt(abar_t) v + sqrt(1 - abar_t) x_t   (Salimans & Ho 2022, appendix D, solved for eps)."""
    _pair(x_t, v, "x_t", "v")
    return eps_from_v_formula(x_t, v, *_coefficients(x_t, t, schedule, "t"))


def score_from_eps(eps, t, schedule):
    """score = grad_x log q(x_t | x_0) = -eps / sqrt(1 - abar_t)   (Dhariwal & Nichol 2021, sec. 4.2)."""
    check_float_array(eps, "eps")
    _, sqrt_one_minus_abar = _coefficients(eps, t, schedule, "t")
    return -eps / sqrt_one_minus_abar


def eps_from_score(score, t, schedule):
    """eps = -sqrt(1 - abar_t) score   (Dhariwal & Nichol 2021, sec. 4.2, solved for eps)."""
    check_float_array(score, "score")
    _, sqrt_one_minus_abar = _coefficients(score, t, schedule, "t")
    return -sqrt_one_minus_abar * score


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
    return v_from_x0_eps_formula(x0, noise, *_coefficients(x0, t, schedule, "t"))


def x0_eps_from_model_output(x_t, model_output, abar_t, prediction_type):
    """(x_0, eps) predicted from the network output, given abar_t per sample (float64, shape (B,)).

    The first steps of diffusers' DDPMScheduler.step / DDIMScheduler.step:
      "epsilon":      x_0 from eps (DDPM eq. 15),  eps = out
      "sample":       x_0 = out,                   eps from x_0 (DDPM eq. 4)
      "v_prediction": x_0 and eps from v           (Salimans & Ho 2022, appendix D)
    Inputs are trusted (checked by the caller); abar_t is taken as given, so strided samplers
    can pass any value. Returns arrays of x_t's dtype.
    """
    prediction = PREDICTION_CODES[check_prediction_type(prediction_type)]
    sqrt_abar = per_sample(abar_t**0.5, x_t)
    sqrt_one_minus_abar = per_sample((1 - abar_t) ** 0.5, x_t)
    return x0_eps_from_output_formula(x_t, model_output, sqrt_abar, sqrt_one_minus_abar, prediction)


# prediction_type as the integer the fused kernels branch on
PREDICTION_CODES = {"epsilon": 0, "sample": 1, "v_prediction": 2}


def x0_eps_from_output_formula(x_t, model_output, sqrt_abar, sqrt_one_minus_abar, prediction):
    """(x_0, eps) from a model output read as prediction code 0 eps, 1 x_0, 2 v (PREDICTION_CODES).

    The one switch over prediction types, arithmetic only: the reverse steps call it on arrays,
    the fused kernels on float32 scalars (compiled by numba).
    """
    if prediction == 0:
        return x0_from_eps_formula(x_t, model_output, sqrt_abar, sqrt_one_minus_abar), model_output
    if prediction == 1:
        return model_output, eps_from_x0_formula(x_t, model_output, sqrt_abar, sqrt_one_minus_abar)
    x0 = x0_from_v_formula(x_t, model_output, sqrt_abar, sqrt_one_minus_abar)
    return x0, eps_from_v_formula(x_t, model_output, sqrt_abar, sqrt_one_minus_abar)


# prediction types the sampler loop reads: the three above and the flow-matching velocity
LOOP_PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "flow")


def x0_from_model_output(x_t, model_output, signal_scale, noise_std, prediction_type):
    """The x_0 prediction ("denoised", EDM's D(x; sigma)) from a model output, on any process.

    signal_scale, noise_std: the process's coefficients at the model's time (numbers or arrays that
    broadcast against x_t). "epsilon", "sample", "v_prediction" as x0_eps_from_output_formula
    (DDPM eq. 15; Salimans & Ho 2022 appendix D); "flow" the velocity u = eps - x_0
    (Liu et al. 2022 eq. 1), x_0 = (x_t - noise_std u) / (signal_scale + noise_std).
    """
    if prediction_type == "flow":
        return x0_from_flow_formula(x_t, model_output, signal_scale, noise_std)
    return x0_eps_from_output_formula(x_t, model_output, signal_scale, noise_std, PREDICTION_CODES[prediction_type])[0]
