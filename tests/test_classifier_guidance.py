"""Classifier guidance (Dhariwal & Nichol 2021): the classifier's gradient, eq. 14, Algorithm 1, training.

Independent truths: central finite differences in float64 for the autograd's grad_x log p_phi(y | x_t);
a Gaussian mixture, whose class posterior p(k | x_t) = r_k(x_t) and per-component scores are closed
forms (refdiff.gaussian.mixture), so that guidance at s = 1 with the exact mixture eps and the exact
posterior gives the exact score of one component (Bayes: grad log q(x_t) + grad log r_k = grad log
q_k(x_t)), and sampling with it must reproduce that component.
"""
import numpy as np
import pytest

import refdiff as rd
from refdiff.gaussian.guidance import classifier_guided_eps, classifier_guided_mean
from refdiff.gaussian.process import as_process
from refdiff.nn.autograd import no_grad
from refdiff.samplers.ddpm import sample_ddpm
from refdiff.training.classifier import NoisyClassification


def tiny_classifier(num_classes=3, seed=0):
    return rd.NoiseClassifier(num_classes, in_channels=1, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                              attention_resolutions=(), sample_size=8, norm_groups=4, seed=seed)


# ------------------------------------------------------------------------------------------------
# the gradient of log p_phi(y | x_t) by the autograd


def test_classifier_log_prob_gradient_matches_central_differences_in_float64():
    """grad_x log p_phi(y | x_t, t) of a NoiseClassifier (float64) against central differences.

    Catches: a gradient of the wrong log-probability (logit instead of log-softmax, another
    class's entry), samples mixed in the batch, a missing backward through the trunk or the head,
    a gradient left scaled by the batch size (mean instead of sum). Tolerance: central differences
    with h = 1e-5 have truncation error O(h^2 |f'''|) ~ 1e-10 and rounding O(u |f| / h) ~ 1e-10 in
    float64; 1e-6 absolute + 1e-5 relative leaves room and still fails for any real mistake
    (gradients here are of order 1e-2 to 1).
    """
    clf = tiny_classifier().to(dtype=np.float64)
    # a random head so that log p depends on x noticeably
    rng = np.random.default_rng(1)
    clf.linear_out.weight.data = rng.standard_normal(clf.linear_out.weight.shape)
    x = rng.standard_normal((2, 1, 8, 8))
    y = np.array([0, 2])
    grad = clf.log_prob_gradient(x, 7, y)
    assert grad.shape == x.shape and grad.dtype == np.float64

    def f(x_in):
        with no_grad():
            return float(clf.log_prob(x_in, 7, y).data.sum())

    h = 1e-5
    for b, i, j in [(0, 0, 0), (0, 3, 4), (1, 7, 2), (1, 5, 5), (0, 6, 1)]:
        e = np.zeros_like(x)
        e[b, 0, i, j] = h
        fd = (f(x + e) - f(x - e)) / (2 * h)
        assert abs(grad[b, 0, i, j] - fd) <= 1e-6 + 1e-5 * abs(fd), (b, i, j, grad[b, 0, i, j], fd)


def test_log_prob_gradient_leaves_parameter_gradients_alone():
    """Taking grad_x during sampling must not disturb a training step's parameter gradients.
    Catches: accumulating into p.grad (a later optimizer step would use guidance gradients)."""
    clf = tiny_classifier()
    for p in clf.parameters():
        p.grad = None
    clf.log_prob_gradient(np.zeros((1, 1, 8, 8), np.float32), 3, np.array([1]))
    assert all(p.grad is None for p in clf.parameters())


# ------------------------------------------------------------------------------------------------
# the guidance formulas against a Gaussian mixture


MIXTURE = rd.GaussianMixture(weights=[0.4, 0.6], means=[[-1.5, 0.5], [1.5, -0.5]],
                             covariances=[[[0.30, 0.10], [0.10, 0.20]], [[0.25, -0.05], [-0.05, 0.35]]])


def component(k):
    """Component k alone, as a one-component mixture (its exact eps and score)."""
    return rd.GaussianMixture([1.0], MIXTURE.means[k:k + 1], MIXTURE.covariances[k:k + 1])


class MixturePosterior:
    """The exact class posterior p(k | x_t) = r_k(x_t) of MIXTURE, as a classifier:
    grad log r_k(x_t) = grad log q_k(x_t) - grad log q(x_t) (the weight w_k is a constant)."""

    def __init__(self, schedule):
        self.process, self.num_classes = as_process(schedule), MIXTURE.K

    def log_prob_gradient(self, x, t, y):
        a, s = float(self.process.signal_scale(t)), float(self.process.noise_std(t))
        per_class = np.stack([component(k).score(x, a, s) for k in range(MIXTURE.K)])  # (K, B, d)
        return (per_class[np.asarray(y), np.arange(len(x))] - MIXTURE.score(x, a, s)).astype(x.dtype)


class MixtureDenoiser:
    """The exact eps (or x_0, v) of MIXTURE as a network for GaussianDiffusion (unconditional)."""

    sample_shape = (2,)

    def __init__(self, schedule, prediction_type="epsilon"):
        self.fn = MIXTURE.model(schedule, prediction_type)

    def __call__(self, x, t, y=None):
        return self.fn(x, t)


def test_guided_eps_at_scale_one_is_the_exact_component_eps():
    """eq. 14 with the exact mixture eps and the exact posterior: eps - sqrt(1 - abar) grad log r_k
    = eps of component k alone (Bayes' rule), at several noise levels, in float64.
    Catches: a wrong sign, sqrt(1 - abar) missing or replaced by 1 - abar or sqrt(abar), the scale
    applied twice. Tolerance 1e-9: both sides are the same closed forms, summed in another order."""
    schedule = rd.NoiseSchedule.linear(T=1000)
    x = np.random.default_rng(0).standard_normal((50, 2)) * 1.5
    posterior = MixturePosterior(schedule)
    for t in (0, 100, 500, 999):
        a, s = schedule.sqrt_alphas_cumprod[t], schedule.sqrt_one_minus_alphas_cumprod[t]
        for k in range(MIXTURE.K):
            guided = classifier_guided_eps(MIXTURE.eps(x, a, s), s, posterior.log_prob_gradient(x, t, np.full(50, k)), 1.0)
            np.testing.assert_allclose(guided, component(k).eps(x, a, s), atol=1e-9, rtol=1e-9)


def test_algorithm_1_step_moves_the_draw_by_sigma_t_times_the_scaled_gradient():
    """One DDPM step with classifier_gradient g minus the same step without (same noise) equals
    Sigma_t g, with Sigma_t = beta_t (1 - abar_{t-1}) / (1 - abar_t) (DDPM eq. 7, fixed_small) computed
    here from the betas; and classifier_guided_mean is mean + s Sigma grad.
    Catches: the gradient scaled by sqrt(Sigma) or beta_t instead of Sigma_t, the shift applied at the
    next step's t, the shift through the eps (which clipping would change). Tolerance: float64 rounding."""
    schedule = rd.NoiseSchedule.linear(T=1000)
    x = np.random.default_rng(0).standard_normal((4, 2))
    g = np.random.default_rng(1).standard_normal((4, 2))
    backend = rd.get_backend("numpy")

    def first_step(**kw):
        steps = sample_ddpm(lambda x_t, t: (0.3 * x_t, None), x, schedule, backend, np.random.default_rng(5), **kw)
        return next(steps)

    t, plain = first_step()
    _, guided = first_step(classifier_gradient=lambda x_t, t_: 2.0 * g)
    betas, abar = schedule.betas, schedule.alphas_cumprod
    sigma2 = betas[t] * (1 - abar[t - 1]) / (1 - abar[t])
    np.testing.assert_allclose(guided - plain, sigma2 * 2.0 * g, rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(classifier_guided_mean(x, sigma2, g, 2.0), x + 2.0 * sigma2 * g, rtol=1e-12)


@pytest.mark.parametrize("sampler, steps", [("ddim", 50), ("dpmpp_2m", 25), ("ddpm", 250)])
def test_guidance_with_exact_posterior_samples_the_class_component(sampler, steps):
    """GaussianDiffusion.sample(guidance="classifier", s = 1) with the exact mixture eps and the
    exact class posterior draws from component k alone: the samples' mean and covariance are
    component k's, and (almost) every sample belongs to it.

    Catches: guidance of the wrong sign (samples go to the other component), the gradient taken at
    the wrong t or x, the eps shift off by sqrt(1 - abar) (the class mass right but the spread
    wrong), Algorithm 1's Sigma_t wrong (ddpm). Tolerance: 1500 samples, standard error of a mean
    coordinate sqrt(0.35 / 1500) = 0.015 and of a covariance entry about 0.35 sqrt(2 / 1500) = 0.013;
    0.07 is ~4.5 standard errors, plus the samplers' discretization error at these step counts.
    """
    schedule = rd.NoiseSchedule.linear(T=1000)
    diffusion = rd.GaussianDiffusion(MixtureDenoiser(schedule), schedule, clip_sample=False)
    n, k = 1500, 1
    x = diffusion.sample(n, sampler=sampler, steps=steps, y=np.full(n, k), guidance="classifier",
                         classifier=MixturePosterior(schedule), guidance_scale=1.0, seed=0, progress=False,
                         dtype=np.float64)
    np.testing.assert_allclose(x.mean(axis=0), MIXTURE.means[k], atol=0.07)
    np.testing.assert_allclose(np.cov(x.T), MIXTURE.covariances[k], atol=0.07)
    assert (MIXTURE.responsibilities(x, 1.0, 1e-3)[:, k] > 0.5).mean() > 0.99


@pytest.mark.parametrize("prediction_type", ["sample", "v_prediction"])
def test_classifier_guidance_reads_x0_and_v_models_as_their_eps(prediction_type):
    """The same exact model written as x_0 or v prediction gives the same guided samples as its eps
    form (eq. 14 applies to eps: the output is read as eps at the step's own noise level first).
    Catches: the eps shift applied to an x_0 or v output as if it were eps, the conversion done at
    another t. Tolerance 1e-8: float64 samples of the same computation, rounded differently."""
    schedule = rd.NoiseSchedule.linear(T=1000)
    kw = dict(sampler="ddim", steps=20, y=np.zeros(64, np.int64), guidance="classifier", guidance_scale=2.0, seed=3,
              classifier=MixturePosterior(schedule), progress=False, dtype=np.float64)
    eps_model = rd.GaussianDiffusion(MixtureDenoiser(schedule), schedule, clip_sample=False)
    other = rd.GaussianDiffusion(MixtureDenoiser(schedule, prediction_type), schedule, prediction_type=prediction_type,
                                 clip_sample=False)
    np.testing.assert_allclose(other.sample(64, **kw), eps_model.sample(64, **kw), atol=1e-8)


class LearnedVarianceMixture:
    """MIXTURE's exact eps with constant variance channels v appended: a 2C-output model, [eps, v]
    (improved DDPM sec. 3.1), for GaussianDiffusion(variance_type="learned_range")."""

    sample_shape = (2,)

    def __init__(self, schedule, v):
        self.fn, self.v = MIXTURE.model(schedule, "epsilon"), v

    def __call__(self, x, t, y=None):
        eps = self.fn(x, t)
        return np.concatenate([eps, np.full_like(eps, self.v)], axis=1)


@pytest.mark.parametrize("sampler, steps, v, fixed", [("ddpm", 50, -1.0, "fixed_small"), ("ddpm", 50, 1.0, "fixed_large"),
                                                      ("ddim", 20, 0.3, "fixed_small"), ("dpmpp_2m", 10, 0.3, "fixed_small")])
def test_classifier_guidance_of_a_learned_variance_reads_sigma_t_from_the_models_channels(sampler, steps, v, fixed):
    """learned_range with v = -1 is beta_tilde_t and with v = 1 beta_t (eq. 15): guided ddpm of the 2C
    model equals guided ddpm of its eps alone with fixed_small / fixed_large, so Algorithm 1's Sigma_t
    is the model's; eq. 14's samplers read the eps channels only, whatever v.
    Catches: Sigma_t taken from a fixed variance while the model's differs (v = 1 vs fixed_small),
    the variance channels read as eps, or left on the output the eq. 14 samplers convert.
    Tolerance 1e-8: float64 samples of the same computation (log then exp of the variance)."""
    schedule = rd.NoiseSchedule.linear(T=1000)
    kw = dict(sampler=sampler, steps=steps, y=np.zeros(64, np.int64), guidance="classifier", guidance_scale=2.0,
              classifier=MixturePosterior(schedule), seed=3, progress=False, dtype=np.float64)
    learned = rd.GaussianDiffusion(LearnedVarianceMixture(schedule, v), schedule, variance_type="learned_range",
                                   clip_sample=False)
    plain = rd.GaussianDiffusion(MixtureDenoiser(schedule), schedule, variance_type=fixed, clip_sample=False)
    np.testing.assert_allclose(learned.sample(64, **kw), plain.sample(64, **kw), atol=1e-8)


def test_unguided_sampling_of_the_mixture_keeps_both_components():
    """The control of the test above: without guidance both components appear with their weights
    (0.4, 0.6 within 0.05, ~4 standard errors of 500 draws), so the guided test's result is the
    guidance's doing. Catches: a sampler that collapses to one mode whatever the guidance."""
    schedule = rd.NoiseSchedule.linear(T=1000)
    diffusion = rd.GaussianDiffusion(MixtureDenoiser(schedule), schedule, clip_sample=False)
    x = diffusion.sample(500, sampler="ddim", steps=50, seed=0, progress=False, dtype=np.float64)
    share = (MIXTURE.responsibilities(x, 1.0, 1e-3)[:, 1] > 0.5).mean()
    assert abs(share - 0.6) < 0.05


# ------------------------------------------------------------------------------------------------
# input checks


@pytest.fixture(scope="module")
def mixture_diffusion():
    schedule = rd.NoiseSchedule.linear(T=1000)
    return rd.GaussianDiffusion(MixtureDenoiser(schedule), schedule, clip_sample=False), MixturePosterior(schedule)


def test_classifier_guidance_without_a_classifier_is_refused(mixture_diffusion):
    """Catches: guidance="classifier" silently sampling unguided."""
    diffusion, _ = mixture_diffusion
    with pytest.raises(ValueError, match="needs a classifier"):
        diffusion.sample(2, sampler="ddim", steps=2, y=[0, 1], guidance="classifier", progress=False)


def test_a_classifier_without_classifier_guidance_is_refused(mixture_diffusion):
    """Catches: a classifier passed and ignored (guidance left at its default)."""
    diffusion, posterior = mixture_diffusion
    with pytest.raises(ValueError, match="guidance='classifier'"):
        diffusion.sample(2, sampler="ddim", steps=2, y=[0, 1], classifier=posterior, guidance_scale=2.0, progress=False)


def test_classifier_guidance_label_count_and_range_are_checked(mixture_diffusion):
    """Labels: one per sample, each in the classifier's 0..K-1. Catches: labels broadcast or
    indexing past the classifier's classes."""
    diffusion, posterior = mixture_diffusion
    with pytest.raises(ValueError, match=r"y must have shape \(3,\)"):
        diffusion.sample(3, sampler="ddim", steps=2, y=[0, 1], guidance="classifier", classifier=posterior,
                         progress=False)
    with pytest.raises(ValueError, match=r"class labels in \[0, 2\)"):
        diffusion.sample(2, sampler="ddim", steps=2, y=[0, 2], guidance="classifier", classifier=posterior,
                         progress=False)
    with pytest.raises(ValueError, match="needs class labels y"):
        diffusion.sample(2, sampler="ddim", steps=2, guidance="classifier", classifier=posterior, progress=False)


# ------------------------------------------------------------------------------------------------
# training


def test_training_on_noisy_data_lowers_the_cross_entropy():
    """60 AdamW steps of NoisyClassification on a toy (two classes of 8x8 images: bright top half or
    bright bottom half) lower the cross-entropy, measured on fixed held-out draws of t and eps, from
    about log 2 to clearly below it (< 0.5: at small t the classes are trivially separable, at large t
    they are not, so the floor is well above 0).
    Catches: a loss not connected to the classifier's parameters, x_t drawn at the wrong scale, labels
    misaligned with the batch."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 256)
    x0 = np.full((256, 1, 8, 8), -0.5, np.float32)
    x0[labels == 0, :, :4] = 0.8
    x0[labels == 1, :, 4:] = 0.8
    x0 += 0.05 * rng.standard_normal(x0.shape).astype(np.float32)
    schedule = rd.NoiseSchedule.linear(T=100, beta_start=1e-3, beta_end=0.05)
    objective = NoisyClassification(tiny_classifier(2), schedule)
    params = list(objective.model.parameters())
    opt = rd.optim.AdamW(params, lr=3e-3)

    def heldout():
        with no_grad():
            return float(objective.loss(x0[:128], labels[:128], rng=123).item())

    before = heldout()
    for step in range(60):
        idx = np.random.default_rng(step).choice(256, 64, replace=False)
        opt.zero_grad()
        objective.loss(x0[idx], labels[idx], rng=step).backward()
        opt.step()
    after = heldout()
    assert abs(before - np.log(2)) < 0.2 and after < 0.5, (before, after)
