"""NoisyClassification: the training objective of a noise-conditional classifier p_phi(y | x_t, t).

    t ~ Uniform{0, ..., T-1},  eps ~ N(0, I)
    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps                 (DDPM eq. 4)
    loss = -1/B sum_b log p_phi(y_b | x_t_b, t_b)                 cross-entropy on the noised data

Dhariwal & Nichol 2021, sec. 4 ("we train a classifier p_phi(y | x_t, t) on noisy images x_t");
guided-diffusion's scripts/classifier_train.py (t drawn uniformly by its UniformSampler, x_t by
diffusion.q_sample, then F.cross_entropy of the logits). The classifier is then used by
GaussianDiffusion.sample(guidance="classifier", classifier=...).

An objective object for the Trainer, as GaussianDiffusion is one: .model, .loss(x0, y, ...),
.config() and .schedule_arrays() for checkpoints (objective "classifier"), so that training it
checkpoints and resumes like any run (refdiff train-classifier).
"""
import numpy as np

from ..backend import get_backend
from ..checks import check_class_labels, check_finite, value_checks_on
from ..gaussian.forward import q_sample
from ..models.classifier import log_softmax_at
from ..nn.autograd import Tensor


class NoisyClassification:
    """A NoiseClassifier trained by cross-entropy on x_t = q_sample(x0, t, eps) at uniform t.

    classifier: refdiff.NoiseClassifier (or any model(x, t) -> logits (B, K) with .num_classes).
    schedule: the refdiff.NoiseSchedule of the diffusion model it will guide (same T and abar).
    """

    objective = "classifier"

    def __init__(self, classifier, schedule, backend=None):
        if not hasattr(schedule, "alphas_cumprod") or not hasattr(schedule, "T"):
            raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
        self.model = classifier
        self.schedule = schedule
        self.num_classes = classifier.num_classes
        self.backend = get_backend(backend) if backend is not None else get_backend(getattr(classifier, "backend", None) or "numpy")
        self.clip_sample, self.clip_sample_range = True, 1.0  # the data range the trainer checks

    @property
    def T(self):
        return self.schedule.T

    def config(self):
        """A JSON-able record of the objective (the schedule itself is stored as betas)."""
        return {"objective": self.objective, "T": int(self.schedule.T)}

    def schedule_arrays(self):
        """Arrays a checkpoint stores for the process: the schedule's betas (float64)."""
        return {"schedule/betas": np.asarray(self.schedule.betas)}

    def preview_sampling(self, steps):
        raise ValueError("a classifier run draws no samples: train it with sample_every=0")

    def sample(self, *args, **kwargs):
        raise ValueError("a classifier run draws no samples: train it with sample_every=0")

    def loss(self, x0, y=None, cond_drop_prob=0.0, rng=None, noise=None):
        """Cross-entropy -1/B sum_b log p_phi(y_b | x_t_b, t_b) on a batch x0 (B, ...), labels y (B,):
        a scalar Tensor. t, eps drawn from rng (Generator or seed); cond_drop_prob must be 0 (labels
        are the target here, not an input to drop); noise: the eps to use instead of a draw."""
        if cond_drop_prob:
            raise ValueError("cond_drop_prob must be 0 for a classifier: its labels are the target, not an input "
                             "to drop (Trainer(..., cond_drop_prob=0))")
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        x0 = x0.data if isinstance(x0, Tensor) else np.asarray(x0)
        if value_checks_on(x0):
            check_finite(x0, "x0")
        B = x0.shape[0]
        if y is None:
            raise ValueError("a classifier is trained on labelled data: y is required")
        y = check_class_labels(y, B, self.num_classes)
        dtype = np.float64 if x0.dtype == np.float64 else np.float32
        t = rng.integers(0, self.T, size=B)  # t ~ Uniform{0, ..., T-1}
        eps = rng.standard_normal(x0.shape, dtype=dtype) if noise is None else np.asarray(noise, dtype=dtype)
        x_t = q_sample(x0.astype(dtype), t, eps, self.schedule)  # (B, ...)  DDPM eq. 4
        x_t = x_t.reshape(B, *self.model.sample_shape) if hasattr(self.model, "sample_shape") else x_t
        log_p = log_softmax_at(self.model(self.backend.asarray(x_t), self.backend.asarray(t)), self.backend.asarray(y))
        return -log_p.mean()
