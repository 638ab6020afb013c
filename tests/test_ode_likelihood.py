"""The probability-flow ODE likelihood (refdiff.gaussian.ode_likelihood) against the exact density.

The independent truth: for a Gaussian mixture the density of every noised marginal q(x_t) is known in
closed form (GaussianMixture.log_prob, PRML eq. 2.115), and the mixture's exact denoiser is the model.
The ODE log-likelihood of that model at t_min must equal log q_{t_min}(x) within the solver's
tolerance once the prior is the exact q_{t_max}; with the default N(0, sigma_max^2 I) prior the gap is
the prior's mismatch. The Hutchinson estimator is checked for unbiasedness against the exact trace,
the autograd trace against finite differences, and two plausible mistakes must fail.
"""
import math

import numpy as np
import pytest

import refdiff as rd
from refdiff.gaussian import ode_likelihood as ol

MIXTURE = rd.GaussianMixture(weights=[0.3, 0.7], means=[[-1.0, 0.5], [0.8, -0.3]],
                             covariances=[[[0.2, 0.05], [0.05, 0.1]], [[0.15, 0.0], [0.0, 0.3]]])
SCHEDULE = rd.NoiseSchedule.linear(T=1000)


def points_at_t_min(process, n=16, seed=0):
    """x = a x_0 + s eps at the process's t_min, and the exact log q_{t_min}(x)."""
    p = rd.as_process(process)
    a, s = p.scales_from_sigma(p.sigma(p.t_min))
    x0 = MIXTURE.sample(n, np.random.default_rng(seed))
    x = a * x0 + s * np.random.default_rng(seed + 1).standard_normal(x0.shape)
    return x, MIXTURE.log_prob(x, a, s)


def exact_prior(y, sigma_max):
    """log q_{sigma_max}(y) in the variance-exploding scale: the mixture blurred by N(0, sigma_max^2 I)."""
    return MIXTURE.log_prob(y, 1.0, sigma_max)


@pytest.mark.parametrize("process", [SCHEDULE, rd.VPLinearProcess(), rd.VEProcess()], ids=["ddpm", "vp", "ve"])
def test_ode_likelihood_of_the_exact_model_equals_the_exact_density(process):
    """Measured: max error 6e-6 at rtol = atol = 1e-6 (ddpm, vp), 5e-6 (ve); 6e-8 at 1e-8."""
    x, exact = points_at_t_min(process)
    tol = 1e-6
    log_p = ol.ode_log_likelihood(MIXTURE.model(process), x, process, rtol=tol, atol=tol, prior_log_prob=exact_prior)
    assert np.abs(log_p - exact).max() < 20 * tol


def test_the_error_falls_with_the_tolerance():
    x, exact = points_at_t_min(SCHEDULE, n=8)
    errors = [np.abs(ol.ode_log_likelihood(MIXTURE.model(SCHEDULE), x, SCHEDULE, rtol=tol, atol=tol,
                                           prior_log_prob=exact_prior) - exact).max() for tol in (1e-4, 1e-6)]
    assert errors[1] < errors[0] / 20, errors


@pytest.mark.parametrize("prediction_type", ["sample", "v_prediction"])
def test_every_prediction_type_gives_the_same_likelihood(prediction_type):
    x, exact = points_at_t_min(SCHEDULE, n=8)
    log_p = ol.ode_log_likelihood(MIXTURE.model(SCHEDULE, prediction_type), x, SCHEDULE, prediction_type=prediction_type,
                                  rtol=1e-6, atol=1e-6, prior_log_prob=exact_prior)
    assert np.abs(log_p - exact).max() < 2e-5


def test_the_default_prior_costs_only_its_mismatch():
    """N(0, sigma_max^2 I) instead of q_T: off by ~ |mean| / sigma_max ~ 0.005 nats at sigma_max ~ 157."""
    x, exact = points_at_t_min(SCHEDULE, n=8)
    log_p = ol.ode_log_likelihood(MIXTURE.model(SCHEDULE), x, SCHEDULE, rtol=1e-5, atol=1e-5)
    assert np.abs(log_p - exact).max() < 0.02


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(probe):
    """The mean of v^T J v over 20000 probes matches the exact trace within 4 standard errors (J from
    finite differences, column by column); the estimator's own code gives v^T J v for each probe."""
    x, _ = points_at_t_min(SCHEDULE, n=4)
    x = x * 0.2 + 0.3  # a point where the Jacobian is far from a multiple of the identity
    model = MIXTURE.model(SCHEDULE)
    model_trace = ol.finite_difference_trace(model)
    _, exact = model_trace(x, 300.0)
    h = 1e-5
    jacobian = np.stack([(model(x + h * e, 300.0) - model(x - h * e, 300.0)) / (2 * h)
                         for e in np.eye(2)[:, None, :]], axis=-1)  # (B, 2, 2): J[b, i, j] = d out_i / dx_j
    probes = ol.draw_probes(x.shape, np.random.default_rng(5), probe, n=20000)  # (n, B, 2)
    single = np.einsum("nbi,bij,nbj->nb", probes, jacobian, probes)
    for v, value in zip(probes[:5], single[:5]):
        assert np.allclose(model_trace(x, 300.0, v[None])[1], value, rtol=1e-6, atol=1e-8)
    se = single.std(axis=0, ddof=1) / math.sqrt(len(probes))
    assert np.all(se > 0)
    assert np.all(np.abs(single.mean(axis=0) - exact) < 4 * se), (single.mean(axis=0), exact, se)


def test_ode_likelihood_with_hutchinson_probes_is_unbiased_over_samples():
    """One Rademacher probe per sample: the error per sample is noise, its mean over 64 samples near 0."""
    x, exact = points_at_t_min(SCHEDULE, n=64, seed=3)
    log_p = ol.ode_log_likelihood(MIXTURE.model(SCHEDULE), x, SCHEDULE, divergence="hutchinson",
                                  rng=np.random.default_rng(7), rtol=1e-4, atol=1e-4, prior_log_prob=exact_prior)
    error = log_p - exact
    assert abs(error.mean()) < 4 * error.std(ddof=1) / math.sqrt(len(error)) + 1e-3


def test_a_sign_error_in_the_divergence_fails(monkeypatch):
    x, exact = points_at_t_min(SCHEDULE, n=8)
    right = ol.pf_ode_divergence
    monkeypatch.setattr(ol, "pf_ode_divergence", lambda tr, d, sigma: -right(tr, d, sigma))
    log_p = ol.ode_log_likelihood(MIXTURE.model(SCHEDULE), x, SCHEDULE, rtol=1e-5, atol=1e-5, prior_log_prob=exact_prior)
    assert np.abs(log_p - exact).max() > 1.0


def test_a_missing_half_in_the_drift_fails(monkeypatch):
    """-d[sigma^2]/du instead of -1/2 d[sigma^2]/du: the flow of the reverse SDE's drift, not the ODE's."""
    x, exact = points_at_t_min(SCHEDULE, n=8)
    monkeypatch.setattr(ol, "pf_ode_coefficient", lambda sigma: -(2 * sigma**2))
    log_p = ol.ode_log_likelihood(MIXTURE.model(SCHEDULE), x, SCHEDULE, rtol=1e-5, atol=1e-5, prior_log_prob=exact_prior)
    assert np.abs(log_p - exact).max() > 0.1


def test_dormand_prince_is_fifth_order():
    """dz/du = z: the local error of one step is O(h^6) (order 5), the embedded estimate O(h^5)."""
    f = lambda z, u: z  # noqa: E731
    z = np.ones((1, 1))
    errs, estimates = [], []
    for h in (0.2, 0.1):
        z5, est = ol.dopri5_step(f, z, 0.0, h)
        errs.append(abs(z5[0, 0] - math.exp(h)))
        estimates.append(abs(est[0, 0]))
    assert errs[0] / errs[1] == pytest.approx(64, rel=0.1)
    assert estimates[0] / estimates[1] == pytest.approx(32, rel=0.1)


def test_solve_ode_meets_its_tolerance_on_a_known_solution():
    """dz/du = -u z, z(0) = 1: z(2) = exp(-2)."""
    z, nfe, steps = ol.solve_ode(lambda z, u: -u * z, np.ones((1, 1)), 0.0, 2.0, rtol=1e-8, atol=1e-8)
    assert z[0, 0] == pytest.approx(math.exp(-2), abs=1e-7)
    assert nfe == 7 * steps or nfe > 7 * steps  # rejected steps cost evaluations too


def test_the_autograd_trace_equals_finite_differences():
    net = rd.MLPDenoiser(dim=3, hidden=16, num_blocks=1, seed=0)
    rng = np.random.default_rng(0)
    for p in net.parameters():
        p.data[...] = rng.standard_normal(p.data.shape).astype(p.data.dtype) * 0.5
    diffusion = rd.GaussianDiffusion(net, rd.NoiseSchedule.linear(T=100))
    x = rng.standard_normal((4, 3))
    fd = ol.finite_difference_trace(diffusion.model_function())
    out, trace = diffusion.model_trace(x, 10.5)
    assert np.allclose(trace, fd(x, 10.5)[1], rtol=1e-5, atol=1e-6)
    probes = ol.draw_probes(x.shape, rng, n=3)
    assert np.allclose(diffusion.model_trace(x, 10.5, probes)[1], fd(x, 10.5, probes)[1], rtol=1e-5, atol=1e-6)
    assert all(p.grad is None and p.requires_grad for p in net.parameters())


def test_ode_bits_per_dim_bounds_the_entropy_of_discretized_data():
    """1-D Gaussian data on the 8-bit grid: E[-log2 P] <= ODE bpd (dequantized, Jensen) up to sampling error."""
    gaussian = rd.GaussianMixture(weights=[1.0], means=[[0.1]], covariances=[[[0.09]]])
    rng = np.random.default_rng(4)
    x0 = np.clip(np.round((gaussian.sample(200, rng) + 1) * 127.5), 0, 255) / 127.5 - 1
    bpd = ol.ode_bits_per_dim(gaussian.model(SCHEDULE), x0, SCHEDULE, rng=rng, rtol=1e-5, atol=1e-5)
    # the entropy of the discretized N(0.1, 0.09), in bits: the density's 0.5 log2(2 pi e 0.09) + log2(127.5)
    entropy_bits = 0.5 * math.log2(2 * math.pi * math.e * 0.09) + math.log2(127.5)
    assert entropy_bits - 0.15 < bpd < entropy_bits + 0.2, (bpd, entropy_bits)


def test_bad_options_are_refused():
    x, _ = points_at_t_min(SCHEDULE, n=2)
    with pytest.raises(ValueError, match="divergence"):
        ol.ode_log_likelihood(MIXTURE.model(SCHEDULE), x, SCHEDULE, divergence="trace")
    with pytest.raises(ValueError, match="probe"):
        ol.ode_log_likelihood(MIXTURE.model(SCHEDULE), x, SCHEDULE, divergence="hutchinson", probe="sphere")
