"""q_posterior: the Gaussian q(x_{t-1} | x_t, x_0) of DDPM eqs. 6-7."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import refdiff as rd
from refdiff.gaussian.posterior import q_posterior

SCHEDULES = [
    rd.NoiseSchedule.linear(),
    rd.NoiseSchedule.cosine(),
    rd.NoiseSchedule.sigmoid(T=300),
    rd.NoiseSchedule.scaled_linear().rescale_zero_terminal_snr(),
]
EPS32 = 2.0**-24


@st.composite
def posterior_inputs(draw, dtype=np.float64):
    schedule = draw(st.sampled_from(SCHEDULES))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4))
    width = 32 if dtype == np.float32 else 64
    elements = st.floats(-10, 10, width=width, allow_subnormal=False)
    x0 = draw(hnp.arrays(dtype, shape, elements=elements))
    x_t = draw(hnp.arrays(dtype, shape, elements=elements))
    t = draw(hnp.arrays(np.int64, (shape[0],), elements=st.integers(0, schedule.T - 1)))
    return schedule, x0, x_t, t


def gaussian_product(x0, x_t, t, schedule):
    """Bayes' rule by hand, float64: q(x_{t-1} | x_0) q(x_t | x_{t-1}) as a Gaussian in x_{t-1}.

    prior      N(sqrt(abar_{t-1}) x0, 1 - abar_{t-1})                 (DDPM eq. 4 at t-1)
    likelihood N(x_t; sqrt(alpha_t) x_{t-1}, beta_t), as a function of x_{t-1}:
               N(x_t / sqrt(alpha_t), beta_t / alpha_t)               (DDPM eq. 2)
    product: precisions add, means average weighted by precision. At index 0 the prior is a
    point mass at x0 (abar_{-1} = 1), so the posterior is too.
    """
    mean, var = np.empty_like(x0), np.empty(len(t))
    for i, k in enumerate(t):
        abar_prev = schedule.alphas_cumprod[k - 1] if k > 0 else 1.0
        alpha, beta = 1 - schedule.betas[k], schedule.betas[k]
        if k == 0:
            mean[i], var[i] = x0[i], 0.0
            continue
        prior_prec, prior_mean = 1 / (1 - abar_prev), np.sqrt(abar_prev) * x0[i]
        # likelihood precision alpha / beta times its mean x_t / sqrt(alpha), written as one
        # product so that beta = 1 (alpha = 0, the last step of a zero-terminal-SNR schedule,
        # where x_t says nothing about x_{t-1}) gives 0 instead of 0 * inf
        lik_prec, lik_prec_times_mean = alpha / beta, x_t[i] * np.sqrt(alpha) / beta
        var[i] = 1 / (prior_prec + lik_prec)
        mean[i] = var[i] * (prior_prec * prior_mean + lik_prec_times_mean)
    return mean, var


@given(posterior_inputs())
def test_posterior_mean_and_variance_equal_the_gaussian_product_formula(args):
    schedule, x0, x_t, t = args
    mean, var, log_var = q_posterior(x0, x_t, t, schedule)
    expected_mean, expected_var = gaussian_product(x0, x_t, t, schedule)
    shape = (-1,) + (1,) * (x0.ndim - 1)
    # two float64 routes to the same number; the precision form loses up to ~1/(1 - abar_prev)
    # ulps near t = 1 (1 - abar ~ 1e-4): relative 1e-10 and absolute 1e-10 on |values| <= 10
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(var, expected_var.reshape(shape), rtol=1e-10, atol=0)
    assert var.shape == log_var.shape == (len(t),) + (1,) * (x0.ndim - 1)


@given(posterior_inputs())
def test_log_variance_is_log_of_variance_except_at_index_zero(args):
    schedule, x0, x_t, t = args
    _, var, log_var = q_posterior(x0, x_t, t, schedule)
    pos = t > 0
    np.testing.assert_allclose(np.exp(log_var[pos]), var[pos], rtol=1e-13)
    assert np.all(log_var[~pos] == schedule.posterior_log_variance_clipped[1])


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_posterior_averaged_over_x_t_gives_back_q_of_x_t_minus_1_given_x0(schedule):
    # law of total expectation and variance: with x_t ~ q(x_t | x_0), the posterior mean
    # coef1 x0 + coef2 x_t has mean coef1 x0 + coef2 sqrt(abar_t) x0 = sqrt(abar_{t-1}) x0 and
    # variance coef2^2 (1 - abar_t), which plus the posterior variance is 1 - abar_{t-1}.
    s = schedule
    abar_prev = s.alphas_cumprod_prev
    mean_of_mean = s.posterior_mean_coef1 + s.posterior_mean_coef2 * s.sqrt_alphas_cumprod
    var_of_mean = s.posterior_mean_coef2**2 * (1 - s.alphas_cumprod)
    # the coefficients divide by 1 - abar_t, whose float64 value carries an absolute error of
    # ~2^-53 (cancellation near t = 0, where 1 - abar ~ 1e-4): relative 2^-53 / (1 - abar_t),
    # times a few roundings
    tol = 8 * 2.0**-53 / (1 - s.alphas_cumprod)
    assert np.all(np.abs(mean_of_mean - np.sqrt(abar_prev)) <= tol)
    assert np.all(np.abs(var_of_mean + s.posterior_variance - (1 - abar_prev)) <= tol)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_posterior_variance_lies_between_zero_and_beta(schedule):
    # beta tilde = beta (1 - abar_{t-1}) / (1 - abar_t) <= beta (DDPM sec. 3.2: the two extremes)
    assert np.all(schedule.posterior_variance >= 0)
    assert np.all(schedule.posterior_variance <= schedule.betas * (1 + 1e-15))


def test_posterior_at_t0_is_a_point_mass_at_x0():
    rng = np.random.default_rng(0)
    x0, x_t = rng.standard_normal((2, 3, 4)).astype(np.float32)
    mean, var, _ = q_posterior(x0, x_t, 0, SCHEDULES[0])
    np.testing.assert_allclose(mean, x0, rtol=0, atol=0)
    assert np.all(var == 0)


@given(posterior_inputs(dtype=np.float32))
def test_posterior_keeps_float32_and_agrees_with_float64(args):
    schedule, x0, x_t, t = args
    mean, var, log_var = q_posterior(x0, x_t, t, schedule)
    assert mean.dtype == var.dtype == log_var.dtype == np.float32
    mean64, _, _ = q_posterior(x0.astype(np.float64), x_t.astype(np.float64), t, schedule)
    shape = (-1,) + (1,) * (x0.ndim - 1)
    c1, c2 = schedule.posterior_mean_coef1[t].reshape(shape), schedule.posterior_mean_coef2[t].reshape(shape)
    # coefficients rounded once, two products, one sum: <= 4 float32 roundings of the terms,
    # plus float32's smallest normal for products that fall into the subnormal range
    bound = 4 * EPS32 * (np.abs(c1 * x0) + np.abs(c2 * x_t)) + np.finfo(np.float32).tiny
    assert np.all(np.abs(mean - mean64) <= bound)


def test_public_name_is_q_posterior():
    assert rd.q_posterior is q_posterior


@pytest.mark.parametrize(
    "x0, x_t, t, error, match",
    [
        (np.zeros((2, 3)), np.zeros((2, 4)), 0, ValueError, "x_t must have the shape"),
        (np.zeros((2, 3)), np.zeros((2, 3), np.float32), 0, TypeError, "dtype"),
        (np.zeros((2, 3)), np.zeros((2, 3)), 1000, ValueError, "t must be in 0..999"),
        (np.zeros((2, 3)), np.full((2, 3), np.nan), 1, ValueError, "x_t contains NaN"),
        (np.full((2, 3), np.inf), np.zeros((2, 3)), 1, ValueError, "x0 contains inf"),
    ],
)
def test_bad_inputs_raise_naming_the_problem(x0, x_t, t, error, match):
    with pytest.raises(error, match=match):
        q_posterior(x0, x_t, t, SCHEDULES[0])
