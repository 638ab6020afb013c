"""The forward process: q_sample (DDPM eq. 4), q_step (eq. 2), q_sample_with_target."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import refdiff as rd
from refdiff.gaussian.forward import q_sample, q_sample_with_target, q_step

LINEAR = rd.NoiseSchedule.linear()
COSINE = rd.NoiseSchedule.cosine()
ZERO_SNR = rd.NoiseSchedule.scaled_linear().rescale_zero_terminal_snr()
EPS32 = 2.0**-24  # float32 unit roundoff

f32 = st.floats(-10, 10, width=32, allow_subnormal=False)


@st.composite
def x0_noise_t(draw, dtype=np.float32):
    """x0 in [-10, 10], noise in [-10, 10] of a shape (B, ...), t (B,) in 0..T-1."""
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=5))
    elements = f32 if dtype == np.float32 else st.floats(-10, 10, allow_subnormal=False)
    x0 = draw(hnp.arrays(dtype, shape, elements=elements))
    noise = draw(hnp.arrays(dtype, shape, elements=elements))
    t = draw(hnp.arrays(np.int64, (shape[0],), elements=st.integers(0, LINEAR.T - 1)))
    return x0, noise, t


@pytest.mark.parametrize("t", [0, 1, 9, 99, 999])
def test_q_sample_equals_t_iterated_q_steps_in_distribution(t):
    # x_t reached by t+1 forward steps (indices 0..t) from a fixed x0 and by the closed form
    # both have the law N(sqrt(abar_t) x0, (1 - abar_t) I) (DDPM eq. 4). Compare the sample mean
    # and variance of n iterated chains with the closed form's parameters, and the closed form's
    # own draws likewise.
    n = 8000
    rng = np.random.default_rng(t)
    x0_row = np.array([-1.0, -0.3, 0.4, 1.0])
    x0 = np.broadcast_to(x0_row, (n, 4)).copy()
    x = x0
    for step in range(t + 1):
        x = q_step(x, step, rng.standard_normal(x.shape), LINEAR)
    closed = q_sample(x0, t, rng.standard_normal(x0.shape), LINEAR)
    mean = LINEAR.sqrt_alphas_cumprod[t] * x0_row
    var = 1 - LINEAR.alphas_cumprod[t]
    for draws in (x, closed):
        # standard errors of the sample mean and the sample variance of n Gaussian draws are
        # sqrt(var / n) and var sqrt(2 / (n - 1)); 5 standard errors: a false alarm ~1e-6
        assert np.all(np.abs(draws.mean(axis=0) - mean) <= 5 * np.sqrt(var / n))
        assert np.all(np.abs(draws.var(axis=0, ddof=1) - var) <= 5 * var * np.sqrt(2 / (n - 1)))


def test_q_sample_keeps_unit_variance_data_at_unit_variance():
    # variance preserving: x0 ~ N(0, 1), noise ~ N(0, 1) independent => x_t ~ N(0, 1) for every t
    n = 40000
    rng = np.random.default_rng(0)
    t = np.array([0, 250, 999] * (n // 3))
    x_t = q_sample(rng.standard_normal((len(t), 1)), t, rng.standard_normal((len(t), 1)), COSINE)
    for k in (0, 250, 999):
        draws = x_t[t == k, 0]
        m = len(draws)
        assert abs(draws.mean()) <= 5 * np.sqrt(1 / m)  # 5 standard errors
        assert abs(draws.var(ddof=1) - 1) <= 5 * np.sqrt(2 / (m - 1))


@given(x0_noise_t())
def test_q_sample_float32_matches_float64_closed_form(args):
    x0, noise, t = args
    out = q_sample(x0, t, noise, LINEAR)
    assert out.dtype == np.float32 and out.shape == x0.shape
    shape = (-1,) + (1,) * (x0.ndim - 1)
    a = LINEAR.sqrt_alphas_cumprod[t].reshape(shape)
    s = LINEAR.sqrt_one_minus_alphas_cumprod[t].reshape(shape)
    expected = a * x0.astype(np.float64) + s * noise.astype(np.float64)
    # float32: two coefficients rounded once, two products, one sum: <= 4 roundings of terms
    # <= |a x0| + |s noise|; plus float32's smallest normal, below which rounding is absolute
    # (a product of a tiny input and a coefficient < 1 can be subnormal)
    bound = 4 * EPS32 * (np.abs(a * x0) + np.abs(s * noise)) + np.finfo(np.float32).tiny
    assert np.all(np.abs(out - expected) <= bound)


@given(x0_noise_t(dtype=np.float64))
def test_q_sample_keeps_float64_and_equals_the_formula(args):
    x0, noise, t = args
    out = q_sample(x0, t, noise, COSINE)
    assert out.dtype == np.float64
    shape = (-1,) + (1,) * (x0.ndim - 1)
    a = COSINE.sqrt_alphas_cumprod[t].reshape(shape)
    s = COSINE.sqrt_one_minus_alphas_cumprod[t].reshape(shape)
    expected = a * x0 + s * noise
    np.testing.assert_array_equal(out, expected)  # the same float64 operations


@given(x0_noise_t())
def test_q_sample_with_per_sample_timesteps_equals_one_call_per_sample(args):
    x0, noise, t = args
    batched = q_sample(x0, t, noise, LINEAR)
    for i in range(len(t)):
        np.testing.assert_array_equal(batched[i : i + 1], q_sample(x0[i : i + 1], int(t[i]), noise[i : i + 1], LINEAR))


def test_q_sample_with_int_t_equals_an_array_of_that_t():
    rng = np.random.default_rng(1)
    x0, noise = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
    np.testing.assert_array_equal(q_sample(x0, 7, noise, LINEAR), q_sample(x0, np.array([7, 7, 7]), noise, LINEAR))
    np.testing.assert_array_equal(q_sample(x0, np.int32(7), noise, LINEAR), q_sample(x0, 7, noise, LINEAR))


def test_q_step_from_x0_at_t0_equals_q_sample_at_t0():
    # abar_0 = alpha_0: one step from the data is the closed form at index 0
    rng = np.random.default_rng(2)
    x0, noise = rng.standard_normal((2, 4, 5))
    np.testing.assert_allclose(q_step(x0, 0, noise, COSINE), q_sample(x0, 0, noise, COSINE), rtol=1e-15, atol=1e-15)


def test_q_step_is_sqrt_alpha_times_x_prev_plus_sqrt_beta_times_noise():
    rng = np.random.default_rng(3)
    x_prev, noise = rng.standard_normal((2, 3, 2))
    t = np.array([0, 500, 999])
    expected = np.sqrt(1 - LINEAR.betas[t])[:, None] * x_prev + np.sqrt(LINEAR.betas[t])[:, None] * noise
    np.testing.assert_allclose(q_step(x_prev, t, noise, LINEAR), expected, rtol=1e-15, atol=1e-15)


def test_q_sample_at_zero_terminal_snr_is_pure_noise():
    rng = np.random.default_rng(4)
    x0, noise = rng.standard_normal((2, 3, 4)).astype(np.float32)
    np.testing.assert_array_equal(q_sample(x0, ZERO_SNR.T - 1, noise, ZERO_SNR), noise)


@given(x0_noise_t(), st.sampled_from(["epsilon", "sample", "v_prediction"]))
def test_q_sample_with_target_returns_q_sample_and_the_training_target(args, prediction_type):
    x0, noise, t = args
    x_t, target = q_sample_with_target(x0, t, noise, LINEAR, prediction_type)
    np.testing.assert_array_equal(x_t, q_sample(x0, t, noise, LINEAR))
    np.testing.assert_array_equal(target, rd.training_target(x0, noise, t, LINEAR, prediction_type))
    assert target.dtype == x0.dtype and target is not noise and target is not x0


def test_public_names_are_the_forward_functions():
    assert rd.q_sample is q_sample and rd.q_step is q_step and rd.q_sample_with_target is q_sample_with_target


# ---- errors ------------------------------------------------------------------------------

X = np.zeros((3, 2), np.float32)


@pytest.mark.parametrize("fn", [q_sample, q_step, lambda *a: q_sample_with_target(*a, "epsilon")])
@pytest.mark.parametrize(
    "x, t, noise, error, match",
    [
        (X, 0, np.zeros((3, 3), np.float32), ValueError, r"noise must have the shape of .* \(3, 2\), got \(3, 3\)"),
        (X, 0, np.zeros((3, 2), np.float64), TypeError, "dtype"),
        (X.astype(np.int32), 0, X.astype(np.int32), TypeError, "float32 or float64"),
        (X.astype(np.float16), 0, X.astype(np.float16), TypeError, "float32 or float64"),
        (X, 1000, X, ValueError, r"t must be in 0..999 .* got 1000"),
        (X, -1, X, ValueError, r"t must be in 0..999 .* got -1"),
        (X, np.array([0, 1]), X, ValueError, r"t must be an integer or have shape \(3,\)"),
        (X, np.zeros((3, 1), np.int64), X, ValueError, r"shape \(3,\)"),
        (X, 1.0, X, TypeError, "integer"),
        (X, np.array([0.0, 1.0, 2.0]), X, TypeError, "integer"),
        (X, True, X, TypeError, "bool"),
        (X, 0, None, TypeError, "noise must be a float32 or float64 array"),
        ([[0.0, 0.0]], 0, X, TypeError, "x.* must be a float32 or float64 array"),
        (np.float32(0.0) * np.ones((), np.float32), 0, X, ValueError, "batch axis"),
        (np.full((3, 2), np.nan, np.float32), 0, X, ValueError, "contains NaN"),
    ],
)
def test_bad_inputs_raise_naming_the_problem(fn, x, t, noise, error, match):
    with pytest.raises(error, match=match):
        fn(x, t, noise, LINEAR)


def test_unknown_prediction_type_raises():
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        q_sample_with_target(X, 0, X, LINEAR, "eps")
