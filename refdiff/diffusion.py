"""GaussianDiffusion: a denoising network plus a noise schedule = a trainable, samplable model.

Training (DDPM Algorithm 1, with the parameterizations of Salimans & Ho 2022 and the weightings
of Hang et al. 2023):

    t ~ Uniform{0, ..., T-1},  eps ~ N(0, I)
    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps                       (DDPM eq. 4)
    loss = mean_b  w(t_b) * mean_i (model(x_t, t, y)_i - target_i)^2   (DDPM eq. 14, simple loss)

    target = eps ("epsilon"), x0 ("sample") or v = sqrt(abar) eps - sqrt(1 - abar) x0 ("v_prediction")
    w(t) = 1 ("none") or the min-SNR-gamma weight (refdiff.gaussian.losses.loss_weight)

For classifier-free guidance (Ho & Salimans 2022) the label is replaced by the null label
num_classes with probability cond_drop_prob during training; sampling then evaluates the model
with the label and with the null label and combines eps_uncond + s (eps_cond - eps_uncond).

Sampling runs a registered sampler (refdiff.samplers) under no_grad. The fused ops
(q_sample_with_target, ddpm_step, ddim_step) are called through the model's backend, so the
"cuda" backend runs its kernels and the "numpy" backend the reference functions.
"""
import numpy as np

from . import samplers as _samplers
from .nn.autograd import Tensor, no_grad
from .checks import check_class_labels, check_finite, check_prediction_type, value_checks_on
from .backend import get_backend
from .nn.functional import mse_loss
from .gaussian.losses import loss_weight


def model_backend(model):
    """The Backend a model's parameters live on (its .backend attribute; "numpy" if it has none)."""
    return get_backend(getattr(model, "backend", None) or "numpy")


def model_num_classes(model):
    """The number of classes of a class-conditional model (None if unconditional)."""
    n = getattr(model, "num_classes", None)
    if n is None:
        n = (getattr(model, "config", None) or {}).get("num_classes")
    return n


def model_sample_shape(model):
    """The shape of one sample of the model's data: (dim,) for MLPDenoiser, (C, H, W) for UNet."""
    shape = getattr(model, "sample_shape", None)
    if shape is not None:
        return tuple(shape)
    config = getattr(model, "config", None) or {}
    if "dim" in config:
        return (int(config["dim"]),)
    if "in_channels" in config and "sample_size" in config:
        size = config["sample_size"]
        size = (size, size) if isinstance(size, int) else tuple(size)
        return (int(config["in_channels"]), *size)
    raise ValueError("cannot tell the sample shape of this model: give it a .sample_shape or a .config")


class GaussianDiffusion:
    """A denoising model trained and sampled with a Gaussian diffusion process.

    model: callable model(x, t, y=None) -> Tensor of x's shape (refdiff.UNet, refdiff.MLPDenoiser).
    schedule: refdiff.NoiseSchedule (T steps, float64 coefficients).
    prediction_type: what the model predicts: "epsilon", "sample" (x0) or "v_prediction".
    loss_weighting: "none" or a weighting known to refdiff.gaussian.losses.loss_weight (e.g. "min_snr").
    min_snr_gamma: gamma of the min-SNR weighting.
    backend: where arrays live and which fused ops run; default: the model's backend.
    clip_sample, clip_sample_range, variance_type: defaults of the reverse steps (diffusers'
        DDPMScheduler / DDIMScheduler options of the same names).
    """

    def __init__(
        self,
        model,
        schedule,
        prediction_type="epsilon",
        loss_weighting="none",
        min_snr_gamma=5.0,
        backend=None,
        clip_sample=True,
        clip_sample_range=1.0,
        variance_type="fixed_small",
    ):
        check_prediction_type(prediction_type)
        self.model = model
        self.schedule = schedule
        self.prediction_type = prediction_type
        self.loss_weighting = loss_weighting
        self.min_snr_gamma = float(min_snr_gamma)
        self.backend = get_backend(backend) if backend is not None else model_backend(model)
        self.clip_sample = clip_sample
        self.clip_sample_range = float(clip_sample_range)
        self.variance_type = variance_type
        self.num_classes = model_num_classes(model)

    @property
    def T(self):
        return self.schedule.T

    def config(self):
        """A JSON-able dict of the diffusion options (the schedule itself is stored as betas)."""
        return {
            "T": int(self.schedule.T),
            "prediction_type": self.prediction_type,
            "loss_weighting": self.loss_weighting,
            "min_snr_gamma": self.min_snr_gamma,
            "clip_sample": bool(self.clip_sample),
            "clip_sample_range": self.clip_sample_range,
            "variance_type": self.variance_type,
        }

    # ----------------------------------------------------------------------------------------
    # training

    def loss(self, x0, y=None, cond_drop_prob=0.0, rng=None):
        """The training loss on a batch x0 (B, ...) with optional labels y (B,): a scalar Tensor.

        rng: numpy Generator or int seed. On the numpy backend t, the label dropout and the noise
        are drawn from it: with the same rng state the loss is the same number. On a device
        backend they are drawn on the device, from one device generator per GaussianDiffusion,
        seeded from rng at the first call: a new CuPy generator per call would allocate and seed
        its states each time (about 270k for XORWOW), and host draws would be copied to the
        device at every step. Then the only host data a call copies are x0 and y.
        """
        if not 0.0 <= cond_drop_prob <= 1.0:
            raise ValueError(f"cond_drop_prob must be in [0, 1], got {cond_drop_prob}")
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        x0 = x0.data if isinstance(x0, Tensor) else x0
        dtype = np.float64 if getattr(x0, "dtype", None) == np.float64 else np.float32
        if value_checks_on(x0):  # checked where reading it is free
            check_finite(x0, "x0")
        x0 = self.backend.asarray(x0, dtype=dtype)  # (B, ...)
        if x0.ndim < 2:
            raise ValueError(f"x0 must have a batch axis and at least one data axis, got shape {x0.shape}")
        B = x0.shape[0]
        y = check_class_labels(y, B, self.num_classes)

        t, y, noise = self._draws(rng, B, y, cond_drop_prob, x0.shape, dtype)  # t ~ U{0..T-1}, eps ~ N(0, I)
        x_t, target = self.backend.q_sample_with_target(x0, t, noise, self.schedule, prediction_type=self.prediction_type)
        model_output = self.model(x_t, t, y)  # (B, ...)
        weights = None
        if self.loss_weighting != "none":
            weights = self._loss_weights(t, dtype)  # (B,)
        return mse_loss(model_output, target, weights=weights)

    def _draws(self, rng, B, y, cond_drop_prob, shape, dtype):
        """(t, y with the null label where dropped, noise): on the host from rng (numpy backend), or
        on the device from the diffusion's device generator (y copied to the device once)."""
        xp = self.backend.xp
        gen = rng
        if xp is not np:
            seed = int(rng.integers(2**63))  # drawn always, so that rng's stream is the same either way
            if getattr(self, "_device_rng", None) is None:
                self._device_rng = self.backend.rng(seed)
            gen = self._device_rng
            y = None if y is None else self.backend.asarray(y)
        t = gen.integers(0, self.T, size=B)  # (B,) int64
        if y is not None and cond_drop_prob > 0:
            drop = gen.random(B) < cond_drop_prob
            y = xp.where(drop, self.num_classes, y)  # the null label for CFG
        noise = gen.standard_normal(shape, dtype=dtype)
        return t, y, noise

    def _loss_weights(self, t, dtype):
        """w(t) per sample: on the host from loss_weight, on the device gathered from a table of
        loss_weight over 0..T-1 copied to the device once."""
        kwargs = dict(weighting=self.loss_weighting, gamma=self.min_snr_gamma, prediction_type=self.prediction_type)
        if self.backend.xp is np:
            return loss_weight(t, self.schedule, **kwargs).astype(dtype)
        key = (id(self.schedule), dtype, tuple(kwargs.items()))
        if getattr(self, "_weight_table", (None,))[0] != key:
            table = loss_weight(np.arange(self.T), self.schedule, **kwargs)
            self._weight_table = (key, self.backend.asarray(table, dtype=dtype))
        return self._weight_table[1][t]

    # ----------------------------------------------------------------------------------------
    # sampling

    def _denoiser(self, n, y, guidance_scale):
        """denoise(x_t, t) -> (model_output, model_output_uncond or None) for the samplers."""
        xp = self.backend.xp
        guided = y is not None and guidance_scale != 1.0
        y_dev = None if y is None or guided else self.backend.asarray(y)  # copied to the device once
        if guided:
            y_both = self.backend.asarray(np.concatenate([y, np.full(n, self.num_classes, np.int64)]))

        def denoise(x_t, t):
            if guided:  # one batch of 2n: the conditional half, then the null-label half
                x_both = xp.concatenate([x_t, x_t])
                out = _data(self.model(x_both, xp.full(2 * n, t, dtype=xp.int64), y_both))
                return out[:n], out[n:]
            return _data(self.model(x_t, xp.full(n, t, dtype=xp.int64), y_dev)), None

        return denoise

    def sample(
        self,
        n,
        sampler="ddpm",
        steps=None,
        eta=0.0,
        y=None,
        guidance_scale=1.0,
        seed=None,
        return_trajectory=False,
        progress=True,
        spacing="leading",
        steps_offset=0,
        clip_sample=None,
        dtype=np.float32,
        **options,
    ):
        """Draw n samples: a NumPy array (n, *sample_shape) of dtype `dtype`.

        sampler: a registered sampler name ("ddpm", "ddim", ...) or a sampler function.
        steps: number of model evaluations (None: all T steps); eta: DDIM's eta.
        y: class labels (int or (n,) ints) for a class-conditional model; guidance_scale s != 1
            turns on classifier-free guidance: eps_uncond + s (eps_cond - eps_uncond).
        seed: seed of the backend generator for x_T and the step noise (same seed, same backend:
            same samples). return_trajectory: also return the array (steps + 1, n, ...) of x_T
            and every x after an update. progress: a tqdm bar over the steps.
        spacing, steps_offset: which timesteps a strided sampler visits (refdiff.inference_timesteps).
        clip_sample: override the diffusion's clip_sample for this call.
        options: passed to the sampler, e.g. use_clipped_model_output=True for DDIM (the eps of the
            clipped x0 prediction, as diffusers' DDIMScheduler option of that name).
        """
        if not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        if guidance_scale != 1.0 and y is None:
            raise ValueError("guidance_scale != 1 needs class labels y (classifier-free guidance)")
        sampler_fn = _samplers.get_sampler(sampler)
        y = check_class_labels(y, n, self.num_classes)
        shape = (int(n), *model_sample_shape(self.model))
        rng = self.backend.rng(seed)
        was_training = getattr(self.model, "training", False)
        if hasattr(self.model, "eval"):
            self.model.eval()
        try:
            with no_grad():
                x = rng.standard_normal(shape, dtype=dtype)  # x_T ~ N(0, I)
                trajectory = [self.backend.to_numpy(x)] if return_trajectory else None
                loop = sampler_fn(
                    self._denoiser(int(n), y, guidance_scale),
                    x,
                    self.schedule,
                    self.backend,
                    rng,
                    steps=steps,
                    eta=eta,
                    spacing=spacing,
                    steps_offset=steps_offset,
                    prediction_type=self.prediction_type,
                    variance_type=self.variance_type,
                    clip_sample=self.clip_sample if clip_sample is None else clip_sample,
                    clip_sample_range=self.clip_sample_range,
                    guidance_scale=guidance_scale,
                    **options,
                )
                bar = _progress(progress, steps or self.T, f"sampling ({sampler if isinstance(sampler, str) else 'custom'})")
                t = None
                try:
                    for t, x in loop:
                        if trajectory is not None:
                            trajectory.append(self.backend.to_numpy(x))
                        if bar is not None:
                            bar.update(1)
                except (ValueError, FloatingPointError) as e:
                    xp = self.backend.xp
                    # data live in [-1, 1] and x_T ~ N(0, I): |x_t| > 1e4 (or NaN) is a run-away
                    # sample whose model output overflowed, anything else a genuine argument error
                    if bool(xp.all(xp.isfinite(x))) and float(xp.abs(x).max()) < 1e4:
                        raise
                    raise FloatingPointError(_diverged_message(sampler, t, options)) from e
                finally:
                    if bar is not None:
                        bar.close()
        finally:
            if was_training and hasattr(self.model, "train"):
                self.model.train()
        samples = self.backend.to_numpy(x)
        if not np.all(np.isfinite(samples)):
            raise FloatingPointError(_diverged_message(sampler, None, options))
        if return_trajectory:
            return samples, np.stack(trajectory)
        return samples


def _diverged_message(sampler, t, options):
    where = "" if t is None else f" after the step at t={t}"
    hint = ""
    if sampler == "ddim" and not options.get("use_clipped_model_output"):
        hint = (": DDIM with the raw model eps can run away where the model extrapolates badly; "
                "try use_clipped_model_output=True (refdiff sample --clipped-eps) or the ddpm sampler")
    return f"sampling diverged (x_t became NaN or infinite{where}){hint}"


def _data(out):
    """The array inside a model output (a Tensor, or an array already)."""
    return out.data if isinstance(out, Tensor) else out


def _progress(enabled, total, desc):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False)
