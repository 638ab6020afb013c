"""Conversions between the eps, x_0, v and score parameterizations, and the training target."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import refdiff as rd
from refdiff.gaussian import parameterization as P

LINEAR = rd.NoiseSchedule.linear()
EPS32 = 2.0**-24
EPS64 = 2.0**-53


@st.composite
def pair_t(draw, dtype=np.float64, schedule=LINEAR, t_max=None):
    """Two arrays a, b of one shape (B, ...), values in [-5, 5], and t (B,)."""
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4))
    width = 32 if dtype == np.float32 else 64
    elements = st.floats(-5, 5, width=width, allow_subnormal=False)
    a = draw(hnp.arrays(dtype, shape, elements=elements))
    b = draw(hnp.arrays(dtype, shape, elements=elements))
    t_max = schedule.T - 1 if t_max is None else t_max
    t = draw(hnp.arrays(np.int64, (shape[0],), elements=st.integers(0, t_max)))
    return a, b, t


def coef(schedule, t, ndim):
    shape = (-1,) + (1,) * (ndim - 1)
    return schedule.sqrt_alphas_cumprod[t].reshape(shape), schedule.sqrt_one_minus_alphas_cumprod[t].reshape(shape)


@given(pair_t())
def test_x0_and_eps_round_trip_through_x_t(args):
    x0, eps, t = args
    x_t = rd.q_sample(x0, t, eps, LINEAR)
    a, s = coef(LINEAR, t, x0.ndim)
    # float64; x0 = (x_t - s eps) / a amplifies the rounding of x_t (~eps64 * 10) by 1/a <= 160
    np.testing.assert_allclose(rd.x0_from_eps(x_t, eps, t, LINEAR), x0, rtol=0, atol=1e-12)
    # eps = (x_t - a x0) / s amplifies by 1/s <= 100 (at t = 0, s = 0.01)
    np.testing.assert_allclose(rd.eps_from_x0(x_t, x0, t, LINEAR), eps, rtol=0, atol=1e-12)


@given(pair_t())
def test_v_round_trips_to_x0_and_eps(args):
    x0, eps, t = args
    x_t = rd.q_sample(x0, t, eps, LINEAR)
    v = rd.v_from_x0_eps(x0, eps, t, LINEAR)
    # (x_t, v) is a rotation of (x0, eps) by the angle phi with cos phi = a: well conditioned
    np.testing.assert_allclose(rd.x0_from_v(x_t, v, t, LINEAR), x0, rtol=0, atol=1e-13)
    np.testing.assert_allclose(rd.eps_from_v(x_t, v, t, LINEAR), eps, rtol=0, atol=1e-13)


@given(pair_t())
def test_x_t_and_v_are_a_rotation_of_x0_and_eps(args):
    # Salimans & Ho 2022 sec. 4: x_t = cos(phi) x0 + sin(phi) eps, v = cos(phi) eps - sin(phi) x0,
    # so x_t^2 + v^2 = x0^2 + eps^2 elementwise
    x0, eps, t = args
    x_t = rd.q_sample(x0, t, eps, LINEAR)
    v = rd.v_from_x0_eps(x0, eps, t, LINEAR)
    np.testing.assert_allclose(x_t**2 + v**2, x0**2 + eps**2, rtol=1e-14, atol=1e-14)


@given(pair_t())
def test_score_round_trips_to_eps(args):
    eps, _, t = args
    score = rd.score_from_eps(eps, t, LINEAR)
    np.testing.assert_allclose(rd.eps_from_score(score, t, LINEAR), eps, rtol=1e-15, atol=0)


@pytest.mark.parametrize("t", [0, 1, 100, 999])
def test_score_is_the_gradient_of_log_q_x_t_given_x0(t):
    # grad_x log N(x; a x0, s^2) by central differences of the log density, float64
    rng = np.random.default_rng(t)
    x0, eps = rng.standard_normal((2, 1, 5))
    a, s = LINEAR.sqrt_alphas_cumprod[t], LINEAR.sqrt_one_minus_alphas_cumprod[t]
    x_t = a * x0 + s * eps
    log_q = lambda x: -0.5 * np.sum((x - a * x0) ** 2) / s**2  # noqa: E731  (constant dropped)
    h = 1e-3 * s  # central differences of a quadratic are exact up to rounding
    fd = np.array([(log_q(x_t + h * e) - log_q(x_t - h * e)) / (2 * h) for e in np.eye(5)[:, None, :]])
    # rounding of log_q (~eps64 * |log_q| ~ 1e-15 * 10) divided by 2h: relative 1e-9
    np.testing.assert_allclose(rd.score_from_eps(eps, t, LINEAR)[0], fd, rtol=1e-8, atol=1e-8)


@given(pair_t(dtype=np.float32, t_max=900))
def test_conversions_keep_float32_and_agree_with_float64(args):
    a32, b32, t = args
    a64, b64 = a32.astype(np.float64), b32.astype(np.float64)
    alpha, sigma = coef(LINEAR, t, a32.ndim)
    size = np.abs(a64) + np.abs(b64)
    for fn, amplification in [
        (rd.x0_from_eps, 1 / alpha),  # divides by sqrt(abar): <= 1/sqrt(abar_900) ~ 60
        (rd.eps_from_x0, 1 / sigma),  # divides by sqrt(1 - abar): <= 100
        (rd.x0_from_v, 1.0),
        (rd.eps_from_v, 1.0),
        (rd.v_from_x0_eps, 1.0),
    ]:
        out = fn(a32, b32, t, LINEAR)
        assert out.dtype == np.float32
        # 2 coefficients rounded once, a product, a sum, maybe a division: <= 6 float32 roundings,
        # plus float32's smallest normal for results in the subnormal range
        bound = 6 * EPS32 * size * amplification + np.finfo(np.float32).tiny
        assert np.all(np.abs(out - fn(a64, b64, t, LINEAR)) <= bound)
    assert rd.score_from_eps(a32, t, LINEAR).dtype == rd.eps_from_score(a32, t, LINEAR).dtype == np.float32


@given(pair_t(), st.sampled_from(["epsilon", "sample", "v_prediction"]))
def test_training_target_is_the_quantity_named_by_the_prediction_type(args, prediction_type):
    x0, noise, t = args
    target = rd.training_target(x0, noise, t, LINEAR, prediction_type)
    a, s = coef(LINEAR, t, x0.ndim)
    expected = {"epsilon": noise, "sample": x0, "v_prediction": a * noise - s * x0}[prediction_type]
    np.testing.assert_allclose(target, expected, rtol=1e-15, atol=1e-15)
    assert target is not noise and target is not x0  # a new array the caller may modify


@given(pair_t(), st.sampled_from(["epsilon", "sample", "v_prediction"]))
def test_model_output_of_the_true_target_gives_back_x0_and_eps(args, prediction_type):
    # what the samplers use: the model predicting its training target exactly yields the true x0, eps
    x0, eps, t = args
    x_t = rd.q_sample(x0, t, eps, LINEAR)
    target = rd.training_target(x0, eps, t, LINEAR, prediction_type)
    x0_pred, eps_pred = P.x0_eps_from_model_output(x_t, target, LINEAR.alphas_cumprod[t], prediction_type)
    # worst conditioning: x0 from eps (1/sqrt(abar) <= 160) and eps from x0 (1/sqrt(1-abar) <= 100)
    np.testing.assert_allclose(x0_pred, x0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(eps_pred, eps, rtol=0, atol=1e-12)


def test_public_names_are_the_conversions():
    for name in ("x0_from_eps", "eps_from_x0", "v_from_x0_eps", "x0_from_v", "eps_from_v", "score_from_eps",
                 "eps_from_score", "training_target"):
        assert getattr(rd, name) is getattr(P, name)


# ---- errors ------------------------------------------------------------------------------

A = np.zeros((2, 3))


@pytest.mark.parametrize("fn", [rd.x0_from_eps, rd.eps_from_x0, rd.v_from_x0_eps, rd.x0_from_v, rd.eps_from_v])
def test_two_array_conversions_refuse_mismatched_shape_dtype_and_timesteps(fn):
    with pytest.raises(ValueError, match="must have the shape"):
        fn(A, np.zeros((2, 4)), 0, LINEAR)
    with pytest.raises(TypeError, match="dtype"):
        fn(A, A.astype(np.float32), 0, LINEAR)
    with pytest.raises(ValueError, match="t must be in 0..999"):
        fn(A, A, np.array([0, 1000]), LINEAR)
    with pytest.raises(TypeError, match="float32 or float64"):
        fn(A.astype(np.int64), A.astype(np.int64), 0, LINEAR)


@pytest.mark.parametrize("fn", [rd.score_from_eps, rd.eps_from_score])
def test_score_conversions_refuse_bad_inputs(fn):
    with pytest.raises(TypeError, match="float32 or float64"):
        fn([1.0, 2.0], 0, LINEAR)
    with pytest.raises(ValueError, match="shape"):
        fn(A, np.array([1, 2, 3]), LINEAR)


def test_training_target_refuses_unknown_prediction_type():
    with pytest.raises(ValueError, match="prediction_type must be one of 'epsilon', 'sample', 'v_prediction'"):
        rd.training_target(A, A, 0, LINEAR, "v")
