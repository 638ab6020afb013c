"""The Gaussian mixture: data whose noised marginals, ideal denoiser and score are known exactly.

Data x_0 ~ sum_k w_k N(mu_k, Sigma_k) in R^d (full covariances). A forward process draws
x_t = a x_0 + s eps, eps ~ N(0, I), with a = signal_scale and s = noise_std at time t (on a DDPM
schedule a = sqrt(abar_t), s = sqrt(1 - abar_t); VDM and DPM-Solver write alpha_t, sigma_t).
Everything a sampler asks of a network then has a closed form:

    C_k               = a^2 Sigma_k + s^2 I                           covariance of component k of q(x_t)
    q(x_t)            = sum_k w_k N(x_t; a mu_k, C_k)                  PRML eq. 2.115 (linear-Gaussian marginal)
    r_k(x_t)          = w_k N(x_t; a mu_k, C_k) / q(x_t)               PRML eq. 9.23 (responsibilities)
    E[x_0 | x_t, k]   = mu_k + a Sigma_k C_k^{-1} (x_t - a mu_k)       PRML eq. 2.81 (Gaussian conditional)
    E[x_0 | x_t]      = sum_k r_k(x_t) E[x_0 | x_t, k]                 the ideal denoiser D (EDM appendix B.3)
    score             = grad log q(x_t) = -sum_k r_k C_k^{-1} (x_t - a mu_k)
                      = (a E[x_0 | x_t] - x_t) / s^2                   Tweedie's formula; EDM eq. 3
    eps               = (x_t - a E[x_0 | x_t]) / s = -s score          DDPM eq. 4 solved for eps
    v                 = a eps - s E[x_0 | x_t]                         Salimans & Ho 2022, sec. 4

The second line of the score is Tweedie's formula: x_t - a E[x_0 | x_t, k] = s^2 C_k^{-1}
(x_t - a mu_k). It is why eps is computed as s sum_k r_k C_k^{-1} (x_t - a mu_k): finite at both
ends, where the first form divides 0 by 0.

Numerics: float64 throughout; responsibilities by log-sum-exp; every C_k^{-1} through the
inverse of its Cholesky factor L_k (C_k = L_k L_k^T), so that z_k = L_k^{-1} (x_t - a mu_k) gives both the
Mahalanobis distance |z_k|^2 and log det C_k = 2 sum log diag L_k. The ends need no special case:
at a = 0, C_k = s^2 I for every k, so r_k = w_k and the denoiser is the mixture mean; at s = 0,
C_k = a^2 Sigma_k and the denoiser is x_t / a (up to rounding). a = s = 0 is refused.

`GaussianMixture.model(process)` turns all this into a model(x, t) like a network's, for any
sampler: the process gives (a, s) at t (an object with signal_scale(t) and noise_std(t), or a
NoiseSchedule, read as refdiff.gaussian.process.DiscreteProcess reads it).

`GaussianMixture.probability_flow` integrates the probability-flow ODE of the mixture (EDM eq. 4)
to high accuracy: the reference that the samplers' convergence orders are measured against.

References
- Bishop 2006, Pattern Recognition and Machine Learning (PRML), sec. 2.3.1-2.3.3 (eqs. 2.81,
  2.115), sec. 9.2 (eq. 9.23).
- Karras, Aittala, Aila, Laine 2022, Elucidating the Design Space of Diffusion-Based Generative
  Models (EDM), arXiv:2206.00364, eq. 3 and appendix B.3 (the ideal denoiser).
- Efron 2011, Tweedie's formula and selection bias, JASA 106 (the score from the posterior mean).
- Salimans, Ho 2022, Progressive Distillation, arXiv:2202.00512, sec. 4 (v).
"""
import numpy as np

from ..checks import check_mixture, check_points, check_positive_int, check_prediction_type, check_signal_noise, check_sigmas_descending
from .process import DiscreteProcess
from .schedule import NoiseSchedule

LOG_2PI = np.log(2 * np.pi)


# ---- the formulas, on arrays: a, s of shape () or (B,); x_t (B, d); means (K, d); covariances (K, d, d)


def noised_covariances(covariances, signal_scale, noise_std):
    """C_k = a^2 Sigma_k + s^2 I: the covariance of component k of q(x_t) (PRML eq. 2.115).

    Shape (K, d, d) for scalar a, s; (B, K, d, d) for per-sample a, s (B,).
    """
    a2 = np.square(signal_scale)[..., None, None, None]
    s2 = np.square(noise_std)[..., None, None, None]
    eye = np.eye(covariances.shape[-1])
    return a2 * covariances + s2 * eye  # (K, d, d) or (B, K, d, d)


def residuals(x_t, means, signal_scale):
    """x_t - a mu_k for every sample and component: (B, K, d)."""
    a = np.reshape(signal_scale, (-1, 1, 1))  # (1 or B, 1, 1)
    return x_t[:, None, :] - a * means[None]


def whitened(L_inv, r):
    """z_k = L_k^{-1} (x_t - a mu_k), with C_k = L_k L_k^T: |z_k|^2 is the Mahalanobis distance.

    L_inv: the inverses of the Cholesky factors, (K, d, d) or (B, K, d, d); r: (B, K, d).
    """
    return np.matmul(L_inv, r[..., None])[..., 0]


def precision_times(L_inv, z):
    """C_k^{-1} (x_t - a mu_k) = L_k^{-T} z_k: the score of component k, negated: (B, K, d)."""
    return np.matmul(np.swapaxes(L_inv, -1, -2), z[..., None])[..., 0]


def component_log_densities(weights, L_inv, z):
    """log w_k + log N(x_t; a mu_k, C_k) = log w_k - |z_k|^2 / 2 - sum log diag L_k - d/2 log 2 pi: (B, K).

    diag L_k^{-1} = 1 / diag L_k (L_k triangular), so -sum log diag L_k = sum log diag L_k^{-1}.
    """
    d = z.shape[-1]
    half_log_det = -np.log(np.diagonal(L_inv, axis1=-2, axis2=-1)).sum(-1)  # (K,) or (B, K)
    return np.log(weights) - 0.5 * np.square(z).sum(-1) - half_log_det - 0.5 * d * LOG_2PI


def log_sum_exp(log_terms):
    """log sum_k exp(log_terms[:, k]), shifted by the largest term so nothing overflows: (B,)."""
    top = log_terms.max(axis=1, keepdims=True)
    return top[:, 0] + np.log(np.exp(log_terms - top).sum(axis=1))


def component_denoised(means, covariances, signal_scale, u):
    """E[x_0 | x_t, k] = mu_k + a Sigma_k C_k^{-1} (x_t - a mu_k)  (PRML eq. 2.81): (B, K, d).

    u = C_k^{-1} (x_t - a mu_k), from precision_times.
    """
    a = np.reshape(signal_scale, (-1, 1, 1))
    return means[None] + a * np.einsum("kij,bkj->bki", covariances, u)


def signal_noise_of(process):
    """t -> (a, s) for a forward process: an object with signal_scale(t) and noise_std(t) methods
    (refdiff.gaussian.process), or a NoiseSchedule, read as DiscreteProcess(schedule) reads it
    (integer t: the tables of DDPM eq. 4; fractional t: log sigma interpolated, the inverse of
    diffusers' _sigma_to_t)."""
    if isinstance(process, NoiseSchedule):
        process = DiscreteProcess(process)
    if callable(getattr(process, "signal_scale", None)) and callable(getattr(process, "noise_std", None)):
        return lambda t: (process.signal_scale(t), process.noise_std(t))
    raise TypeError(f"process must have signal_scale(t) and noise_std(t) methods or be a NoiseSchedule, "
                    f"got {type(process).__name__}")


def rk4_step(f, x, u, h):
    """One step of the classical Runge-Kutta method (global error O(h^4)) for dx/du = f(x, u)."""
    k1 = f(x, u)
    k2 = f(x + h / 2 * k1, u + h / 2)
    k3 = f(x + h / 2 * k2, u + h / 2)
    k4 = f(x + h * k3, u + h)
    return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


class GaussianMixture:
    """x_0 ~ sum_k w_k N(mu_k, Sigma_k) in R^d, with every noised quantity in closed form.

        mixture = rd.GaussianMixture(weights=[0.3, 0.7], means=[[-2.0], [1.0]], covariances=[[[0.25]], [[0.5]]])
        x0 = mixture.sample(1000, np.random.default_rng(0))                  # (1000, 1)
        mixture.denoised(x_t, signal_scale=0.8, noise_std=0.6)               # E[x_0 | x_t]
        model = mixture.model(rd.NoiseSchedule.linear())                     # model(x, t) -> exact eps

    The formulas and their sources are in the module docstring (PRML eqs. 2.81, 2.115, 9.23; EDM
    eq. 3 and appendix B.3). Arguments: weights (K,) > 0 summing to 1; means (K, d);
    covariances (K, d, d), symmetric positive definite. Stored as float64 arrays.

    The methods at a noise level take x_t (B, d) (or (B, ...) with d numbers per sample, any
    float dtype; computed in float64), signal_scale a and noise_std s (numbers, or arrays (B,)
    for one level per sample; a, s >= 0, not both 0) and return float64 arrays.
    """

    def __init__(self, weights, means, covariances):
        self.weights, self.means, self.covariances = check_mixture(weights, means, covariances)
        self.K, self.d = self.means.shape
        self.cholesky_factors = np.linalg.cholesky(self.covariances)  # Sigma_k = L_k L_k^T, (K, d, d)

    def __repr__(self):
        return f"GaussianMixture(K={self.K}, d={self.d})"

    # ---- the data distribution q(x_0) ------------------------------------------------------

    def mean(self):
        """E[x_0] = sum_k w_k mu_k: (d,)."""
        return self.weights @ self.means

    def covariance(self):
        """Cov[x_0] = sum_k w_k (Sigma_k + mu_k mu_k^T) - E[x_0] E[x_0]^T (law of total covariance): (d, d)."""
        m = self.mean()
        second_moment = np.einsum("k,kij->ij", self.weights, self.covariances + np.einsum("ki,kj->kij", self.means, self.means))
        return second_moment - np.outer(m, m)

    def sample(self, n, rng, return_components=False):
        """n draws of x_0: k ~ Categorical(w), then x_0 = mu_k + L_k z, z ~ N(0, I): (n, d) float64.

        rng: a numpy Generator. With return_components, also the component index of each draw (n,).
        """
        k = rng.choice(self.K, size=n, p=self.weights)
        z = rng.standard_normal((n, self.d))
        x0 = self.means[k] + np.einsum("nij,nj->ni", self.cholesky_factors[k], z)
        return (x0, k) if return_components else x0

    def noised(self, signal_scale, noise_std):
        """q(x_t) as a GaussianMixture: weights w_k, means a mu_k, covariances a^2 Sigma_k + s^2 I
        (PRML eq. 2.115), for numbers a, s."""
        a, s = check_signal_noise(signal_scale, noise_std, batch=1)
        if a.ndim or s.ndim:
            raise ValueError("noised() takes one noise level: numbers signal_scale and noise_std")
        return GaussianMixture(self.weights, a * self.means, noised_covariances(self.covariances, a, s))

    # ---- q(x_t) and the ideal denoiser at one noise level ----------------------------------

    def _components(self, x_t, signal_scale, noise_std):
        """(a, s, log w_k N_k (B, K), u_k = C_k^{-1} (x_t - a mu_k) (B, K, d)) for checked inputs."""
        x_t = check_points(x_t, self.d)
        a, s = check_signal_noise(signal_scale, noise_std, x_t.shape[0])
        L = np.linalg.cholesky(noised_covariances(self.covariances, a, s))  # C_k = L_k L_k^T
        L_inv = np.linalg.inv(L)  # triangular; a few (d, d) inverses instead of a solve per sample
        z = whitened(L_inv, residuals(x_t, self.means, a))
        return a, s, component_log_densities(self.weights, L_inv, z), precision_times(L_inv, z)

    def _posterior(self, x_t, signal_scale, noise_std):
        """(a (B, 1) or (1, 1), s likewise, r_k (B, K), u_k (B, K, d)): what every prediction reads."""
        a, s, log_terms, u = self._components(x_t, signal_scale, noise_std)
        r = np.exp(log_terms - log_sum_exp(log_terms)[:, None])
        return np.reshape(a, (-1, 1)), np.reshape(s, (-1, 1)), r, u

    def log_prob(self, x_t, signal_scale=1.0, noise_std=0.0):
        """log q(x_t) = log sum_k w_k N(x_t; a mu_k, C_k)  (PRML eq. 2.115, by log-sum-exp): (B,).

        With the defaults (a = 1, s = 0), the log density of the data itself.
        """
        _, _, log_terms, _ = self._components(x_t, signal_scale, noise_std)
        return log_sum_exp(log_terms)

    def responsibilities(self, x_t, signal_scale, noise_std):
        """r_k(x_t) = w_k N(x_t; a mu_k, C_k) / q(x_t)  (PRML eq. 9.23): (B, K), rows sum to 1."""
        return self._posterior(x_t, signal_scale, noise_std)[2]

    def denoised(self, x_t, signal_scale, noise_std):
        """E[x_0 | x_t] = sum_k r_k [mu_k + a Sigma_k C_k^{-1} (x_t - a mu_k)]: the ideal denoiser
        (EDM appendix B.3; PRML eq. 2.81 per component): (B, d).

        At a = 0 it is the mixture mean; at s = 0 it is x_t / a.
        """
        a, _, r, u = self._posterior(x_t, signal_scale, noise_std)
        return np.einsum("bk,bki->bi", r, component_denoised(self.means, self.covariances, a, u))

    def score(self, x_t, signal_scale, noise_std):
        """grad log q(x_t) = -sum_k r_k C_k^{-1} (x_t - a mu_k) = (a E[x_0 | x_t] - x_t) / s^2
        (Tweedie; EDM eq. 3): (B, d). Finite at s = 0 too."""
        _, _, r, u = self._posterior(x_t, signal_scale, noise_std)
        return -np.einsum("bk,bki->bi", r, u)

    def eps(self, x_t, signal_scale, noise_std):
        """eps = (x_t - a E[x_0 | x_t]) / s = s sum_k r_k C_k^{-1} (x_t - a mu_k) = -s grad log q(x_t)
        (DDPM eq. 4 solved for eps, with Tweedie's formula): (B, d). 0 at s = 0; x_t / s at a = 0."""
        _, s, r, u = self._posterior(x_t, signal_scale, noise_std)
        return s * np.einsum("bk,bki->bi", r, u)

    def v(self, x_t, signal_scale, noise_std):
        """v = a eps - s E[x_0 | x_t]  (Salimans & Ho 2022, sec. 4): (B, d)."""
        a, s, _, _ = self._posterior(x_t, signal_scale, noise_std)
        return a * self.eps(x_t, signal_scale, noise_std) - s * self.denoised(x_t, signal_scale, noise_std)

    def velocity(self, x_t, signal_scale, noise_std):
        """u* = E[eps - x_0 | x_t] = eps - E[x_0 | x_t]: the flow-matching velocity that minimises the
        conditional flow-matching loss (Lipman et al. 2023 Theorem 2; Liu et al. 2022 eq. 1): (B, d)."""
        return self.eps(x_t, signal_scale, noise_std) - self.denoised(x_t, signal_scale, noise_std)

    # ---- the mixture as a model ------------------------------------------------------------

    def model(self, process, prediction_type="epsilon"):
        """A function model(x, t) -> the exact prediction at time t, like a trained network's
        (diffusers' prediction_type: "epsilon" eps, "sample" E[x_0 | x_t], "v_prediction" v;
        Salimans & Ho 2022 sec. 4 for v; "flow" the velocity E[eps - x_0 | x_t], Lipman et al. 2023).

        process: gives (a, s) at t: any object with signal_scale(t) and noise_std(t) methods
        (refdiff's processes, in their own time units), or a NoiseSchedule (t an index in
        [0, T-1], fractional t by log-sigma interpolation, as DiscreteProcess).
        model(x, t): x (B, ...) in the process's scale (x = a x_0 + s eps); t a number or an
        array (B,). Computed in float64; returned in x's shape and dtype.
        """
        signal_noise = signal_noise_of(process)
        if prediction_type != "flow":
            check_prediction_type(prediction_type)
        output = {"epsilon": self.eps, "sample": self.denoised, "v_prediction": self.v, "flow": self.velocity}[prediction_type]

        def model(x, t):
            signal_scale, noise_std = signal_noise(t)
            return output(x, signal_scale, noise_std).reshape(x.shape).astype(x.dtype)

        return model

    # ---- the probability-flow ODE, solved accurately ----------------------------------------

    def probability_flow(self, x, sigmas, steps_per_unit=100):
        """The probability-flow ODE of q solved from x at sigmas[0] to each of sigmas[1:]: (len(sigmas), B, d).

        In the variance-exploding scale x = x_0 + sigma eps (x_t / signal_scale of any process) the
        ODE is dx / dsigma = (x - D(x; sigma)) / sigma (EDM eq. 4 with s(t) = 1, sigma(t) = t; D the
        ideal denoiser, so this is the exact ODE of the mixture), written in u = log sigma:

            dx / du = x - D(x; e^u)

        and integrated by the classical Runge-Kutta method (rk4_step), each interval [sigma_{j+1},
        sigma_j] in ceil(steps_per_unit log(sigma_j / sigma_{j+1})) equal steps of u. Global error
        O(h^4), h <= 1 / steps_per_unit; halving h changes the result by ~15 times the error left
        (Richardson), which tests/test_sampler_convergence.py checks: ~1e-10 at 100 steps per
        unit for mixtures of unit scale. sigmas: descending, all > 0 (log sigma is -inf at 0).
        x: (B, d) float array; computed in float64.
        """
        x = check_points(x, self.d, "x")
        sigmas = check_sigmas_descending(sigmas)
        steps_per_unit = check_positive_int(steps_per_unit, "steps_per_unit")

        def velocity(x, u):  # dx / du = x - D(x; sigma), sigma = e^u
            return x - self.denoised(x, 1.0, np.exp(u))

        states = [x]
        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
            u, u_next = np.log(sigma), np.log(sigma_next)
            n = int(np.ceil(steps_per_unit * (u - u_next)))
            h = (u_next - u) / n
            for i in range(n):
                x = rk4_step(velocity, x, u + i * h, h)
            states.append(x)
        return np.stack(states)
