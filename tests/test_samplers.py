"""Samplers: the registry, the timesteps they visit, and what they must compute.

Independent truths used here:
- For data that is a single point x*, the exact eps predictor is known in closed form:
  eps*(x_t, t) = (x_t - sqrt(abar_t) x*) / sqrt(1 - abar_t)  (invert DDPM eq. 4). With it every
  sampler must land on x* exactly (up to float64 rounding), whatever the steps and spacing.
- DDIM with eta = 1 over all T steps has the DDPM posterior variance (DDIM eq. 16) and the same
  mean (DDIM sec. 4.1), so given the same noise it equals the DDPM sampler.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import refdiff as rd
from refdiff import samplers
from refdiff.diffusion import GaussianDiffusion
from refdiff.samplers.timesteps import inference_timesteps, previous_timestep


class ExactPointMassDenoiser:
    """eps*(x_t, t) for data concentrated at one point x* (float64 arrays, no parameters)."""

    def __init__(self, x_star, schedule):
        self.x_star = np.asarray(x_star, dtype=np.float64)
        self.schedule = schedule
        self.sample_shape = self.x_star.shape
        self.calls = []

    def __call__(self, x, t, y=None):
        t = np.asarray(t)
        self.calls.append(int(t[0]))
        abar = self.schedule.alphas_cumprod[t].reshape((-1,) + (1,) * (x.ndim - 1))
        return (x - np.sqrt(abar) * self.x_star) / np.sqrt(1 - abar)


class SmoothFakeDenoiser:
    """A fixed nonlinear function of (x, t): stands in for a network in equality tests."""

    sample_shape = (3,)

    def __call__(self, x, t, y=None):
        t = np.asarray(t, dtype=np.float64).reshape(-1, 1)
        return np.sin(3 * x) * (t / 1000.0) + 0.1 * x


def test_registry_holds_ddpm_and_ddim():
    assert {"ddpm", "ddim"} <= set(samplers.SAMPLERS)
    assert samplers.get_sampler("ddim") is samplers.sample_ddim


def test_unknown_sampler_error_lists_the_registered_names():
    with pytest.raises(ValueError, match=r"unknown sampler 'no_such_sampler'.*'ddim', 'ddpm'"):
        samplers.get_sampler("no_such_sampler")


def test_registered_sampler_plugs_into_sample_without_touching_the_model():
    """A new sampler (here: one-step x0 prediction) is used by name by GaussianDiffusion.sample."""
    schedule = rd.NoiseSchedule.linear(T=50)
    model = ExactPointMassDenoiser([0.25, -0.5], schedule)

    @samplers.register_sampler("one_step_x0")
    def one_step_x0(denoise, x, schedule, backend, rng, steps=None, **options):
        t = schedule.T - 1
        eps, _ = denoise(x, t)
        abar = schedule.alphas_cumprod[t]
        yield t, (x - np.sqrt(1 - abar) * eps) / np.sqrt(abar)  # DDPM eq. 4 solved for x0

    try:
        out = GaussianDiffusion(model, schedule).sample(4, sampler="one_step_x0", seed=0, progress=False, dtype=np.float64)
    finally:
        del samplers.SAMPLERS["one_step_x0"]
    # float64 with O(1) values: only rounding error (~1e-15) separates out from x*
    np.testing.assert_allclose(out, np.broadcast_to(model.x_star, out.shape), atol=1e-10)
    assert model.calls == [49]


@pytest.mark.parametrize(
    "sampler, steps, eta, spacing",
    [
        ("ddpm", None, 0.0, "leading"),
        ("ddpm", 10, 0.0, "leading"),
        ("ddpm", 7, 0.0, "trailing"),
        ("ddim", 10, 0.0, "leading"),
        ("ddim", 13, 0.0, "linspace"),
        ("ddim", 20, 1.0, "trailing"),
        ("ddim", 1, 0.0, "trailing"),
    ],
)
def test_samplers_land_on_a_point_mass_with_the_exact_denoiser(sampler, steps, eta, spacing):
    schedule = rd.NoiseSchedule.linear(T=100)
    x_star = np.array([0.3, -0.7, 0.9])
    model = ExactPointMassDenoiser(x_star, schedule)
    diffusion = GaussianDiffusion(model, schedule, clip_sample=False)
    out = diffusion.sample(5, sampler=sampler, steps=steps, eta=eta, spacing=spacing, seed=1, progress=False, dtype=np.float64)
    # exact in real arithmetic: every x0_hat equals x*, and the last step has abar_prev = 1 so
    # x_0 = x0_hat; float64 rounding through <= 100 steps stays below 1e-9.
    np.testing.assert_allclose(out, np.broadcast_to(x_star, out.shape), atol=1e-9)
    assert len(model.calls) == (steps or schedule.T)


def test_ddim_with_eta_one_over_all_steps_equals_ddpm_given_the_same_noise():
    schedule = rd.NoiseSchedule.linear(T=200)
    diffusion = GaussianDiffusion(SmoothFakeDenoiser(), schedule, clip_sample=False)
    kw = dict(seed=3, progress=False, dtype=np.float64)
    a = diffusion.sample(6, sampler="ddpm", **kw)
    b = diffusion.sample(6, sampler="ddim", steps=schedule.T, eta=1.0, **kw)
    # two algebraically equal formulas (DDIM sec. 4.1) evaluated in float64 over 200 steps:
    # differences are rounding only, ~1e-14 per step
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-9)
    assert np.abs(a).max() > 0.1  # the comparison is not between two zeros


def test_ddim_with_eta_zero_does_not_depend_on_the_generator_after_x_T():
    schedule = rd.NoiseSchedule.linear(T=100)
    diffusion = GaussianDiffusion(SmoothFakeDenoiser(), schedule)
    x = np.random.default_rng(0).standard_normal((4, 3))

    class RecordingRng:
        def standard_normal(self, *a, **k):
            raise AssertionError("deterministic DDIM drew noise")

    steps = samplers.sample_ddim(lambda x_t, t: (diffusion.model(x_t, np.full(len(x_t), t)), None), x, schedule,
                          rd.get_backend("numpy"), RecordingRng(), steps=10)
    assert len(list(steps)) == 10


@given(T=st.integers(2, 1000), data=st.data())
def test_timestep_pairs_step_to_the_next_timestep_and_end_before_the_first(T, data):
    steps = data.draw(st.integers(1, T), label="steps")
    spacing = data.draw(st.sampled_from(["leading", "trailing", "linspace"]), label="spacing")
    pairs = samplers.timestep_pairs(steps, T, spacing)
    ts = inference_timesteps(steps, T, spacing)
    assert [t for t, _ in pairs] == list(ts)
    assert [p for _, p in pairs] == list(ts[1:]) + [-1]


@given(T=st.integers(2, 1000), data=st.data())
def test_timestep_pairs_agree_with_previous_timestep_for_leading_spacing(T, data):
    steps = data.draw(st.integers(1, T), label="steps")
    pairs = samplers.timestep_pairs(steps, T, "leading")
    # the last pair ends at -1 here, and previous_timestep gives t - T // steps < 0 there
    for t, t_prev in pairs[:-1]:
        assert t_prev == previous_timestep(t, steps, T)
    assert previous_timestep(pairs[-1][0], steps, T) < 0


def test_steps_out_of_range_are_rejected():
    with pytest.raises(ValueError, match=r"steps must be an integer in \[1, T=10\]"):
        samplers.timestep_pairs(11, 10)
    with pytest.raises(ValueError, match="steps must be"):
        samplers.timestep_pairs(0, 10)


def test_ddpm_refuses_eta():
    schedule = rd.NoiseSchedule.linear(T=10)
    diffusion = GaussianDiffusion(SmoothFakeDenoiser(), schedule)
    with pytest.raises(ValueError, match="eta applies to the DDIM sampler"):
        diffusion.sample(2, sampler="ddpm", eta=0.5, progress=False)


def test_ddim_with_clipped_model_output_uses_the_eps_of_the_clipped_x0():
    """diffusers' use_clipped_model_output: eps_hat = (x_t - sqrt(abar_t) clip(x0_hat)) / sqrt(1 - abar_t)."""
    schedule = rd.NoiseSchedule.linear(T=100)
    model = SmoothFakeDenoiser()
    diffusion = GaussianDiffusion(model, schedule)
    x, trajectory = diffusion.sample(5, sampler="ddim", steps=2, spacing="trailing", seed=0, progress=False,
                                     dtype=np.float64, use_clipped_model_output=True, return_trajectory=True)
    x_t, t, t_prev = trajectory[0], 99, 49  # trailing, 2 steps of 100: 99 then 49
    eps = model(x_t, np.full(5, t))
    abar, abar_prev = schedule.alphas_cumprod[t], schedule.alphas_cumprod[t_prev]
    x0 = np.clip((x_t - np.sqrt(1 - abar) * eps) / np.sqrt(abar), -1, 1)  # DDPM eq. 15, clipped
    assert np.mean(np.abs(x0) == 1) > 0.2  # the clipping matters in this example
    eps_clipped = (x_t - np.sqrt(abar) * x0) / np.sqrt(1 - abar)
    expected = np.sqrt(abar_prev) * x0 + np.sqrt(1 - abar_prev) * eps_clipped  # DDIM eq. 12, eta = 0
    # float64, O(1) values, one step: rounding only
    np.testing.assert_allclose(trajectory[1], expected, rtol=1e-10, atol=1e-12)
