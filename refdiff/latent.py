"""LatentDiffusion: a GaussianDiffusion over the scaled latents of a frozen autoencoder.

Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models" (LDM):

    z ~ q(z | x) = N(mean(x), diag(exp(logvar(x))))     the frozen KL autoencoder's encoder E (sec. 3)
    z_s = scaling_factor * z                            sec. 4.3.2 and appendix D.1: the latents
                                                        rescaled to unit standard deviation
    loss = E_{t, eps} || eps - eps_theta(z_s,t, t) ||^2  LDM eq. 2: DDPM's loss (DDPM eq. 14) on z_s
    sampling: z_s ~ p_theta (any sampler), x = D(z_s / scaling_factor)    (sec. 3.3: decode once)

Which latent (LDM's choice, kept here): z is *drawn* from q(z | x) at every training step, as
LDM's get_first_stage_encoding does (posterior.sample()); with the slight KL weight of a KL-reg
autoencoder the posterior's std is small, so the draw is the mean plus a little noise, a mild
augmentation that teaches the denoiser the whole region the decoder maps to x. sample_posterior
=False trains on the mean instead (diffusers' sample_posterior=False).

The scaling factor: 1 / std of the latents (LDM sec. 4.3.2, D.1: "we rescale the latents by the
component-wise standard deviation" estimated on the first batch of the data; their code sets
scale_factor = 1 / z.flatten().std()). `latent_scaling_factor` computes it; a diffusers
autoencoder carries its own in its config (SD's 0.18215), which LatentDiffusion takes as given.

The autoencoder is frozen: it is encoded and decoded under no_grad, its parameters are marked
requires_grad=False, and it is not the diffusion's .model, so an optimizer built from
.model.parameters() (the Trainer) never holds its weights.

A sibling of GaussianDiffusion: the same loss (called on z_s) and the same sampling (of z_s),
plus the encoder in front and the decoder behind. A checkpoint stores the autoencoder's weights
(arrays "autoencoder/...") and their SHA-256, so a latent run is self-contained and resumes on
its own.
"""
import json

import numpy as np

from .checks import check_bool, check_latent_channels, check_latent_shape, check_positive_real, check_same_backend
from .diffusion import GaussianDiffusion, model_sample_shape
from .nn.autograd import Tensor, no_grad

AUTOENCODER_PREFIX = "autoencoder"  # checkpoint arrays of the frozen autoencoder: "autoencoder/..."
SCALE_SAMPLES = 256  # images the CLI measures the scaling factor on (LDM: the first batch)


def latent_scaling_factor(z):
    """1 / std(z) over all of z's elements (LDM sec. 4.3.2 and appendix D.1; their code:
    scale_factor = 1. / z.flatten().std(), torch's std with Bessel's correction, ddof = 1).

    z: float array (B, c, h, w) of latents, on the host; computed in float64.
    """
    z = np.asarray(z, dtype=np.float64).ravel()
    if z.size < 2:
        raise ValueError(f"the scaling factor needs at least 2 latent values, got {z.size}")
    std = float(z.std(ddof=1))
    if not np.isfinite(std) or std <= 0:
        raise ValueError(f"the latents have std {std}: cannot scale them to unit std")
    return 1.0 / std


def encode_latents(autoencoder, x, rng=None, batch_size=64):
    """z for images x (B, C, H, W), in batches, under no_grad: a draw of q(z | x) = N(mean, exp(logvar))
    with rng (Kingma & Welling 2014 sec. 2.4), or its mean when rng is None. An array on the
    autoencoder's backend, (B, latent_channels, H/f, W/f)."""
    xp = autoencoder.backend.xp
    out = []
    with no_grad():
        for i in range(0, len(x), batch_size):
            mean, logvar = autoencoder.encode(x[i:i + batch_size])
            z = mean if rng is None else autoencoder.sample_latent(mean, logvar, rng)
            out.append(z.data)
    return xp.concatenate(out)


def measure_scaling_factor(autoencoder, x, rng=None, batch_size=64):
    """LDM's scaling factor for `autoencoder` on images x: latent_scaling_factor of their latents
    (drawn from q(z | x) with rng, as LDM does; the means when rng is None)."""
    return latent_scaling_factor(autoencoder.backend.to_numpy(encode_latents(autoencoder, x, rng, batch_size)))


class LatentDiffusion(GaussianDiffusion):
    """Diffusion in the latent space of a frozen autoencoder (LDM, Rombach et al. 2022).

    model: the denoiser of the scaled latents, model(z_t, t, y=None) (a refdiff.UNet whose
        in_channels is the autoencoder's latent_channels and whose sample_size is the latent's side).
    schedule: refdiff.NoiseSchedule, as for GaussianDiffusion.
    autoencoder: refdiff.AutoencoderKL (frozen here: requires_grad is turned off on its parameters).
    scaling_factor: z_s = scaling_factor * z. Give the autoencoder's own (a diffusers vae's
        vae.scaling_factor) or the measured one (measure_scaling_factor: 1 / std of the latents).
    sample_posterior: train on z drawn from q(z | x) (LDM) or on its mean (False).
    clip_sample: False by default: the scaled latents have unit std, not the range [-1, 1]
        (LDM samples without clipping; diffusers' LDM pipelines set clip_sample=False).
    source: a JSON-able record of where the autoencoder came from (the CLI's AE run and its
        checkpoint), kept in the checkpoint for the reader.
    Other keyword arguments: GaussianDiffusion's (prediction_type, loss_weighting, variance_type, ...).

    ld.loss(x0, y=None, rng=...)     the diffusion loss on the scaled latents of images x0 (autograd scalar)
    ld.sample(n, sampler=..., ...)   images (n, C, H, W): latents sampled, then decoded
    ld.encode(x, rng=None)           scaled latents z_s of images; ld.decode(z_s) images
    """

    objective = "latent_diffusion"

    def __init__(self, model, schedule, autoencoder, scaling_factor, sample_posterior=True, clip_sample=False,
                 source=None, **options):
        super().__init__(model, schedule, clip_sample=clip_sample, **options)
        self.scaling_factor = check_positive_real(scaling_factor, "scaling_factor")
        self.sample_posterior = check_bool(sample_posterior, "sample_posterior")
        shape = model_sample_shape(model)  # (latent_channels, h, w) the denoiser samples
        check_latent_channels(shape[0], autoencoder.config["latent_channels"])
        check_same_backend("the denoiser", self.backend.name, "the autoencoder", autoencoder.backend.name)
        self.autoencoder = autoencoder
        autoencoder.eval()
        for p in autoencoder.parameters():
            p.requires_grad = False
            p.grad = None
        self.source = source
        self._autoencoder_sha256 = None

    # ---- the autoencoder in front and behind ---------------------------------------------------

    def encode(self, x, rng=None):
        """z_s = scaling_factor * z, z drawn from q(z | x) with rng (or its mean when rng is None):
        an array on the backend, (B, latent_channels, H/f, W/f). No gradient (the autoencoder is frozen)."""
        z = encode_latents(self.autoencoder, x, rng)
        check_latent_shape(z.shape[1:], model_sample_shape(self.model), np.shape(x)[1:])
        return z * self.scaling_factor

    def decode(self, z_s, batch_size=64):
        """Images D(z_s / scaling_factor) (LDM sec. 3.3): a NumPy array (B, out_channels, H, W)."""
        z_s = z_s.data if isinstance(z_s, Tensor) else z_s
        out = []
        with no_grad():
            for i in range(0, len(z_s), batch_size):
                z = self.autoencoder.backend.asarray(z_s[i:i + batch_size]) / self.scaling_factor  # unscale
                out.append(self.backend.to_numpy(self.autoencoder.decode(z).data))
        return np.concatenate(out)

    # ---- training ------------------------------------------------------------------------------

    def loss(self, x0, y=None, cond_drop_prob=0.0, rng=None, noise=None):
        """GaussianDiffusion.loss on z_s = scaling_factor * z, z ~ q(z | x0) (LDM eq. 2).

        rng (a numpy Generator or int seed) first draws the latent z (sample_posterior), then the
        diffusion's t and eps, as GaussianDiffusion.loss(z_s, y, rng=rng) would: same rng state,
        same loss. x0: images (B, C, H, W); noise: eps of the latents' shape (a coupling), or None.
        """
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        x0 = x0.data if isinstance(x0, Tensor) else x0
        z_s = self.encode(x0, rng if self.sample_posterior else None)
        return super().loss(z_s, y, cond_drop_prob=cond_drop_prob, rng=rng, noise=noise)

    # ---- sampling ------------------------------------------------------------------------------

    def sample(self, n, *args, return_trajectory=False, **kwargs):
        """n images: GaussianDiffusion.sample draws the scaled latents z_s (any sampler and its
        options), then decode(z_s). With return_trajectory, (images, the latents' trajectory)."""
        out = super().sample(n, *args, return_trajectory=return_trajectory, **kwargs)
        if return_trajectory:
            return self.decode(out[0]), out[1]
        return self.decode(out)

    # ---- checkpoints ---------------------------------------------------------------------------

    def autoencoder_arrays(self):
        """{"autoencoder/...": host array}: the frozen autoencoder's weights as a checkpoint stores them."""
        from .io.checkpoint import flatten_state

        return flatten_state(self.autoencoder.state_dict(), AUTOENCODER_PREFIX)[1]

    def autoencoder_sha256(self):
        """SHA-256 of the autoencoder's weights (refdiff.io.checkpoint.arrays_digest); computed once (frozen)."""
        from .io.checkpoint import arrays_digest

        if self._autoencoder_sha256 is None:
            self._autoencoder_sha256 = arrays_digest(self.autoencoder_arrays())
        return self._autoencoder_sha256

    def config(self):
        """A JSON-able dict of the options (a checkpoint's "diffusion" record), the autoencoder's
        class, config and weights' SHA-256 included."""
        record = {**super().config(), "objective": self.objective, "scaling_factor": self.scaling_factor,
                  "sample_posterior": self.sample_posterior,
                  "autoencoder": {"class": type(self.autoencoder).__name__, "config": self.autoencoder.config,
                                  "sha256": self.autoencoder_sha256(), "source": self.source}}
        return json.loads(json.dumps(record))  # tuples as lists: what a checkpoint's JSON gives back

    def schedule_arrays(self):
        """The schedule's betas and the autoencoder's weights ("autoencoder/..."): a run resumes on its own."""
        return {**super().schedule_arrays(), **self.autoencoder_arrays()}
