"""AutoencoderTraining: the KL autoencoder's loss as an objective the Trainer runs (LDM's first stage).

    z ~ q(z | x),  x_hat = D(z)
    loss = reconstruction(x, x_hat) + kl_weight * mean_b KL(q(z | x_b) || N(0, I))

(Rombach et al. 2022, LDM sec. 3 and appendix G, "KL-reg" without the perceptual and adversarial
terms; the loss itself is refdiff.models.autoencoder.AutoencoderKL.loss.) The Trainer needs only
.model, .loss(x0, y, cond_drop_prob, rng), .config() and .schedule_arrays(): so an autoencoder
run has the Trainer's AdamW, EMA, checkpoints and exact resume, and a checkpoint names the model
class "AutoencoderKL" and the objective "autoencoder".

The scaling factor of latent diffusion is not a property of a trained autoencoder alone: it is
measured from the data when a latent run starts (refdiff.latent.measure_scaling_factor), so the
run's config records scaling_factor: null (the AutoencoderKL config's own value is the
constructor's default, SD's 0.18215, and is not used for a refdiff-trained autoencoder).
"""
import numpy as np

from ..checks import check_choice, check_nonnegative_real
from ..models.autoencoder import RECONSTRUCTION_LOSSES
from ..nn.autograd import no_grad


class AutoencoderTraining:
    """Train `autoencoder` (refdiff.AutoencoderKL) by its reconstruction + KL loss with the Trainer.

    kl_weight: the KL term's weight (LDM's KL-reg: ~1e-6). reconstruction: "l1" (LDM) or "l2".
    """

    objective = "autoencoder"
    num_classes = None  # unconditional: the Trainer passes no labels
    clip_sample = True  # the Trainer's data check: images must lie in [-1, 1] as the decoder is trained on them
    clip_sample_range = 1.0

    def __init__(self, autoencoder, kl_weight=1e-6, reconstruction="l1"):
        self.model = autoencoder
        self.kl_weight = check_nonnegative_real(kl_weight, "kl_weight")
        self.reconstruction = check_choice(reconstruction, RECONSTRUCTION_LOSSES, "reconstruction")
        self.backend = autoencoder.backend

    def loss(self, x0, y=None, cond_drop_prob=0.0, rng=None, noise=None):
        """AutoencoderKL.loss(x0, rng, kl_weight, reconstruction): z drawn from q(z | x0) with rng."""
        if noise is not None:
            raise ValueError("an autoencoder run takes no noise coupling (dataset.noise)")
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        return self.model.loss(x0, rng, kl_weight=self.kl_weight, reconstruction=self.reconstruction)

    def config(self):
        """The checkpoint's "diffusion" record: the objective and its options."""
        return {"objective": self.objective, "kl_weight": self.kl_weight, "reconstruction": self.reconstruction,
                "scaling_factor": None}

    def schedule_arrays(self):
        """No process: the checkpoint holds the autoencoder's weights (the model) alone."""
        return {}

    def reconstruct(self, x, batch_size=64):
        """D(mean of q(z | x)) for images x (B, C, H, W), under no_grad: a NumPy array of x's shape."""
        out = []
        with no_grad():
            for i in range(0, len(x), batch_size):
                mean, _ = self.model.encode(x[i:i + batch_size])
                out.append(self.backend.to_numpy(self.model.decode(mean).data))
        return np.concatenate(out)

    def sample(self, n, **kwargs):
        raise TypeError("an autoencoder run draws no samples: use .reconstruct(x), or train a latent diffusion "
                        "model on it (refdiff train --latent RUN)")

    def preview_sampling(self, steps):
        return {}

