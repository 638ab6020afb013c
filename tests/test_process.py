"""Processes: closed forms, inverses, and the DDPM tables.

Independent truths used here:
- VP linear: signal_scale(t)^2 = exp(-int_0^t beta(s) ds) (Song et al. 2021 eq. 33), the integral
  taken numerically here (Simpson's rule on beta(s)), not from the closed form under test.
- t_from_sigma is the inverse of sigma(t): round trips t -> sigma -> t on every process.
- lambda_t = -log sigma is strictly decreasing in t (noise grows with time).
- On a DDPM schedule at integer t the process is the schedule's tables (DDPM eq. 4), and between
  indices t_from_sigma is diffusers' _sigma_to_t (copied below line for line from diffusers 0.42.1).
- EDM's preconditioning gives the network's target unit variance (EDM eq. 8, appendix B.6).
"""
import numpy as np
import pytest

import refdiff as rd
from refdiff.gaussian import parameterization as P
from refdiff.gaussian.process import ZERO_SNR_ABAR

PROCESSES = {
    "discrete_linear": lambda: rd.DiscreteProcess(rd.NoiseSchedule.linear(T=1000)),
    "discrete_cosine": lambda: rd.DiscreteProcess(rd.NoiseSchedule.cosine(T=1000)),
    "vp_linear": rd.VPLinearProcess,
    "vp_cosine": rd.VPCosineProcess,
    "ve": rd.VEProcess,
    "edm": rd.EDMProcess,
    "flow": rd.FlowProcess,
}


def diffusers_sigma_to_t(sigma, log_sigmas):
    """diffusers EulerDiscreteScheduler._sigma_to_t (0.42.1), verbatim in NumPy."""
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low_idx = np.cumsum((dists >= 0), axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low = log_sigmas[low_idx]
    high = log_sigmas[high_idx]
    w = (low - log_sigma) / (low - high)
    w = np.clip(w, 0, 1)
    t = (1 - w) * low_idx + w * high_idx
    return t.reshape(sigma.shape)


def test_vp_linear_signal_scale_is_the_exponential_of_the_integral_of_beta():
    p = rd.VPLinearProcess()
    for t in (0.001, 0.1, 0.37, 0.8, 1.0):
        s = np.linspace(0, t, 2001)
        b = p.beta(s)
        h = s[1] - s[0]
        integral = h / 3 * (b[0] + b[-1] + 4 * b[1:-1:2].sum() + 2 * b[2:-1:2].sum())  # Simpson, exact for linear
        # closed form vs quadrature of a linear function: rounding only
        assert p.signal_scale(t) == pytest.approx(np.exp(-0.5 * integral), rel=1e-12)
        assert p.signal_scale(t) ** 2 + p.noise_std(t) ** 2 == pytest.approx(1.0, abs=1e-14)


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_t_to_sigma_to_t_round_trips_and_lambda_decreases(name):
    p = PROCESSES[name]()
    t = np.linspace(p.t_min, p.t_max, 257)[:-1] if name == "flow" else np.linspace(p.t_min, p.t_max, 257)
    if name == "flow":
        t = t[1:]  # sigma(0) = 0 on the flow path: lambda is infinite there
    sigma = p.sigma(t)
    # float64 inverse formulas: rounding only (the discrete one interpolates log sigma linearly, exactly inverted)
    np.testing.assert_allclose(p.t_from_sigma(sigma), t, rtol=1e-9, atol=1e-9 * max(1.0, p.t_max))
    lam = p.lambda_t(t)
    assert (np.diff(lam) < 0).all()
    np.testing.assert_allclose(p.t_from_lambda(lam), t, rtol=1e-9, atol=1e-9 * max(1.0, p.t_max))
    # sigma = noise_std / signal_scale, and scales_from_sigma gives back both
    np.testing.assert_allclose(sigma, p.noise_std(t) / p.signal_scale(t), rtol=1e-12)
    a, s = p.scales_from_sigma(sigma)
    np.testing.assert_allclose(a, p.signal_scale(t), rtol=1e-9)
    np.testing.assert_allclose(s, p.noise_std(t), rtol=1e-9)


def test_numbers_in_give_floats_out():
    p = rd.VPLinearProcess()
    assert isinstance(p.sigma(0.5), float) and isinstance(p.t_from_sigma(1.0), float)
    assert isinstance(rd.as_process(rd.NoiseSchedule.linear(T=10)).sigma(3), float)


@pytest.mark.parametrize("make", [rd.NoiseSchedule.linear, rd.NoiseSchedule.cosine, rd.NoiseSchedule.scaled_linear])
def test_the_discrete_process_is_the_schedules_tables_at_integer_t(make):
    s = make(T=1000)
    p = rd.as_process(s)
    k = np.arange(1000)
    np.testing.assert_allclose(p.signal_scale(k), s.sqrt_alphas_cumprod, rtol=1e-12)
    np.testing.assert_allclose(p.noise_std(k), s.sqrt_one_minus_alphas_cumprod, rtol=1e-12)
    np.testing.assert_allclose(p.sigma(k), np.sqrt((1 - s.alphas_cumprod) / s.alphas_cumprod), rtol=1e-12)
    np.testing.assert_allclose(p.lambda_t(k), 0.5 * np.log(s.snr), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(p.t_from_sigma(p.sigma(k)), k)


def test_fractional_t_is_diffusers_sigma_to_t_including_outside_the_table():
    p = rd.as_process(rd.NoiseSchedule.scaled_linear(T=1000))
    rng = np.random.default_rng(0)
    sigmas = np.concatenate([np.exp(rng.uniform(np.log(1e-3), np.log(50), 500)), [0.0, 1e-12, 1e3]])
    np.testing.assert_allclose(p.t_from_sigma(sigmas), diffusers_sigma_to_t(sigmas, p.log_sigmas), rtol=0, atol=1e-9)


def test_zero_terminal_snr_uses_diffusers_two_to_the_minus_24():
    s = rd.NoiseSchedule.scaled_linear(T=1000).rescale_zero_terminal_snr()
    p = rd.as_process(s)
    assert s.alphas_cumprod[-1] == 0
    assert p.sigma(999) == pytest.approx(np.sqrt((1 - ZERO_SNR_ABAR) / ZERO_SNR_ABAR), rel=1e-12)
    assert np.isfinite(p.lambda_t(999)) and p.t_from_sigma(p.sigma(999)) == 999
    # the linear schedule rescaled has abar_996..998 < 2^-24: its sigma table is not monotone at the
    # end, and t_from_sigma finds what diffusers' _sigma_to_t finds (not 999)
    p = rd.as_process(rd.NoiseSchedule.linear(T=1000).rescale_zero_terminal_snr())
    sigmas = p.sigma(np.array([990.0, 997.0, 999.0]))
    np.testing.assert_allclose(p.t_from_sigma(sigmas), diffusers_sigma_to_t(sigmas, p.log_sigmas), atol=1e-9)


def test_discrete_process_refuses_times_outside_the_schedule():
    p = rd.as_process(rd.NoiseSchedule.linear(T=10))
    for bad in (-0.5, 9.5, np.nan):
        with pytest.raises(ValueError, match=r"t must lie in \[0, 9\]"):
            p.sigma(bad)


def test_edm_preconditioning_gives_unit_variance_inputs_and_targets():
    p = rd.EDMProcess()
    sd = p.sigma_data
    for sigma in (0.002, 0.1, 1.0, 80.0):
        # Var(c_in x) = 1 for x = y + n, Var y = sd^2, Var n = sigma^2   (EDM appendix B.6, eq. 114)
        assert p.c_in(sigma) ** 2 * (sd**2 + sigma**2) == pytest.approx(1.0, rel=1e-12)
        # target F = (y - c_skip x) / c_out has unit variance   (EDM eq. 8, appendix B.6)
        var = ((1 - p.c_skip(sigma)) ** 2 * sd**2 + p.c_skip(sigma) ** 2 * sigma**2) / p.c_out(sigma) ** 2
        assert var == pytest.approx(1.0, rel=1e-12)
        assert p.c_noise(sigma) == pytest.approx(np.log(sigma) / 4)
    assert p.sigma(3.0) == 3.0 and p.signal_scale(3.0) == 1.0


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_the_parameterization_formulas_hold_on_every_process(name):
    """x_t = a x_0 + s eps; eps, x_0, v and the flow velocity read back with (signal_scale, noise_std)."""
    p = PROCESSES[name]()
    rng = np.random.default_rng(1)
    x0, eps = rng.standard_normal((2, 5, 3))
    t = p.t_min + 0.37 * (p.t_max - p.t_min)
    a, s = p.signal_scale(t), p.noise_std(t)
    x_t = P.x_t_formula(x0, eps, a, s)
    v = P.v_from_x0_eps_formula(x0, eps, a, s)
    u = P.flow_from_x0_eps_formula(x0, eps)
    for prediction_type, out in (("epsilon", eps), ("sample", x0), ("flow", u)):
        np.testing.assert_allclose(P.x0_from_model_output(x_t, out, a, s, prediction_type), x0, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(P.eps_from_flow_formula(x_t, u, a, s), eps, rtol=1e-9, atol=1e-9)
    if p.variance_preserving:  # v's inverse formulas need a^2 + s^2 = 1 (Salimans & Ho appendix D)
        np.testing.assert_allclose(P.x0_from_model_output(x_t, v, a, s, "v_prediction"), x0, rtol=1e-9, atol=1e-9)


def test_the_flow_path_is_a_straight_line_and_its_velocity_is_eps_minus_x0():
    p = rd.FlowProcess()
    x0, eps = np.array([0.3, -1.0]), np.array([1.5, 0.2])
    x = lambda t: P.x_t_formula(x0, eps, p.signal_scale(t), p.noise_std(t))  # noqa: E731
    np.testing.assert_allclose((x(0.61) - x(0.6)) / 0.01, eps - x0, rtol=1e-9)
    assert p.sigma(1.0) == np.inf and p.t_from_sigma(np.inf) == 1.0
    assert p.shifted(0.5) == 0.5 and rd.FlowProcess(shift=3.0).shifted(0.5) == pytest.approx(0.75)


def test_as_process_wraps_a_schedule_and_refuses_anything_else():
    s = rd.NoiseSchedule.linear(T=10)
    assert isinstance(rd.as_process(s), rd.DiscreteProcess)
    p = rd.VEProcess()
    assert rd.as_process(p) is p
    with pytest.raises(TypeError, match="process or NoiseSchedule"):
        rd.as_process(np.zeros(10))
