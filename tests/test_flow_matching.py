"""Flow matching (Lipman et al. 2023; Liu et al. 2022): the path and its target, the time
distributions, the exact velocity of Gaussian data as the loss minimiser, transport by the flow
samplers, a trained MLP against the exact field, and training + sampling through Trainer and the CLI.

Independent truths: finite differences of the path; the closed-form posterior of a 1-D Gaussian
written out here (not the library's mixture code); the conditional expectation as the minimiser of
a squared loss (the Pythagorean identity E||v - target||^2 = E||v - u*||^2 + E||u* - target||^2);
the logit-normal law through scipy's normal CDF.
"""
import json
import os

import numpy as np
import pytest
from scipy import stats

import refdiff as rd
from refdiff.cli import main
from refdiff.gaussian.flow_matching import (flow_path, flow_target, logit_normal_density, sample_time,
                                           straightness_formula)
from refdiff.gaussian.mixture import GaussianMixture
from refdiff.nn.autograd import Tensor
from refdiff.training.data import Dataset, load_dataset
from refdiff.training.metrics import energy_distance
from refdiff.training.trainer import Trainer, load_diffusion

MEAN = np.array([0.5, -0.3])
COV = np.array([[0.09, 0.03], [0.03, 0.04]])


def gaussian():
    return GaussianMixture(weights=[1.0], means=[MEAN], covariances=[COV])


# ---- the path and its target -------------------------------------------------------------------


def test_the_target_is_the_time_derivative_of_the_path():
    rng = np.random.default_rng(0)
    x0, noise = rng.standard_normal((2, 5, 3))
    t = rng.uniform(0.05, 0.95, 5)
    h = 1e-6
    derivative = (flow_path(x0, noise, t + h) - flow_path(x0, noise, t - h)) / (2 * h)
    np.testing.assert_allclose(derivative, flow_target(x0, noise), rtol=0, atol=1e-8)
    np.testing.assert_array_equal(flow_path(x0, noise, np.zeros(5)), x0)  # t = 0: the data
    np.testing.assert_array_equal(flow_path(x0, noise, np.ones(5)), noise)  # t = 1: the noise


def test_the_path_keeps_float32_and_broadcasts_over_image_axes():
    rng = np.random.default_rng(1)
    x0, noise = rng.standard_normal((2, 4, 1, 3, 3)).astype(np.float32)
    t = np.array([0.0, 0.25, 0.5, 1.0])
    x_t = flow_path(x0, noise, t)
    assert x_t.dtype == np.float32 and x_t.shape == x0.shape
    np.testing.assert_allclose(x_t[1], 0.75 * x0[1] + 0.25 * noise[1], rtol=1e-6)


# ---- time distributions ------------------------------------------------------------------------


def test_uniform_times_lie_in_the_unit_interval_and_are_uniform():
    t = sample_time(np.random.default_rng(0), 20000, "uniform")
    assert t.shape == (20000,) and t.min() >= 0 and t.max() < 1
    assert stats.kstest(t, "uniform").pvalue > 1e-3


@pytest.mark.parametrize("mean,std", [(0.0, 1.0), (0.5, 0.6)])
def test_logit_normal_times_have_the_sd3_density(mean, std):
    t = sample_time(np.random.default_rng(0), 40000, "logit_normal", mean, std)
    assert 0 < t.min() and t.max() < 1
    # logit(t) ~ N(mean, std^2): Kolmogorov-Smirnov against the normal CDF (p seen ~0.3-0.9)
    assert stats.kstest(np.log(t / (1 - t)), "norm", args=(mean, std)).pvalue > 1e-3
    # the histogram against Esser et al. eq. 19's density (which integrates to 1)
    edges = np.linspace(0, 1, 21)
    centres = (edges[:-1] + edges[1:]) / 2
    grid = np.linspace(1e-6, 1 - 1e-6, 200001)
    assert abs(np.trapezoid(logit_normal_density(grid, mean, std), grid) - 1) < 1e-4
    histogram, _ = np.histogram(t, edges, density=True)
    np.testing.assert_allclose(histogram, logit_normal_density(centres, mean, std), rtol=0.08, atol=0.03)


# ---- the exact velocity of Gaussian data --------------------------------------------------------


def test_the_mixture_velocity_is_the_closed_form_of_a_1d_gaussian():
    # x0 ~ N(m, s^2), x_t = (1 - t) x0 + t eps: (x0, eps, x_t) jointly Gaussian, Var x_t = (1-t)^2 s^2 + t^2,
    # E[x0 | x_t] = m + (1 - t) s^2 (x_t - (1 - t) m) / Var x_t, E[eps | x_t] = t (x_t - (1 - t) m) / Var x_t
    m, s = 0.7, 0.4
    mix = GaussianMixture(weights=[1.0], means=[[m]], covariances=[[[s * s]]])
    x_t = np.linspace(-3, 3, 13)[:, None]
    for t in (0.0, 0.2, 0.5, 0.9, 1.0):
        var = (1 - t) ** 2 * s * s + t * t
        centred = x_t - (1 - t) * m
        expected = t * centred / var - (m + (1 - t) * s * s * centred / var)
        np.testing.assert_allclose(mix.velocity(x_t, 1 - t, t), expected, rtol=1e-12, atol=1e-12)


def _exact_model(mix, fm):
    """The exact velocity as a network of FlowMatching's calling convention (time scaled by T)."""

    def model(x, t, y=None):
        flow_t = np.asarray(t, np.float64) / fm.T
        return Tensor(mix.velocity(np.asarray(x, np.float64), 1 - flow_t, flow_t))

    return model


def test_the_exact_velocity_minimises_the_flow_matching_loss():
    mix = gaussian()
    fm = rd.FlowMatching(lambda x, t, y=None: None)
    x0 = mix.sample(20000, np.random.default_rng(0))
    exact = _exact_model(mix, fm)
    fm.model = exact
    best = float(fm.loss(x0, rng=1).item())

    def bumped(x, t, y=None):  # u* + a smooth perturbation d(x)
        return Tensor(exact(x, t).data + 0.3 * np.sin(3 * np.asarray(x)))

    fm.model = bumped
    worse = float(fm.loss(x0, rng=1).item())
    # E||u* + d - target||^2 - E||u* - target||^2 = E||d||^2 (+ a cross term of mean zero, as u* = E[target | x_t]);
    # the same rng: the same t, eps, x_t. Per coordinate (mse_loss is a mean over the two axes).
    rng = np.random.default_rng(1)
    t = rng.random(20000)
    x_t = flow_path(x0, rng.standard_normal(x0.shape), t)
    d2 = np.mean((0.3 * np.sin(3 * x_t)) ** 2)
    assert worse > best
    # seen: difference 0.0319, E d^2 0.0317 (cross term ~ its Monte Carlo error, 2e-4)
    assert abs((worse - best) - d2) < 0.1 * d2, (worse - best, d2)


def test_flow_samplers_with_the_exact_velocity_transport_noise_to_the_data():
    mix, process, n = gaussian(), rd.FlowProcess(), 10000
    x_T = np.random.default_rng(0).standard_normal((n, 2))
    mean_se = np.sqrt(np.diag(COV) / n)  # standard error of the sample mean, ~0.003 / 0.002
    cov_se = np.sqrt((COV**2 + np.outer(np.diag(COV), np.diag(COV))) / n)  # of the sample covariance
    for sampler, steps, bias in (("flow_euler", 100, 0.04), ("flow_heun", 20, 0.01)):
        x = rd.sample_loop(mix.model(process, "flow"), x_T, process, sampler=sampler, steps=steps,
                           prediction_type="flow")
        assert np.all(np.abs(x.mean(0) - MEAN) < 4 * mean_se), (sampler, x.mean(0))
        # Euler is first order: at 100 steps its covariance is ~3.5% low (seen -0.0032 of 0.09);
        # Heun at 20 steps within sampling error (seen 3e-4)
        assert np.all(np.abs(np.cov(x.T) - COV) < 4 * cov_se + bias * np.abs(COV)), (sampler, np.cov(x.T))


def test_a_trained_mlp_approaches_the_exact_velocity_of_gaussian_data():
    mix = gaussian()
    data = Dataset(x=mix.sample(4000, np.random.default_rng(0)))
    fm = rd.FlowMatching(rd.MLPDenoiser(dim=2, hidden=64, num_blocks=2, seed=0))
    trainer = Trainer(fm, data, batch_size=256, lr=3e-3, warmup_steps=20, ema_decay=0.99, progress=False)
    trainer.train(500)  # ~3 s
    x0 = mix.sample(2000, np.random.default_rng(1))
    noise = np.random.default_rng(2).standard_normal(x0.shape)
    for t in (0.1, 0.5, 0.9):
        x_t = (1 - t) * x0 + t * noise
        exact = mix.velocity(x_t, 1 - t, t)
        with trainer.ema_weights():
            learned = fm.velocity(x_t.astype(np.float32), t)
        error = np.mean(np.sum((learned - exact) ** 2, axis=1))
        scale = np.mean(np.sum(exact**2, axis=1))
        # seen: 0.9%, 0.08%, 0.03% of E||u*||^2 at t = 0.1, 0.5, 0.9 (the untrained model: 100%)
        assert error < 0.03 * scale, (t, error, scale)


def test_straightness_is_zero_for_constant_velocities_and_positive_otherwise():
    rng = np.random.default_rng(0)
    u = rng.standard_normal((6, 2))
    dts = np.full(4, 0.25)
    assert straightness_formula(u, [u] * 4, dts) == 0.0
    bent = [u + 1, u - 1, u + 1, u - 1]  # same displacement, velocities off by 1 per coordinate
    assert straightness_formula(u, bent, dts) == pytest.approx(2.0)


# ---- training and sampling ---------------------------------------------------------------------


def test_flow_matching_on_moons_beats_the_untrained_model():
    data = load_dataset("moons", n=2000, seed=0)
    held_out = load_dataset("moons", n=500, seed=1).x
    fm = rd.FlowMatching(rd.MLPDenoiser(dim=2, hidden=64, num_blocks=2, seed=0), time_sampling="logit_normal")
    untrained = fm.sample(500, steps=20, seed=1, progress=False)
    trainer = Trainer(fm, data, batch_size=256, lr=2e-3, warmup_steps=50, ema_decay=0.99, progress=False)
    losses = trainer.train(600)
    with trainer.ema_weights():
        euler = fm.sample(500, sampler="flow_euler", steps=20, seed=1, progress=False)
        heun = fm.sample(500, sampler="flow_heun", steps=10, seed=1, progress=False)
    d_untrained = energy_distance(untrained, held_out)
    # seen: untrained 0.44, euler-20 0.09, heun-10 ~0.09
    for samples in (euler, heun):
        assert energy_distance(samples, held_out) < d_untrained / 3
    assert np.mean(losses[-50:]) < np.mean(losses[:50])


def test_a_flow_matching_checkpoint_resumes_bit_for_bit_and_loads_for_sampling(tmp_path):
    data = load_dataset("moons", n=500, seed=0)

    def trainer(out):
        fm = rd.FlowMatching(rd.MLPDenoiser(dim=2, hidden=16, num_blocks=1, seed=0), time_sampling="logit_normal",
                             logit_mean=0.3, shift=2.0)
        return Trainer(fm, data, out_dir=out, batch_size=32, progress=False, checkpoint_every=0, checkpoint_minutes=0)

    straight = trainer(None)
    straight.train(6)
    first = trainer(str(tmp_path / "run"))
    first.train(3)
    resumed = Trainer.resume(str(tmp_path / "run"), dataset=data, progress=False)
    assert isinstance(resumed.diffusion, rd.FlowMatching)
    resumed.train(3)
    assert resumed.losses == straight.losses
    diffusion, meta = load_diffusion(str(tmp_path / "run"))
    assert meta["diffusion"]["objective"] == "flow_matching"
    assert diffusion.config() == straight.diffusion.config() and diffusion.process.shift == 2.0
    assert diffusion.sample(8, steps=3, seed=0, progress=False).shape == (8, 2)


def test_loss_pairs_given_noise_with_the_data():
    fm = rd.FlowMatching(lambda x, t, y=None: Tensor(np.zeros_like(x)))
    x0 = np.ones((4, 2), np.float32)
    noise = np.full((4, 2), 3.0, np.float32)
    # the target is noise - x0 = 2 everywhere whatever t: the zero model's loss is exactly 4
    assert float(fm.loss(x0, rng=0, noise=noise).item()) == 4.0
    with pytest.raises(ValueError, match="shape"):
        fm.loss(x0, rng=0, noise=noise[:2])


def test_cli_trains_and_samples_a_flow_matching_run(tmp_path, capsys):
    out = str(tmp_path / "fm")
    assert main(["train", "--data", "moons", "--n", "500", "--objective", "flow_matching", "--time-sampling",
                 "logit_normal", "--hidden", "16", "--num-blocks", "1", "--steps", "20", "--out", out,
                 "--no-progress"]) == 0
    with open(os.path.join(out, "checkpoints", "step_00000020.json")) as f:
        assert json.load(f)["diffusion"]["time_sampling"] == "logit_normal"
    for sampler in ("flow_euler", "flow_heun"):
        path = str(tmp_path / f"{sampler}.npz")
        assert main(["sample", out, "--sampler", sampler, "--steps", "4", "--n", "16", "--out", path,
                     "--no-progress"]) == 0
        assert np.load(path)["samples"].shape == (16, 2)
    assert main(["sample", out, "--steps", "2", "--n", "4", "--out", str(tmp_path / "d.npz"), "--no-progress"]) == 0
    assert "flow_euler" in capsys.readouterr().out  # the default sampler of a flow-matching run
    with pytest.raises(SystemExit) as e:
        main(["sample", out, "--sampler", "ddim", "--steps", "4", "--out", str(tmp_path / "x.npz"), "--no-progress"])
    assert e.value.code == 2
