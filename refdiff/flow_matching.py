"""FlowMatching: a network trained to predict the velocity of the straight path, sampled by its ODE.

Training (Lipman et al. 2023 eq. 9 with the conditional OT path, eq. 20-23 with sigma_min = 0;
Liu et al. 2022 eq. 1, rectified flow), refdiff's time running from data (t = 0) to noise (t = 1):

    t ~ U(0, 1) or logit-normal (Esser et al. 2024 eq. 19),  eps ~ N(0, I)
    x_t = (1 - t) x0 + t eps                                   refdiff.gaussian.flow_matching.flow_path
    loss = mean_b mean_i (model(x_t, 1000 t, y)_i - (eps - x0)_i)^2

Sampling integrates dx/dt = model(x, 1000 t) from t = 1 (x ~ N(0, I)) to t = 0 with the flow
samplers (flow_euler, flow_heun: refdiff.samplers.flow) on refdiff.gaussian.process.FlowProcess.

The network sees the flow time scaled by num_train_timesteps (1000), as diffusers hands SD3's
transformer sigma * 1000: the sinusoidal embedding of refdiff's MLP and U-Net resolves times on
the scale of training steps.

A sibling of GaussianDiffusion: the same loss function (draws, label dropout for classifier-free
guidance, device generator) and the same sampling code; this class replaces only the objective's
parts: the times, x_t and the target, and the time the network sees.
"""
from .checks import check_choice, check_positive_real, check_real
from .diffusion import GaussianDiffusion, model_backend, model_num_classes
from .backend import get_backend
from .nn.autograd import no_grad
from .gaussian.flow_matching import TIME_SAMPLINGS, flow_path, flow_target, sample_time
from .gaussian.process import FlowProcess


class FlowMatching(GaussianDiffusion):
    """A velocity model u_theta(x_t, t) trained by flow matching and sampled with the flow samplers.

    model: callable model(x, t, y=None) -> Tensor of x's shape (refdiff.MLPDenoiser, refdiff.UNet),
        given t as num_train_timesteps * flow time.
    time_sampling: "uniform" (Lipman et al. 2023) or "logit_normal" (Esser et al. 2024 eq. 19) with
        logit_mean, logit_std (0 and 1: SD3's choice).
    shift: the sampling grid's shift (FlowProcess; Esser et al. 2024 eq. 23), 1 = none.
    num_train_timesteps: the scale of the time the network sees (diffusers' 1000).
    backend: where arrays live; default: the model's backend.
    """

    objective = "flow_matching"
    prediction_type = "flow"
    loss_weighting = "none"
    clip_sample = False  # samples are not clipped: the data need not lie in [-1, 1]
    clip_sample_range = 1.0
    variance_type = "fixed_small"

    def __init__(self, model, time_sampling="uniform", logit_mean=0.0, logit_std=1.0, shift=1.0,
                 num_train_timesteps=1000, backend=None):
        check_choice(time_sampling, TIME_SAMPLINGS, "time_sampling")
        self.model = model
        self.time_sampling = time_sampling
        self.logit_mean = float(check_real(logit_mean, "logit_mean"))
        self.logit_std = float(check_positive_real(logit_std, "logit_std"))
        self.process = FlowProcess(num_train_timesteps=num_train_timesteps, shift=shift)
        self.schedule = self.process  # what the sampling code of GaussianDiffusion runs on
        self.backend = get_backend(backend) if backend is not None else model_backend(model)
        self.num_classes = model_num_classes(model)

    @property
    def T(self):
        """The number of training timesteps the network's time is scaled by (diffusers' num_train_timesteps)."""
        return int(self.process.num_train_timesteps)

    def config(self):
        """A JSON-able dict of the options (a checkpoint's "diffusion" record)."""
        return {
            "objective": self.objective,
            "time_sampling": self.time_sampling,
            "logit_mean": self.logit_mean,
            "logit_std": self.logit_std,
            "shift": float(self.process.shift),
            "num_train_timesteps": self.T,
        }

    def schedule_arrays(self):
        """Arrays a checkpoint stores for the process: none (the config holds all of FlowProcess)."""
        return {}

    def preview_sampling(self, steps):
        """The sampler of the trainer's pictures: flow_euler with `steps` steps."""
        return dict(sampler="flow_euler", steps=steps)

    # ---- the objective's parts of GaussianDiffusion.loss ---------------------------------------

    def _draw_t(self, gen, B):
        """Flow times (B,) in [0, 1): uniform or logit-normal (refdiff.gaussian.flow_matching.sample_time)."""
        return sample_time(gen, B, self.time_sampling, self.logit_mean, self.logit_std)

    def _noised_and_target(self, x0, t, noise):
        """x_t = (1 - t) x0 + t eps and the velocity target eps - x0 (Lipman et al. 2023 eq. 20, 23)."""
        return flow_path(x0, noise, t), flow_target(x0, noise)

    def _model_time(self, t):
        """num_train_timesteps * t: the network's time scale (diffusers' FlowMatchEulerDiscreteScheduler)."""
        return t * self.process.num_train_timesteps

    def _loss_weights(self, t, dtype):
        return None  # flow matching's loss is unweighted (Lipman et al. 2023 eq. 9)

    # ---- sampling ------------------------------------------------------------------------------

    def _model_pair(self, n, y, guidance_scale):
        """GaussianDiffusion's model_pair with the flow time scaled to the network's."""
        pair = super()._model_pair(n, y, guidance_scale)
        scale = float(self.process.num_train_timesteps)
        return lambda x_t, t: pair(x_t, float(t) * scale)

    def sample(self, n, sampler="flow_euler", steps=20, **kwargs):
        """Draw n samples with a flow sampler (flow_euler or flow_heun, `steps` steps); the other
        arguments as GaussianDiffusion.sample (y, guidance_scale, seed, return_trajectory, ...)."""
        return super().sample(n, sampler=sampler, steps=steps, **kwargs)

    def velocity(self, x, t, y=None):
        """The model's velocity u_theta(x, t) at flow time t (a number): a NumPy array of x's shape."""
        pair = self._model_pair(len(x), y, 1.0)
        with no_grad():
            out, _ = pair(self.backend.asarray(x), t)
        return self.backend.to_numpy(out)

