"""loss_weight: none and min-SNR-gamma (Hang et al. 2023) for each prediction type."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import refdiff as rd
from refdiff.gaussian.losses import loss_weight

LINEAR = rd.NoiseSchedule.linear()
ZERO_SNR = rd.NoiseSchedule.linear().rescale_zero_terminal_snr()
TYPES = ["epsilon", "sample", "v_prediction"]

timesteps = hnp.arrays(np.int64, st.integers(1, 16), elements=st.integers(0, 999))
gammas = st.floats(0.1, 20.0)


@given(timesteps, st.sampled_from(TYPES))
def test_no_weighting_gives_float64_ones_of_shape_B(t, prediction_type):
    w = loss_weight(t, LINEAR, "none", prediction_type=prediction_type)
    assert w.dtype == np.float64 and w.shape == t.shape
    assert np.all(w == 1.0)


@given(timesteps, gammas)
def test_min_snr_weights_follow_the_formulas_per_prediction_type(t, gamma):
    snr = LINEAR.alphas_cumprod[t] / (1 - LINEAR.alphas_cumprod[t])
    clipped = np.minimum(snr, gamma)
    formulas = {"epsilon": clipped / snr, "sample": clipped, "v_prediction": clipped / (snr + 1)}
    for prediction_type, expected in formulas.items():
        # the same formula from abar directly: snr agrees to a few float64 roundings
        np.testing.assert_allclose(loss_weight(t, LINEAR, "min_snr", gamma, prediction_type), expected, rtol=1e-14)


@given(timesteps, gammas, st.sampled_from(TYPES), st.integers(0, 2**32 - 1))
def test_min_snr_weighted_loss_equals_min_snr_gamma_times_the_x0_loss(t, gamma, prediction_type, seed):
    # Hang et al. 2023 sec. 3.4: the weight is min(snr, gamma) on the x0-space error; an eps or v
    # error is sqrt(snr) or sqrt(snr + 1) times the x0 error, which the per-type weights undo.
    # Check it on random predictions converted with refdiff's own conversions (float64).
    rng = np.random.default_rng(seed)
    x0, eps, x0_pred = rng.standard_normal((3, len(t), 4))
    x_t = rd.q_sample(x0, t, eps, LINEAR)
    eps_pred = rd.eps_from_x0(x_t, x0_pred, t, LINEAR)
    pred = {"epsilon": eps_pred, "sample": x0_pred, "v_prediction": rd.v_from_x0_eps(x0_pred, eps_pred, t, LINEAR)}
    target = rd.training_target(x0, eps, t, LINEAR, prediction_type)
    mse = np.mean((pred[prediction_type] - target) ** 2, axis=1)
    loss = loss_weight(t, LINEAR, "min_snr", gamma, prediction_type) * mse
    x0_loss = np.minimum(LINEAR.snr[t], gamma) * np.mean((x0_pred - x0) ** 2, axis=1)
    # eps from x0 divides by sqrt(1 - abar) >= 0.01: cancellation costs <= 1e-12 relative
    np.testing.assert_allclose(loss, x0_loss, rtol=1e-10)


@given(timesteps, gammas)
def test_min_snr_epsilon_weight_is_one_at_low_snr_and_at_most_one(t, gamma):
    w = loss_weight(t, LINEAR, "min_snr", gamma, "epsilon")
    assert np.all(w <= 1.0)
    assert np.all(w[LINEAR.snr[t] <= gamma] == 1.0)


def test_zero_terminal_snr_epsilon_weight_is_the_limit_one():
    # min(snr, gamma) / snr -> 1 as snr -> 0; at snr = 0 the weight is that limit, not 0/0
    w = loss_weight(np.array([998, 999]), ZERO_SNR, "min_snr", 5.0, "epsilon")
    assert ZERO_SNR.snr[999] == 0.0 and np.all(w == 1.0)
    assert loss_weight(np.array([999]), ZERO_SNR, "min_snr", 5.0, "v_prediction")[0] == 0.0
    assert loss_weight(np.array([999]), ZERO_SNR, "min_snr", 5.0, "sample")[0] == 0.0


def test_public_name_is_loss_weight():
    assert rd.loss_weight is loss_weight


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(weighting="snr"), ValueError, "weighting must be one of 'none', 'min_snr'"),
        (dict(weighting="min_snr", gamma=0.0), ValueError, "gamma must be a finite number > 0"),
        (dict(weighting="min_snr", gamma=float("nan")), ValueError, "gamma"),
        (dict(weighting="min_snr", gamma="5"), ValueError, "gamma"),
        (dict(prediction_type="x0"), ValueError, "prediction_type"),
    ],
)
def test_bad_arguments_raise_naming_the_problem(kwargs, error, match):
    with pytest.raises(error, match=match):
        loss_weight(np.array([1, 2]), LINEAR, **kwargs)


@pytest.mark.parametrize(
    "t, error, match",
    [
        (np.array([0, 1000]), ValueError, "t must be in 0..999"),
        (5, ValueError, r"shape \(B,\)"),
        (np.zeros((2, 2), np.int64), ValueError, r"shape \(B,\)"),
        (np.array([1.0]), TypeError, "integer"),
    ],
)
def test_bad_timesteps_raise(t, error, match):
    with pytest.raises(error, match=match):
        loss_weight(t, LINEAR, "min_snr")
