"""ProgressiveDistillation: a student that takes one DDIM step for its teacher's two.

Salimans & Ho 2022, Progressive Distillation for Fast Sampling of Diffusion Models
(arXiv:2202.00512), Algorithm 2, on refdiff's integer timesteps. A stage with N student steps:

    grid      the student visits t_0 > t_1 > ... > t_{N-1} ("trailing" spacing, inference_timesteps(N, T));
              the teacher's 2N-step trailing grid holds them as every other entry, with t'_i between
              t_i and t_{i+1} (t_N = -1: abar = 1, the data)
    draw      x ~ data, i ~ U{0..N-1}, t = t_i, eps ~ N(0, I), z_t = alpha_t x + sigma_t eps   (DDPM eq. 4)
    target    z_t'' = two teacher DDIM steps t -> t' -> t''; x_tilde and v_tilde    (refdiff.gaussian.distillation)
    loss      mean_b w_t mean_i (v_student(z_t, t) - v_tilde)^2, w_t = max(SNR_t, 1) / (SNR_t + 1)  (sec. 4)

The student starts as a copy of the teacher's network (Algorithm 2: eta <- theta) and predicts v
(sec. 4); it samples with DDIM (eta = 0) in N steps on the trailing grid. A finished stage is a
GaussianDiffusion whose network is the student: the next stage's teacher (N -> N / 2).

A sibling of GaussianDiffusion: the same loss function (draws, weights, device generator); this
class replaces the objective's parts: the times (the student's grid), x_t and the target (the
teacher's two steps) and the weights. Checkpoints store the teacher's weights (arrays
"teacher/...") so that a stage resumes on its own (Trainer.resume).
Unconditional models only (the teacher is called without labels).
"""
import numpy as np

from .backend import per_sample
from .checks import check_distillation_steps, check_nested_grids
from .diffusion import GaussianDiffusion, model_num_classes
from .gaussian.distillation import distillation_target_formula, truncated_snr_weight, v_from_x0_formula
from .nn.autograd import Tensor, no_grad
from .samplers.ddim import ddim_step
from .samplers.timesteps import inference_timesteps


def stage_timesteps(student_steps, T):
    """(t, t', t''), three int64 arrays (N,): the student's steps t_i (trailing spacing), the teacher's
    intermediate steps t'_i and where each student step lands, t''_i = t_{i+1} (-1 after the last)."""
    student_steps = check_distillation_steps(student_steps, T)
    t = inference_timesteps(student_steps, T, spacing="trailing")
    teacher = inference_timesteps(2 * student_steps, T, spacing="trailing")
    check_nested_grids(t, teacher)
    return t, teacher[1::2], np.append(t[1:], -1)


def teacher_two_steps(teacher, z_t, t, t1, t2, schedule, prediction_type, backend=None):
    """z_t'' after two deterministic DDIM steps of the teacher, t -> t' -> t'' (DDIM eq. 12, eta = 0;
    Salimans & Ho 2022 Algorithm 2), x_0 not clipped. teacher(x, t) -> output read as
    prediction_type; t, t1, t2 int arrays (B,)."""
    step = ddim_step if backend is None else backend.ddim_step
    z_t1 = step(z_t, _data(teacher(z_t, t)), t, t1, schedule, prediction_type=prediction_type, clip_sample=False)
    return step(z_t1, _data(teacher(z_t1, t1)), t1, t2, schedule, prediction_type=prediction_type, clip_sample=False)


def distillation_target(teacher, z_t, t, t1, t2, schedule, prediction_type="v_prediction", backend=None):
    """(x_tilde, v_tilde): the x_0 and v with which one student DDIM step t -> t'' lands where the
    teacher's two land (Salimans & Ho 2022 Algorithm 2; sec. 4 for v). Computed in float64 from
    z_t and the teacher's z_t''; returned in z_t's dtype."""
    z_t2 = teacher_two_steps(teacher, z_t, t, t1, t2, schedule, prediction_type, backend)
    z64, z2_64 = z_t.astype(np.float64), z_t2.astype(np.float64)
    abar_t, abar_t2 = schedule.alphas_cumprod_at(t), schedule.alphas_cumprod_at(t2)
    alpha_t, sigma_t = per_sample(abar_t**0.5, z64), per_sample((1 - abar_t) ** 0.5, z64)
    alpha_t2, sigma_t2 = per_sample(abar_t2**0.5, z64), per_sample((1 - abar_t2) ** 0.5, z64)
    x_tilde = distillation_target_formula(z64, z2_64, alpha_t, sigma_t, alpha_t2, sigma_t2)
    v_tilde = v_from_x0_formula(z64, x_tilde, alpha_t, sigma_t)
    return x_tilde.astype(z_t.dtype), v_tilde.astype(z_t.dtype)


class ProgressiveDistillation(GaussianDiffusion):
    """The student of one progressive-distillation stage: model predicts v and samples in student_steps
    DDIM steps, trained to match two DDIM steps of `teacher` (a GaussianDiffusion on the same schedule).

    model: the student network (start it as a copy of the teacher's: refdiff.training.distill.copy_network).
    teacher: a GaussianDiffusion (any prediction type; its network is called under no_grad).
    student_steps: N, with 2N <= T.
    """

    objective = "progressive_distillation"

    def __init__(self, model, teacher, student_steps, backend=None):
        super().__init__(model, teacher.schedule, prediction_type="v_prediction", backend=backend,
                         clip_sample=teacher.clip_sample, clip_sample_range=teacher.clip_sample_range,
                         variance_type=teacher.variance_type)
        if model_num_classes(model) is not None or teacher.num_classes is not None:
            raise ValueError("progressive distillation here is for unconditional models (num_classes=None)")
        self.teacher = teacher
        self.student_steps = check_distillation_steps(student_steps, teacher.T)
        self.grid = stage_timesteps(self.student_steps, self.T)
        # t -> t' and t -> t'' over the student's grid (-2 elsewhere: never drawn)
        self._t1_of, self._t2_of = np.full(self.T, -2, np.int64), np.full(self.T, -2, np.int64)
        self._t1_of[self.grid[0]], self._t2_of[self.grid[0]] = self.grid[1], self.grid[2]

    def config(self):
        """A JSON-able dict of the options (a checkpoint's "diffusion" record)."""
        return {**super().config(), "objective": self.objective, "student_steps": self.student_steps,
                "teacher_prediction_type": self.teacher.prediction_type}

    def schedule_arrays(self):
        """The schedule's betas and the teacher's weights ("teacher/..."): a stage resumes on its own."""
        from .io.checkpoint import flatten_state

        _, teacher_arrays = flatten_state(self.teacher.model.state_dict(), "teacher")
        return {**super().schedule_arrays(), **teacher_arrays}

    def preview_sampling(self, steps):
        """The trainer's pictures: the student's own sampler (DDIM, student_steps steps, trailing)."""
        return dict(sampler="ddim", steps=self.student_steps, spacing="trailing")

    def sample(self, n, sampler="ddim", steps=None, spacing="trailing", **kwargs):
        """n samples by DDIM (eta = 0) in student_steps steps on the trailing grid, as trained; the
        other arguments as GaussianDiffusion.sample."""
        return super().sample(n, sampler=sampler, steps=steps or self.student_steps, spacing=spacing, **kwargs)

    # ---- the objective's parts of GaussianDiffusion.loss ---------------------------------------

    def _draw_t(self, gen, B):
        """t = t_i, i ~ U{0..N-1}: a step of the student's grid (Algorithm 2)."""
        return self.grid[0][np.asarray(gen.integers(0, self.student_steps, size=B))]

    def _noised_and_target(self, x0, t, noise):
        """z_t = alpha_t x + sigma_t eps (DDPM eq. 4) and v_tilde from the teacher's two DDIM steps."""
        z_t, _ = self.backend.q_sample_with_target(x0, t, noise, self.schedule, prediction_type="v_prediction")
        teacher = self.teacher.model
        with no_grad():
            _, v_tilde = distillation_target(lambda x, s: teacher(x, s, None), z_t, t, self._t1_of[t], self._t2_of[t],
                                             self.schedule, self.teacher.prediction_type, self.backend)
        return z_t, v_tilde

    def _loss_weights(self, t, dtype):
        """w_t = max(SNR_t, 1) / (SNR_t + 1): truncated-SNR weighting (Salimans & Ho 2022 sec. 4)."""
        return truncated_snr_weight(self.schedule.snr[t]).astype(dtype)


def _data(out):
    return out.data if isinstance(out, Tensor) else out
