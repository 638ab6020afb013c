"""GaussianDiffusion: a denoising network plus a noise schedule = a trainable, samplable model.

Training (DDPM Algorithm 1, with the parameterizations of Salimans & Ho 2022 and the weightings
of Hang et al. 2023):

    t ~ Uniform{0, ..., T-1},  eps ~ N(0, I)
    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps                       (DDPM eq. 4)
    loss = mean_b  w(t_b) * mean_i (model(x_t, t, y)_i - target_i)^2   (DDPM eq. 14, simple loss)

    target = eps ("epsilon"), x0 ("sample") or v = sqrt(abar) eps - sqrt(1 - abar) x0 ("v_prediction")
    w(t) = 1 ("none") or the min-SNR-gamma weight (refdiff.gaussian.losses.loss_weight)

With a learned variance (variance_type "learned" / "learned_range", improved DDPM sec. 3.1) the
model outputs 2C channels [output, v] and the loss is the hybrid L_simple + lambda L_vlb with the
stop-gradient on the mean (refdiff.training.hybrid_loss; lambda = vlb_weight, 0.001).

For classifier-free guidance (Ho & Salimans 2022) the label is replaced by the null label
num_classes with probability cond_drop_prob during training; sampling then evaluates the model
with the label and with the null label and combines eps_uncond + s (eps_cond - eps_uncond).
Classifier guidance (Dhariwal & Nichol 2021) instead adds the gradient of a separate classifier's
log p_phi(y | x_t), taken by the autograd: the ddpm sampler moves its mean by s Sigma_t grad
(Algorithm 1), the others use eps - sqrt(1 - abar_t) s grad (eq. 14); see sample(guidance=).

Sampling runs a registered sampler (refdiff.samplers, through the loop of rd.sample_loop) under no_grad. The fused ops
(q_sample_with_target, ddpm_step, ddim_step) are called through the model's backend, so the
"cuda" backend runs its kernels and the "numpy" backend the reference functions.
"""
import numpy as np

from .nn.autograd import Tensor, no_grad
from .checks import (LEARNED_VARIANCE_TYPES, check_choice, check_class_labels, check_clip, check_condition_channels,
                     check_finite, check_fixed_variance_type, check_guidance, check_positive_int, check_positive_real,
                     check_prediction_type,
                     check_variance_type, value_checks_on)
from .backend import get_backend
from .nn.functional import mse_loss
from .gaussian.losses import WEIGHTINGS, loss_weight


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
    superres_factor: a super-resolution model (SR3, Saharia et al. 2021): the network takes x_t and
        the image upsampled from its area-averaged factor x smaller version on the channel axis
        (superres_condition; 2C channels in, C out); loss(x0) forms that condition from x0 itself.
        DDPMScheduler / DDIMScheduler options of the same names). variance_type "learned" or
        "learned_range": the model outputs 2C channels (the output, then the variance values v;
        improved DDPM sec. 3.1), trained with the hybrid loss.
    vlb_weight: lambda of the hybrid loss L_simple + lambda L_vlb (improved DDPM eq. 16; 0.001),
        used with a learned variance only.
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
        superres_factor=None,
        vlb_weight=0.001,
    ):
        check_prediction_type(prediction_type)
        check_choice(loss_weighting, WEIGHTINGS, "loss_weighting")
        min_snr_gamma = check_positive_real(min_snr_gamma, "min_snr_gamma")
        clip_sample, clip_sample_range = check_clip(clip_sample, clip_sample_range)
        check_variance_type(variance_type)
        vlb_weight = check_positive_real(vlb_weight, "vlb_weight")
        if not hasattr(schedule, "alphas_cumprod") or not hasattr(schedule, "T"):
            raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
        self.model = model
        self.schedule = schedule
        self.prediction_type = prediction_type
        self.loss_weighting = loss_weighting
        self.min_snr_gamma = float(min_snr_gamma)
        self.backend = get_backend(backend) if backend is not None else model_backend(model)
        self.clip_sample = clip_sample
        self.clip_sample_range = float(clip_sample_range)
        self.variance_type = variance_type
        self.vlb_weight = float(vlb_weight)
        self.num_classes = model_num_classes(model)
        self.superres_factor = None if superres_factor is None else check_positive_int(superres_factor, "superres_factor")

    objective = "diffusion"
    superres_factor = None  # the siblings (FlowMatching, ...) have no super-resolution mode

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
            **({} if self.superres_factor is None else {"superres_factor": self.superres_factor}),
            "vlb_weight": self.vlb_weight,
        }

    def schedule_arrays(self):
        """Arrays a checkpoint stores for the process: the schedule's betas (float64)."""
        return {"schedule/betas": np.asarray(self.schedule.betas)}

    def preview_sampling(self, steps):
        """The sampler of the trainer's pictures: DDIM with min(steps, T) steps and the eps of the
        clipped x0 (steady early in training)."""
        return dict(sampler="ddim", steps=min(steps, self.T), use_clipped_model_output=True)

    # ----------------------------------------------------------------------------------------
    # training

    def loss(self, x0, y=None, cond_drop_prob=0.0, rng=None, noise=None, x_cond=None):
        """The training loss on a batch x0 (B, ...) with optional labels y (B,): a scalar Tensor.

        rng: numpy Generator or int seed. On the numpy backend t, the label dropout and the noise
        are drawn from it: with the same rng state the loss is the same number. On a device
        backend they are drawn on the device, from one device generator per GaussianDiffusion,
        seeded from rng at the first call: a new CuPy generator per call would allocate and seed
        its states each time (about 270k for XORWOW), and host draws would be copied to the
        device at every step. Then the only host data a call copies are x0 and y.
        noise: (B, ...) the eps to pair with x0 instead of a fresh draw (a coupling, as reflow's
        pairs; Liu et al. 2022 sec. 2.2); the draws are made all the same, so rng's stream is unchanged.
        x_cond: (B, C', ...) an image concatenated to x_t on the channel axis before the network (SR3's
        conditioning); for a superres_factor model, superres_condition(x0) unless given.

        The objective's own parts are the methods a sibling class replaces (refdiff.FlowMatching):
        _draw_t (the times), _noised_and_target (x_t and the regression target), _model_time
        (the time the network is given) and _loss_weights.
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

        t, y, drawn_noise = self._draws(rng, B, y, cond_drop_prob, x0.shape, dtype)  # t, eps ~ N(0, I)
        if noise is not None:
            noise = self.backend.asarray(noise.data if isinstance(noise, Tensor) else noise, dtype=dtype)
            if noise.shape != x0.shape:
                raise ValueError(f"noise must have x0's shape {x0.shape}, got {noise.shape}")
        x_t, target = self._noised_and_target(x0, t, drawn_noise if noise is None else noise)
        if x_cond is None and self.superres_factor is not None:
            x_cond = self.superres_condition(x0)
        if x_cond is not None:  # [x_t, x_cond]: the network's input channels (SR3 sec. 2)
            x_t = self.backend.xp.concatenate([x_t, self._condition(x_cond, B, dtype)], axis=1)
        model_output = self.model(x_t, self._model_time(t), y)  # (B, ...)
        if self.variance_type in LEARNED_VARIANCE_TYPES:
            return self._hybrid_loss(model_output, target, x0, x_t, t, dtype)
        return mse_loss(model_output, target, weights=self._loss_weights(t, dtype))

    def superres_condition(self, x0):
        """up(down(x0)): the low-resolution version of images x0 (area average over factor x factor
        blocks), upsampled back by nearest neighbour: the condition of a super-resolution model
        (refdiff.samplers.editing.downsample_area / upsample_nearest)."""
        from .samplers.editing import downsample_area, upsample_nearest

        return upsample_nearest(downsample_area(x0, self.superres_factor), self.superres_factor)

    def _condition(self, x_cond, B, dtype):
        """x_cond on the backend, checked: B images whose channels and the output's fill the network's input."""
        x_cond = self.backend.asarray(_data(x_cond), dtype=dtype)
        config = getattr(self.model, "config", None) or {}
        if "in_channels" in config:
            check_condition_channels(x_cond, config["in_channels"], config.get("out_channels") or config["in_channels"])
        if x_cond.shape[0] != B:
            raise ValueError(f"x_cond must hold {B} images (one per sample), got shape {tuple(x_cond.shape)}")
        return x_cond

    @property
    def learns_variance(self):
        """True when the model outputs 2C channels [output, v] (variance_type learned / learned_range)."""
        return self.variance_type in LEARNED_VARIANCE_TYPES

    def _hybrid_loss(self, model_output, target, x0, x_t, t, dtype):
        """L_simple + lambda L_vlb (improved DDPM eq. 16): L_simple on the first C channels, L_vlb
        on the variance channels with the mean detached (refdiff.training.hybrid_loss)."""
        from .gaussian.learned_variance import split_model_output
        from .training.hybrid_loss import hybrid_loss, vlb_loss

        output, var_values = split_model_output(model_output, x0.shape[1])  # (B, C, ...) each
        simple = mse_loss(output, target, weights=self._loss_weights(t, dtype))
        vlb_bits = vlb_loss(output, var_values, x0, x_t, t, self.schedule, self.prediction_type, self.variance_type)
        return hybrid_loss(simple, vlb_bits, self.T, self.vlb_weight)

    def _draw_t(self, gen, B):
        """t ~ Uniform{0, ..., T-1}   (DDPM Algorithm 1), on gen's device."""
        return gen.integers(0, self.T, size=B)  # (B,) int64

    def _noised_and_target(self, x0, t, noise):
        """(x_t, target): x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (DDPM eq. 4) and the target of
        prediction_type, through the backend's fused op."""
        return self.backend.q_sample_with_target(x0, t, noise, self.schedule, prediction_type=self.prediction_type)

    def _model_time(self, t):
        """The time the network is given for t: the integer step itself."""
        return t

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
        t = self._draw_t(gen, B)  # (B,)
        if y is not None and cond_drop_prob > 0:
            drop = gen.random(B) < cond_drop_prob
            y = xp.where(drop, self.num_classes, y)  # the null label for CFG
        noise = gen.standard_normal(shape, dtype=dtype)
        return t, y, noise

    def _loss_weights(self, t, dtype):
        """w(t) per sample (None: all ones): on the host from loss_weight, on the device gathered from
        a table of loss_weight over 0..T-1 copied to the device once."""
        if self.loss_weighting == "none":
            return None
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

    def _model_pair(self, n, y, guidance_scale, x_cond=None, keep_variance=True):
        """model_pair(x, t) -> (model_output, model_output_uncond or None) for refdiff.samplers.loop:
        the network at time t (int or float, the same for the whole batch). keep_variance=False:
        a learned-variance model's output without its variance channels (for the samplers on
        sigmas, which read eps, x_0 or v only)."""
        xp = self.backend.xp
        strip = not keep_variance and self.learns_variance
        guided = y is not None and guidance_scale != 1.0
        y_dev = None if y is None or guided else self.backend.asarray(y)  # copied to the device once
        if guided:
            y_both = self.backend.asarray(np.concatenate([y, np.full(n, self.num_classes, np.int64)]))

        # refdiff's networks take t as one number for the whole batch (they fill it in where their
        # parameters live, and the MLP then computes its timestep path once); any other model gets
        # the array (B,) of the contract model(x, t, y)
        one_number = getattr(self.model, "takes_scalar_timestep", False)

        def output(out):  # the network's output, a learned variance's channels stripped if asked
            return _without_variance(_data(out)) if strip else _data(out)

        def model_pair(x_t, t):
            if x_cond is not None:  # [x_t, x_cond] on the channel axis (SR3)
                x_t = xp.concatenate([x_t, x_cond], axis=1)
            t_dtype = xp.int64 if isinstance(t, (int, np.integer)) else xp.float64

            def timesteps(batch):
                return t if one_number else xp.full(batch, t, dtype=t_dtype)

            if guided:  # one batch of 2n: the conditional half, then the null-label half
                x_both = xp.concatenate([x_t, x_t])
                out = output(self.model(x_both, timesteps(2 * n), y_both))
                return out[:n], out[n:]
            return output(self.model(x_t, timesteps(n), y_dev)), None

        return model_pair

    def _pair(self, n, y, guidance_scale, x_cond=None, **options):
        """_model_pair, given x_cond (on the backend) only when there is one: the siblings
        (FlowMatching, ...) take no x_cond."""
        if x_cond is None:
            return self._model_pair(n, y, guidance_scale, **options)
        return self._model_pair(n, y, guidance_scale, x_cond, **options)

    def _classifier_guided(self, model_pair, classifier, y, guidance_scale, mean_shift):
        """(model_pair, options) of classifier guidance (Dhariwal & Nichol 2021) with scale s.

        The gradient grad_x log p_phi(y | x_t) is the classifier's (classifier.log_prob_gradient, by
        the autograd for a NoiseClassifier), at the step's x_t and t; x_t is reshaped to the
        classifier's sample_shape when the diffusion's data are the same numbers flattened.
        mean_shift (a sampler with the classifier_gradient option, ddpm): Algorithm 1, the sampler
        moves its mean by Sigma_t s grad; the model output is left alone. Otherwise eq. 14: the
        model's eps is replaced by eps - sqrt(1 - abar_t) s grad (any prediction type is read as
        (x_0, eps) at the step's (signal_scale, noise_std) first; the samplers then read eps)."""
        from .gaussian.guidance import classifier_guided_eps
        from .gaussian.parameterization import PREDICTION_CODES, x0_eps_from_output_formula
        from .gaussian.process import as_process

        y_dev = self.backend.asarray(y)
        shape = getattr(classifier, "sample_shape", None)

        def gradient(x_t, t):  # s grad_x log p_phi(y | x_t) in x_t's shape
            x_c = x_t if shape is None or tuple(x_t.shape[1:]) == tuple(shape) else x_t.reshape(len(x_t), *shape)
            grad = _data(classifier.log_prob_gradient(x_c, t, y_dev))
            return guidance_scale * grad.reshape(x_t.shape).astype(x_t.dtype, copy=False)

        if mean_shift:
            return model_pair, {"classifier_gradient": gradient}
        process = as_process(self.schedule)
        code = PREDICTION_CODES[self.prediction_type]

        def guided_pair(x_t, t):
            out, _ = model_pair(x_t, t)
            a, s = float(process.signal_scale(t)), float(process.noise_std(t))
            _, eps = x0_eps_from_output_formula(x_t, out, a, s, code)
            return classifier_guided_eps(eps, s, gradient(x_t, t), 1.0), None  # Dhariwal & Nichol eq. 14

        return guided_pair, {}

    def sample(
        self,
        n,
        sampler="ddpm",
        steps=None,
        eta=None,
        y=None,
        guidance_scale=1.0,
        guidance=None,
        classifier=None,
        seed=None,
        return_trajectory=False,
        progress=True,
        spacing=None,
        steps_offset=0,
        sigmas=None,
        clip_sample=None,
        dtype=np.float32,
        x_cond=None,
        **options,
    ):
        """Draw n samples: a NumPy array (n, *sample_shape) of dtype `dtype`.

        Runs refdiff.samplers.loop.run_sampler, the path of rd.sample_loop and the CLI, with this
        model, its schedule (a DiscreteProcess for the samplers on sigmas) and its prediction type.
        sampler: a registered sampler name ("ddpm", "ddim", "euler", "heun", "dpmpp_2m", ...) or a
            sampler function of the ddpm/ddim shape (refdiff.samplers).
        steps: number of steps (ddpm/ddim: None = all T; the samplers on sigmas need it, or an
            explicit sigmas array). eta: DDIM's (or euler_ancestral's) eta; None leaves the sampler's default.
        y: class labels (int or (n,) ints) for a class-conditional model; guidance_scale s != 1
            turns on classifier-free guidance: eps_uncond + s (eps_cond - eps_uncond).
        guidance: None (classifier-free when guidance_scale != 1), "classifier_free", or
            "classifier": classifier guidance (Dhariwal & Nichol 2021) towards labels y with scale
            s = guidance_scale and `classifier` (a refdiff.NoiseClassifier trained on this schedule,
            or any object with log_prob_gradient(x, t, y) and num_classes). The diffusion model is
            then used unconditionally (a class-conditional one with its null label), and the
            classifier's gradient moves each step: ddpm by Algorithm 1 (the mean + s Sigma_t grad), the
            other samplers by eq. 14 (eps - sqrt(1 - abar_t) s grad).
        seed: seed of the backend generator for x_T and the step noise (same seed, same backend:
            same samples). return_trajectory: also return the array (steps + 1, n, ...) of x_T, x at
            every step (ddpm/ddim: after each update; the others: where the model is called at each
            grid point) and the samples. progress: a tqdm bar over the steps.
        spacing, steps_offset, sigmas: the grid (refdiff.samplers.grids; spacing None: the sampler
            family's default, "leading" for ddpm/ddim as before, "linspace" for the Euler family).
        clip_sample: override the diffusion's clip_sample for this call (ddpm, ddim).
        options: the sampler's own options, checked (an unknown one raises TypeError), e.g.
            use_clipped_model_output=True for DDIM, s_churn for euler/heun.
        x_cond: (n, C', ...) images concatenated to x_t before the network at every call (a model
            trained with loss(x0, x_cond=...); a superres_factor model needs it: see superres()).
        """
        from .samplers.loop import run_sampler
        from .samplers.registry import sampler_spec

        if not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        guidance = check_guidance(guidance, classifier, y, guidance_scale, self.num_classes)
        spec = sampler_spec(sampler)
        if x_cond is not None:  # checked and copied to the backend once
            x_cond = self._condition(x_cond, int(n), dtype)
        if guidance == "classifier":  # eq. 14 reads eps: a flow-matching velocity model is not covered
            check_choice(self.prediction_type, ("epsilon", "sample", "v_prediction"),
                         "prediction_type of a classifier-guided model")
            y = check_class_labels(y, n, classifier.num_classes)
            mean_shift = "classifier_gradient" in spec.options  # Algorithm 1 (ddpm) or eq. 14 (the others)
            # a learned variance: ddpm reads Sigma_t from the variance channels; eq. 14 reads eps, so the
            # other samplers get the first C channels (and take the variance as their own, not the model's)
            extra = dict(keep_variance=mean_shift) if self.learns_variance else {}
            model_pair = self._pair(int(n), None, 1.0, x_cond, **extra)  # the unconditional model
            model_pair, guided_options = self._classifier_guided(model_pair, classifier, y, guidance_scale, mean_shift)
            options.update(guided_options)
            loop_scale, prediction_type = 1.0, ("epsilon" if not guided_options else self.prediction_type)
            # without the variance channels the step's variance is the sampler's own (ddim's eta)
            variance_type = self.variance_type if mean_shift or not self.learns_variance else "fixed_small"
        else:
            y = check_class_labels(y, n, self.num_classes)
            # a learned variance's channels go to ddpm/ddim only (a subclass's _model_pair has no such option)
            extra = dict(keep_variance=spec.works_on == "timesteps") if self.learns_variance else {}
            model_pair = self._pair(int(n), y, guidance_scale, x_cond, **extra)
            loop_scale, prediction_type, variance_type = guidance_scale, self.prediction_type, self.variance_type
        shape = (int(n), *model_sample_shape(self.model))
        if x_cond is not None:  # the network's input holds x_t and x_cond: x_t has the output's channels
            shape = (int(n), shape[1] - x_cond.shape[1], *shape[2:])
        elif self.superres_factor is not None:
            raise ValueError("a super-resolution model samples from a low-resolution image: use superres(x_low) "
                             "or pass x_cond")
        rng = self.backend.rng(seed)
        given = dict(eta=eta, spacing=spacing, sigmas=sigmas, steps_offset=steps_offset or None)
        options.update({k: v for k, v in given.items() if v is not None})
        defaults = dict(clip_sample=self.clip_sample if clip_sample is None else clip_sample,
                        clip_sample_range=self.clip_sample_range, variance_type=variance_type)
        was_training = getattr(self.model, "training", False)
        if hasattr(self.model, "eval"):
            self.model.eval()
        try:
            with no_grad():
                x = rng.standard_normal(shape, dtype=dtype)  # x_T ~ N(0, I)
                trajectory = [self.backend.to_numpy(x)] if return_trajectory else None
                bar = _progress(progress, steps or self.T, f"sampling ({sampler if isinstance(sampler, str) else 'custom'})")
                seen = {"i": 0 if spec.works_on != "timesteps" else -1, "x": x}

                def on_step(i, x_step):
                    seen["x"] = x_step
                    if i <= seen["i"]:  # a second evaluation at a grid point already recorded
                        return
                    seen["i"] = i
                    if trajectory is not None:
                        trajectory.append(self.backend.to_numpy(x_step))
                    if bar is not None:
                        bar.update(1)

                try:
                    x, _ = run_sampler(model_pair, x, self.schedule, sampler, steps, rng, prediction_type,
                                       backend=self.backend, guidance_scale=loop_scale, defaults=defaults,
                                       on_step=on_step, **options)
                except (ValueError, FloatingPointError) as e:
                    xp = self.backend.xp
                    # data live in [-1, 1] and x_T ~ N(0, I): |x_t| > 1e4 (or NaN) is a run-away
                    # sample whose model output overflowed, anything else a genuine argument error
                    last = seen["x"]
                    if bool(xp.all(xp.isfinite(last))) and float(xp.abs(last).max()) < 1e4:
                        raise
                    raise FloatingPointError(_diverged_message(sampler, None, options)) from e
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
            if spec.works_on != "timesteps":
                trajectory.append(samples)
            return samples, np.stack(trajectory)
        return samples

    def capture_sampler(self, n, sampler="ddim", steps=None, eta=0.0, y=None, **options):
        """A refdiff.capture.CapturedSampler: the ddim/ddpm loop with each step (network + fused
        update) captured once into a CUDA graph and replayed; .sample(seed) equals
        self.sample(n, sampler, steps, eta, y=y, seed=seed) (device backends only)."""
        from .capture import CapturedSampler

        y = check_class_labels(y, n, self.num_classes) if y is not None else None
        return CapturedSampler(self, n, sampler, steps, eta, y, **options)


    # ----------------------------------------------------------------------------------------
    # editing: thin plumbing over refdiff.samplers.editing (the math), on the host

    def _host_model(self, n, x_cond=None):
        """model(x, t) -> the network's output as a host array, x and t as rd.sample_loop gives them."""
        check_fixed_variance_type(self.variance_type, "image editing")
        pair = self._pair(n, None, 1.0, None if x_cond is None else self.backend.asarray(x_cond))

        def model(x, t):
            with no_grad():
                return self.backend.to_numpy(pair(self.backend.asarray(x), t)[0]).astype(x.dtype, copy=False)

        return model

    def _editing_options(self, sampler, options):
        """The diffusion's defaults (clip_sample, ...) for the samplers that take them, then the caller's."""
        from .samplers.registry import sampler_spec

        spec = sampler_spec(sampler)
        defaults = dict(clip_sample=self.clip_sample, clip_sample_range=self.clip_sample_range,
                        variance_type=self.variance_type)
        return {**{k: v for k, v in defaults.items() if k in spec.options}, **options}

    def _edit(self, run, *args, **kwargs):
        was_training = getattr(self.model, "training", False)
        if hasattr(self.model, "eval"):
            self.model.eval()
        try:
            return run(*args, **kwargs)
        finally:
            if was_training and hasattr(self.model, "train"):
                self.model.train()

    def img2img(self, x, strength, sampler="ddim", steps=50, seed=None, **options):
        """SDEdit (Meng et al. 2022): x (B, ...) noised to strength * the sampler's grid, then denoised
        with `sampler` (refdiff.samplers.editing.sdedit; strength 0: x itself, 1: a fresh sample).
        options: the sampler's, as in sample(). Returns a host array like x."""
        from .samplers.editing import sdedit

        x = np.asarray(x)
        return self._edit(sdedit, self._host_model(len(x)), x, self.schedule, strength, sampler=sampler, steps=steps,
                          rng=np.random.default_rng(seed), prediction_type=self.prediction_type,
                          **self._editing_options(sampler, options))

    def inpaint(self, x, mask, method="repaint", steps=None, jump_length=10, jump_n_sample=10, eta=1.0, seed=None):
        """Inpainting: x (B, ...) kept where mask is 1, filled in where it is 0, by "replace" (the known
        part re-noised to the current step after every step) or "repaint" (Lugmayr et al. 2022, with
        jump_length j and jump_n_sample r resampling); DDPM steps for eta = 1, DDIM for eta = 0
        (refdiff.samplers.editing). steps: timesteps used (None: all T). Returns a host array like x."""
        from .samplers.editing import inpaint_replace, repaint

        check_choice(method, ("replace", "repaint"), "method")
        x = np.asarray(x)
        common = dict(steps=steps, eta=eta, rng=np.random.default_rng(seed), prediction_type=self.prediction_type,
                      clip_sample=self.clip_sample, clip_sample_range=self.clip_sample_range)
        if method == "replace":
            return self._edit(inpaint_replace, self._host_model(len(x)), x, mask, self.schedule, **common)
        return self._edit(repaint, self._host_model(len(x)), x, mask, self.schedule, jump_length=jump_length,
                          jump_n_sample=jump_n_sample, **common)

    def superres(self, x_low, sampler="ddim", steps=50, seed=None, **options):
        """Super-resolution with a superres_factor model (SR3): images (B, C, h, w) -> (B, C, h f, w f),
        sampled with `sampler` from the network given [x_t, up(x_low)] (refdiff.samplers.editing.superres).
        Returns a host array."""
        from .samplers.editing import superres

        if self.superres_factor is None:
            raise ValueError("superres needs a super-resolution model (trained with superres_factor)")
        x_low = np.asarray(x_low)
        config = getattr(self.model, "config", None) or {}
        if "in_channels" in config:
            check_condition_channels(x_low, config["in_channels"], config.get("out_channels") or config["in_channels"],
                                     "x_low")
        if steps is None and sampler not in ("ddpm", "ddim"):
            raise ValueError(f"sampler {sampler!r} needs steps")
        model = self._host_model(len(x_low))
        return self._edit(superres, lambda x, t: model(x, t), x_low, self.schedule, self.superres_factor,
                          sampler=sampler, steps=steps, rng=np.random.default_rng(seed),
                          prediction_type=self.prediction_type, **self._editing_options(sampler, options))


    # ----------------------------------------------------------------------------------------
    # likelihood: the network as the plain functions refdiff.gaussian.likelihood and
    # refdiff.gaussian.ode_likelihood take

    def _likelihood_labels(self, n):
        """The null label for every sample of a class-conditional model (the unconditional model
        that classifier-free training also learns); None for an unconditional one."""
        return None if self.num_classes is None else np.full(n, self.num_classes, dtype=np.int64)

    def model_function(self, variance=True):
        """model(x, t) -> the network's output (host float64 array) at x (B, ...) and time t (a
        number, the schedule's units): for rd.bits_per_dim and rd.ode_log_likelihood.
        variance=False: a learned-variance model's output without its variance channels (the ODE
        reads eps only); with them, rd.bits_per_dim uses the learned variance."""
        strip = not variance and self.learns_variance

        def model(x, t):
            with no_grad():
                out = _data(self.model(self.backend.asarray(x), t, self._likelihood_labels(x.shape[0])))
            out = _without_variance(out) if strip else out
            return np.asarray(self.backend.to_numpy(out), dtype=np.float64)

        return model

    def model_trace(self, x, t, probes=None):
        """(output, trace of d output / dx per sample) by the autograd (refdiff.nn.jacobian): exact
        (probes None, d backward passes) or Hutchinson's estimate (probes (n, B, ...)). The
        model_trace of rd.ode_log_likelihood; x on the host, float64 in and out."""
        from .nn.jacobian import jacobian_trace

        labels = self._likelihood_labels(x.shape[0])
        parameters = self.model.parameters() if hasattr(self.model, "parameters") else ()
        channels = model_sample_shape(self.model)[0] if self.learns_variance else None  # eps only (the ODE's)
        out, trace = jacobian_trace(lambda x_in: self.model(x_in, t, labels)[:, :channels], np.asarray(x, dtype=np.float64),
                                    parameters, probes)
        return np.asarray(out, dtype=np.float64), trace


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


def _without_variance(out):
    """The output of a learned-variance network [output, v] (2C channels, improved DDPM sec. 3.1) alone."""
    return out[:, :out.shape[1] // 2]


def _progress(enabled, total, desc):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False)
