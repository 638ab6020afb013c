"""ConsistencyDistillation: a one-step generator distilled from a diffusion model's probability-flow ODE.

Song, Dhariwal, Chen, Sutskever 2023, Consistency Models (arXiv:2303.01469), Algorithm 2, on
refdiff's DDPM schedules seen in the variance-exploding scale x = x_0 + sigma z (EDM sec. 2;
refdiff.gaussian.process.DiscreteProcess). The math is in refdiff.gaussian.consistency.

    boundaries  sigma_1 = sigma_min < ... < sigma_N = sigma_max, Karras (rho = 7; sec. 5, app. C);
                sigma_min, sigma_max the schedule's noise levels at t = 0 and t = T - 1
    f_theta     f(x, sigma) = c_skip(sigma) x + c_out(sigma) F_theta(signal_scale(sigma) x, t(sigma))   eq. 5
    draw        x ~ data, n ~ U{1..N-1}, z ~ N(0, I), x_{n+1} = x + sigma_{n+1} z
    teacher     x_hat_n = one Heun (EDM's teacher) or Euler step of the teacher's ODE, sigma_{n+1} -> sigma_n
    loss        mean_b mean_i (f_theta(x_{n+1}, sigma_{n+1}) - f_theta-(x_hat_n, sigma_n))^2   (d = L2, lambda = 1)
    target      theta- <- mu theta- + (1 - mu) theta after every optimizer step (theta-_0 = theta_0)

The network F sees what the teacher's network saw: x in the schedule's scale (signal_scale(sigma) x,
the DDPM x_t) at the (fractional) timestep t(sigma), so the student can start as a copy of the
teacher's network (as progressive distillation's does; the CLI does so) and its time embedding
sees the range it was built for. c_skip and c_out use sigma_data (0.5 for data in [-1, 1]).

Two EMAs, two jobs. theta- (rate mu, the paper's 0.95 for CD on CIFAR-10 by default) is part of the
objective: it is the network the target f_theta-(x_hat_n) is computed with, it lives in this object
(`target`, a network of the student's kind) and is moved by the Trainer after every optimizer step
(Trainer calls diffusion.after_optimizer_step). The Trainer's own EMA (ema_decay) is, as for every
objective, the average of theta used for sampling; the paper keeps both the same way (its target
EMA mu and a separate EMA for evaluation). Checkpoints store the teacher's weights ("teacher/...")
and theta- ("target/..."), so a run resumes bit for bit (Trainer.resume).

d: the squared L2 distance only. The paper's best image results use LPIPS (a VGG/AlexNet feature
distance with pretrained weights): that needs a pretrained image network, which refdiff neither
ships nor downloads, and it is undefined for 2-D points; metric="lpips" is refused with that reason.

ConsistencyTraining (Algorithm 3) is the sibling without a teacher: x_hat_n = x + sigma_n z with the
same z, N(k) and mu(k) growing with the training step.

Sampling (Algorithm 1): x = f(sigma_max z, sigma_max) in one step; with more steps, re-noise to the
next level and apply f again (the "consistency" sampler, refdiff.samplers.consistency).
Unconditional models only (the teacher is called without labels); written and tested on the NumPy backend.
"""
import numpy as np

from .backend import per_sample
from .checks import (check_choice, check_consistency_metric, check_positive_int, check_positive_real,
                     check_probability)
from .diffusion import GaussianDiffusion, model_num_classes
from .gaussian.consistency import (consistency_c_out, consistency_c_skip, consistency_function_formula,
                                   ct_num_boundaries, ct_target_decay, network_target_formula, target_update_formula)
from .gaussian.parameterization import x0_from_model_output
from .gaussian.process import DiscreteProcess
from .nn.autograd import Tensor, no_grad
from .samplers.grids import karras_sigmas
from .samplers.k_diffusion import euler_step, heun_step

SOLVERS = ("heun", "euler")
METRICS = ("l2",)


def consistency_boundaries(num_boundaries, sigma_min, sigma_max, rho=7.0):
    """sigma_1 < ... < sigma_N: sigma_i = (sigma_min^(1/rho) + (i-1)/(N-1) (sigma_max^(1/rho) -
    sigma_min^(1/rho)))^rho (Song et al. 2023 sec. 5 and appendix C; EDM eq. 5 read upwards), the
    two ends exactly sigma_min and sigma_max. float64 (N,)."""
    sigmas = karras_sigmas(sigma_min, sigma_max, num_boundaries, rho)[::-1].copy()
    sigmas[0], sigmas[-1] = sigma_min, sigma_max
    return sigmas


def teacher_denoiser(teacher):
    """D(x; sigma) of a GaussianDiffusion teacher, per sample: x (B, ...) in the variance-exploding scale,
    sigma (B,); the network called at signal_scale(sigma) x and t(sigma) (EDM sec. 2), its output read
    by the teacher's prediction type (refdiff.gaussian.parameterization.x0_from_model_output)."""
    process = DiscreteProcess(teacher.schedule)
    network = teacher.model

    def denoise(x, sigma):
        a, s = process.scales_from_sigma(sigma)
        x_model = per_sample(a, x) * x
        with no_grad():
            out = network(x_model, np.asarray(process.t_from_sigma(sigma)), None)
        out = out.data if isinstance(out, Tensor) else out
        return x0_from_model_output(x_model, out, per_sample(a, x), per_sample(s, x), teacher.prediction_type)

    return denoise


def teacher_ode_step(denoise, x, sigma, sigma_next, solver="heun"):
    """x_hat_n: one step of the teacher's probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma from
    sigma (B,) down to sigma_next (B,), all > 0 (Song et al. 2023 Algorithm 2 with EDM's Heun solver,
    EDM Algorithm 1; or Euler). x in the variance-exploding scale."""
    s, s_next = per_sample(sigma, x), per_sample(sigma_next, x)
    x_euler = euler_step(x, denoise(x, sigma), s, s_next)
    if solver == "euler":
        return x_euler
    return heun_step(x, denoise(x, sigma), x_euler, denoise(x_euler, sigma_next), s, s_next)


class ConsistencyDistillation(GaussianDiffusion):
    """A consistency model f_theta distilled from `teacher` (a GaussianDiffusion, any prediction type).

    model: the network F_theta (refdiff.training.distill.copy_network(teacher.model) starts it from the
        teacher's weights). num_boundaries: N (the paper's 18 for CIFAR-10 with Heun).
    solver: "heun" (EDM's teacher solver, 2 teacher calls) or "euler" (1). mu: the target network's EMA
        rate in [0, 1) (0: theta- = stopgrad(theta)). sigma_data: of c_skip / c_out. metric: "l2".
    """

    objective = "consistency_distillation"

    def __init__(self, model, teacher, num_boundaries=18, solver="heun", mu=0.95, sigma_data=0.5, metric="l2",
                 backend=None):
        super().__init__(model, teacher.schedule, prediction_type="sample", backend=backend, clip_sample=False)
        if model_num_classes(model) is not None or teacher.num_classes is not None:
            raise ValueError("consistency distillation here is for unconditional models (num_classes=None)")
        self.metric = check_consistency_metric(metric, METRICS)
        self.solver = check_choice(solver, SOLVERS, "solver")
        self.num_boundaries = check_positive_int(num_boundaries, "num_boundaries", minimum=2)
        self.mu = float(check_probability(mu, "mu", open_high=True))
        self.sigma_data = float(check_positive_real(sigma_data, "sigma_data"))
        self.teacher = teacher
        from .training.distill import copy_network  # (not at module level: training imports this module)

        self.target = copy_network(model) if hasattr(model, "state_dict") else model  # theta-_0 = theta_0 (Algorithm 2)
        self._set_boundaries(teacher.schedule, self.num_boundaries)
        self._denoise = teacher_denoiser(teacher)

    def _set_boundaries(self, schedule, num_boundaries):
        """sigma_1 .. sigma_N on the schedule's noise range, and the network's time t(sigma_i) at each."""
        self.process = DiscreteProcess(schedule)
        self.sigma_min, self.sigma_max = float(self.process.sigma(0.0)), float(self.process.sigma(self.process.t_max))
        self.num_boundaries = num_boundaries
        self.sigmas = consistency_boundaries(num_boundaries, self.sigma_min, self.sigma_max)  # (N,) ascending
        self.times = np.asarray(self.process.t_from_sigma(self.sigmas), dtype=np.float64)  # the network's t at each

    def config(self):
        """A JSON-able dict of the options (a checkpoint's "diffusion" record)."""
        return {"T": int(self.T), "objective": self.objective, "num_boundaries": self.num_boundaries,
                "solver": self.solver, "mu": self.mu, "sigma_data": self.sigma_data, "metric": self.metric,
                "teacher_prediction_type": self.teacher.prediction_type}

    def schedule_arrays(self):
        """The schedule's betas, the teacher's weights ("teacher/...") and theta- ("target/...")."""
        from .io.checkpoint import flatten_state

        arrays = dict(super().schedule_arrays())
        networks = (("target", self.target),) if self.teacher is None else (("teacher", self.teacher.model), ("target", self.target))
        for prefix, network in networks:
            if hasattr(network, "state_dict"):
                arrays.update(flatten_state(network.state_dict(), prefix)[1])
        return arrays

    def preview_sampling(self, steps):
        """The trainer's pictures: one consistency step (Algorithm 1)."""
        return dict(sampler="consistency", steps=1)

    # ---- the consistency function ----------------------------------------------------------------

    def c_skip(self, sigma):
        return consistency_c_skip(sigma, self.sigma_min, self.sigma_data)

    def c_out(self, sigma):
        return consistency_c_out(sigma, self.sigma_min, self.sigma_data)

    def consistency_function(self, x, sigma, network=None):
        """f(x, sigma) = c_skip(sigma) x + c_out(sigma) F(signal_scale(sigma) x, t(sigma))   (eq. 5): x (B, ...)
        in the variance-exploding scale, sigma a number or (B,) in [sigma_min, sigma_max]; network
        the student (default) or self.target. An array of x's dtype; f(x, sigma_min) = x exactly."""
        network = self.model if network is None else network
        sigma = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (x.shape[0],))
        a, _ = self.process.scales_from_sigma(sigma)
        with no_grad():
            out = network(per_sample(a, x) * x, np.asarray(self.process.t_from_sigma(sigma)), None)
        out = out.data if isinstance(out, Tensor) else out
        return consistency_function_formula(x, out, per_sample(self.c_skip(sigma), x), per_sample(self.c_out(sigma), x))

    # ---- the objective's parts of GaussianDiffusion.loss (Algorithm 2) -----------------------------

    def _draw_t(self, gen, B):
        """n ~ U{1, ..., N-1} as a 0-based index into the boundaries: the pair (sigma_n, sigma_{n+1})."""
        return gen.integers(0, self.num_boundaries - 1, size=B)

    def _model_time(self, n):
        """The network's time at sigma_{n+1}: t(sigma_{n+1}) on the teacher's schedule."""
        return self.times[n + 1]

    def _x_hat(self, x0, x_next, noise, n):
        """x_hat_n: one teacher ODE step from sigma_{n+1} to sigma_n (Algorithm 2)."""
        return teacher_ode_step(self._denoise, x_next, self.sigmas[n + 1], self.sigmas[n], self.solver)

    def _noised_and_target(self, x0, n, noise):
        """(the network's input at x_{n+1}, F_target) with F_target = (f_theta-(x_hat_n, sigma_n) - c_skip x_{n+1})
        / c_out at sigma_{n+1} (refdiff.gaussian.consistency.network_target_formula); float64 inside."""
        x64, z64 = x0.astype(np.float64), noise.astype(np.float64)
        sigma_next = self.sigmas[n + 1]
        x_next = x64 + per_sample(sigma_next, x64) * z64  # x_{n+1} = x + sigma_{n+1} z
        x_hat = self._x_hat(x64, x_next, z64, n)
        f_target = self.consistency_function(x_hat, self.sigmas[n], network=self.target)
        F_target = network_target_formula(f_target, x_next, per_sample(self.c_skip(sigma_next), x64),
                                          per_sample(self.c_out(sigma_next), x64))
        a, _ = self.process.scales_from_sigma(sigma_next)
        return (per_sample(a, x64) * x_next).astype(x0.dtype), F_target.astype(x0.dtype)

    def _loss_weights(self, n, dtype):
        """c_out(sigma_{n+1})^2 (lambda = 1): turns the regression of F into d(f_theta, f_theta-) = ||.||^2 (eq. 7)."""
        return (self.c_out(self.sigmas[n + 1]) ** 2).astype(dtype)

    def after_optimizer_step(self, params=None):
        """theta- <- mu theta- + (1 - mu) theta (Algorithm 2's last line): the Trainer calls this after every step."""
        if self.target is self.model or not hasattr(self.target, "parameters"):
            return
        for p_minus, p in zip(self.target.parameters(), self.model.parameters()):
            p_minus.data[...] = target_update_formula(p_minus.data, p.data, self.mu)

    # ---- sampling (Algorithm 1) ----------------------------------------------------------------------

    def _model_pair(self, n, y, guidance_scale):
        """f_theta as a model of prediction type "sample": at x_t (the schedule's scale) and time t,
        f(x_t / signal_scale(t), sigma(t)) (eq. 5)."""
        pair = super()._model_pair(n, y, guidance_scale)

        def f_pair(x_t, t):
            out, _ = pair(x_t, t)
            sigma = float(self.process.sigma(float(t)))
            a, _ = self.process.scales_from_sigma(sigma)
            return consistency_function_formula(x_t / a, out, self.c_skip(sigma), self.c_out(sigma)).astype(x_t.dtype), None

        return f_pair

    def sample(self, n, sampler="consistency", steps=1, **kwargs):
        """n samples by consistency sampling (Algorithm 1): steps = 1 is f(sigma_max z, sigma_max); more steps
        re-noise to the next level of the consistency grid (or of an explicit sigmas array) and apply f again.
        The other arguments as GaussianDiffusion.sample."""
        if sampler == "consistency":
            kwargs.setdefault("sigma_min", self.sigma_min)
        return super().sample(n, sampler=sampler, steps=steps, **kwargs)


class ConsistencyTraining(ConsistencyDistillation):
    """A consistency model trained without a teacher (Song et al. 2023 Algorithm 3): x_hat_n = x + sigma_n z
    with the z of x_{n+1} = x + sigma_{n+1} z (an unbiased estimate of the score replaces the teacher,
    Theorem 2), on a discretization N(k) that grows with the training step k and a target EMA rate mu(k)
    tied to it (appendix C: s_0 = 2, s_1 = 150, mu_0 = 0.9; refdiff.gaussian.consistency).

    model: the network F_theta; schedule: the NoiseSchedule whose noise range [sigma(0), sigma(T-1)] the
    boundaries span; total_steps: K, the step at which N(k) reaches s_1 + 1. The step k is the Trainer's
    (after_optimizer_step counts it; a checkpoint's step restores it).
    """

    objective = "consistency_training"

    def __init__(self, model, schedule, total_steps, s0=2, s1=150, mu0=0.9, sigma_data=0.5, metric="l2", backend=None):
        GaussianDiffusion.__init__(self, model, schedule, prediction_type="sample", backend=backend, clip_sample=False)
        if model_num_classes(model) is not None:
            raise ValueError("consistency training here is for unconditional models (num_classes=None)")
        self.metric, self.solver, self.teacher = check_consistency_metric(metric, METRICS), None, None
        self.total_steps = check_positive_int(total_steps, "total_steps")
        self.s0 = check_positive_int(s0, "s0", minimum=2)
        self.s1 = check_positive_int(s1, "s1", minimum=self.s0)
        self.mu0 = float(check_probability(mu0, "mu0", open_high=True))
        self.sigma_data = float(check_positive_real(sigma_data, "sigma_data"))
        from .training.distill import copy_network  # (not at module level: training imports this module)

        self.target = copy_network(model) if hasattr(model, "state_dict") else model  # theta-_0 = theta_0
        self.set_step(0)

    def set_step(self, k):
        """Training step k: N(k) boundaries and the target rate mu(k) (appendix C)."""
        self.k = int(k)
        n = ct_num_boundaries(min(self.k, self.total_steps), self.total_steps, self.s0, self.s1)
        if n != getattr(self, "num_boundaries", None):
            self._set_boundaries(self.schedule, n)
        self.mu = ct_target_decay(n, self.s0, self.mu0)

    def config(self):
        """A JSON-able dict of the options (a checkpoint's "diffusion" record; k is the checkpoint's step)."""
        return {"T": int(self.T), "objective": self.objective, "total_steps": self.total_steps, "s0": self.s0,
                "s1": self.s1, "mu0": self.mu0, "sigma_data": self.sigma_data, "metric": self.metric}

    def _x_hat(self, x0, x_next, noise, n):
        """x_hat_n = x + sigma_n z, the same z as x_{n+1} (Algorithm 3)."""
        return x0 + per_sample(self.sigmas[n], x0) * noise

    def after_optimizer_step(self, params=None):
        """theta- <- mu(k) theta- + (1 - mu(k)) theta, then k <- k + 1 with N(k + 1), mu(k + 1) (Algorithm 3)."""
        super().after_optimizer_step(params)
        self.set_step(self.k + 1)
