"""The fake model of the sampler parity tests: deterministic, smooth in x and t, no network, NumPy only.

Shared by tests/data/make_diffusers_sampler_golden.py (which feeds it to diffusers' schedulers) and
tests/test_samplers_k_diffusion.py (which feeds it to refdiff's samplers), so both sides call the very
same function. It is close to the exact denoiser of Gaussian data x_0 ~ N(0, S2 I) under a linear-beta
VP process written in closed form (abar(t) = exp(-int beta), t in 0..1000), plus a smooth error, so
the x_0 the samplers see stays of the data's size at every noise level:

    alpha = sqrt(abar(t)), std = sqrt(1 - abar(t))
    x0  = alpha S2 x / (alpha^2 S2 + std^2) + 0.1 tanh(A x + B) (0.6 + 0.3 cos(t / 250))
    eps = (x - alpha x0) / std;  output eps, v = alpha eps - std x0, or x0

On the flow path (t in [0, 1], alpha = 1 - t, std = t) the output is the velocity u = eps - x0.
"""
import numpy as np

S2 = 0.25
A = np.array([0.7, -1.1, 0.4, 1.3, -0.5, 0.9])
B = np.array([0.2, -0.3, 0.5, 0.0, -0.6, 0.1])


def fake_model(x, t, prediction_type):
    """The model output for x (..., 6) in the model's scale at time t (a float)."""
    x = np.asarray(x, dtype=np.float64)
    if prediction_type == "flow":
        alpha, std, wiggle = 1.0 - t, max(t, 1e-4), 0.6 + 0.3 * np.cos(4 * t)
    else:
        u = t / 1000.0
        abar = np.exp(-(1e-4 + 0.1 * u + 9.95 * u * u))
        alpha, std, wiggle = np.sqrt(abar), np.sqrt(1 - abar), 0.6 + 0.3 * np.cos(t / 250.0)
    x0 = alpha * S2 * x / (alpha**2 * S2 + std**2) + 0.1 * np.tanh(A * x + B) * wiggle
    eps = (x - alpha * x0) / std
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "v_prediction":
        return alpha * eps - std * x0
    if prediction_type == "sample":
        return x0
    return eps - x0  # "flow"
