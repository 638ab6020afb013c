"""Noise schedules: the betas of the forward process and every quantity derived from them.

Timesteps are integers t = 0 .. T-1 (the diffusers convention): index t holds the paper's
step t+1, so betas[0] is DDPM's beta_1 and alphas_cumprod[t] is DDPM's abar_{t+1}.

    alphas_t          = 1 - beta_t                                      DDPM sec. 2
    alphas_cumprod_t  = abar_t = prod_{s <= t} alphas_s                 DDPM sec. 2, before eq. 4
    snr_t             = abar_t / (1 - abar_t)                           Kingma et al. 2021 (VDM), sec. 2
    posterior_variance_t = beta_t (1 - abar_{t-1}) / (1 - abar_t)       DDPM eq. 7 (beta tilde)
    posterior_mean_coef1_t = beta_t sqrt(abar_{t-1}) / (1 - abar_t)     DDPM eq. 7 (coefficient of x_0)
    posterior_mean_coef2_t = sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t)  DDPM eq. 7 (of x_t)

with abar_{-1} = 1 (alphas_cumprod_prev[0] = 1). Everything is float64.

References
- Ho, Jain, Abbeel 2020, Denoising Diffusion Probabilistic Models (DDPM), arXiv:2006.11239.
- Nichol, Dhariwal 2021, Improved DDPM, arXiv:2102.09672 (cosine schedule, sec. 3.2, eq. 17).
- Lin, Liu, Li, Yang 2023, Common Diffusion Noise Schedules and Sample Steps are Flawed,
  arXiv:2305.08891 (zero terminal SNR, Algorithm 1).
- diffusers DDPMScheduler / DDIMScheduler (beta_schedule "linear", "scaled_linear",
  "squaredcos_cap_v2", "sigmoid"), whose numbers these schedules reproduce.
"""
import numpy as np

from ..checks import check_positive_int
from .posterior import posterior_mean_coefficients, posterior_variance


def linear_betas(T, beta_start, beta_end):
    """beta_t evenly spaced from beta_start to beta_end (DDPM sec. 4: 1e-4 to 0.02, T = 1000)."""
    return np.linspace(beta_start, beta_end, T, dtype=np.float64)


def scaled_linear_betas(T, beta_start, beta_end):
    """sqrt(beta_t) evenly spaced, then squared (Stable Diffusion's "scaled_linear").

    The same formula as the original DDPM code's "quad" schedule; only the defaults differ.
    """
    return np.linspace(beta_start**0.5, beta_end**0.5, T, dtype=np.float64) ** 2


def cosine_alphas_cumprod(u, s):
    """f(u) = cos^2((u + s) / (1 + s) * pi / 2) for u = t / T in [0, 1] (improved DDPM eq. 17)."""
    return np.cos((u + s) / (1 + s) * np.pi / 2) ** 2


def cosine_betas(T, s, max_beta):
    """beta_t = min(1 - f((t+1)/T) / f(t/T), max_beta) (improved DDPM sec. 3.2).

    As diffusers' betas_for_alpha_bar(alpha_transform_type="cosine"): the ratio of f at the two
    ends of step t, which equals 1 - abar_t / abar_{t-1} with abar_t = f((t+1)/T) / f(0).
    max_beta = 0.999 keeps the last steps from being singular near u = 1.
    """
    u = np.arange(T, dtype=np.float64)
    betas = 1 - cosine_alphas_cumprod((u + 1) / T, s) / cosine_alphas_cumprod(u / T, s)
    return np.minimum(betas, max_beta)


def sigmoid_betas(T, beta_start, beta_end):
    """beta_t = sigmoid(x_t) (beta_end - beta_start) + beta_start, x_t evenly spaced in [-6, 6].

    diffusers' beta_schedule="sigmoid" (from GeoDiff, Xu et al. 2022).
    """
    x = np.linspace(-6.0, 6.0, T, dtype=np.float64)
    return 1 / (1 + np.exp(-x)) * (beta_end - beta_start) + beta_start


def zero_terminal_snr_betas(betas):
    """Rescale betas so that abar_{T-1} = 0 (SNR 0 at the last step) and abar_0 is kept.

    Lin et al. 2023, Algorithm 1 (as diffusers' rescale_zero_terminal_snr): shift sqrt(abar) so
    its last value is 0, scale it so its first value is unchanged, then read the betas back
    from the ratios abar_t / abar_{t-1}. The last beta becomes exactly 1.
    """
    alphas_cumprod = np.cumprod(1 - betas)
    sqrt_abar = np.sqrt(alphas_cumprod)
    sqrt_abar_0, sqrt_abar_last = sqrt_abar[0], sqrt_abar[-1]
    sqrt_abar = (sqrt_abar - sqrt_abar_last) * (sqrt_abar_0 / (sqrt_abar_0 - sqrt_abar_last))
    abar = sqrt_abar**2
    alphas = np.concatenate([abar[:1], abar[1:] / abar[:-1]])
    return 1 - alphas


class NoiseSchedule:
    """A variance schedule beta_0 .. beta_{T-1} with every derived quantity precomputed (float64).

    NoiseSchedule(betas) accepts any betas in (0, 1] for which alphas_cumprod strictly decreases
    (a beta of exactly 1 is only possible at the last step: it makes abar_{T-1} = 0, the zero
    terminal SNR of Lin et al. 2023). The constructors linear / scaled_linear / quadratic /
    cosine / sigmoid build the usual schedules.

    Attributes (float64 arrays of shape (T,), index t = the paper's step t+1):
      betas, alphas, alphas_cumprod, alphas_cumprod_prev, sqrt_alphas_cumprod,
      sqrt_one_minus_alphas_cumprod, posterior_variance, posterior_log_variance_clipped,
      posterior_mean_coef1, posterior_mean_coef2, snr;  T (int).
  abar_t = prod_{s<=t} (1 - beta_s) is DDPM eq. 4's alpha-bar, the posterior_* tables are the
  coefficients of DDPM eqs. 6-7, and snr_t = abar_t / (1 - abar_t) (Kingma et al. 2021).
    """

    def __init__(self, betas):
        betas = _checked_betas(betas)
        T = betas.shape[0]
        self.T = T
        self.betas = betas
        self.alphas = 1 - betas
        self.alphas_cumprod = np.cumprod(self.alphas)
        _check_strictly_decreasing(self.alphas_cumprod)
        # abar_{t-1}, with abar before the first step = 1 (no noise yet)
        self.alphas_cumprod_prev = np.concatenate([[1.0], self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1 - self.alphas_cumprod)
        # signal-to-noise ratio of q(x_t | x_0): abar / (1 - abar)  (VDM: SNR = alpha^2 / sigma^2)
        self.snr = self.alphas_cumprod / (1 - self.alphas_cumprod)

        # posterior q(x_{t-1} | x_t, x_0) = N(coef1 x_0 + coef2 x_t, posterior_variance)  DDPM eqs. 6-7
        self.posterior_variance = posterior_variance(self.alphas_cumprod, self.alphas_cumprod_prev)
        self.posterior_mean_coef1, self.posterior_mean_coef2 = posterior_mean_coefficients(
            self.alphas_cumprod, self.alphas_cumprod_prev
        )
        self.posterior_log_variance_clipped = _log_variance_clipped(self.posterior_variance)

        for name in _ARRAY_NAMES:
            getattr(self, name).setflags(write=False)  # one schedule, shared: keep it constant

    # ---- the usual schedules -------------------------------------------------------------

    @classmethod
    def linear(cls, T=1000, beta_start=1e-4, beta_end=0.02):
        """Linear betas (DDPM sec. 4; diffusers beta_schedule="linear")."""
        return cls(linear_betas(check_positive_int(T, "T"), beta_start, beta_end))

    @classmethod
    def scaled_linear(cls, T=1000, beta_start=0.00085, beta_end=0.012):
        """Betas whose square roots are linear (Stable Diffusion; diffusers "scaled_linear")."""
        return cls(scaled_linear_betas(check_positive_int(T, "T"), beta_start, beta_end))

    @classmethod
    def quadratic(cls, T=1000, beta_start=1e-4, beta_end=0.02):
        """The DDPM code's "quad" schedule: sqrt(beta) linear from sqrt(beta_start) to sqrt(beta_end)."""
        return cls(scaled_linear_betas(check_positive_int(T, "T"), beta_start, beta_end))

    @classmethod
    def cosine(cls, T=1000, s=0.008, max_beta=0.999):
        """Cosine schedule (improved DDPM eq. 17; diffusers "squaredcos_cap_v2" for s = 0.008)."""
        return cls(cosine_betas(check_positive_int(T, "T"), s, max_beta))

    @classmethod
    def sigmoid(cls, T=1000, beta_start=1e-4, beta_end=0.02):
        """Sigmoid schedule (GeoDiff; diffusers beta_schedule="sigmoid")."""
        return cls(sigmoid_betas(check_positive_int(T, "T"), beta_start, beta_end))

    def rescale_zero_terminal_snr(self):
        """A new schedule with abar_{T-1} = 0 and the same abar_0 (Lin et al. 2023, Algorithm 1).

        diffusers' rescale_betas_zero_snr=True. With abar_{T-1} = 0, x_0 cannot be read back from
        an eps prediction at t = T-1 (it divides by sqrt(abar) = 0): use v_prediction, as the
        paper advises.
        """
        if self.T < 2:
            raise ValueError("rescale_zero_terminal_snr needs T >= 2: with one step abar_0 and abar_{T-1} coincide")
        return NoiseSchedule(zero_terminal_snr_betas(self.betas))

    def alphas_cumprod_at(self, t):
        """abar_t for a host int array t (B,), float64, with abar = 1 where t < 0.

        A negative index stands for "before the first step", where nothing has been noised yet
        (diffusers' set_alpha_to_one=True): the last reverse step lands there.
        """
        return np.where(t >= 0, self.alphas_cumprod[np.maximum(t, 0)], 1.0)

    def __len__(self):
        return self.T

    def __repr__(self):
        return f"NoiseSchedule(T={self.T}, betas={self.betas[0]:.3g}..{self.betas[-1]:.3g})"


_ARRAY_NAMES = (
    "betas", "alphas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
    "posterior_mean_coef1", "posterior_mean_coef2", "snr",
)


def _log_variance_clipped(posterior_variance):
    """log(posterior_variance) with index 0 (where it is 0) replaced by index 1.

    As the DDPM code and diffusers: the posterior variance at the first step is 0, so its log
    is taken from the next step. With T = 1 there is no next step: diffusers' floor 1e-20 is used.
    """
    if posterior_variance.shape[0] == 1:
        return np.log(np.maximum(posterior_variance, 1e-20))
    return np.log(np.concatenate([posterior_variance[1:2], posterior_variance[1:]]))


def _checked_betas(betas):
    """betas as a fresh float64 array of shape (T,), T >= 1, every beta finite and in (0, 1]."""
    if isinstance(betas, NoiseSchedule):
        raise TypeError("betas must be an array of betas; to copy a schedule pass schedule.betas")
    arr = np.array(betas, dtype=np.float64)  # a copy: the caller's array stays theirs
    if arr.ndim != 1:
        raise ValueError(f"betas must be a 1-D array of shape (T,), got shape {arr.shape}")
    if arr.shape[0] < 1:
        raise ValueError("betas must have at least one step (T >= 1), got an empty array")
    if np.isnan(arr).any():
        raise ValueError(f"betas contains NaN (at index {int(np.flatnonzero(np.isnan(arr))[0])})")
    bad = (arr <= 0) | (arr > 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"betas must lie in (0, 1], got betas[{i}] = {float(arr[i])}")
    return arr


def _check_strictly_decreasing(alphas_cumprod):
    """abar must strictly decrease: each step adds noise, and the posterior divides by 1 - abar."""
    if alphas_cumprod[0] >= 1:
        raise ValueError("alphas_cumprod[0] = 1 - betas[0] rounds to 1 in float64: betas[0] is too small")
    steps = np.diff(alphas_cumprod)
    if (steps >= 0).any():
        i = int(np.flatnonzero(steps >= 0)[0]) + 1
        raise ValueError(
            f"alphas_cumprod must strictly decrease, but alphas_cumprod[{i}] = {float(alphas_cumprod[i])} "
            f">= alphas_cumprod[{i - 1}] = {float(alphas_cumprod[i - 1])} "
            f"(a beta of 1 before the last step, a beta too small to count in float64, or underflow)"
        )
