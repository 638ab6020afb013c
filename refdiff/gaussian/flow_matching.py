"""Flow matching on the straight (conditional optimal-transport) path: the path, its target, the
time distributions of training, and the straightness of a flow.

refdiff's time runs from data (t = 0) to noise (t = 1), as diffusers' FlowMatchEulerDiscreteScheduler
and SD3; Liu et al. write the same path with X_0 the noise and X_1 the data (their t is our 1 - t):

    x_t   = (1 - t) x_0 + t eps                        Liu et al. 2022 eq. 1; Lipman et al. 2023 eq. 20
                                                       with sigma_min = 0 (the conditional OT path)
    u     = d x_t / dt = eps - x_0                     Lipman et al. 2023 eq. 23 (sigma_min = 0)
    loss  = E_t E_{x_0, eps} ||u_theta(x_t, t) - (eps - x_0)||^2
                                                       Lipman et al. 2023 eq. 9 (CFM); Liu et al. 2022 eq. 1
    t ~ U(0, 1)                                        Lipman et al. 2023 eq. 9
    t = sigmoid(n), n ~ N(m, s^2)  (logit-normal)      Esser et al. 2024 (SD3) eq. 19
    S     = int_0^1 E ||(z_1 - z_0) - dz_t/dt||^2 dt   Liu et al. 2022 Definition 3.5 (straightness
                                                       of the ODE trajectory z_t; 0 for straight paths)

The minimiser of the loss is the conditional expectation u*(x, t) = E[eps - x_0 | x_t = x]
(Lipman et al. 2023 Theorem 2): the velocity field whose ODE dx/dt = u* moves N(0, I) at t = 1 to
the data at t = 0 (Liu et al. 2022 Theorem 3.3, the marginals are preserved).

x_t and u are the process formulas of refdiff.gaussian.parameterization with signal_scale = 1 - t,
noise_std = t (refdiff.gaussian.process.FlowProcess); they are not written a second time here.

References: Lipman, Chen, Ben-Hamu, Nickel, Le 2023, Flow Matching for Generative Modeling,
arXiv:2210.02747; Liu, Gong, Liu 2022, Flow Straight and Fast, arXiv:2209.03003; Esser et al. 2024,
Scaling Rectified Flow Transformers for High-Resolution Image Synthesis, arXiv:2403.03206.
"""
import numpy as np

from ..backend import array_module
from .parameterization import flow_from_x0_eps_formula, x_t_formula

TIME_SAMPLINGS = ("uniform", "logit_normal")


def flow_path(x0, noise, t):
    """x_t = (1 - t) x_0 + t eps   (Liu et al. 2022 eq. 1; Lipman et al. 2023 eq. 20, sigma_min = 0).

    x0, noise: (B, ...) of one dtype; t: (B,) flow times in [0, 1]. Returns x_t of x0's dtype.
    """
    xp = array_module(x0)
    t = xp.asarray(t, dtype=x0.dtype).reshape((x0.shape[0],) + (1,) * (x0.ndim - 1))  # (B, 1, ...)
    return x_t_formula(x0, noise, 1 - t, t)


def flow_target(x0, noise):
    """u = d x_t / dt = eps - x_0, the regression target   (Lipman et al. 2023 eq. 23, sigma_min = 0)."""
    return flow_from_x0_eps_formula(x0, noise)


def sample_time_uniform(gen, B):
    """t ~ U[0, 1), (B,) float64   (Lipman et al. 2023 eq. 9). gen: a NumPy or CuPy Generator."""
    return gen.random(B)


def sample_time_logit_normal(gen, B, mean=0.0, std=1.0):
    """t = sigmoid(n), n ~ N(mean, std^2): the logit-normal density
    pi_ln(t; m, s) = 1 / (s sqrt(2 pi)) 1 / (t (1 - t)) exp(-(logit(t) - m)^2 / (2 s^2))
    (Esser et al. 2024 eq. 19; mean = 0, std = 1 their best, sec. 5.1). (B,) float64 in (0, 1)."""
    n = mean + std * gen.standard_normal(B)  # (B,) on the generator's device
    return 1 / (1 + array_module(n).exp(-n))


def logit_normal_density(t, mean=0.0, std=1.0):
    """pi_ln(t; m, s) = 1 / (s sqrt(2 pi)) 1 / (t (1 - t)) exp(-(logit(t) - m)^2 / (2 s^2))   (Esser et al. 2024 eq. 19)."""
    t = np.asarray(t, dtype=np.float64)
    logit = np.log(t / (1 - t))
    return np.exp(-((logit - mean) ** 2) / (2 * std**2)) / (std * np.sqrt(2 * np.pi) * t * (1 - t))


def sample_time(gen, B, time_sampling="uniform", logit_mean=0.0, logit_std=1.0):
    """Flow times (B,) for a training batch: "uniform" (Lipman et al. 2023 eq. 9) or "logit_normal"
    (Esser et al. 2024 eq. 19)."""
    if time_sampling == "uniform":
        return sample_time_uniform(gen, B)
    return sample_time_logit_normal(gen, B, logit_mean, logit_std)


def straightness_formula(displacement, velocities, dts):
    """S = sum_i dt_i mean_b ||(z_1 - z_0) - u_i||^2, the straightness of Liu et al. 2022 sec. 3.2
    (Definition 3.5) as a Riemann sum over the steps of an ODE solve.

    displacement: (B, ...) the end minus the start of each trajectory (z_1 - z_0, in either time
    direction as long as velocities point the same way); velocities: the velocities u_i (B, ...) used
    on step i, taken along the direction of travel; dts: the step lengths |t_{i+1} - t_i| (sum 1).
    """
    total = 0.0
    for u, dt in zip(velocities, dts):
        diff = (displacement - u).reshape(len(u), -1)
        total += float(dt) * float(np.mean(np.sum(diff * diff, axis=1)))
    return total
