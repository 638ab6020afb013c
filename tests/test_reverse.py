"""Reverse steps: ddpm_step, ddim_step, classifier_free_guidance."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import refdiff as rd
from refdiff.gaussian.guidance import classifier_free_guidance
from refdiff.samplers import ddim_step, ddpm_step

LINEAR = rd.NoiseSchedule.linear()
COSINE = rd.NoiseSchedule.cosine()
SIGMOID_SHORT = rd.NoiseSchedule.sigmoid(T=50)
ZERO_SNR = rd.NoiseSchedule.scaled_linear().rescale_zero_terminal_snr()
SCHEDULES = [LINEAR, COSINE, SIGMOID_SHORT]
TYPES = ["epsilon", "sample", "v_prediction"]
EPS32 = 2.0**-24


@st.composite
def clean_problem(draw, dtype=np.float64, schedules=SCHEDULES, t_min=0, t_max_from_end=0):
    """A schedule, x0 in [-1, 1] (inside the clip range), eps, noise, all (B, ...), and t (B,)."""
    schedule = draw(st.sampled_from(schedules))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4))
    width = 32 if dtype == np.float32 else 64
    x0 = draw(hnp.arrays(dtype, shape, elements=st.floats(-1, 1, width=width, allow_subnormal=False)))
    eps = draw(hnp.arrays(dtype, shape, elements=st.floats(-4, 4, width=width, allow_subnormal=False)))
    noise = draw(hnp.arrays(dtype, shape, elements=st.floats(-4, 4, width=width, allow_subnormal=False)))
    t = draw(hnp.arrays(np.int64, (shape[0],), elements=st.integers(t_min, schedule.T - 1 - t_max_from_end)))
    return schedule, x0, eps, noise, t


def bcast(values, x):
    return np.asarray(values).reshape((-1,) + (1,) * (x.ndim - 1))


def strided_posterior(x0, x_t, abar_t, abar_prev):
    """q(x_prev | x_t, x0) for the two-step chain x0 -> x_prev -> x_t, by Bayes' rule (float64).

    prior N(sqrt(abar_prev) x0, 1 - abar_prev), likelihood N(x_t; sqrt(a) x_prev, 1 - a) with
    a = abar_t / abar_prev. Returns mean and variance; variance 0 where abar_prev = 1.
    """
    a = abar_t / abar_prev
    var = np.where(abar_prev < 1, 1 / (1 / np.where(abar_prev < 1, 1 - abar_prev, 1) + a / (1 - a)), 0.0)
    prior_term = np.where(abar_prev < 1, np.sqrt(abar_prev) / np.where(abar_prev < 1, 1 - abar_prev, 1), 0.0)
    mean = np.where(
        bcast(abar_prev < 1, x0),
        bcast(var, x0) * (bcast(prior_term, x0) * x0 + bcast(np.sqrt(a) / (1 - a), x0) * x_t),
        x0,
    )
    return mean, var


# ---- DDPM --------------------------------------------------------------------------------


@given(clean_problem(), st.sampled_from(TYPES))
def test_ddpm_step_with_the_true_prediction_and_zero_noise_lands_on_the_posterior_mean(problem, prediction_type):
    schedule, x0, eps, _, t = problem
    x_t = rd.q_sample(x0, t, eps, schedule)
    target = rd.training_target(x0, eps, t, schedule, prediction_type)
    out = ddpm_step(x_t, target, t, schedule, np.zeros_like(x_t), prediction_type=prediction_type)
    mean, _, _ = rd.q_posterior(x0, x_t, t, schedule)
    # float64; x0 read back from eps divides by sqrt(abar) >= 0.0064: ~1e-13 absolute on |x| <= 10
    np.testing.assert_allclose(out, mean, rtol=0, atol=1e-11)


@given(clean_problem(), st.data())
def test_ddpm_step_mean_for_an_eps_output_is_ddpm_eq_11(problem, data):
    # DDPM eq. 11 / Algorithm 2: mu = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t), for
    # any eps output when x0 is not clipped
    schedule, _, _, _, t = problem
    x_t = data.draw(hnp.arrays(np.float64, problem[1].shape, elements=st.floats(-4, 4)))
    eps = data.draw(hnp.arrays(np.float64, problem[1].shape, elements=st.floats(-4, 4)))
    out = ddpm_step(x_t, eps, t, schedule, np.zeros_like(x_t), clip_sample=False)
    beta = bcast(schedule.betas[t], x_t)
    expected = (x_t - beta / bcast(schedule.sqrt_one_minus_alphas_cumprod[t], x_t) * eps) / np.sqrt(1 - beta)
    # float64: refdiff goes through x0 = (x_t - s eps) / sqrt(abar) (rounding amplified by <= 160)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-11)


@given(clean_problem(t_min=1), st.sampled_from(["fixed_small", "fixed_large"]))
def test_ddpm_step_adds_noise_scaled_by_the_square_root_of_its_variance(problem, variance_type):
    schedule, x0, eps, noise, t = problem
    x_t = rd.q_sample(x0, t, eps, schedule)
    with_noise = ddpm_step(x_t, eps, t, schedule, noise, variance_type=variance_type)
    without = ddpm_step(x_t, eps, t, schedule, np.zeros_like(noise), variance_type=variance_type)
    # fixed_small: beta tilde (DDPM eq. 7); fixed_large: beta (as diffusers, at every step)
    var = schedule.posterior_variance[t] if variance_type == "fixed_small" else schedule.betas[t]
    # diffusers recomputes beta as 1 - abar_t / abar_{t-1}: equal to the table up to ~1e-16 / beta
    np.testing.assert_allclose(with_noise - without, bcast(np.sqrt(var), x_t) * noise, rtol=1e-9, atol=1e-12)


@given(clean_problem(), st.sampled_from(["fixed_small", "fixed_large"]))
def test_ddpm_step_adds_no_noise_where_t_is_zero(problem, variance_type):
    schedule, x0, eps, noise, t = problem
    x_t = rd.q_sample(x0, t, eps, schedule)
    with_noise = ddpm_step(x_t, eps, t, schedule, noise, variance_type=variance_type)
    without = ddpm_step(x_t, eps, t, schedule, np.zeros_like(noise), variance_type=variance_type)
    at_zero = t == 0
    np.testing.assert_array_equal(with_noise[at_zero], without[at_zero])


def test_ddpm_step_needs_no_noise_when_every_t_is_zero():
    x, eps = np.random.default_rng(0).standard_normal((2, 3, 2, 2)).astype(np.float32)
    np.testing.assert_array_equal(ddpm_step(x, eps, 0, LINEAR, None), ddpm_step(x, eps, 0, LINEAR, np.ones_like(x)))


@given(clean_problem(t_min=1))
def test_ddpm_step_with_t_prev_equal_t_minus_1_is_the_plain_step(problem):
    schedule, x0, eps, noise, t = problem
    x_t = rd.q_sample(x0, t, eps, schedule)
    for variance_type in ("fixed_small", "fixed_large"):
        plain = ddpm_step(x_t, eps, t, schedule, noise, variance_type=variance_type)
        strided = ddpm_step(x_t, eps, t, schedule, noise, variance_type=variance_type, t_prev=t - 1)
        np.testing.assert_array_equal(strided, plain)


@given(clean_problem(t_min=1), st.integers(1, 400), st.sampled_from(TYPES))
def test_strided_ddpm_step_draws_from_the_posterior_of_the_strided_chain(problem, stride, prediction_type):
    # with t_prev < t - 1, the step's beta is 1 - abar_t / abar_prev (diffusers): the step is the
    # posterior of the two-step chain x0 -> x_{t_prev} -> x_t, checked by Bayes' rule in float64
    schedule, x0, eps, noise, t = problem
    t_prev = t - stride  # may be < 0: abar_prev = 1
    x_t = rd.q_sample(x0, t, eps, schedule)
    target = rd.training_target(x0, eps, t, schedule, prediction_type)
    out = ddpm_step(x_t, target, t, schedule, noise, prediction_type=prediction_type, t_prev=t_prev)
    abar_t = schedule.alphas_cumprod[t]
    abar_prev = np.where(t_prev >= 0, schedule.alphas_cumprod[np.maximum(t_prev, 0)], 1.0)
    mean, var = strided_posterior(x0, x_t, abar_t, abar_prev)
    # two float64 routes; the precision form loses ~1/(1 - abar_prev) ulps: 1e-10 absolute
    np.testing.assert_allclose(out, mean + bcast(np.sqrt(np.maximum(var, 1e-20)), x0) * noise, rtol=0, atol=1e-10)


def test_strided_ddpm_step_from_t_above_0_to_negative_t_prev_still_adds_noise_like_diffusers():
    # trailing spacing ends with t = 99 -> t_prev = -1: abar_prev = 1, the step's beta is
    # 1 - abar_t; diffusers adds noise since t > 0: beta tilde = 0 floored at 1e-20 for
    # fixed_small, the whole 1 - abar_t for fixed_large
    rng = np.random.default_rng(5)
    x_t, eps, noise = rng.standard_normal((3, 2, 3))
    t, t_prev = 99, -1
    base = ddpm_step(x_t, eps, t, LINEAR, np.zeros_like(noise), t_prev=t_prev, variance_type="fixed_large")
    large = ddpm_step(x_t, eps, t, LINEAR, noise, t_prev=t_prev, variance_type="fixed_large")
    small = ddpm_step(x_t, eps, t, LINEAR, noise, t_prev=t_prev, variance_type="fixed_small")
    np.testing.assert_allclose(large - base, np.sqrt(1 - LINEAR.alphas_cumprod[t]) * noise, rtol=1e-12)
    # sqrt(1e-20) = 1e-10; the difference of two outputs of size ~1 carries ~1e-16 rounding
    np.testing.assert_allclose(small - base, 1e-10 * noise, rtol=0, atol=1e-15)


def test_ddpm_step_clips_the_predicted_x0_to_the_clip_range():
    rng = np.random.default_rng(1)
    x_t = rng.standard_normal((4, 3))
    far = 3 * rng.standard_normal((4, 3))  # a "sample" prediction partly outside [-1, 1]
    t, noise = np.array([0, 3, 300, 999]), rng.standard_normal((4, 3))
    for r in (1.0, 2.0):
        clipped = ddpm_step(x_t, far, t, LINEAR, noise, prediction_type="sample", clip_sample_range=r)
        manual = ddpm_step(x_t, np.clip(far, -r, r), t, LINEAR, noise, prediction_type="sample", clip_sample=False)
        np.testing.assert_array_equal(clipped, manual)
    unclipped = ddpm_step(x_t, far, 0, LINEAR, noise, prediction_type="sample", clip_sample=False)
    np.testing.assert_allclose(unclipped, far, rtol=1e-15)  # at t = 0 the step returns x0 itself


# ---- DDIM --------------------------------------------------------------------------------


@given(clean_problem(), st.integers(1, 300), st.sampled_from(TYPES))
def test_ddim_step_with_eta_0_is_deterministic(problem, stride, prediction_type):
    schedule, x0, eps, noise, t = problem
    x_t = rd.q_sample(x0, t, eps, schedule)
    model_output = noise  # any output
    a = ddim_step(x_t, model_output, t, t - stride, schedule, eta=0.0, noise=None, prediction_type=prediction_type)
    b = ddim_step(x_t, model_output, t, t - stride, schedule, eta=0.0, noise=3 * eps, prediction_type=prediction_type)
    np.testing.assert_array_equal(a, b)


@given(clean_problem(dtype=np.float32, t_max_from_end=0), st.sampled_from(TYPES))
def test_ddim_step_to_a_negative_t_prev_with_the_true_prediction_recovers_x0(problem, prediction_type):
    # abar_prev = 1 (set_alpha_to_one): x_prev = x0_pred, which is x0 for the true prediction
    schedule, x0, eps, _, t = problem
    x_t = rd.q_sample(x0, t, eps, schedule)
    target = rd.training_target(x0, eps, t, schedule, prediction_type)
    out = ddim_step(x_t, target, t, -1, schedule, eta=0.0, prediction_type=prediction_type, clip_sample=False)
    assert out.dtype == np.float32
    # float32: x_t and the target carry a few roundings of |x0| + |eps| <= 5; reading x0 back
    # from eps divides by sqrt(abar_t) (>= 0.0064 for these schedules)
    amplification = 1 / bcast(schedule.sqrt_alphas_cumprod[t], x0) if prediction_type == "epsilon" else 1.0
    assert np.all(np.abs(out - x0) <= 8 * EPS32 * 5 * amplification)
    out64 = ddim_step(
        x_t.astype(np.float64), target.astype(np.float64), t, -1, schedule, prediction_type=prediction_type
    )
    # float64 from the same float32 inputs: exact up to the input rounding already counted above
    assert np.all(np.abs(out64 - x0) <= 8 * EPS32 * 5 * amplification)


@given(clean_problem(), st.integers(1, 300))
def test_ddim_step_with_eta_0_and_the_true_eps_moves_along_q_sample(problem, stride):
    # DDIM eq. 12 with sigma = 0 and the true eps: x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev) eps,
    # i.e. the same noise, at the earlier time
    schedule, x0, eps, _, t = problem
    t_prev = np.maximum(t - stride, 0)
    t_prev = np.where(t_prev < t, t_prev, t - 1)  # t_prev < t; -1 where t = 0
    x_t = rd.q_sample(x0, t, eps, schedule)
    out = ddim_step(x_t, eps, t, t_prev, schedule)
    expected = np.where(bcast(t_prev >= 0, x0), rd.q_sample(x0, np.maximum(t_prev, 0), eps, schedule), x0)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-11)  # float64, 1/sqrt(abar) <= 160


@given(clean_problem(t_min=1), st.sampled_from(TYPES), st.data())
def test_ddim_step_with_eta_1_is_the_ddpm_step_with_posterior_variance(problem, prediction_type, data):
    # DDIM sec. 4.1: eta = 1 makes the process the DDPM one; with t_prev = t - 1 and no clipping,
    # for any model output, the mean and the noise scale (sqrt of beta tilde) agree
    schedule, _, _, noise, t = problem
    x_t = data.draw(hnp.arrays(np.float64, noise.shape, elements=st.floats(-4, 4)))
    model_output = data.draw(hnp.arrays(np.float64, noise.shape, elements=st.floats(-4, 4)))
    kw = dict(prediction_type=prediction_type, clip_sample=False)
    ddim = ddim_step(x_t, model_output, t, t - 1, schedule, eta=1.0, noise=noise, **kw)
    ddpm = ddpm_step(x_t, model_output, t, schedule, noise, variance_type="fixed_small", **kw)
    # two float64 formulas for the same Gaussian; x0 from eps amplifies rounding by <= 160
    np.testing.assert_allclose(ddim, ddpm, rtol=0, atol=1e-10)
    ddim_mean = ddim_step(x_t, model_output, t, t - 1, schedule, eta=1.0, noise=np.zeros_like(noise), **kw)
    std = bcast(np.sqrt(schedule.posterior_variance[t]), x_t)
    np.testing.assert_allclose(ddim - ddim_mean, std * noise, rtol=1e-9, atol=1e-13)


@given(clean_problem(t_min=1), st.floats(0, 1))
def test_ddim_noise_scale_is_eta_times_sigma_of_eq_16(problem, eta):
    schedule, x0, eps, noise, t = problem
    t_prev = t // 2 - 1
    x_t = rd.q_sample(x0, t, eps, schedule)
    diff = ddim_step(x_t, eps, t, t_prev, schedule, eta=eta, noise=noise) - ddim_step(
        x_t, eps, t, t_prev, schedule, eta=eta, noise=np.zeros_like(noise)
    )
    abar_t = schedule.alphas_cumprod[t]
    abar_prev = np.where(t_prev >= 0, schedule.alphas_cumprod[np.maximum(t_prev, 0)], 1.0)
    sigma = eta * np.sqrt((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev))  # DDIM eq. 16
    if eta == 0:
        assert np.all(diff == 0)
    else:
        np.testing.assert_allclose(diff, bcast(sigma, x0) * noise, rtol=1e-9, atol=1e-14)


def test_ddim_with_zero_terminal_snr_and_eta_1_stays_finite_at_the_last_step():
    # abar_{T-1} = 0: 1 - abar_prev - sigma^2 is 0 in exact arithmetic; diffusers can round it
    # below 0 and return NaN; refdiff floors it at 0
    rng = np.random.default_rng(2)
    x_t, v, noise = rng.standard_normal((3, 2, 5)).astype(np.float32)
    T = ZERO_SNR.T
    out = ddim_step(x_t, v, T - 1, T - 101, ZERO_SNR, eta=1.0, noise=noise, prediction_type="v_prediction")
    assert np.all(np.isfinite(out))


# ---- both steps: batching, dtypes ----------------------------------------------------------


@given(clean_problem(t_min=1), st.sampled_from(TYPES))
def test_steps_with_per_sample_timesteps_equal_one_call_per_sample(problem, prediction_type):
    schedule, x0, eps, noise, t = problem
    x_t = rd.q_sample(x0, t, eps, schedule)
    t_prev = t // 3 - 1
    ddpm = ddpm_step(x_t, eps, t, schedule, noise, prediction_type=prediction_type, t_prev=t_prev)
    ddim = ddim_step(x_t, eps, t, t_prev, schedule, eta=0.5, noise=noise, prediction_type=prediction_type)
    for i in range(len(t)):
        one = slice(i, i + 1)
        args = (x_t[one], eps[one], int(t[i]))
        kw = dict(prediction_type=prediction_type)
        ddpm_one = ddpm_step(*args, schedule, noise[one], t_prev=int(t_prev[i]), **kw)
        ddim_one = ddim_step(*args, int(t_prev[i]), schedule, eta=0.5, noise=noise[one], **kw)
        np.testing.assert_array_equal(ddpm[one], ddpm_one)
        np.testing.assert_array_equal(ddim[one], ddim_one)


@given(clean_problem(dtype=np.float32, schedules=[LINEAR, COSINE], t_min=1, t_max_from_end=100), st.sampled_from(TYPES))
def test_steps_keep_float32_and_agree_with_float64(problem, prediction_type):
    schedule, x0, eps, noise, t = problem
    x_t = rd.q_sample(x0, t, eps, schedule)
    mo = rd.training_target(x0, eps, t, schedule, prediction_type)
    as64 = lambda a: a.astype(np.float64)  # noqa: E731
    for step in (
        lambda x, m, n: ddpm_step(x, m, t, schedule, n, prediction_type=prediction_type),
        lambda x, m, n: ddim_step(x, m, t, t - 1, schedule, eta=1.0, noise=n, prediction_type=prediction_type),
    ):
        out32, out64 = step(x_t, mo, noise), step(as64(x_t), as64(mo), as64(noise))
        assert out32.dtype == np.float32 and out64.dtype == np.float64
        # float32 coefficients are rounded from float64 once; ~10 float32 roundings on terms of
        # size <= (|x_t| + |mo| + |noise|) / sqrt(abar_t) (the x0 prediction), and the ddpm
        # coefficients divide by 1 - abar_t (>= 1e-4 at t = 0, exact in float64 here)
        size = bcast(1 / schedule.sqrt_alphas_cumprod[t], x0) * (np.abs(x_t) + np.abs(mo) + np.abs(noise) + 1)
        assert np.all(np.abs(out32 - out64) <= 16 * EPS32 * size)


# ---- classifier-free guidance --------------------------------------------------------------

f32_elements = st.floats(-8, 8, width=32, allow_subnormal=False)
arrays_pair = hnp.array_shapes(min_dims=1, max_dims=3, max_side=4).flatmap(
    lambda shape: st.tuples(*[hnp.arrays(np.float32, shape, elements=f32_elements)] * 2)
)


@given(arrays_pair, st.floats(-10, 10, allow_subnormal=False))
def test_guidance_is_uncond_plus_scale_times_the_difference(pair, scale):
    cond, uncond = pair
    out = classifier_free_guidance(cond, uncond, scale)
    assert out.dtype == np.float32
    expected = uncond.astype(np.float64) + scale * (cond.astype(np.float64) - uncond.astype(np.float64))
    # float32: a difference, a product and a sum: <= 3 roundings of terms <= |uncond| + |s| |cond - uncond|
    # plus float32's smallest normal: a scale far below it underflows to 0 when cast to float32
    bound = 3 * EPS32 * (np.abs(uncond) + abs(scale) * (np.abs(cond) + np.abs(uncond))) + np.finfo(np.float32).tiny
    assert np.all(np.abs(out - expected) <= bound)


@given(arrays_pair)
def test_guidance_scale_1_gives_cond_and_0_gives_uncond(pair):
    cond, uncond = pair
    np.testing.assert_array_equal(classifier_free_guidance(cond, uncond, 0.0), uncond)
    # uncond + (cond - uncond): one rounding of the difference, one of the sum
    error = np.abs(classifier_free_guidance(cond, uncond, 1.0) - cond)
    assert np.all(error <= 2 * EPS32 * (np.abs(cond) + np.abs(uncond)))


@given(clean_problem(t_min=1), st.floats(0, 8))
def test_steps_given_the_unconditional_output_use_the_guided_output(problem, scale):
    schedule, x0, eps, noise, t = problem
    x_t = rd.q_sample(x0, t, eps, schedule)
    cond, uncond = eps, -noise  # any two outputs of one shape
    guided = classifier_free_guidance(cond, uncond, scale)
    np.testing.assert_array_equal(
        ddpm_step(x_t, cond, t, schedule, noise, model_output_uncond=uncond, guidance_scale=scale),
        ddpm_step(x_t, guided, t, schedule, noise),
    )
    np.testing.assert_array_equal(
        ddim_step(x_t, cond, t, t - 1, schedule, model_output_uncond=uncond, guidance_scale=scale),
        ddim_step(x_t, guided, t, t - 1, schedule),
    )


def test_public_names_are_the_reverse_functions():
    assert rd.ddpm_step is ddpm_step and rd.ddim_step is ddim_step
    assert rd.classifier_free_guidance is classifier_free_guidance


# ---- errors ------------------------------------------------------------------------------

X = np.zeros((3, 2), np.float32)
NAN = np.full((3, 2), np.nan, np.float32)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(noise=None), ValueError, "noise is needed where t > 0"),
        (dict(model_output=np.zeros((3, 3), np.float32)), ValueError, "model_output must have the shape"),
        (dict(model_output=X.astype(np.float64)), TypeError, "model_output must have the dtype"),
        (dict(x_t=NAN), ValueError, "x_t contains NaN"),
        (dict(model_output=NAN), ValueError, "model_output contains NaN"),
        (dict(noise=NAN), ValueError, "noise contains NaN"),
        (dict(x_t=X.astype(np.int64)), TypeError, "float32 or float64"),
        (dict(t=1000), ValueError, "t must be in 0..999"),
        (dict(t=np.array([1, 2])), ValueError, r"shape \(3,\)"),
        (dict(t=2.0), TypeError, "integer"),
        (dict(t_prev=5), ValueError, "t_prev must be smaller than t"),
        (dict(t_prev=np.array([0, 0, 1000])), ValueError, "t_prev must be < 1000"),
        (dict(prediction_type="eps"), ValueError, "prediction_type must be one of"),
        (dict(variance_type="fixed"), ValueError, "variance_type must be one of 'fixed_small', 'fixed_large'"),
        (dict(clip_sample_range=0.0), ValueError, "clip_sample_range must be > 0"),
        (dict(clip_sample="yes"), TypeError, "clip_sample must be True or False"),
        (dict(guidance_scale=3.0), ValueError, "guidance_scale=3.0 needs model_output_uncond"),
        (dict(model_output_uncond=X[:2]), ValueError, "model_output_uncond must have the shape"),
        (dict(model_output_uncond=NAN), ValueError, "model_output_uncond contains NaN"),
        (dict(model_output_uncond=X, guidance_scale=float("inf")), ValueError, "guidance_scale must be a finite"),
    ],
)
def test_ddpm_step_bad_inputs_raise_naming_the_problem(kwargs, error, match):
    args = dict(x_t=X, model_output=X, t=5, schedule=LINEAR, noise=X)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        ddpm_step(**args)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(eta=0.5), ValueError, "noise is needed when eta > 0"),
        (dict(eta=1.5, noise=X), ValueError, r"eta must lie in \[0, 1\]"),
        (dict(eta=-0.1, noise=X), ValueError, r"eta must lie in \[0, 1\]"),
        (dict(eta=float("nan"), noise=X), ValueError, "eta must be a finite"),
        (dict(t_prev=None), ValueError, "ddim_step needs t_prev"),
        (dict(t_prev=5), ValueError, "t_prev must be smaller than t"),
        (dict(t_prev=np.array([4, 4, 6])), ValueError, "t=5, t_prev=6 at sample 2"),
        (dict(t_prev=4.0), TypeError, "t_prev must be an integer"),
        (dict(noise=np.zeros((3, 2))), TypeError, "noise must have the dtype"),
        (dict(x_t=np.full((3, 2), np.inf, np.float32)), ValueError, "x_t contains inf"),
        (dict(model_output=NAN), ValueError, "model_output contains NaN"),
        (dict(prediction_type="x0"), ValueError, "prediction_type"),
        (dict(guidance_scale=0.0), ValueError, "needs model_output_uncond"),
    ],
)
def test_ddim_step_bad_inputs_raise_naming_the_problem(kwargs, error, match):
    args = dict(x_t=X, model_output=X, t=5, t_prev=4, schedule=LINEAR)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        ddim_step(**args)


def test_guidance_refuses_mismatched_outputs():
    with pytest.raises(TypeError, match="model_output_uncond must have the dtype"):
        classifier_free_guidance(X, X.astype(np.float64), 2.0)
    with pytest.raises(ValueError, match="guidance_scale must be a finite real number"):
        classifier_free_guidance(X, X, "2")
