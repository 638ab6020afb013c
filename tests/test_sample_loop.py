"""rd.sample_loop, the registry's option checks and the grids: the contract of refdiff/samplers.

Independent truths used here:
- For data that is one point x*, the exact denoiser is D(x; sigma) = x* at every noise level; the
  Euler step x + (sigma' - sigma)(x - x*)/sigma lands exactly on x* at sigma' = 0, on any grid.
- A Karras grid is EDM eq. 5 written out; an exponential grid has equal steps in log sigma.
- An explicit grid is taken literally: the model is called at process.t_from_sigma(sigma), unrounded.
"""
import numpy as np
import pytest

import refdiff as rd
from refdiff import cli, samplers
from refdiff.diffusion import GaussianDiffusion
from refdiff.samplers.grids import build_grid


def smooth_model(x, t):
    """A fixed smooth function of (x, t) standing in for a network (epsilon prediction)."""
    return np.tanh(x) * (0.5 + t / 2000.0) + 0.1 * np.cos(x)


class PointMass:
    """The exact eps model of data concentrated at x* on a process: eps = (x_t - a x*) / s."""

    def __init__(self, x_star, process):
        self.x_star, self.process, self.calls = np.asarray(x_star, dtype=np.float64), rd.as_process(process), []

    def __call__(self, x, t):
        self.calls.append(t)
        return (x - self.process.signal_scale(t) * self.x_star) / self.process.noise_std(t)


def x_T(n=4, d=3, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(dtype)


@pytest.mark.parametrize("sigmas", ["default", "karras", "exponential"])
def test_euler_lands_on_a_point_mass_with_the_exact_denoiser(sigmas):
    s = rd.NoiseSchedule.linear(T=1000)
    model = PointMass([0.3, -0.7, 0.9], s)
    out = rd.sample_loop(model, x_T(), s, sampler="euler", steps=7, sigmas=sigmas)
    # the last Euler step to sigma = 0 returns D = x* exactly, up to float64 rounding of x* / a * a
    np.testing.assert_allclose(out, np.broadcast_to(model.x_star, out.shape), atol=1e-9)
    assert len(model.calls) == 7  # one evaluation per step: NFE = steps


def test_ddpm_and_ddim_run_through_the_same_loop():
    s = rd.NoiseSchedule.linear(T=100)
    model = PointMass([0.3, -0.7, 0.9], s)
    for sampler, options in (("ddim", {}), ("ddpm", {"clip_sample": False}), ("ddim", {"eta": 1.0})):
        model.calls.clear()
        out = rd.sample_loop(model, x_T(), s, sampler=sampler, steps=10, rng=np.random.default_rng(0),
                             clip_sample=False, **{k: v for k, v in options.items() if k != "clip_sample"})
        np.testing.assert_allclose(out, np.broadcast_to(model.x_star, out.shape), atol=1e-9)
        assert len(model.calls) == 10 and all(isinstance(t, int) for t in model.calls)


def test_an_unknown_option_names_itself_and_lists_the_valid_ones():
    s = rd.NoiseSchedule.linear(T=100)
    with pytest.raises(TypeError) as e:
        rd.sample_loop(smooth_model, x_T(), s, sampler="euler", steps=5, s_chrun=0.1)
    message = str(e.value)
    assert "unexpected option 's_chrun'" in message
    for valid in ("s_churn", "s_noise", "sigmas", "spacing", "steps_offset", "callback"):
        assert valid in message


def test_an_option_another_sampler_owns_is_refused_and_its_owner_named():
    s = rd.NoiseSchedule.linear(T=100)
    with pytest.raises(TypeError, match=r"'use_clipped_model_output' \(an option of ddim, not of 'euler'\)"):
        rd.sample_loop(smooth_model, x_T(), s, sampler="euler", steps=5, use_clipped_model_output=True)
    with pytest.raises(TypeError, match=r"'s_churn' \(an option of .*euler.*, not of 'ddim'\)"):
        rd.sample_loop(smooth_model, x_T(), s, sampler="ddim", steps=5, s_churn=1.0)
    with pytest.raises(TypeError, match="unexpected option 'sigmas'"):  # ddim walks integer timesteps
        rd.sample_loop(smooth_model, x_T(), s, sampler="ddim", steps=5, sigmas="karras")


def test_every_sampler_on_sigmas_declares_its_options_keyword_only():
    for name, fn in samplers.SAMPLERS.items():
        spec = samplers.sampler_spec(name)
        assert not spec.takes_any, name
        assert spec.works_on in ("timesteps", "denoised", "velocity")


def test_explicit_sigmas_are_taken_literally_and_the_model_called_at_their_exact_t():
    s = rd.NoiseSchedule.linear(T=1000)
    p = rd.as_process(s)
    sigmas = np.array([80.0, 12.3456, 1.5, 0.2, 0.0])
    model = PointMass([0.5, 0.5, 0.5], s)
    rd.sample_loop(model, x_T(), s, sampler="euler", steps=None, sigmas=sigmas)
    np.testing.assert_array_equal(model.calls, p.t_from_sigma(sigmas[:-1]))
    assert any(t != round(t) for t in model.calls)  # fractional: never rounded


def test_karras_and_exponential_grids_are_edm_eq5_and_log_uniform():
    p = rd.VPLinearProcess()
    g = build_grid("euler", p, 10, sigmas="karras")
    lo, hi = p.sigma_min, p.sigma_max
    i = np.arange(10)
    expected = (hi ** (1 / 7) + i / 9 * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7  # EDM eq. 5, rho = 7
    np.testing.assert_allclose(g.sigmas, np.append(expected, 0), rtol=1e-12)
    np.testing.assert_allclose(p.sigma(g.times[:-1]), g.sigmas[:-1], rtol=1e-9)
    g = build_grid("euler", p, 10, sigmas="exponential")
    np.testing.assert_allclose(np.diff(np.log(g.sigmas[:-1])), np.log(lo / hi) / 9, rtol=1e-9)


def test_euler_default_grid_is_diffusers_linspace_with_sigma_interpolated_linearly():
    s = rd.NoiseSchedule.scaled_linear(T=1000)
    g = build_grid("euler", rd.as_process(s), 4)
    np.testing.assert_allclose(g.times, [999, 666, 333, 0, 0])
    table = np.sqrt((1 - s.alphas_cumprod) / s.alphas_cumprod)
    np.testing.assert_allclose(g.sigmas[:-1], table[[999, 666, 333, 0]], rtol=1e-12)
    g = build_grid("euler", rd.as_process(s), 3)
    assert g.times[1] == 499.5 and g.sigmas[1] == pytest.approx((table[499] + table[500]) / 2)


@pytest.mark.parametrize("bad, match", [
    (np.array([1.0, 2.0, 0.0]), "strictly decreasing"),
    (np.array([5.0, 5.0, 0.0]), "strictly decreasing"),
    (np.array([5.0, np.nan, 0.0]), "finite noise levels"),
    (np.array([5.0, -1.0]), "finite noise levels"),
    (np.array([5.0]), "at least 2"),
    (np.array([1e6, 1.0, 0.0]), "schedule's range"),
])
def test_bad_explicit_grids_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        rd.sample_loop(smooth_model, x_T(), rd.NoiseSchedule.linear(T=1000), sampler="euler", steps=None, sigmas=bad)


def test_steps_out_of_range_are_refused():
    s = rd.NoiseSchedule.linear(T=50)
    with pytest.raises(ValueError, match=r"steps must be an integer in \[1, T=50\]"):
        rd.sample_loop(smooth_model, x_T(), s, sampler="euler", steps=51)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        rd.sample_loop(smooth_model, x_T(), s, sampler="euler", steps=0)
    with pytest.raises(ValueError, match="steps must be"):
        rd.sample_loop(smooth_model, x_T(), s, sampler="ddim", steps=51)
    with pytest.raises(ValueError, match=r"steps=3 but the explicit sigmas hold 2 steps"):
        rd.sample_loop(smooth_model, x_T(), s, sampler="euler", steps=3, sigmas=[1.0, 0.5, 0.0])


def test_nan_in_the_model_output_is_reported_with_the_step():
    def nan_model(x, t):
        return np.full_like(x, np.nan) if t < 500 else smooth_model(x, t)

    with pytest.raises(FloatingPointError, match=r"the model returned NaN or inf at step 2 \(t=333"):
        rd.sample_loop(nan_model, x_T(), rd.NoiseSchedule.linear(T=1000), sampler="euler", steps=4)
    with pytest.raises(ValueError, match="model_output contains NaN"):
        rd.sample_loop(nan_model, x_T(), rd.NoiseSchedule.linear(T=1000), sampler="ddim", steps=4)


def test_callback_sees_every_evaluation_and_the_dtype_is_kept():
    seen = []
    x = x_T(dtype=np.float32)
    out = rd.sample_loop(smooth_model, x, rd.NoiseSchedule.linear(T=1000), sampler="euler", steps=6,
                         callback=lambda i, sigma, x, denoised: seen.append((i, sigma, x.dtype, denoised.dtype)))
    assert [s[0] for s in seen] == list(range(6))
    assert all(s[2] == np.float32 and s[3] == np.float32 for s in seen)
    assert out.dtype == np.float32 and out.shape == x.shape
    assert seen[0][1] > seen[-1][1] > 0


def test_a_continuous_process_works_like_a_schedule():
    p = rd.VPLinearProcess()
    model = PointMass([0.1, 0.2, -0.3], p)
    out = rd.sample_loop(model, x_T(), p, sampler="euler", steps=12, sigmas="karras")
    np.testing.assert_allclose(out, np.broadcast_to(model.x_star, out.shape), atol=1e-9)
    assert max(model.calls) == pytest.approx(1.0) and min(model.calls) == pytest.approx(p.t_min)


def test_gaussian_diffusion_samples_with_a_sampler_on_sigmas():
    class Net:
        sample_shape = (3,)

        def __call__(self, x, t, y=None):
            return smooth_model(x, np.asarray(t, dtype=np.float64).reshape(-1, 1))

    s = rd.NoiseSchedule.linear(T=1000)
    d = GaussianDiffusion(Net(), s)
    out, trajectory = d.sample(5, sampler="euler", steps=6, sigmas="karras", seed=0, progress=False,
                               return_trajectory=True)
    assert out.dtype == np.float32 and trajectory.shape == (7, 5, 3)
    x = np.random.default_rng(0).standard_normal((5, 3), dtype=np.float32)
    expected = rd.sample_loop(lambda x, t: Net()(x, np.full(len(x), t)), x, s, sampler="euler", steps=6, sigmas="karras")
    np.testing.assert_array_equal(out, expected)
    with pytest.raises(TypeError, match="unexpected option 'bogus'"):
        d.sample(2, sampler="euler", steps=3, progress=False, bogus=1)


def test_cli_samples_with_a_karras_grid_and_refuses_a_bad_option_in_one_line(tmp_path, capsys):
    from test_cli import TINY_MLP  # the CLI tests' tiny run settings

    run = str(tmp_path / "run")
    assert cli.main(["train", "--data", "moons", "--steps", "3", "--out", run, *TINY_MLP]) == 0
    out = str(tmp_path / "s.npz")
    assert cli.main(["sample", run, "--n", "8", "--sampler", "euler", "--sigmas", "karras", "--steps", "4",
                     "--option", "s_churn=0.5", "--out", out, "--no-progress"]) == 0
    assert np.load(out)["samples"].shape == (8, 2)
    capsys.readouterr()
    for args, message in (
        (["--sampler", "euler", "--steps", "4", "--option", "eta=0.5"], "unexpected option 'eta'"),
        (["--sampler", "euler"], "needs --steps"),
        (["--sampler", "euler", "--sigmas", "1,2,0"], "strictly decreasing"),
    ):
        with pytest.raises(SystemExit) as e:
            cli.main(["sample", run, "--out", out, "--no-progress", *args])
        err = capsys.readouterr().err
        assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err
