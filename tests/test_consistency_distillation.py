"""Consistency distillation (Song et al. 2023 Algorithm 2) and consistency sampling (Algorithm 1).

Independent truth: the exact Gaussian mixture (rd.GaussianMixture) is the teacher, and the true
consistency function, the probability-flow ODE map x_sigma -> x_sigma_min, is computed by the
mixture's own fine RK4 solve (GaussianMixture.probability_flow). A student that IS that map has a
loss of the size of one teacher Heun step's error; a perturbed one has a much larger loss. A short
CD run of a small MLP moves its one-step map towards the ODE map (numbers seen stated below).
"""
import numpy as np
import pytest

import refdiff as rd
from refdiff.consistency import ConsistencyDistillation, consistency_boundaries
from refdiff.gaussian.consistency import ct_num_boundaries, ct_target_decay, target_update_formula
from refdiff.training.data import load_dataset
from refdiff.training.trainer import Trainer, load_diffusion

SCHEDULE = rd.NoiseSchedule.linear()
MIXTURE = rd.GaussianMixture(weights=[0.3, 0.7], means=[[-0.5, 0.2], [0.6, -0.3]],
                             covariances=[np.eye(2) * 0.05, [[0.1, 0.03], [0.03, 0.08]]])
EXACT_EPS = MIXTURE.model(SCHEDULE, "epsilon")


def _exact_teacher():
    return rd.GaussianDiffusion(lambda x, t, y=None: rd.Tensor(EXACT_EPS(x, t)), SCHEDULE)


def _ode_map(cd, x, sigma):
    """The true consistency function f*(x, sigma) (B,): the mixture's probability-flow ODE from each row's
    sigma down to sigma_min (GaussianMixture.probability_flow: RK4 at 20 steps per unit of log sigma,
    error ~1e-6 relative to x, below what the tests compare). One pass from the top: a row joins the
    solve at its own sigma."""
    out = np.array(x, dtype=np.float64)
    levels = np.unique(np.append(sigma, cd.sigma_min))[::-1]  # descending, ends at sigma_min
    active = np.zeros(len(x), bool)
    for s, s_next in zip(levels[:-1], levels[1:]):
        active |= sigma == s
        out[active] = MIXTURE.probability_flow(out[active], [s, s_next], 20)[-1]
    return out.astype(x.dtype)


def _student_network(cd, perturb=0.0):
    """F with f_theta = f* (1 + perturb) + ... : the network output that makes eq. 5 give the exact ODE map
    (times (1 + perturb) away from the boundary)."""
    def network(x_model, t, y=None):
        t = np.broadcast_to(np.asarray(t, dtype=np.float64), (len(x_model),))
        sigma = np.asarray(cd.process.sigma(t))
        a, _ = cd.process.scales_from_sigma(sigma)
        x = x_model / a[:, None]
        f = _ode_map(cd, x, sigma) * (1 + perturb)
        c_out = cd.c_out(sigma)[:, None]
        F = np.where(c_out > 0, (f - cd.c_skip(sigma)[:, None] * x) / np.where(c_out > 0, c_out, 1.0), 0.0)
        return rd.Tensor(F)
    network.sample_shape = (2,)
    return network


def test_the_boundary_condition_holds_for_any_network():
    """f(x, sigma_min) = x exactly (c_skip = 1, c_out = 0 at the schedule's smallest sigma), even for a
    network with huge outputs. Catches: c_skip / c_out evaluated at another sigma_min than the one the
    sampler and the boundaries use (e.g. a round trip through t that moves sigma by an ulp)."""
    wild = lambda x, t, y=None: rd.Tensor(1e6 * np.ones_like(x))  # noqa: E731
    cd = ConsistencyDistillation(wild, _exact_teacher())
    x = np.random.default_rng(0).standard_normal((16, 2))
    np.testing.assert_array_equal(cd.consistency_function(x, cd.sigma_min), x)
    np.testing.assert_array_equal(cd.consistency_function(x, cd.sigmas[0]), x)
    assert cd.sigmas[0] == cd.sigma_min and cd.sigmas[-1] == cd.sigma_max


def test_the_boundaries_are_karras_between_the_schedules_ends():
    """sigma_i = (sigma_min^(1/7) + (i-1)/(N-1) (sigma_max^(1/7) - sigma_min^(1/7)))^7 (sec. 5), written out
    here. Catches: a descending grid, rho applied the other way, N off by one."""
    s = consistency_boundaries(18, 0.002, 80.0)
    i = np.arange(1, 19)
    expected = (0.002 ** (1 / 7) + (i - 1) / 17 * (80 ** (1 / 7) - 0.002 ** (1 / 7))) ** 7
    np.testing.assert_allclose(s, expected, rtol=1e-12)


@pytest.mark.parametrize("solver", ["heun", "euler"])
def test_the_exact_ode_map_has_a_loss_at_the_teachers_step_error_and_a_perturbed_one_more(solver):
    """With the exact teacher and the exact consistency function as student and target, the CD loss is
    what one teacher step of the ODE leaves: it falls as the boundaries get finer (N = 9 -> 18: each step
    ~2x shorter; a local error O(h^(p+1)), squared, falls ~16x for Euler's p = 1, ~64x for Heun's p = 2; we
    ask for 8x); a student 5% off the
    consistency function (f = 1.05 f*) has a far larger loss. Catches: x_{n+1} and x_hat_n at the wrong
    boundaries (the student at sigma_n or the target at sigma_{n+1}: then the exact map has a loss that
    does not fall with N), the teacher's step taken upwards or read with the wrong prediction type, a loss
    that does not measure f. Seen (N = 9, 18): Heun 8.4e-4, 9.4e-6 (90x); Euler 7.1e-4, 4.9e-5
    (14x); the perturbed student at N = 18: 6.1e-4 (Heun), 8.2e-4 (Euler)."""
    x0 = MIXTURE.sample(64, np.random.default_rng(1))
    losses = {}
    for n in (9, 18):
        cd = ConsistencyDistillation(lambda x, t, y=None: None, _exact_teacher(), num_boundaries=n, solver=solver)
        cd.model = cd.target = _student_network(cd)
        losses[n] = float(cd.loss(x0, rng=0).item())
    cd.model = _student_network(cd, perturb=0.05)
    perturbed = float(cd.loss(x0, rng=0).item())
    assert losses[18] < losses[9] / 8, losses
    assert perturbed > 10 * losses[18], (losses, perturbed)


def test_multistep_sampling_with_the_exact_map_draws_the_mixture():
    """Algorithm 1 with the exact consistency function: one step and three steps (re-noised in between)
    both give samples of the mixture (means and covariances within sampling error of 1000 draws: the
    mixture's std is ~0.55 along x, a mean's standard error ~0.017, allowed 0.06 = 3.5 of them). Catches: the re-noise sqrt(sigma^2 - sigma_min^2)
    forgotten (three steps would then shrink the spread), f read at the wrong scale."""
    cd = ConsistencyDistillation(lambda x, t, y=None: None, _exact_teacher())
    cd.model = _student_network(cd)
    for steps in (1, 3):
        x = cd.sample(1000, steps=steps, seed=0, progress=False, dtype=np.float64)
        np.testing.assert_allclose(x.mean(0), MIXTURE.mean(), atol=0.06)
        np.testing.assert_allclose(np.cov(x.T), MIXTURE.covariance(), atol=0.06)


def test_the_target_network_follows_the_student_at_rate_mu():
    """After a Trainer step, theta- = mu theta-_0 + (1 - mu) theta_1 (Algorithm 2), with theta-_0 = theta_0.
    Catches: the target never updated, updated before the optimizer step, or the Trainer's EMA used in its place."""
    net = rd.MLPDenoiser(dim=2, hidden=16, num_blocks=1)
    cd = ConsistencyDistillation(net, _exact_teacher(), num_boundaries=6, mu=0.9)
    theta0 = [p.data.copy() for p in net.parameters()]
    trainer = Trainer(cd, load_dataset("gaussians8", n=64, seed=0), batch_size=32, progress=False)
    trainer.train(1)
    for p_minus, p, p0 in zip(cd.target.parameters(), net.parameters(), theta0):
        np.testing.assert_allclose(p_minus.data, target_update_formula(p0, p.data, 0.9), rtol=1e-6, atol=1e-7)
    assert any(not np.array_equal(p.data, p0) for p, p0 in zip(net.parameters(), theta0))  # the step moved theta


def test_consistency_training_schedules_match_appendix_c():
    """N(k) rises from s_0 = 2 to s_1 + 1 = 151 and mu(k) = exp(s_0 log mu_0 / N(k)) (appendix C); at k = K / 4,
    ceil(sqrt((151^2 - 4) / 4 + 4) - 1) + 1 = ceil(74.52) + 1 = 76. Catches: the square root or the ceiling dropped, mu not tied to N."""
    assert ct_num_boundaries(0, 1000) == 2 and ct_num_boundaries(1000, 1000) == 151
    assert ct_num_boundaries(250, 1000) == 76
    assert ct_target_decay(3) == pytest.approx(0.9 ** (2 / 3), rel=1e-12)


def test_lpips_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="pretrained"):
        ConsistencyDistillation(lambda x, t, y=None: None, _exact_teacher(), metric="lpips")


def _mlp_teacher():
    return rd.GaussianDiffusion(rd.MLPDenoiser(dim=2, hidden=16, num_blocks=1, seed=3), SCHEDULE, clip_sample=False)


def test_a_run_resumes_bit_for_bit(tmp_path):
    """4 steps in one go == 2 steps, a checkpoint, Trainer.resume, 2 more (NumPy). Catches: theta- or the
    teacher not stored (the resumed target would be the student or fresh), the target not restored."""
    data = load_dataset("gaussians8", n=256, seed=0)
    options = dict(batch_size=32, lr=1e-3, checkpoint_every=2, checkpoint_minutes=0, progress=False)

    def run(out, steps):
        teacher = _mlp_teacher()
        cd = ConsistencyDistillation(rd.MLPDenoiser(dim=2, hidden=16, num_blocks=1, seed=3), teacher, num_boundaries=6)
        trainer = Trainer(cd, data, out_dir=str(tmp_path / out), **options)
        trainer.train(steps)
        return trainer

    whole = run("a", 4)
    run("b", 2)
    resumed = Trainer.resume(str(tmp_path / "b"), dataset=data, progress=False)
    assert isinstance(resumed.diffusion, ConsistencyDistillation) and resumed.diffusion.num_boundaries == 6
    resumed.train(2)
    assert resumed.losses == whole.losses
    for a, b in zip(resumed.diffusion.target.parameters(), whole.diffusion.target.parameters()):
        np.testing.assert_array_equal(a.data, b.data)
    model, _ = load_diffusion(str(tmp_path / "a"))
    assert model.sample(8, seed=0, progress=False).shape == (8, 2)


def _one_step_error(cd, z):
    x_T = cd.sigma_max * z
    return float(np.mean(np.sum((cd.consistency_function(x_T, cd.sigma_max) - _ode_map(cd, x_T, np.full(len(z), cd.sigma_max))) ** 2, 1)))


def test_a_short_distillation_brings_the_one_step_map_towards_the_teachers_ode_map():
    """300 CD steps of a small MLP (N = 8, mu = 0, exact teacher) cut the mean squared distance between its
    one-step sample f(sigma_max z) and the ODE map of the same z. Seen (~6 s): 0.54 before, 0.09 after.
    Catches: a loss that does not pull f towards the ODE solution (wrong target, wrong sign of the step)."""
    net = rd.MLPDenoiser(dim=2, hidden=64, num_blocks=2)
    cd = ConsistencyDistillation(net, _exact_teacher(), num_boundaries=8, mu=0.0)
    z = np.random.default_rng(5).standard_normal((512, 2))
    before = _one_step_error(cd, z)

    class Data:
        x, y = MIXTURE.sample(4096, np.random.default_rng(1)).astype(np.float32), None

    Trainer(cd, Data, batch_size=256, lr=2e-3, progress=False).train(300)
    after = _one_step_error(cd, z)
    assert after < 0.35 * before, (before, after)


# ---- consistency training (Algorithm 3) ----------------------------------------------------------

def _zero_network(x, t, y=None):
    return rd.Tensor(np.zeros_like(x))


_zero_network.sample_shape = (2,)


def test_consistency_training_compares_the_same_noise_one_level_apart():
    """With F = 0 for student and target, f(x, sigma) = c_skip(sigma) x, so the CT loss is
    mean (c_skip(sigma_{n+1}) (x + sigma_{n+1} z) - c_skip(sigma_n) (x + sigma_n z))^2, written out here with
    the draws of GaussianDiffusion.loss (n, then z, from the rng). Catches: a fresh z for x_hat_n (Algorithm
    3 needs the same z), x_hat_n at sigma_{n+1}, a teacher step where there is no teacher.
    Tolerance: float32 data, float64 inside: 1e-6 relative."""
    from refdiff.consistency import ConsistencyTraining

    ct = ConsistencyTraining(_zero_network, SCHEDULE, total_steps=100)
    ct.set_step(30)
    x0 = MIXTURE.sample(64, np.random.default_rng(2)).astype(np.float32)
    gen = np.random.default_rng(0)
    n = gen.integers(0, ct.num_boundaries - 1, size=64)
    z = gen.standard_normal(x0.shape, dtype=np.float32).astype(np.float64)
    s_next, s = ct.sigmas[n + 1][:, None], ct.sigmas[n][:, None]
    x = x0.astype(np.float64)
    expected = np.mean((ct.c_skip(s_next) * (x + s_next * z) - ct.c_skip(s) * (x + s * z)) ** 2)
    assert float(ct.loss(x0, rng=0).item()) == pytest.approx(expected, rel=1e-6)


def test_consistency_training_follows_n_and_mu_of_the_step():
    """After k Trainer steps the discretization is N(k) and the target rate mu(k) (appendix C).
    Catches: schedules frozen at k = 0, or advanced before the step's loss."""
    from refdiff.consistency import ConsistencyTraining

    ct = ConsistencyTraining(rd.MLPDenoiser(dim=2, hidden=16, num_blocks=1), SCHEDULE, total_steps=40)
    assert ct.num_boundaries == 2
    Trainer(ct, load_dataset("gaussians8", n=64, seed=0), batch_size=32, progress=False).train(10)
    assert ct.k == 10 and ct.num_boundaries == ct_num_boundaries(10, 40) == 76
    assert ct.mu == ct_target_decay(76) and len(ct.sigmas) == 76


def test_a_consistency_training_run_resumes_bit_for_bit(tmp_path):
    """4 steps == 2 + resume + 2, while N(k) changes (2 -> 76 -> ...): the step k comes back from the
    checkpoint. Catches: k restarting at 0 on resume (N and mu of step 0 again)."""
    from refdiff.consistency import ConsistencyTraining

    data = load_dataset("gaussians8", n=256, seed=0)

    def run(out, steps):
        ct = ConsistencyTraining(rd.MLPDenoiser(dim=2, hidden=16, num_blocks=1, seed=3), SCHEDULE, total_steps=4)
        trainer = Trainer(ct, data, out_dir=str(tmp_path / out), batch_size=32, checkpoint_every=2,
                          checkpoint_minutes=0, progress=False)
        trainer.train(steps)
        return trainer

    whole = run("a", 4)
    run("b", 2)
    resumed = Trainer.resume(str(tmp_path / "b"), dataset=data, progress=False)
    assert isinstance(resumed.diffusion, ConsistencyTraining) and resumed.diffusion.k == 2
    resumed.train(2)
    assert resumed.losses == whole.losses
    assert load_diffusion(str(tmp_path / "a"))[0].sample(8, seed=0, progress=False).shape == (8, 2)
