"""Progressive distillation (Salimans & Ho 2022 Algorithm 2).

Independent truth: with an exact teacher (rd.GaussianMixture's denoiser) the two teacher DDIM steps
are written out by hand here, and one library DDIM step of the student with the target v must land
on the same point; the ideal student (that target) has zero loss; the truncated-SNR weight equals
max(||x - x_hat||^2, ||eps - eps_hat||^2) / ||v - v_hat||^2 (sec. 4). On a 2-D toy a short
distillation keeps the teacher's quality at half the steps (numbers seen stated in the tests).
"""
import numpy as np
import pytest

import refdiff as rd
from refdiff.distillation import ProgressiveDistillation, distillation_target, stage_timesteps
from refdiff.gaussian.distillation import truncated_snr_weight
from refdiff.samplers.ddim import ddim_step
from refdiff.samplers.timesteps import inference_timesteps
from refdiff.training.data import load_dataset
from refdiff.training.distill import distill_stage, progressive_distillation
from refdiff.training.metrics import energy_distance
from refdiff.training.trainer import Trainer, load_diffusion

SCHEDULE = rd.NoiseSchedule.linear()
MIXTURE = rd.GaussianMixture(weights=[0.3, 0.7], means=[[-0.5, 0.2], [0.6, -0.3]],
                             covariances=[np.eye(2) * 0.05, [[0.1, 0.03], [0.03, 0.08]]])


def _alpha_sigma(t):
    abar = np.where(t >= 0, SCHEDULE.alphas_cumprod[np.maximum(t, 0)], 1.0)[:, None]
    return np.sqrt(abar), np.sqrt(1 - abar)


def _ddim_by_hand(z, t, t_next):
    """z_next = alpha' x_hat + (sigma' / sigma) (z - alpha x_hat), x_hat the mixture's E[x_0 | z] (DDIM eq. 12, eta = 0)."""
    (a, s), (a2, s2) = _alpha_sigma(t), _alpha_sigma(t_next)
    x_hat = MIXTURE.denoised(z, a[:, 0], s[:, 0])
    return a2 * x_hat + s2 / s * (z - a * x_hat)


@pytest.mark.parametrize("student_steps", [32, 4, 1])
def test_the_target_folds_two_exact_teacher_ddim_steps_into_one(student_steps):
    t, t1, t2 = stage_timesteps(student_steps, SCHEDULE.T)
    i = np.arange(64) % student_steps
    t, t1, t2 = t[i], t1[i], t2[i]
    z = np.random.default_rng(0).standard_normal((64, 2))
    z_two = _ddim_by_hand(_ddim_by_hand(z, t, t1), t1, t2)  # the teacher: two steps
    x_tilde, v_tilde = distillation_target(MIXTURE.model(SCHEDULE, "v_prediction"), z, t, t1, t2, SCHEDULE)
    z_one = ddim_step(z, v_tilde, t, t2, SCHEDULE, prediction_type="v_prediction", clip_sample=False)
    np.testing.assert_allclose(z_one, z_two, atol=1e-10)  # the student: one step, same place
    last = t2 == -1  # a step that ends at the data: x_tilde is the teacher's sample itself
    np.testing.assert_allclose(x_tilde[last], z_two[last], atol=1e-10)


def test_the_ideal_student_has_zero_loss_and_an_other_one_not():
    exact_v = MIXTURE.model(SCHEDULE, "v_prediction")
    teacher = rd.GaussianDiffusion(lambda x, t, y=None: rd.Tensor(exact_v(x, t)), SCHEDULE, prediction_type="v_prediction")

    def ideal_student(z, t, y=None):  # predicts the target itself
        _, v = distillation_target(exact_v, z, t, distiller._t1_of[t], distiller._t2_of[t], SCHEDULE)
        return rd.Tensor(v)

    distiller = ProgressiveDistillation(ideal_student, teacher, student_steps=4)
    x0 = MIXTURE.sample(256, np.random.default_rng(1)).astype(np.float32)
    assert float(distiller.loss(x0, rng=0).item()) < 1e-10
    distiller.model = lambda x, t, y=None: rd.Tensor(exact_v(x, t))  # the teacher's one step is not enough
    assert float(distiller.loss(x0, rng=0).item()) > 1e-4


def test_truncated_snr_weight_is_the_larger_of_the_x_and_eps_losses():
    for abar in (0.05, 0.5, 0.9):
        alpha, sigma = np.sqrt(abar), np.sqrt(1 - abar)
        dv = np.random.default_rng(0).standard_normal(5)  # v error; x_0 = alpha z - sigma v, eps = sigma z + alpha v
        dx, deps = sigma * dv, alpha * dv
        expected = max(np.sum(dx**2), np.sum(deps**2)) / np.sum(dv**2)
        np.testing.assert_allclose(truncated_snr_weight(abar / (1 - abar)), expected, rtol=1e-12)


def test_every_stage_grid_is_every_other_step_of_its_teacher():
    n = 128
    while n >= 1:
        t, t1, t2 = stage_timesteps(n, SCHEDULE.T)
        np.testing.assert_array_equal(t, inference_timesteps(n, SCHEDULE.T, spacing="trailing"))
        assert np.all(t > t1) and np.all(t1 > t2) and t2[-1] == -1
        n //= 2
    with pytest.raises(ValueError, match="teacher would take"):
        stage_timesteps(501, SCHEDULE.T)


def _teacher(hidden=16, seed=0):
    net = rd.MLPDenoiser(dim=2, hidden=hidden, num_blocks=2, seed=seed)
    return rd.GaussianDiffusion(net, SCHEDULE, prediction_type="v_prediction", clip_sample=False)


def test_a_stage_resumes_bit_for_bit(tmp_path):
    data = load_dataset("gaussians8", n=256, seed=0)
    options = dict(batch_size=32, lr=1e-3, checkpoint_every=2, checkpoint_minutes=0)
    _, whole = distill_stage(_teacher(), 2, data, 4, out_dir=str(tmp_path / "a"), **options)
    _, first = distill_stage(_teacher(), 2, data, 2, out_dir=str(tmp_path / "b"), **options)
    resumed = Trainer.resume(str(tmp_path / "b"), dataset=data, progress=False)
    assert isinstance(resumed.diffusion, ProgressiveDistillation) and resumed.diffusion.student_steps == 2
    resumed.train(2)
    assert resumed.losses == whole.losses  # the teacher came back from the checkpoint too
    student, _ = load_diffusion(str(tmp_path / "a"))
    assert student.sample(8, seed=0, progress=False).shape == (8, 2)  # 2 DDIM steps, trailing


def _distill_run(teacher_steps, hidden, start, final, steps_per_stage):
    data = load_dataset("gaussians8", n=4000, seed=0)
    held_out = load_dataset("gaussians8", n=1000, seed=5).x
    teacher = _teacher(hidden)
    trainer = Trainer(teacher, data, batch_size=256, lr=2e-3, warmup_steps=50, ema_decay=0.99, progress=False)
    trainer.train(teacher_steps)
    trainer.ema.copy_to(trainer.params)

    def quality(diffusion, n):
        x = diffusion.sample(1000, sampler="ddim", steps=n, spacing="trailing", seed=3, progress=False)
        return energy_distance(x, held_out)

    students = progressive_distillation(teacher, data, start, final, steps_per_stage, batch_size=256, lr=5e-4,
                                        ema_decay=0.99)
    return quality(teacher, start), {s.student_steps: (quality(s, s.student_steps), quality(teacher, s.student_steps))
                                     for s in students}


def test_a_distilled_student_keeps_the_teachers_quality_at_half_the_steps():
    # seen (2-core CPU, ~22 s): teacher DDIM-8 energy distance 0.271; student 4 steps 0.269,
    # against 0.434 for the teacher's own DDIM-4
    teacher_quality, students = _distill_run(teacher_steps=400, hidden=32, start=8, final=4, steps_per_stage=200)
    student, teacher_same_steps = students[4]
    assert student < 1.25 * teacher_quality, (teacher_quality, students)
    assert student < 0.8 * teacher_same_steps, (teacher_quality, students)


@pytest.mark.slow
def test_two_stages_of_distillation_keep_the_teachers_quality_at_a_quarter_of_the_steps():
    # seen (2-core CPU, ~80 s): teacher DDIM-8 energy distance 0.210; students 4 steps 0.209 and
    # 2 steps 0.211, against 0.435 and 0.644 for the teacher's own DDIM-4 and DDIM-2
    teacher_quality, students = _distill_run(teacher_steps=800, hidden=64, start=8, final=2, steps_per_stage=300)
    for n, (student, teacher_same_steps) in students.items():
        assert student < 1.25 * teacher_quality, (n, teacher_quality, students)
        assert student < 0.8 * teacher_same_steps, (n, teacher_quality, students)
