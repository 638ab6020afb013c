"""Image editing (refdiff.samplers.editing): img2img (SDEdit), inpainting (replace, RePaint), super-resolution.

Independent truths used here:
- The exact eps of a Gaussian mixture (rd.GaussianMixture.model) stands in for a perfect network, and
  the exact conditional of a Gaussian mixture, p(y | x) = sum_k r_k(x) N(y; m_k(x), v_k) (PRML eqs.
  2.81-2.82 per component, responsibilities from the x-marginal), is written out here in closed form.
- diffusers' img2img truncation (get_timesteps: init_timestep = int(steps * strength), timesteps[t_start:])
  and RePaint's time schedule (get_schedule_jump) worked out by hand for small cases.
- Plain sampling (rd.sample_loop) from the same noise, for strength 1.
"""
import numpy as np
import pytest

import refdiff as rd
from refdiff.checks import check_inpaint_mask
from refdiff.samplers import editing
from refdiff.samplers.loop import start_point


def anti_correlated_mixture():
    """Two well separated modes in 2-D: (x, y) near (-1.5, 1.5) or (1.5, -1.5), std 0.3 each: the
    known x decides the mode of the unknown y (the wrong mode has posterior probability < e^-30 for
    every |x| > 1)."""
    cov = [[0.09, 0.0], [0.0, 0.09]]
    return rd.GaussianMixture(weights=[0.5, 0.5], means=[[-1.5, 1.5], [1.5, -1.5]], covariances=[cov, cov])


class Recorder:
    """A model that records the (x, t) of each call and returns the exact eps of a mixture."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __call__(self, x, t):
        self.calls.append((x.copy(), t))
        return self.model(x, t)


# ---- inpainting ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["replace", "repaint"])
def test_inpainting_keeps_the_known_region_exactly(method):
    """At the last step abar_prev = 1, so the known part is x_known itself and is copied by selection.
    Catches: a blend m x + (1 - m) y computed in floats, a known part noised at t instead of t_prev,
    a last step that skips the replacement, a mask read the wrong way round."""
    s = rd.NoiseSchedule.linear(T=200)
    mixture = anti_correlated_mixture()
    x_known = mixture.sample(64, np.random.default_rng(0))
    mask = np.array([1, 0])
    rng = np.random.default_rng(1)
    if method == "replace":
        out = editing.inpaint_replace(mixture.model(s), x_known, mask, s, steps=20, rng=rng, clip_sample=False)
    else:
        out = editing.repaint(mixture.model(s), x_known, mask, s, steps=20, jump_length=5, jump_n_sample=3, rng=rng,
                              clip_sample=False)
    assert np.array_equal(out[:, 0], x_known[:, 0])  # exactly: not within a tolerance
    assert not np.allclose(out[:, 1], x_known[:, 1])  # the unknown part is generated, not copied


def wrong_mode_fraction(x_known, out):
    """The fraction of points whose generated y lies in the mode that the known x rules out."""
    return float(np.mean(np.sign(out[:, 1]) == np.sign(x_known[:, 0])))


def test_repaint_samples_the_conditional_where_replace_blends():
    """"A sample of the model, not a blend": with x known and y unknown the exact conditional puts y in
    the opposite mode of x (wrong-mode probability < 1e-12 for these points). Measured (1000 points,
    50 DDPM steps of T = 1000, seeds 0/1): replace puts 1.7% in the wrong mode (its unknown part
    commits to a mode from re-noised known pixels it never agrees with); RePaint (j = r = 10) 0.0%.
    Tolerance: RePaint <= 0.3% (3 points) and at most a third of replace's. Catches: no resampling
    (jumps never taken), a jump that re-noises to the wrong level (breaks the harmonisation), a known
    part drawn at the wrong time."""
    s = rd.NoiseSchedule.linear(T=1000)
    mixture = anti_correlated_mixture()
    x_known = mixture.sample(1000, np.random.default_rng(0))
    assert np.all(np.abs(x_known[:, 0]) > 0.3)  # so the exact wrong-mode probability is < e^-9 per point
    mask = np.array([1, 0])
    model = mixture.model(s)
    replace = editing.inpaint_replace(model, x_known, mask, s, steps=50, rng=np.random.default_rng(1), clip_sample=False)
    repaint = editing.repaint(model, x_known, mask, s, steps=50, jump_length=10, jump_n_sample=10,
                              rng=np.random.default_rng(1), clip_sample=False)
    wrong_replace, wrong_repaint = wrong_mode_fraction(x_known, replace), wrong_mode_fraction(x_known, repaint)
    assert wrong_replace >= 0.01, wrong_replace  # the failure RePaint fixes is there to fix
    assert wrong_repaint <= 0.003 and wrong_repaint <= wrong_replace / 3, (wrong_repaint, wrong_replace)


def test_repaint_time_schedule_matches_a_hand_written_small_case():
    """steps 6, j = 2, r = 2: jump points 0 and 2 (range(0, 6 - 2, 2)), each taken once. Written out by
    following get_schedule_jump by hand. Catches: jumps at the wrong points, off-by-one in the climb,
    jumps taken r times instead of r - 1."""
    assert editing.repaint_time_schedule(6, jump_length=2, jump_n_sample=2) == [5, 4, 3, 2, 3, 4, 3, 2, 1, 0, 1, 2, 1, 0]


def test_repaint_time_schedule_has_the_papers_length():
    """T = 250, j = r = 10 (RePaint sec. 5): 24 jump points (0, 10, .., 230), each climbed 10 up and
    10 down 9 times: 250 + 24 * 9 * 20 = 4570 entries, 250 + 24 * 9 * 10 = 2410 model calls.
    Catches: a wrong count of jump points or of resamplings."""
    schedule = editing.repaint_time_schedule(250, jump_length=10, jump_n_sample=10)
    walk = editing.repaint_walk(250, 250, 10, 10)
    assert len(schedule) == 4570 and len(walk) == 4570
    assert sum(b < a for a, b in walk) == 2410
    assert all(abs(b - a) == 1 or (a, b) in ((0, -1), (-1, 0)) for a, b in walk)  # one level at a time
    assert walk[0][0] == 249 and walk[-1][1] == -1


def test_repaint_with_one_sample_per_jump_is_the_replace_method():
    """jump_n_sample = 1 takes no jump: the same draws give the same numbers. Catches a jump that is
    taken although no resampling is asked for."""
    s = rd.NoiseSchedule.linear(T=100)
    mixture = anti_correlated_mixture()
    x_known = mixture.sample(16, np.random.default_rng(0))
    a = editing.repaint(mixture.model(s), x_known, np.array([1, 0]), s, steps=10, jump_length=3, jump_n_sample=1,
                        rng=np.random.default_rng(2), clip_sample=False)
    b = editing.inpaint_replace(mixture.model(s), x_known, np.array([1, 0]), s, steps=10, rng=np.random.default_rng(2),
                                clip_sample=False)
    np.testing.assert_array_equal(a, b)


def test_renoised_has_the_forward_marginal():
    """q(x_t' | x_t) composed with q(x_t | x_0) is q(x_t' | x_0) (DDPM eq. 4): from x_0 = 1 at t = 10 to
    t' = 40, the mean is sqrt(abar_40) and the variance 1 - abar_40. 200000 draws: standard errors
    ~0.002 (mean) and ~0.003 (variance); tolerance 0.01. Catches a ratio inverted or a square root missing."""
    s = rd.NoiseSchedule.linear(T=100)
    rng = np.random.default_rng(0)
    x_t = editing.known_part(np.ones(200_000), 10, s, rng.standard_normal(200_000))
    x_next = editing.renoised(x_t, 10, 40, s, rng.standard_normal(200_000))
    abar = s.alphas_cumprod[40]
    assert abs(x_next.mean() - abar**0.5) < 0.01 and abs(x_next.var() - (1 - abar)) < 0.01


# ---- img2img (SDEdit) ---------------------------------------------------------------------------


def test_sdedit_at_strength_zero_returns_the_input():
    """int(steps * 0) = 0 steps to run: the input comes back unchanged (and the model is not called)."""
    s = rd.NoiseSchedule.linear(T=100)
    model = Recorder(anti_correlated_mixture().model(s))
    x = anti_correlated_mixture().sample(8, np.random.default_rng(0))
    out = editing.sdedit(model, x, s, 0.0, sampler="ddim", steps=10, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(out, x)
    assert model.calls == []


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "euler", "dpmpp_2m"])
def test_sdedit_at_strength_one_is_plain_sampling_from_the_same_noise(sampler):
    """strength 1 starts from pure noise at the first grid point: the same numbers as rd.sample_loop
    given the same first draw as x_T. Catches a strength-1 start that adds alpha_T x_input, or a
    grid truncated by one point."""
    s = rd.NoiseSchedule.linear(T=100)
    mixture = anti_correlated_mixture()
    x = mixture.sample(8, np.random.default_rng(0))
    options = {"clip_sample": False} if sampler in ("ddim", "ddpm") else {}
    out = editing.sdedit(mixture.model(s), x, s, 1.0, sampler=sampler, steps=10, rng=np.random.default_rng(1), **options)
    rng = np.random.default_rng(1)
    x_T = rng.standard_normal(x.shape)
    plain = rd.sample_loop(mixture.model(s), x_T, s, sampler=sampler, steps=10, rng=rng, **options)
    np.testing.assert_array_equal(out, plain)


@pytest.mark.parametrize("sampler, first_t", [("ddim", 50), ("euler", None)])
def test_sdedit_starts_at_diffusers_truncated_grid_point(sampler, first_t):
    """steps 10, strength 0.6: init_timestep = int(6.0) = 6, t_start = 4, so the sampler runs the last 6
    points of its grid (ddim, leading, T = 100: 50, 40, .., 0) and the model first sees
    x = alpha x_input + sigma eps at grid point 4, eps the first draw. Catches: t_start = int(steps * (1 -
    strength)) rounding the other way (0.4 * 10 = 4.000000000000001), a start one point off, the input
    not noised, or noised with the scales of another grid point."""
    s = rd.NoiseSchedule.linear(T=100)
    mixture = anti_correlated_mixture()
    model = Recorder(mixture.model(s))
    x = mixture.sample(8, np.random.default_rng(0))
    options = {"clip_sample": False} if sampler == "ddim" else {}
    editing.sdedit(model, x, s, 0.6, sampler=sampler, steps=10, rng=np.random.default_rng(1), **options)
    assert len(model.calls) == 6
    t_expected, a, sigma = start_point(s, sampler, 10, 4)
    if first_t is not None:
        assert t_expected == first_t
    x_first, t_first = model.calls[0]
    assert t_first == t_expected
    eps = np.random.default_rng(1).standard_normal(x.shape)
    np.testing.assert_allclose(x_first, a * x + sigma * eps, rtol=0, atol=1e-12)  # float64 rounding only


# ---- super-resolution ---------------------------------------------------------------------------


def test_area_downsampling_undoes_nearest_upsampling():
    """down(up(x)) = x exactly (each block holds one value); down averages a block (hand-computed).
    Catches axes swapped in the reshape or a sum instead of a mean."""
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float64).reshape(2, 3, 4, 5)
    np.testing.assert_array_equal(editing.downsample_area(editing.upsample_nearest(x, 2), 2), x)
    block = np.array([[[[1.0, 2.0], [3.0, 6.0]]]])
    assert editing.downsample_area(block, 2).item() == 3.0


def test_superres_hands_the_model_the_upsampled_image_on_extra_channels():
    """The network gets [x_t, up(x_low)] with 2C channels: the last C are exactly up(x_low) at every call."""
    s = rd.NoiseSchedule.linear(T=100)
    x_low = np.random.default_rng(0).standard_normal((2, 1, 2, 2))
    seen = []

    def model(x, t):
        seen.append(x.copy())
        return np.zeros_like(x[:, :1])

    out = editing.superres(model, x_low, s, 2, sampler="ddim", steps=3, rng=np.random.default_rng(1))
    assert out.shape == (2, 1, 4, 4) and len(seen) == 3
    for x in seen:
        assert x.shape == (2, 2, 4, 4)
        np.testing.assert_array_equal(x[:, 1:], editing.upsample_nearest(x_low, 2))


# ---- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mask, message", [
    (np.array([1, 0, 1]), "mask must have the shape"),
    (np.ones((3, 2, 2)), "mask must have the shape"),
    (np.array([1, 0.5]), "only 0 (fill in) and 1 (keep)"),
    (np.array([2, 0]), "only 0 (fill in) and 1 (keep)"),
])
def test_inpainting_refuses_a_bad_mask_by_name(mask, message):
    s = rd.NoiseSchedule.linear(T=10)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        editing.repaint(lambda x, t: x, np.zeros((4, 2)), mask, s)


def test_inpainting_mask_may_broadcast_over_batch_and_channels():
    """A (H, W)-like mask without the batch axis and a one-channel mask are accepted for images."""
    x = np.zeros((2, 3, 4, 4))
    for shape in ((3, 4, 4), (1, 4, 4), (2, 1, 4, 4), (1, 1, 4, 4)):
        assert check_inpaint_mask(np.ones(shape), x).shape == shape


@pytest.mark.parametrize("strength", [-0.1, 1.5, float("nan")])
def test_sdedit_refuses_a_strength_outside_0_1(strength):
    s = rd.NoiseSchedule.linear(T=10)
    with pytest.raises(ValueError, match="strength must be in"):
        editing.sdedit(lambda x, t: x, np.zeros((2, 2)), s, strength, steps=5)


def test_superres_factor_must_divide_the_image():
    with pytest.raises(ValueError, match="factor 3 must divide"):
        editing.downsample_area(np.zeros((1, 1, 4, 4)), 3)
