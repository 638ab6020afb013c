"""The variational bound (refdiff.gaussian.likelihood) against independent computations.

Each term is checked against a computation that shares no code with it: the Gaussian KL against
float64 quadrature of p log(p / q) in 1-D; the discretized decoder against quadrature of the
Gaussian density over each bin (and math.erf at the open outer bins); the prior term against its
closed form. Then the whole bound on Gaussian data N(m, v0) with the exact eps model (a
GaussianMixture with one component): for a given x_0 every KL term has a closed form in
expectation over x_t, written here from the Gaussian conditional E[x_0 | x_t] (PRML eq. 2.81),
and the average bound over discretized data is above the entropy of the discretized data,
H(P) <= E_P[-log p_theta] <= E_P[L_vlb].
"""
import functools
import math

import numpy as np
import pytest

import refdiff as rd
from refdiff.gaussian import likelihood as lik

SCHEDULE = rd.NoiseSchedule.linear(T=1000)
DATA_MEAN, DATA_VAR = 0.1, 0.09
GAUSSIAN = rd.GaussianMixture(weights=[1.0], means=[[DATA_MEAN]], covariances=[[[DATA_VAR]]])


def gaussian_pdf(x, mean, var):
    return np.exp(-0.5 * (x - mean) ** 2 / var) / np.sqrt(2 * np.pi * var)


def discretized(x):
    """Values rounded to the 8-bit grid k / 127.5 - 1 and clipped to [-1, 1]."""
    return np.clip(np.round((x + 1) * 127.5), 0, 255) / 127.5 - 1


# ---- the terms -------------------------------------------------------------------------------------


@pytest.mark.parametrize("m1, v1, m2, v2", [(0.0, 1.0, 0.0, 1.0), (0.3, 0.5, -0.2, 2.0), (1.0, 0.01, 0.9, 0.02),
                                            (-2.0, 3.0, 0.5, 0.7)])
def test_normal_kl_equals_quadrature_of_p_log_p_over_q(m1, v1, m2, v2):
    s1 = math.sqrt(v1)
    x = np.linspace(m1 - 14 * s1, m1 + 14 * s1, 200001)
    p, q = gaussian_pdf(x, m1, v1), gaussian_pdf(x, m2, v2)
    integrand = p * (np.log(p) - np.log(q))
    quadrature = float(np.sum((integrand[1:] + integrand[:-1]) / 2 * np.diff(x)))
    kl = lik.normal_kl(m1, math.log(v1), m2, math.log(v2))
    assert kl == pytest.approx(quadrature, rel=1e-7, abs=1e-10)


def bin_quadrature(x0, mean, var, w=1 / 255):
    """P(bin of x0) under N(mean, var): trapezoid on 20001 points over an interior bin; the open outer
    bins by math.erf."""
    std = math.sqrt(var)
    if x0 > 0.999:
        return 0.5 * (1 - math.erf((x0 - w - mean) / (std * math.sqrt(2))))
    if x0 < -0.999:
        return 0.5 * (1 + math.erf((x0 + w - mean) / (std * math.sqrt(2))))
    x = np.linspace(x0 - w, x0 + w, 20001)
    f = gaussian_pdf(x, mean, var)
    return float(np.sum((f[1:] + f[:-1]) / 2 * np.diff(x)))


@pytest.mark.parametrize("k, mean, var", [(128, 0.0, 1e-4), (100, -0.2, 0.05), (0, -0.98, 1e-3), (255, 0.97, 1e-3),
                                          (255, 0.0, 0.25), (3, 0.5, 0.02), (200, -0.5, 0.01)])
def test_discretized_decoder_equals_the_gaussian_integrated_over_the_bin(k, mean, var):
    """DDPM eq. 13 against quadrature, relative 1e-7; (200, -0.5, 0.01) lies ~ 9.5 std in the right tail
    (P ~ 1e-22), where Phi(upper) - Phi(lower) in float64 would be 0: the upper-tail difference holds."""
    x0 = k / 127.5 - 1
    expected = bin_quadrature(x0, mean, var)
    got = lik.bin_probability(np.array([x0]), mean, math.log(var))[0]
    assert got == pytest.approx(expected, rel=1e-7)
    log_likelihood = lik.discretized_gaussian_log_likelihood(np.array([x0]), mean, math.log(var))[0]
    assert log_likelihood == pytest.approx(math.log(expected), rel=1e-7)


def test_the_bins_of_the_256_values_sum_to_one():
    x0 = np.arange(256) / 127.5 - 1
    assert lik.bin_probability(x0, 0.3, math.log(0.2)).sum() == pytest.approx(1.0, abs=1e-12)


def test_prior_term_is_the_closed_form_kl_to_the_standard_normal():
    """L_T = 1/2 sum (abar x_0^2 + (1 - abar) - 1 - log(1 - abar)), abar = prod (1 - beta) at the last step."""
    x0 = np.random.default_rng(0).uniform(-1, 1, (5, 3, 4))
    abar = float(np.prod(1 - SCHEDULE.betas))
    expected = 0.5 * (abar * x0**2 + (1 - abar) - 1 - math.log(1 - abar)).reshape(5, -1).sum(1)
    np.testing.assert_allclose(lik.prior_kl(x0, SCHEDULE), expected, rtol=1e-9, atol=1e-18)


# ---- the bound on Gaussian data with the exact model ---------------------------------------------------


def expected_kl_terms_closed_form(x0, schedule):
    """E_{x_t | x_0}[L_t] for t = 1..T-1 and 1-D data N(m, v0), the exact eps model, fixed_small variance.

    mu_tilde - mu_theta = c (x_0 - E[x_0 | x_t]), c = sqrt(abar_{t-1}) beta_t / (1 - abar_t) (DDPM eq. 7);
    E[x_0 | x_t] = m + g (x_t - a m), g = a v0 / (a^2 v0 + 1 - abar_t) (PRML eq. 2.81), a = sqrt(abar_t), so
    x_0 - E[x_0 | x_t] = (1 - g a)(x_0 - m) - g sqrt(1 - abar_t) eps and, sigma_t^2 = beta_tilde_t,
    E[L_t] = c^2 ((1 - g a)^2 (x_0 - m)^2 + g^2 (1 - abar_t)) / (2 beta_tilde_t). Returns (B, T - 1)."""
    betas = np.asarray(schedule.betas)
    abar = np.cumprod(1 - betas)
    abar_t, abar_prev, beta_t = abar[1:], abar[:-1], betas[1:]
    a = np.sqrt(abar_t)
    g = a * DATA_VAR / (abar_t * DATA_VAR + 1 - abar_t)
    c = np.sqrt(abar_prev) * beta_t / (1 - abar_t)
    beta_tilde = (1 - abar_prev) / (1 - abar_t) * beta_t
    d = x0.reshape(-1, 1) - DATA_MEAN
    return c**2 * ((1 - g * a) ** 2 * d**2 + g**2 * (1 - abar_t)) / (2 * beta_tilde)


@functools.lru_cache(maxsize=None)
def data_bin_masses():
    """P(k), the mass of N(m, v0) on bin k = 0..255 (the bins of DDPM eq. 13), by quadrature."""
    return np.array([bin_quadrature(k / 127.5 - 1, DATA_MEAN, DATA_VAR) for k in range(256)])


def discrete_data_entropy():
    """H(P) of the discretized data."""
    P = data_bin_masses()
    return float(-(P * np.log(P)).sum())


def test_kl_terms_of_the_exact_model_equal_their_closed_form_within_sampling_error():
    """The sum of the KL terms (t = 1..T-1) of 2000 samples, one draw of x_t each, against the closed form
    per sample: the mean difference within 5 standard errors, for each half of the schedule and in all,
    the standard error of the sum under 1.5% of it (measured 0.6%: a wrong coefficient or variance
    moves the sum by far more)."""
    rng = np.random.default_rng(1)
    x0 = discretized(GAUSSIAN.sample(2000, rng))
    terms, prior = lik.vlb_terms(GAUSSIAN.model(SCHEDULE), x0, SCHEDULE, rng)
    expected = expected_kl_terms_closed_form(x0, SCHEDULE)
    for part in (slice(1, 500), slice(500, None)):
        diff = terms[:, part].sum(1) - expected[:, slice(part.start - 1, None if part.stop is None else part.stop - 1)].sum(1)
        se = diff.std(ddof=1) / math.sqrt(diff.size)
        assert abs(diff.mean()) <= 5 * se, (diff.mean(), se)
    total_diff = terms[:, 1:].sum(1) - expected.sum(1)
    se = total_diff.std(ddof=1) / math.sqrt(total_diff.size)
    assert abs(total_diff.mean()) <= 5 * se and se < 0.015 * expected.sum(1).mean(), (total_diff.mean(), se)
    np.testing.assert_allclose(prior, lik.prior_kl(x0, SCHEDULE))


@pytest.mark.parametrize("variance_type, standard_errors", [("fixed_small", 5), ("fixed_large", 3)])
def test_bound_of_the_exact_model_is_above_the_entropy_of_the_discretized_data(variance_type, standard_errors):
    """E_P[L_vlb] >= H(P) (the bound is above -log p_theta, whose mean is H(P) + KL(P || p_theta)), read
    per sample as L_vlb(x_0) + log P(x_0) >= 0 in the mean (less spread than L_vlb alone).
    Measured over 4000 samples: E[L_vlb] = 5.588 (fixed_small), 5.153 (fixed_large) nats against
    H(P) = 5.058; the gaps 0.54 and 0.10 are 20 and 4.5 standard errors (0.026, 0.022)."""
    rng = np.random.default_rng(2)
    x0 = discretized(GAUSSIAN.sample(4000, rng))
    bound = lik.vlb(GAUSSIAN.model(SCHEDULE), x0, SCHEDULE, rng, variance_type=variance_type)
    gap = bound + np.log(data_bin_masses()[np.round((x0[:, 0] + 1) * 127.5).astype(int)])
    se = gap.std(ddof=1) / math.sqrt(gap.size)
    assert gap.mean() - standard_errors * se > 0, (gap.mean(), se)
    assert bound.mean() > discrete_data_entropy()
    bpd = lik.bits_per_dim(GAUSSIAN.model(SCHEDULE), x0[:500], SCHEDULE, batch_size=200, rng=rng,
                           variance_type=variance_type)
    assert bpd > discrete_data_entropy() / math.log(2)


def test_a_worse_model_has_a_larger_bound():
    """eps scaled by 0.8: the mean of every reverse step is off, the KL terms grow."""
    rng = np.random.default_rng(3)
    x0 = discretized(GAUSSIAN.sample(500, rng))
    exact = GAUSSIAN.model(SCHEDULE)
    worse = lambda x, t: 0.8 * exact(x, t)  # noqa: E731
    assert lik.vlb(worse, x0, SCHEDULE, np.random.default_rng(4)).mean() > \
        lik.vlb(exact, x0, SCHEDULE, np.random.default_rng(4)).mean() + 0.1


def test_data_outside_minus_one_one_is_refused():
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        lik.vlb_terms(GAUSSIAN.model(SCHEDULE), np.array([[1.5]]), SCHEDULE)
