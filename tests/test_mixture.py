"""The exact analytic denoiser of a Gaussian mixture (refdiff.gaussian.mixture), against
independent truth: Monte Carlo, finite differences, the one-Gaussian (Wiener) formula, sampled
moments, and the library's own DDPM / DDIM samplers.

Every test checks one property and says which mistakes it catches. Tolerances on random
estimates are 5 standard errors (estimated from the same draws), so a correct implementation
fails with probability ~1e-6 per comparison; seeds are fixed, so the suite is deterministic.
"""
import numpy as np
import pytest

import refdiff as rd
from refdiff.gaussian.mixture import GaussianMixture
from refdiff.gaussian.process import DiscreteProcess

# 1-D: two well separated components of unequal weight and width
MIX_1D = GaussianMixture(weights=[0.3, 0.7], means=[[-2.0], [1.0]], covariances=[[[0.25]], [[0.5]]])
# 2-D: three components with correlated, unequal covariances (a transposed Cholesky factor or a
# covariance used where its inverse belongs gives a different answer here)
MIX_2D = GaussianMixture(
    weights=[0.2, 0.5, 0.3],
    means=[[-2.0, 0.0], [1.5, 1.0], [0.5, -1.5]],
    covariances=[[[0.30, 0.12], [0.12, 0.20]], [[0.25, -0.10], [-0.10, 0.40]], [[0.10, 0.0], [0.0, 0.50]]],
)
LEVELS = [(0.9, np.sqrt(1 - 0.81)), (0.6, 0.8), (0.3, np.sqrt(1 - 0.09)), (1.0, 0.5)]  # (a, s)
LINEAR = rd.NoiseSchedule.linear(T=1000)


def points(mixture, n, seed, a, s):
    """x_t = a x_0 + s eps for x_0 from the mixture: where the denoiser is asked in practice."""
    rng = np.random.default_rng(seed)
    return a * mixture.sample(n, rng) + s * rng.standard_normal((n, mixture.d))


def mean_and_standard_error(samples):
    """Sample mean of (n, ...) draws and its standard error."""
    return samples.mean(0), samples.std(0, ddof=1) / np.sqrt(samples.shape[0])


def assert_within(estimate, exact, standard_error, what, floor=1e-12):
    """|estimate - exact| <= 5 standard errors (+ a floor for exact zeros)."""
    err = np.abs(estimate - exact)
    bound = 5 * standard_error + floor
    assert (err <= bound).all(), f"{what}: |{estimate} - {exact}| = {err} > 5 SE = {bound}"


# ---- the denoiser against Monte Carlo ---------------------------------------------------------


@pytest.mark.parametrize("mixture", [MIX_1D, MIX_2D], ids=["1d", "2d"])
@pytest.mark.parametrize("a, s", LEVELS)
def test_denoiser_equals_an_importance_sampling_estimate_of_the_posterior_mean(mixture, a, s):
    """E[x_0 | x_t] = int x_0 q(x_t | x_0) q(x_0) / int q(x_t | x_0) q(x_0), estimated with x_0
    drawn from the mixture and weights N(x_t; a x_0, s^2 I) (self-normalised importance sampling;
    standard error by the delta method). Catches: a missing factor a in a Sigma_k C_k^{-1}, Sigma_k
    used for C_k, responsibilities without the weights or the log-determinant, a transposed solve."""
    rng = np.random.default_rng(1)
    x0 = mixture.sample(400_000, rng)                                     # (N, d)
    x_t = points(mixture, 4, seed=2, a=a, s=s)                           # (4, d)
    exact = mixture.denoised(x_t, a, s)
    for i in range(len(x_t)):
        log_w = -0.5 * np.square(x_t[i] - a * x0).sum(1) / s**2
        w = np.exp(log_w - log_w.max())
        w /= w.sum()
        estimate = w @ x0
        standard_error = np.sqrt(np.square(w) @ np.square(x0 - estimate))  # delta method for a ratio
        assert_within(estimate, exact[i], standard_error, f"E[x_0 | x_t={x_t[i]}]")


# ---- the score against finite differences of log q(x_t) ---------------------------------------


@pytest.mark.parametrize("mixture", [MIX_1D, MIX_2D], ids=["1d", "2d"])
@pytest.mark.parametrize("a, s", LEVELS + [(1.0, 0.0), (0.0, 1.0), (2.0, 0.1)])
def test_score_is_the_finite_difference_gradient_of_log_q(mixture, a, s):
    """grad log q(x_t) against central differences of log_prob (float64, h = 1e-5: truncation
    ~h^2 |d^3 log q| ~ 1e-9, rounding ~1e-16 |log q| / h ~ 1e-10). Includes s = 0 (q = the data
    scaled by a) and a = 0 (q = N(0, s^2 I)). Catches: a wrong sign or factor in the score, a
    score that disagrees with the density (e.g. a wrong C_k in one of them), a wrong log-det."""
    x_t = points(mixture, 6, seed=3, a=a, s=s)
    h = 1e-5
    grad = np.empty_like(x_t)
    for j in range(mixture.d):
        step = np.zeros(mixture.d)
        step[j] = h
        grad[:, j] = (mixture.log_prob(x_t + step, a, s) - mixture.log_prob(x_t - step, a, s)) / (2 * h)
    np.testing.assert_allclose(mixture.score(x_t, a, s), grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("a, s", LEVELS)
def test_tweedie_links_the_denoiser_and_the_score(a, s):
    """score = (a E[x_0 | x_t] - x_t) / s^2 and eps = (x_t - a E[x_0 | x_t]) / s: the two are
    computed along different paths (mu_k + a Sigma_k u_k against u_k), so a mistake in the
    per-component posterior mean (PRML eq. 2.81) shows here. Also v = a eps - s x_0."""
    x_t = points(MIX_2D, 50, seed=4, a=a, s=s)
    x0_hat = MIX_2D.denoised(x_t, a, s)
    np.testing.assert_allclose(MIX_2D.score(x_t, a, s), (a * x0_hat - x_t) / s**2, rtol=1e-9, atol=1e-9)
    eps = MIX_2D.eps(x_t, a, s)
    np.testing.assert_allclose(eps, (x_t - a * x0_hat) / s, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(MIX_2D.v(x_t, a, s), a * eps - s * x0_hat, rtol=1e-12, atol=1e-12)


# ---- one Gaussian: the linear (Wiener) denoiser -------------------------------------------------


def test_one_gaussian_reduces_to_the_wiener_filter():
    """K = 1: E[x_0 | x_t] = mu + U diag(a lambda_i / (a^2 lambda_i + s^2)) U^T (x_t - a mu) in the
    eigenbasis Sigma = U diag(lambda) U^T (the Wiener filter; EDM's D(x) = sigma_data^2 / (sigma^2 +
    sigma_data^2) x for one isotropic Gaussian), and log q(x_t) the Gaussian log density by slogdet.
    An independent route to the same numbers: catches a wrong formula that a mixture average
    would blur, and the responsibilities must all be 1."""
    mu = np.array([0.5, -1.0, 2.0])
    B = np.array([[1.0, 0.3, 0.0], [0.2, 0.8, -0.4], [0.0, 0.5, 1.2]])
    Sigma = B @ B.T
    one = GaussianMixture([1.0], [mu], [Sigma])
    lam, U = np.linalg.eigh(Sigma)
    for a, s in LEVELS:
        x_t = points(one, 20, seed=5, a=a, s=s)
        gain = U @ np.diag(a * lam / (a**2 * lam + s**2)) @ U.T
        np.testing.assert_allclose(one.denoised(x_t, a, s), mu + (x_t - a * mu) @ gain.T, rtol=1e-10, atol=1e-10)
        C = a**2 * Sigma + s**2 * np.eye(3)
        r = x_t - a * mu
        log_q = -0.5 * (np.einsum("bi,ij,bj->b", r, np.linalg.inv(C), r) + np.linalg.slogdet(C)[1] + 3 * np.log(2 * np.pi))
        np.testing.assert_allclose(one.log_prob(x_t, a, s), log_q, rtol=1e-10, atol=1e-10)
        np.testing.assert_array_equal(one.responsibilities(x_t, a, s), 1.0)


def test_two_copies_of_one_gaussian_are_that_gaussian():
    """Splitting a component in two identical halves changes nothing: catches weights applied
    twice or not at all in log q, and responsibilities that do not sum to 1."""
    one = GaussianMixture([1.0], MIX_2D.means[:1], MIX_2D.covariances[:1])
    two = GaussianMixture([0.25, 0.75], MIX_2D.means[[0, 0]], MIX_2D.covariances[[0, 0]])
    x_t = points(one, 10, seed=6, a=0.7, s=0.5)
    for method in ("log_prob", "denoised", "score", "eps", "v"):
        np.testing.assert_allclose(getattr(two, method)(x_t, 0.7, 0.5), getattr(one, method)(x_t, 0.7, 0.5),
                                   rtol=1e-12, atol=1e-12, err_msg=method)
    np.testing.assert_allclose(two.responsibilities(x_t, 0.7, 0.5), [[0.25, 0.75]] * 10, rtol=1e-12)


# ---- sampling and the noised marginal ---------------------------------------------------------


def moment_errors(samples):
    """(per-entry products (n, d, d) whose mean is the covariance, centred at the sample mean)."""
    centred = samples - samples.mean(0)
    return np.einsum("ni,nj->nij", centred, centred)


def test_samples_have_the_mixture_weights_means_and_covariance():
    """sample(): component frequencies within binomial error of w, sample mean and covariance
    within 5 standard errors (the covariance's from the draws' own fourth moments) of the law of
    total covariance. Catches: x_0 = mu + L^T z (the transposed factor: the wrong correlation),
    a covariance() without the between-component term, a wrong weight order."""
    x0, k = MIX_2D.sample(200_000, np.random.default_rng(7), return_components=True)
    freq = np.bincount(k, minlength=MIX_2D.K) / len(k)
    assert_within(freq, MIX_2D.weights, np.sqrt(MIX_2D.weights * (1 - MIX_2D.weights) / len(k)), "weights")
    m, m_se = mean_and_standard_error(x0)
    assert_within(m, MIX_2D.mean(), m_se, "mean")
    cov, cov_se = mean_and_standard_error(moment_errors(x0))
    assert_within(cov, MIX_2D.covariance(), cov_se, "covariance")
    for j in range(MIX_2D.K):  # each component's own covariance, from the draws of that component
        c, c_se = mean_and_standard_error(moment_errors(x0[k == j]))
        assert_within(c, MIX_2D.covariances[j], c_se, f"covariance of component {j}")


@pytest.mark.parametrize("a, s", LEVELS)
def test_noised_marginal_has_the_moments_of_sampled_x_t(a, s):
    """noised(a, s) is q(x_t): its mean and covariance equal those of x_t = a x_0 + s eps drawn
    from samples (5 standard errors), and its log density is log_prob(x_t, a, s). Catches s where
    s^2 belongs, a missing a^2 on Sigma_k, means not scaled by a."""
    x_t = points(MIX_2D, 200_000, seed=8, a=a, s=s)
    marginal = MIX_2D.noised(a, s)
    m, m_se = mean_and_standard_error(x_t)
    assert_within(m, marginal.mean(), m_se, "mean of x_t")
    cov, cov_se = mean_and_standard_error(moment_errors(x_t))
    assert_within(cov, marginal.covariance(), cov_se, "covariance of x_t")
    np.testing.assert_allclose(marginal.log_prob(x_t[:100]), MIX_2D.log_prob(x_t[:100], a, s), rtol=1e-12, atol=1e-12)


# ---- the ends of the process -------------------------------------------------------------------


def test_at_zero_signal_the_denoiser_is_the_mixture_mean():
    """a = 0: x_t = s eps holds nothing about x_0, so E[x_0 | x_t] = E[x_0], r_k = w_k, eps = x_t / s;
    a = 1e-9 is within 1e-8 of it (no 0/0, no jump). Catches a division by a, NaN at the end of a
    zero-terminal-SNR schedule."""
    x_t = points(MIX_2D, 20, seed=9, a=0.0, s=1.0) * 3
    with np.errstate(divide="raise", invalid="raise", over="raise"):
        np.testing.assert_allclose(MIX_2D.denoised(x_t, 0.0, 1.0), np.tile(MIX_2D.mean(), (20, 1)), rtol=0, atol=1e-14)
        np.testing.assert_allclose(MIX_2D.responsibilities(x_t, 0.0, 1.0), np.tile(MIX_2D.weights, (20, 1)), atol=1e-14)
        np.testing.assert_allclose(MIX_2D.eps(x_t, 0.0, 0.7), x_t / 0.7, rtol=1e-14, atol=0)
        np.testing.assert_allclose(MIX_2D.denoised(x_t, 1e-9, 1.0), MIX_2D.mean() + 0 * x_t, atol=1e-8)


def test_at_zero_noise_the_denoiser_returns_x_t_over_a():
    """s = 0: x_t = a x_0 exactly, so E[x_0 | x_t] = x_t / a and eps = 0 (not NaN); s = 1e-9 is
    within 1e-7 of it. Catches eps computed as (x_t - a x0) / s (0/0), a Sigma^{-1} that
    loses x_t / a to cancellation."""
    for a in (1.0, 0.5, 2.0):
        x_t = points(MIX_2D, 20, seed=10, a=a, s=0.0)
        with np.errstate(divide="raise", invalid="raise", over="raise"):
            np.testing.assert_allclose(MIX_2D.denoised(x_t, a, 0.0), x_t / a, rtol=1e-12, atol=1e-12)
            np.testing.assert_array_equal(MIX_2D.eps(x_t, a, 0.0), 0.0)
            np.testing.assert_allclose(MIX_2D.denoised(x_t, a, 1e-9), x_t / a, rtol=1e-7, atol=1e-7)


def test_far_points_give_finite_responsibilities():
    """A point 60 standard deviations from every component: each w_k N_k underflows to 0 in
    exp, so only log-sum-exp keeps the responsibilities (and the denoiser) finite."""
    x_t = np.array([[60.0, -80.0], [-1e3, 1e3]])
    with np.errstate(divide="raise", invalid="raise", over="raise"):
        r = MIX_2D.responsibilities(x_t, 1.0, 0.1)
        assert np.isfinite(MIX_2D.denoised(x_t, 1.0, 0.1)).all() and np.isfinite(MIX_2D.log_prob(x_t, 1.0, 0.1)).all()
    np.testing.assert_allclose(r.sum(1), 1.0, rtol=1e-14)


# ---- the model adapter ------------------------------------------------------------------------


def test_on_a_noise_schedule_the_model_reads_the_tables_and_the_discrete_process():
    """On a NoiseSchedule the model at an integer t is eps at (sqrt(abar_t), sqrt(1 - abar_t)) (DDPM
    eq. 4), and at any t, fractional included, the model on DiscreteProcess(schedule): the one
    log-sigma interpolation of the library (diffusers' _sigma_to_t inverted). Catches an off-by-one
    index (tried: fails here), abar or sigma interpolated linearly."""
    model = MIX_2D.model(LINEAR)
    x = points(MIX_2D, 5, seed=16, a=0.5, s=0.8)
    for t in (0, 1, 500, 998, 999):
        a, s = LINEAR.sqrt_alphas_cumprod[t], LINEAR.sqrt_one_minus_alphas_cumprod[t]
        np.testing.assert_allclose(model(x, t), MIX_2D.eps(x, a, s), rtol=1e-12, atol=1e-12)
    on_process = MIX_2D.model(DiscreteProcess(LINEAR))
    for t in (0.25, 10.5, 998.9):
        np.testing.assert_array_equal(model(x, t), on_process(x, t))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_three_prediction_types_agree_with_the_library_conversions(dtype):
    """model(x, t) on a NoiseSchedule returns x's dtype and shape; its "sample" output equals
    rd.x0_from_eps of its "epsilon" output and its "v_prediction" output rd.v_from_x0_eps of
    the two (DDPM eq. 15, Salimans & Ho): the mixture speaks the library's conventions.
    Catches eps and v with a or s swapped, or v with the opposite sign."""
    t = np.array([3, 100, 400, 700, 999])
    a, s = LINEAR.sqrt_alphas_cumprod[t][:, None], LINEAR.sqrt_one_minus_alphas_cumprod[t][:, None]
    x = (a * MIX_2D.sample(5, np.random.default_rng(11)) + s * np.random.default_rng(12).standard_normal((5, 2)))
    x = x.astype(dtype)
    eps, x0, v = (MIX_2D.model(LINEAR, p)(x, t) for p in ("epsilon", "sample", "v_prediction"))
    assert eps.dtype == x0.dtype == v.dtype == dtype and eps.shape == x.shape
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(x0, rd.x0_from_eps(x, eps, t, LINEAR), **tol)
    np.testing.assert_allclose(v, rd.v_from_x0_eps(x0, eps, t, LINEAR), **tol)


def test_the_model_reads_any_object_with_signal_scale_and_noise_std():
    """A process given by its methods (here the EDM / variance-exploding path a = 1, s = t) is
    used as it is: model(x, t) = eps at (1, t). Catches an adapter that only knows NoiseSchedule."""

    class VarianceExploding:
        def signal_scale(self, t):
            return 1.0

        def noise_std(self, t):
            return t

    x = points(MIX_2D, 8, seed=13, a=1.0, s=2.5)
    np.testing.assert_array_equal(MIX_2D.model(VarianceExploding())(x, 2.5), MIX_2D.eps(x, 1.0, 2.5))
    with pytest.raises(TypeError, match="signal_scale"):
        MIX_2D.model(object())


def test_bad_input_is_refused_with_a_clear_error():
    """Weights that do not sum to 1 or are <= 0, shapes that disagree, a covariance that is not
    positive definite or not symmetric, a = s = 0, x of the wrong width, t outside [0, T-1],
    a sigma grid of the ODE that does not decrease."""
    cov = MIX_1D.covariances
    with pytest.raises(ValueError, match="sum to 1"):
        GaussianMixture([0.5, 0.6], MIX_1D.means, cov)
    with pytest.raises(ValueError, match="> 0"):
        GaussianMixture([1.5, -0.5], MIX_1D.means, cov)
    with pytest.raises(ValueError, match="means must have shape"):
        GaussianMixture([0.5, 0.5], [[0.0]], cov)
    with pytest.raises(ValueError, match="positive definite"):
        GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0, 2.0], [2.0, 1.0]]])
    with pytest.raises(ValueError, match="symmetric"):
        GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0, 0.5], [0.0, 1.0]]])
    with pytest.raises(ValueError, match="both 0"):
        MIX_2D.denoised(np.zeros((1, 2)), 0.0, 0.0)
    with pytest.raises(ValueError, match=r"shape \(B, 2\)"):
        MIX_2D.denoised(np.zeros((1, 3)), 1.0, 0.5)
    with pytest.raises(ValueError, match="lie in"):
        MIX_2D.model(LINEAR)(np.zeros((1, 2)), 1000)
    with pytest.raises(ValueError, match="decreasing"):
        MIX_2D.probability_flow(np.zeros((1, 2)), [1.0, 2.0])


# ---- the probability-flow ODE reference ------------------------------------------------------------


def test_probability_flow_of_one_gaussian_is_the_closed_form_solution():
    """For one Gaussian the ODE dx/dsigma = (x - D)/sigma is linear and solved exactly by
    x(sigma) = mu + (Sigma + sigma^2 I)^{1/2} (Sigma + sigma_0^2 I)^{-1/2} (x(sigma_0) - mu)
    (the matrices commute): probability_flow meets it within 1e-9 relative at its default
    accuracy (measured: 1.3e-9 absolute on states of size ~20, 3.5e-10 at sigma = 0.05).
    Catches a wrong sign or scale in the ODE (e.g. dx/du = D - x) and a wrong RK4 weight."""
    mu = np.array([0.5, -1.0])
    Sigma = np.array([[0.6, 0.25], [0.25, 0.4]])
    one = GaussianMixture([1.0], [mu], [Sigma])
    lam, U = np.linalg.eigh(Sigma)
    x = points(one, 16, seed=17, a=1.0, s=20.0)
    sigmas = [20.0, 3.0, 0.5, 0.05]
    states = one.probability_flow(x, sigmas)
    for sigma, state in zip(sigmas, states):
        gain = U @ np.diag(np.sqrt((lam + sigma**2) / (lam + sigmas[0] ** 2))) @ U.T
        np.testing.assert_allclose(state, mu + (x - mu) @ gain.T, rtol=1e-9, atol=1e-9)


def test_probability_flow_is_converged_richardson():
    """On the 2-D mixture (nonlinear ODE), halving the RK4 step changes the result by < 1.5e-9,
    i.e. the default solution is within ~1e-10 of the exact one (error ~ diff / 15 for a fourth
    order method): the accuracy the convergence tests rely on."""
    x = points(MIX_2D, 16, seed=18, a=1.0, s=20.0)
    coarse = MIX_2D.probability_flow(x, [20.0, 0.05])[-1]
    fine = MIX_2D.probability_flow(x, [20.0, 0.05], steps_per_unit=200)[-1]
    assert np.abs(coarse - fine).max() < 1.5e-9


# ---- the library's samplers on the exact model ---------------------------------------------------


def sample_with_steps(step, mixture, schedule, n, seed):
    """x_T from the exact q(x_{T-1}), then `step`(x, eps, t, rng) for t = T-1 .. 0 with the exact eps."""
    rng = np.random.default_rng(seed)
    T = schedule.T
    start = mixture.noised(schedule.sqrt_alphas_cumprod[T - 1], schedule.sqrt_one_minus_alphas_cumprod[T - 1])
    x = start.sample(n, rng)
    model = mixture.model(schedule)
    for t in range(T - 1, -1, -1):
        x = step(x, model(x, t), t, rng)
    return x


def assert_reproduces(mixture, x0, what, covariance=True):
    """Weights as the mean responsibility at t = 0 (E_q[r_k(x_0)] = w_k exactly, whatever the
    overlap), the mean and (optionally) the covariance, each within 5 standard errors."""
    r = mixture.responsibilities(x0, 1.0, 0.0)
    w, w_se = mean_and_standard_error(r)
    assert_within(w, mixture.weights, w_se, what + ": weights")
    m, m_se = mean_and_standard_error(x0)
    assert_within(m, mixture.mean(), m_se, what + ": mean")
    if covariance:
        cov, cov_se = mean_and_standard_error(moment_errors(x0))
        assert_within(cov, mixture.covariance(), cov_se, what + ": covariance")


@pytest.mark.slow
def test_ddpm_over_all_steps_with_the_exact_eps_reproduces_the_mixture():
    """rd.ddpm_step (ancestral, fixed_small, no clipping) over all T = 1000 steps, fed the exact
    eps: the samples have the mixture's weights, mean and covariance within sampling error
    (n = 6000: SE ~0.006 on weights, ~0.02 on means). Catches a model that forgets the weights
    or mixes up s and s^2 in C_k (tried: both fail here). An adapter off by one index in t is
    too small to see at this n; the NoiseSchedule test catches that."""
    def step(x, eps, t, rng):
        return rd.ddpm_step(x, eps, t, LINEAR, rng.standard_normal(x.shape), clip_sample=False)

    assert_reproduces(MIX_2D, sample_with_steps(step, MIX_2D, LINEAR, 6000, seed=14), "DDPM, 1000 steps")


@pytest.mark.slow
def test_ddim_over_all_steps_with_the_exact_eps_reproduces_the_mixture():
    """rd.ddim_step (eta = 0: the probability-flow ODE, deterministic) over all T = 1000 steps,
    from exact draws of q(x_{T-1}): the mixture's weights, mean and covariance within sampling
    error. The same mistakes as the DDPM test, through a deterministic map."""
    def step(x, eps, t, rng):
        return rd.ddim_step(x, eps, t, t - 1, LINEAR, clip_sample=False)

    assert_reproduces(MIX_2D, sample_with_steps(step, MIX_2D, LINEAR, 6000, seed=15), "DDIM, 1000 steps")
