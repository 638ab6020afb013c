"""NoiseSchedule: every schedule is a valid variance schedule and its derived tables are right."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import refdiff as rd
from refdiff.gaussian.schedule import NoiseSchedule

# every constructor, at its defaults and at a short length
SCHEDULES = {
    "linear": NoiseSchedule.linear(),
    "scaled_linear": NoiseSchedule.scaled_linear(),
    "quadratic": NoiseSchedule.quadratic(),
    "cosine": NoiseSchedule.cosine(),
    "sigmoid": NoiseSchedule.sigmoid(),
    "linear_T10": NoiseSchedule.linear(T=10, beta_start=0.05, beta_end=0.5),
    "cosine_T7": NoiseSchedule.cosine(T=7),
    "user": NoiseSchedule([0.1, 0.2, 0.5, 0.9]),
}
ZERO_SNR = {f"{name}_zero_snr": s.rescale_zero_terminal_snr() for name, s in SCHEDULES.items()}
ARRAYS = (
    "betas", "alphas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
    "posterior_mean_coef1", "posterior_mean_coef2", "snr",
)
ALL = {**SCHEDULES, **ZERO_SNR}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_alphas_cumprod_strictly_decreasing_in_open_unit_interval(name):
    abar = SCHEDULES[name].alphas_cumprod
    assert np.all(np.diff(abar) < 0)
    assert np.all((abar > 0) & (abar < 1))


@given(
    kind=st.sampled_from(["linear", "scaled_linear", "quadratic", "cosine", "sigmoid"]),
    T=st.integers(1, 2000),
    beta_start=st.floats(1e-5, 0.05),
    beta_ratio=st.floats(1.0, 50.0),
)
def test_every_constructor_gives_strictly_decreasing_alphas_cumprod_for_any_length(kind, T, beta_start, beta_ratio):
    beta_end = min(beta_start * beta_ratio, 0.5)
    if kind == "cosine":
        s = NoiseSchedule.cosine(T=T)
    else:
        s = getattr(NoiseSchedule, kind)(T=T, beta_start=beta_start, beta_end=beta_end)
    assert s.T == T
    assert np.all(np.diff(s.alphas_cumprod) < 0)
    assert np.all((s.alphas_cumprod > 0) & (s.alphas_cumprod < 1))


@pytest.mark.parametrize("name", sorted(ALL))
def test_derived_tables_are_float64_of_shape_T_and_read_only(name):
    s = ALL[name]
    for attr in ARRAYS:
        a = getattr(s, attr)
        assert a.dtype == np.float64 and a.shape == (s.T,), attr
        with pytest.raises(ValueError):
            a[0] = 0.5


@pytest.mark.parametrize("name", sorted(ALL))
def test_alphas_cumprod_is_running_product_of_one_minus_betas(name):
    s = ALL[name]
    product, expected = 1.0, []
    for beta in s.betas:  # the definition, one factor at a time (DDPM sec. 2)
        product *= 1.0 - beta
        expected.append(product)
    # float64 products of T <= 1000 factors: relative error <= T * 2^-53 ~ 1e-13
    np.testing.assert_allclose(s.alphas_cumprod, expected, rtol=1e-13, atol=0)
    np.testing.assert_array_equal(s.alphas, 1 - s.betas)


@pytest.mark.parametrize("name", sorted(ALL))
def test_alphas_cumprod_prev_is_shifted_by_one_with_one_first(name):
    s = ALL[name]
    assert s.alphas_cumprod_prev[0] == 1.0
    np.testing.assert_array_equal(s.alphas_cumprod_prev[1:], s.alphas_cumprod[:-1])


@pytest.mark.parametrize("name", sorted(ALL))
def test_sqrt_tables_and_snr_follow_their_definitions(name):
    s = ALL[name]
    abar = s.alphas_cumprod
    # one float64 rounding each: relative 1e-15 is several ulps
    np.testing.assert_allclose(s.sqrt_alphas_cumprod**2, abar, rtol=1e-15, atol=0)
    np.testing.assert_allclose(s.sqrt_one_minus_alphas_cumprod**2, 1 - abar, rtol=1e-15, atol=0)
    np.testing.assert_allclose(s.snr * (1 - abar), abar, rtol=1e-15, atol=0)


@pytest.mark.parametrize("name", sorted(ALL))
def test_posterior_log_variance_clipped_is_log_variance_with_index_zero_from_index_one(name):
    s = ALL[name]
    assert s.posterior_variance[0] == 0.0  # abar_prev = 1 at the first step: no uncertainty left
    np.testing.assert_allclose(np.exp(s.posterior_log_variance_clipped[1:]), s.posterior_variance[1:], rtol=1e-14)
    assert s.posterior_log_variance_clipped[0] == s.posterior_log_variance_clipped[1]


def test_single_step_schedule_has_zero_posterior_variance_and_floored_log_variance():
    s = NoiseSchedule([0.3])
    assert s.T == 1 and s.posterior_variance[0] == 0.0
    assert s.posterior_log_variance_clipped[0] == np.log(1e-20)  # diffusers' clamp


def test_linear_betas_are_evenly_spaced_from_start_to_end():
    s = NoiseSchedule.linear(T=1000, beta_start=1e-4, beta_end=0.02)
    assert s.betas[0] == 1e-4 and s.betas[-1] == 0.02
    # float64 linspace: steps equal to 1e-18 (a few ulps of 2e-5 step)
    np.testing.assert_allclose(np.diff(s.betas), (0.02 - 1e-4) / 999, rtol=0, atol=1e-17)


def test_scaled_linear_and_quadratic_have_evenly_spaced_square_roots():
    cases = [(NoiseSchedule.scaled_linear(), (0.00085, 0.012)), (NoiseSchedule.quadratic(), (1e-4, 0.02))]
    for s, (start, end) in cases:
        root = np.sqrt(s.betas)
        np.testing.assert_allclose(root[[0, -1]], [start**0.5, end**0.5], rtol=1e-15)
        np.testing.assert_allclose(np.diff(root), (end**0.5 - start**0.5) / 999, rtol=0, atol=1e-16)


def test_cosine_alphas_cumprod_follow_improved_ddpm_eq17_where_not_capped():
    T, s_ = 1000, 0.008
    s = NoiseSchedule.cosine(T=T, s=s_)
    f = lambda u: np.cos((u + s_) / (1 + s_) * np.pi / 2) ** 2  # noqa: E731
    expected = f(np.arange(1, T + 1) / T) / f(0.0)  # abar_t = f(t / T) / f(0), paper's step t = index + 1
    uncapped = np.cumsum(s.betas >= 0.999) == 0  # before the first capped beta
    assert uncapped.sum() > 990
    # float64: a product of ~1000 ratios vs the direct quotient: relative 1e-12
    np.testing.assert_allclose(s.alphas_cumprod[uncapped], expected[uncapped], rtol=1e-12)


@given(T=st.integers(1, 3000), max_beta=st.floats(0.5, 0.999))
def test_cosine_betas_never_exceed_max_beta(T, max_beta):
    s = NoiseSchedule.cosine(T=T, max_beta=max_beta)
    assert np.all(s.betas <= max_beta)
    assert s.betas[-1] == max_beta  # f(1) ~ 0 makes the last ratio ~1, so the cap binds


def test_sigmoid_betas_rise_from_start_to_end_symmetrically():
    s = NoiseSchedule.sigmoid(T=1000, beta_start=1e-4, beta_end=0.02)
    assert np.all(np.diff(s.betas) > 0)
    mid = (1e-4 + 0.02) / 2
    # sigmoid(-x) = 1 - sigmoid(x): betas are point-symmetric about the middle (float64 exact to 1e-17)
    np.testing.assert_allclose(s.betas + s.betas[::-1], 2 * mid, rtol=0, atol=1e-17)
    # the ends are sigmoid(-6) and sigmoid(6) of the range, not the range's ends
    assert s.betas[0] == pytest.approx(1e-4 + (0.02 - 1e-4) / (1 + np.exp(6)), rel=1e-14)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_zero_terminal_snr_gives_zero_last_alphas_cumprod_and_keeps_the_first(name):
    old, new = SCHEDULES[name], ZERO_SNR[f"{name}_zero_snr"]
    assert new.alphas_cumprod[-1] == 0.0 and new.snr[-1] == 0.0 and new.betas[-1] == 1.0
    # abar_0 goes through sqrt, a shift and scale that cancel, a square and 1 - (1 - .): ~4 roundings
    assert new.alphas_cumprod[0] == pytest.approx(old.alphas_cumprod[0], rel=1e-15)
    assert np.all(np.diff(new.alphas_cumprod) < 0)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_zero_terminal_snr_sqrt_alphas_cumprod_is_an_affine_map_of_the_old(name):
    # Lin et al. 2023, Algorithm 1: sqrt(abar_new) = (sqrt(abar) - sqrt(abar_last)) * k, with k
    # chosen so that the first value is kept
    old, new = SCHEDULES[name], ZERO_SNR[f"{name}_zero_snr"]
    a0, aT = old.sqrt_alphas_cumprod[0], old.sqrt_alphas_cumprod[-1]
    expected = (old.sqrt_alphas_cumprod - aT) * a0 / (a0 - aT)
    # new abar is rebuilt as a running product of ratios: float64 relative error ~T * 1e-16, and
    # an absolute 1e-15 where the values are near 0
    np.testing.assert_allclose(new.sqrt_alphas_cumprod, expected, rtol=1e-12, atol=1e-15)


def test_rescale_returns_a_new_schedule_and_leaves_the_old_unchanged():
    old = NoiseSchedule.linear(T=50)
    betas = old.betas.copy()
    new = old.rescale_zero_terminal_snr()
    assert new is not old and isinstance(new, NoiseSchedule)
    np.testing.assert_array_equal(old.betas, betas)


def test_rescaling_a_zero_terminal_snr_schedule_again_changes_nothing():
    once = NoiseSchedule.cosine(T=100).rescale_zero_terminal_snr()
    twice = once.rescale_zero_terminal_snr()
    np.testing.assert_allclose(twice.alphas_cumprod, once.alphas_cumprod, rtol=1e-13, atol=1e-300)


def test_user_betas_are_copied_not_aliased():
    betas = np.array([0.1, 0.2, 0.3])
    s = NoiseSchedule(betas)
    betas[0] = 0.9
    assert s.betas[0] == 0.1


def test_public_name_is_the_schedule_class():
    assert rd.NoiseSchedule is NoiseSchedule
    assert len(NoiseSchedule.linear(T=12)) == 12


# ---- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "betas, match",
    [
        ([0.1, 0.0, 0.2], r"betas must lie in \(0, 1\], got betas\[1\] = 0.0"),
        ([0.1, -0.2], r"betas\[1\] = -0.2"),
        ([0.1, 1.5], r"betas\[1\] = 1.5"),
        ([0.1, np.nan], "NaN"),
        ([0.1, np.inf], r"betas\[1\] = inf"),
        ([], "at least one step"),
        ([[0.1, 0.2]], "1-D"),
        ([0.1, 1.0, 0.2], "strictly decrease"),  # beta = 1 before the last step: abar stays 0
        ([1e-17, 0.1], "too small"),  # 1 - 1e-17 rounds to 1 in float64
        ([0.1, 1e-17], "strictly decrease"),
    ],
)
def test_invalid_betas_raise_naming_the_problem(betas, match):
    with pytest.raises(ValueError, match=match):
        NoiseSchedule(betas)


def test_underflowing_alphas_cumprod_raise():
    with pytest.raises(ValueError, match="strictly decrease"):
        NoiseSchedule(np.full(2000, 0.9))  # 0.1^2000 underflows to 0 twice


@pytest.mark.parametrize("T, error", [(0, ValueError), (-3, ValueError), (10.0, TypeError), (True, TypeError)])
def test_constructors_refuse_bad_T(T, error):
    S = NoiseSchedule
    for make in (S.linear, S.scaled_linear, S.quadratic, S.cosine, S.sigmoid):
        with pytest.raises(error, match="T"):
            make(T=T)


def test_beta_one_is_allowed_at_the_last_step_only():
    s = NoiseSchedule([0.1, 0.2, 1.0])
    assert s.alphas_cumprod[-1] == 0.0


def test_rescale_of_single_step_schedule_raises():
    with pytest.raises(ValueError, match="T >= 2"):
        NoiseSchedule([0.5]).rescale_zero_terminal_snr()


def test_passing_a_schedule_as_betas_raises():
    with pytest.raises(TypeError, match="schedule.betas"):
        NoiseSchedule(NoiseSchedule.linear(T=3))
