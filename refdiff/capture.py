"""A DDPM/DDIM sampling loop whose step (network + fused update) is one CUDA-graph replay.

    captured = diffusion.capture_sampler(n, sampler="ddim", steps=50)   # warm-up + capture, once
    samples = captured.sample(seed=0)    # == diffusion.sample(n, sampler="ddim", steps=50, seed=0)

The eager loop (refdiff.samplers.ddim.sample_ddim, ddpm.sample_ddpm) launches every kernel of the
network and the step from the host, one by one; here the whole step is captured once
(refdiff.backend.CapturedStep) and replayed per step. What a graph needs, and how it is met:
  - fixed addresses: x, the timesteps t and t_prev (int64 (n,)) and the noise are buffers made
    once; the step writes x_{t_prev} back into x.
  - values that change per step change in device memory: t and t_prev are copied on the device
    from a table of all (t, t_prev) pairs (copied to the device once), never passed as Python ints
    (which a graph would freeze at their captured values).
  - no cuRAND inside the graph: the step's noise is drawn before each replay into the noise
    buffer, from the same generator and in the same order as the eager loop (x_T, then one draw
    per step), so the samples equal the eager loop's.
  - no cuBLAS inside the graph: the network's products take refdiff.backend's cuTENSOR route.
  - no first-use copy inside the graph: CapturedStep runs the step once before capturing it.

The math is the samplers' (DDIM eq. 12, DDPM Algorithm 2); this module is plumbing.
"""
import numpy as np

from .backend import CapturedStep
from .checks import check_choice, check_positive_int
from .nn.autograd import no_grad
from .samplers.timesteps import timestep_pairs

CAPTURED_SAMPLERS = ("ddim", "ddpm")


class CapturedSampler:
    """n samples by `sampler` ("ddim" or "ddpm") in `steps` steps, each step one graph replay.

    diffusion: a GaussianDiffusion whose model lives on a device backend. eta: DDIM's (0:
    deterministic; > 0 draws noise as the eager loop does). y: class labels (n,) or None.
    spacing, steps_offset: the timestep grid (refdiff.samplers.timesteps). clip_sample: None
    takes the diffusion's. Guidance (guidance_scale != 1) is not captured: use diffusion.sample.
    """

    def __init__(self, diffusion, n, sampler="ddim", steps=None, eta=0.0, y=None, spacing="leading",
                 steps_offset=0, clip_sample=None, dtype=np.float32):
        from .diffusion import _data, model_sample_shape

        check_choice(sampler, CAPTURED_SAMPLERS, "sampler")
        n = check_positive_int(n, "n")
        if sampler == "ddpm" and eta != 0.0:
            raise ValueError("eta applies to the DDIM sampler; DDPM has no eta (it is DDIM with eta=1)")
        be, schedule, model = diffusion.backend, diffusion.schedule, diffusion.model
        xp = be.xp
        self.backend, self.sampler, self.eta, self.dtype = be, sampler, float(eta), dtype
        self.shape = (n, *model_sample_shape(model))
        self.pairs = timestep_pairs(steps, schedule.T, spacing, steps_offset)  # [(t, t_prev)], checked there
        self.stochastic = sampler == "ddpm" or self.eta > 0
        self._table = be.asarray(np.array(self.pairs, dtype=np.int64))  # (steps, 2), copied once
        self.x = xp.zeros(self.shape, dtype=dtype)
        self.t, self.t_prev = xp.zeros(n, dtype=np.int64), xp.zeros(n, dtype=np.int64)
        self.noise = xp.zeros(self.shape, dtype=dtype) if self.stochastic else None
        labels = None if y is None else be.asarray(np.asarray(y, dtype=np.int64))
        clip = diffusion.clip_sample if clip_sample is None else clip_sample
        options = dict(prediction_type=diffusion.prediction_type, clip_sample=clip,
                       clip_sample_range=diffusion.clip_sample_range)
        if hasattr(model, "eval"):
            model.eval()

        def body():  # one step: the network at (x, t), then the fused update into x
            with no_grad():
                output = _data(model(self.x, self.t, labels))
            if sampler == "ddim":
                x_prev = be.ddim_step(self.x, output, self.t, self.t_prev, schedule, eta=self.eta,
                                      noise=self.noise, **options)
            else:
                x_prev = be.ddpm_step(self.x, output, self.t, schedule, self.noise, t_prev=self.t_prev,
                                      variance_type=diffusion.variance_type, **options)
            self.x[...] = x_prev

        self._set_timesteps(0)
        self.step = CapturedStep(body, xp, state=(self.x,))

    def _set_timesteps(self, i):
        """t, t_prev of step i, copied on the device from the table (no host value in the graph)."""
        self.t[...] = self._table[i, 0]
        self.t_prev[...] = self._table[i, 1]

    def sample(self, seed=None):
        """The n samples (NumPy, (n, *sample_shape)): x_T ~ N(0, I) from the backend generator
        seeded with `seed`, then one replay per step; equal to diffusion.sample(n, sampler, steps,
        eta, seed=seed) with the same options."""
        rng = self.backend.rng(seed)
        with self.step.stream:
            self.x[...] = rng.standard_normal(self.shape, dtype=self.dtype)  # x_T
            for i in range(len(self.pairs)):
                self._set_timesteps(i)
                if self.stochastic:  # drawn outside the graph (cuRAND cannot be captured)
                    self.noise[...] = rng.standard_normal(self.shape, dtype=self.dtype)
                self.step.replay()
        self.step.synchronize()
        return self.backend.to_numpy(self.x)
