"""Forward processes: q(x_t | x_0) = N(signal_scale(t) x_0, noise_std(t)^2 I), one description for all.

Every process of the library is this Gaussian marginal with its own two functions of time
(Kingma et al. 2021 (VDM) sec. 2; Lu et al. 2022 (DPM-Solver) sec. 2.1, who write alpha_t, sigma_t):

    x_t       = signal_scale(t) x_0 + noise_std(t) eps                  VDM eq. 1; DPM-Solver eq. 1
    sigma(t)  = noise_std(t) / signal_scale(t)                          EDM (Karras et al. 2022) sec. 2
    lambda_t  = log(signal_scale(t) / noise_std(t)) = -log sigma(t)     DPM-Solver eq. 3 (half log-SNR)

x_t / signal_scale(t) = x_0 + sigma(t) eps is the variance-exploding view of the same process: the
samplers of k-diffusion and EDM work on it, DPM-Solver++ and UniPC on (signal_scale, noise_std).
Every process here can give both, so one sampler runs on all of them.

    DiscreteProcess(schedule)   a DDPM NoiseSchedule; t an index 0..T-1, fractional t between
                                indices by interpolating log sigma (as diffusers' _sigma_to_t)
    VPLinearProcess             continuous VP SDE, beta(t) linear (Song et al. 2021, eq. 32-33)
    VPCosineProcess             continuous cosine schedule (Nichol & Dhariwal 2021 eq. 17; DPM-Solver app.)
    VEProcess                   variance exploding, geometric sigma (Song et al. 2021, eq. 30-31)
    EDMProcess                  sigma(t) = t, with the preconditioning c_skip, c_out, c_in, c_noise
                                (EDM Table 1)
    FlowProcess                 the rectified-flow / flow-matching path x_t = (1 - t) x_0 + t eps
                                (Liu et al. 2022 eq. 1; Lipman et al. 2023 eq. 20 with sigma_min = 0)

Methods take and return float64 (a number or an array; a number in, a float out): signal_scale(t),
noise_std(t), sigma(t), lambda_t(t), t_from_sigma(sigma) (the inverse of sigma(t)), t_from_lambda,
scales_from_sigma(sigma) = (signal_scale, noise_std) at the time of a given sigma. t_min and
t_max are the process's time range; sampling starts at t_max.

Conversions between eps, x_0, v, score and velocity are the *_formula functions of
refdiff.gaussian.parameterization, called with (signal_scale, noise_std) for (sqrt(abar), sqrt(1 - abar)).
"""
import math

import numpy as np

from ..checks import check_positive_real, check_process_range
from .schedule import NoiseSchedule

# diffusers' stand-in for abar_{T-1} = 0 (rescale_betas_zero_snr): sigma stays finite (~4096)
ZERO_SNR_ABAR = 2.0**-24


def _out(x, like):
    """float64 x, a Python float where `like` was a number."""
    return float(x) if np.ndim(like) == 0 else np.asarray(x, dtype=np.float64)


class Process:
    """The shared part: sigma, lambda and their inverses from signal_scale and noise_std.

    A subclass defines signal_scale(t), noise_std(t) and t_from_sigma(sigma); the rest follows.
    """

    t_min = 0.0
    t_max = 1.0
    # the flow path's x_t / signal_scale is infinite at t_max: its samplers work in the model's scale
    variance_preserving = True

    def sigma(self, t):
        """sigma(t) = noise_std(t) / signal_scale(t)   (EDM sec. 2: x_t / signal_scale = x_0 + sigma eps)."""
        return _out(np.asarray(self.noise_std(t)) / np.asarray(self.signal_scale(t)), t)

    def lambda_t(self, t):
        """lambda_t = log(signal_scale / noise_std) = -log sigma(t)   (DPM-Solver eq. 3)."""
        return _out(-np.log(np.asarray(self.sigma(t), dtype=np.float64)), t)

    def t_from_lambda(self, lam):
        """The inverse of lambda_t: t_from_sigma(exp(-lambda))   (DPM-Solver eq. 3 inverted, its app. D)."""
        return self.t_from_sigma(_out(np.exp(-np.asarray(lam, dtype=np.float64)), lam))

    def scales_from_sigma(self, sigma):
        """(signal_scale, noise_std) at the time whose noise level is sigma: on variance-preserving
        processes signal_scale = 1 / sqrt(1 + sigma^2) and noise_std = sigma signal_scale
        (signal_scale^2 + noise_std^2 = 1, DPM-Solver sec. 2.1)."""
        s = np.asarray(sigma, dtype=np.float64)
        signal_scale = 1 / np.sqrt(1 + s * s)
        return _out(signal_scale, sigma), _out(s * signal_scale, sigma)

    @property
    def sigma_min(self):
        return self.sigma(self.t_min)

    @property
    def sigma_max(self):
        return self.sigma(self.t_max)


class DiscreteProcess(Process):
    """A DDPM NoiseSchedule as a process: t an index 0..T-1, fractional t by log-sigma interpolation.

    signal_scale(k) = sqrt(abar_k), noise_std(k) = sqrt(1 - abar_k) at an integer k (DDPM eq. 4);
    between two indices log sigma is interpolated linearly, and t_from_sigma is diffusers'
    _sigma_to_t (EulerDiscreteScheduler), its exact inverse on [sigma_0, sigma_{T-1}]. Below
    sigma_0 t_from_sigma returns 0, above sigma_{T-1} it returns T - 1 (as diffusers clips).

    Zero terminal SNR (abar_{T-1} = 0, Lin et al. 2023): as diffusers' Euler schedulers, abar_{T-1}
    is replaced by 2^-24 in the sigma table so that sigma_{T-1} (~4096) and lambda stay finite;
    signal_scale(T-1) is then 2^-12 instead of 0. Where abar_{T-2} < 2^-24 already (the linear schedule
    rescaled), the table is no longer monotone at its end, and t_from_sigma finds what diffusers finds.
    """

    def __init__(self, schedule):
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"DiscreteProcess needs a NoiseSchedule, got {type(schedule).__name__}")
        self.schedule = schedule
        self.T = schedule.T
        self.t_min, self.t_max = 0.0, float(schedule.T - 1)
        abar = np.array(schedule.alphas_cumprod)
        if abar[-1] == 0:  # zero terminal SNR: diffusers' 2^-24
            abar[-1] = ZERO_SNR_ABAR
        self.alphas_cumprod = abar
        # sigma_k = sqrt((1 - abar_k) / abar_k), ascending in k     (EDM sec. 2 on a DDPM schedule)
        self.sigmas = np.sqrt((1 - abar) / abar)
        self.log_sigmas = np.log(self.sigmas)
        for a in (self.alphas_cumprod, self.sigmas, self.log_sigmas):
            a.setflags(write=False)

    def _log_sigma(self, t):
        """log sigma at (fractional) indices t: linear interpolation of the table."""
        t = check_process_range(t, self.t_min, self.t_max, "t")
        return np.interp(t, np.arange(self.T, dtype=np.float64), self.log_sigmas)

    def sigma(self, t):
        """sigma(t) = sqrt((1 - abar_t) / abar_t) at an index; log sigma interpolated between indices
        (the inverse of diffusers' _sigma_to_t)."""
        return _out(np.exp(self._log_sigma(t)), t)

    def signal_scale(self, t):
        """sqrt(abar_t) = 1 / sqrt(1 + sigma(t)^2)   (DDPM eq. 4; between indices from the interpolated sigma)."""
        return self.scales_from_sigma(self.sigma(t))[0]

    def noise_std(self, t):
        """sqrt(1 - abar_t) = sigma(t) / sqrt(1 + sigma(t)^2)   (DDPM eq. 4)."""
        return self.scales_from_sigma(self.sigma(t))[1]

    def t_from_sigma(self, sigma):
        """The fractional index of a noise level sigma: diffusers' _sigma_to_t.

        low = the last index with log sigma_low <= log sigma (clipped to 0..T-2), then
        w = (log sigma_low - log sigma) / (log sigma_low - log sigma_{low+1}) clipped to [0, 1],
        t = (1 - w) low + w (low + 1). sigma = 0 gives t = 0.
        """
        if self.T == 1:
            return _out(np.zeros(np.shape(sigma)), sigma)
        log_sigma = np.log(np.maximum(np.asarray(sigma, dtype=np.float64), 1e-10))
        below = self.log_sigmas.reshape((-1,) + (1,) * log_sigma.ndim) <= log_sigma  # (T, ...)
        # the last such index (diffusers' cumsum().argmax(); the table may be non-monotone at a zero-SNR end)
        low = np.where(below.any(axis=0), self.T - 1 - np.argmax(below[::-1], axis=0), 0)
        low = np.clip(low, 0, self.T - 2)
        w = (self.log_sigmas[low] - log_sigma) / (self.log_sigmas[low] - self.log_sigmas[low + 1])
        w = np.clip(w, 0, 1)
        return _out((1 - w) * low + w * (low + 1), sigma)

    def __repr__(self):
        return f"DiscreteProcess({self.schedule!r})"


class VPProcess(Process):
    """A continuous variance-preserving process, given by its log signal scale log alpha_t:
    noise_std^2 = 1 - signal_scale^2 (Song et al. 2021, sec. 3.4, the VP SDE). Subclasses
    define log_signal_scale(t) and t_from_sigma(sigma)."""

    def signal_scale(self, t):
        """exp(log_signal_scale(t))   (Song et al. 2021, eq. 33: the mean coefficient of q(x_t | x_0))."""
        return _out(np.exp(self.log_signal_scale(t)), t)

    def noise_std(self, t):
        """sqrt(1 - signal_scale^2), as sqrt(-expm1(2 log_signal_scale)) for accuracy near t = 0   (Song et al. 2021, eq. 33)."""
        return _out(np.sqrt(-np.expm1(2 * self.log_signal_scale(t))), t)

    def sigma(self, t):
        """sqrt(1 / signal_scale^2 - 1) = sqrt(expm1(-2 log_signal_scale))   (EDM Table 1, VP column)."""
        return _out(np.sqrt(np.expm1(-2 * self.log_signal_scale(t))), t)


class VPLinearProcess(VPProcess):
    """The VP SDE with linear beta(t) = beta_min + t (beta_max - beta_min), t in [t_min, 1].

    log signal_scale(t) = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2   (Song et al. 2021, eq. 33:
    the mean coefficient exp(-1/2 int_0^t beta(s) ds)); noise_std = sqrt(1 - signal_scale^2).
    Defaults beta_min = 0.1, beta_max = 20 (Song et al. 2021 app. C); t_min = 1e-3 (DPM-Solver sec. 5).
    """

    def __init__(self, beta_min=0.1, beta_max=20.0, t_min=1e-3):
        self.beta_min = check_positive_real(beta_min, "beta_min")
        self.beta_max = check_positive_real(beta_max, "beta_max")
        if self.beta_max < self.beta_min:
            raise ValueError(f"beta_max must be >= beta_min, got {beta_max} < {beta_min}")
        self.t_min, self.t_max = check_positive_real(t_min, "t_min"), 1.0

    def beta(self, t):
        """beta(t) = beta_min + t (beta_max - beta_min)   (Song et al. 2021, eq. 32's beta(t))."""
        return _out(self.beta_min + np.asarray(t, dtype=np.float64) * (self.beta_max - self.beta_min), t)

    def log_signal_scale(self, t):
        """-1/2 int_0^t beta(s) ds = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2   (Song et al. 2021, eq. 33)."""
        t = np.asarray(t, dtype=np.float64)
        return -0.25 * t * t * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def t_from_sigma(self, sigma):
        """The root of (beta_max - beta_min) t^2 / 2 + beta_min t = log(1 + sigma^2)
        (DPM-Solver app. D's inverse of lambda for the linear VP)."""
        s = np.asarray(sigma, dtype=np.float64)
        d = self.beta_max - self.beta_min
        rhs = np.log1p(s * s)
        if d == 0:
            return _out(rhs / self.beta_min, sigma)
        return _out(2 * rhs / (self.beta_min + np.sqrt(self.beta_min**2 + 2 * d * rhs)), sigma)


class VPCosineProcess(VPProcess):
    """The cosine schedule in continuous time: signal_scale(t)^2 = f(t) / f(0),
    f(t) = cos^2((t + s) / (1 + s) pi / 2)   (Nichol & Dhariwal 2021 eq. 17; DPM-Solver app. D).

    t in [t_min, t_max] with t_max = 0.9946 (DPM-Solver's choice: lambda stays finite and the
    schedule avoids the singularity at t = 1); s = 0.008.
    """

    def __init__(self, s=0.008, t_min=1e-3, t_max=0.9946):
        self.s = float(s)
        self.t_min, self.t_max = float(t_min), float(t_max)
        if not 0 < self.t_min < self.t_max < 1:
            raise ValueError(f"need 0 < t_min < t_max < 1, got t_min={t_min}, t_max={t_max}")
        self._log_cos_0 = math.log(math.cos(self.s / (1 + self.s) * math.pi / 2))

    def log_signal_scale(self, t):
        """log cos((t + s) / (1 + s) pi / 2) - log cos(s / (1 + s) pi / 2)   (DPM-Solver app. D)."""
        t = np.asarray(t, dtype=np.float64)
        return np.log(np.cos((t + self.s) / (1 + self.s) * np.pi / 2)) - self._log_cos_0

    def t_from_sigma(self, sigma):
        """t = 2 (1 + s) / pi arccos(exp(log_signal_scale + log cos(s pi / (2 (1 + s))))) - s,
        log_signal_scale = -log(1 + sigma^2) / 2   (DPM-Solver app. D)."""
        s = np.asarray(sigma, dtype=np.float64)
        log_alpha = -0.5 * np.log1p(s * s)
        return _out(2 * (1 + self.s) / np.pi * np.arccos(np.exp(log_alpha + self._log_cos_0)) - self.s, sigma)


class VEProcess(Process):
    """Variance exploding: signal_scale = 1, noise_std = sigma(t) = sigma_min (sigma_max / sigma_min)^t,
    t in [0, 1]   (Song et al. 2021, eq. 30-31, SMLD's geometric noise levels). Defaults 0.01, 50."""

    variance_preserving = False

    def __init__(self, sigma_min=0.01, sigma_max=50.0):
        self._sigma_min = check_positive_real(sigma_min, "sigma_min")
        self._sigma_max = check_positive_real(sigma_max, "sigma_max")
        if self._sigma_max <= self._sigma_min:
            raise ValueError(f"sigma_max must exceed sigma_min, got {sigma_max} <= {sigma_min}")
        self.t_min, self.t_max = 0.0, 1.0

    def signal_scale(self, t):
        """1   (Song et al. 2021, eq. 30: the VE SDE has no drift)."""
        return _out(np.ones(np.shape(t)), t)

    def noise_std(self, t):
        """sigma_min (sigma_max / sigma_min)^t   (Song et al. 2021, eq. 31)."""
        return _out(self._sigma_min * (self._sigma_max / self._sigma_min) ** np.asarray(t, dtype=np.float64), t)

    def t_from_sigma(self, sigma):
        """log(sigma / sigma_min) / log(sigma_max / sigma_min)   (Song et al. 2021, eq. 31 inverted)."""
        s = np.asarray(sigma, dtype=np.float64)
        return _out(np.log(s / self._sigma_min) / math.log(self._sigma_max / self._sigma_min), sigma)

    def scales_from_sigma(self, sigma):
        """(1, sigma): no signal scaling on a variance-exploding process (EDM Table 1, VE column)."""
        return _out(np.ones(np.shape(sigma)), sigma), _out(np.asarray(sigma, dtype=np.float64), sigma)


class EDMProcess(VEProcess):
    """EDM: sigma(t) = t, signal_scale = 1, t in [sigma_min, sigma_max] = [0.002, 80]   (EDM Table 1).

    The network F is preconditioned as D(x; sigma) = c_skip x + c_out F(c_in x, c_noise) (EDM eq. 7)
    with the coefficients of EDM Table 1 (sigma_data = 0.5); `denoised` applies them.
    """

    def __init__(self, sigma_min=0.002, sigma_max=80.0, sigma_data=0.5):
        super().__init__(sigma_min, sigma_max)
        self.sigma_data = check_positive_real(sigma_data, "sigma_data")
        self.t_min, self.t_max = self._sigma_min, self._sigma_max

    def noise_std(self, t):
        """sigma(t) = t   (EDM Table 1, "Our" column)."""
        return _out(np.asarray(t, dtype=np.float64), t)

    def t_from_sigma(self, sigma):
        """t = sigma   (EDM Table 1)."""
        return _out(np.asarray(sigma, dtype=np.float64), sigma)

    def c_skip(self, sigma):
        """sigma_data^2 / (sigma^2 + sigma_data^2)   (EDM Table 1)."""
        s = np.asarray(sigma, dtype=np.float64)
        return _out(self.sigma_data**2 / (s * s + self.sigma_data**2), sigma)

    def c_out(self, sigma):
        """sigma sigma_data / sqrt(sigma^2 + sigma_data^2)   (EDM Table 1)."""
        s = np.asarray(sigma, dtype=np.float64)
        return _out(s * self.sigma_data / np.sqrt(s * s + self.sigma_data**2), sigma)

    def c_in(self, sigma):
        """1 / sqrt(sigma^2 + sigma_data^2)   (EDM Table 1)."""
        s = np.asarray(sigma, dtype=np.float64)
        return _out(1 / np.sqrt(s * s + self.sigma_data**2), sigma)

    def c_noise(self, sigma):
        """log(sigma) / 4   (EDM Table 1)."""
        return _out(0.25 * np.log(np.asarray(sigma, dtype=np.float64)), sigma)

    def denoised(self, x, network_output, sigma):
        """D(x; sigma) = c_skip(sigma) x + c_out(sigma) F   (EDM eq. 7), F = network(c_in x, c_noise)."""
        return self.c_skip(sigma) * x + self.c_out(sigma) * network_output


class FlowProcess(Process):
    """The rectified-flow / flow-matching path: signal_scale = 1 - t, noise_std = t, t in [0, 1]
    (Liu et al. 2022 eq. 1; Lipman et al. 2023 eq. 20 with sigma_min = 0; Esser et al. 2024 sec. 2).

    sigma(t) = t / (1 - t) is infinite at t = 1, where sampling starts: the flow samplers work on x in
    the model's scale with the velocity u = eps - x_0 (prediction_type "flow"), as diffusers'
    FlowMatchEulerDiscreteScheduler. Model time is t in [0, 1] (diffusers hands its transformer
    num_train_timesteps t). num_train_timesteps and shift set the default grid as diffusers' do.
    """

    variance_preserving = False

    def __init__(self, num_train_timesteps=1000, shift=1.0):
        self.num_train_timesteps = check_positive_real(num_train_timesteps, "num_train_timesteps")
        self.shift = check_positive_real(shift, "shift")
        self.t_min, self.t_max = 0.0, 1.0

    def shifted(self, t):
        """shift t / (1 + (shift - 1) t): more time at high noise for shift > 1 (Esser et al. 2024
        sec. 5.3.2, eq. 23; diffusers FlowMatchEulerDiscreteScheduler's `shift`)."""
        t = np.asarray(t, dtype=np.float64)
        return self.shift * t / (1 + (self.shift - 1) * t)

    def signal_scale(self, t):
        """1 - t   (Liu et al. 2022 eq. 1)."""
        return _out(1 - np.asarray(t, dtype=np.float64), t)

    def noise_std(self, t):
        """t   (Liu et al. 2022 eq. 1)."""
        return _out(np.asarray(t, dtype=np.float64), t)

    def sigma(self, t):
        """t / (1 - t) (infinite at t = 1)   (EDM sec. 2 on the flow path)."""
        t_arr = np.asarray(t, dtype=np.float64)
        with np.errstate(divide="ignore"):
            return _out(t_arr / (1 - t_arr), t)

    def t_from_sigma(self, sigma):
        """t = sigma / (1 + sigma) (t = 1 for sigma = inf)   (Liu et al. 2022 eq. 1 inverted)."""
        s = np.asarray(sigma, dtype=np.float64)
        return _out(np.where(np.isinf(s), 1.0, s / (1 + np.where(np.isinf(s), 0, s))), sigma)

    def scales_from_sigma(self, sigma):
        """(1 / (1 + sigma), sigma / (1 + sigma)): signal_scale + noise_std = 1 on the flow path
        (Liu et al. 2022 eq. 1)."""
        t = np.asarray(self.t_from_sigma(sigma), dtype=np.float64)
        return _out(1 - t, sigma), _out(t, sigma)


def as_process(process_or_schedule):
    """A Process as is, a NoiseSchedule wrapped as DiscreteProcess (DDPM eq. 4 as a process, diffusers' _sigma_to_t)."""
    if isinstance(process_or_schedule, Process):
        return process_or_schedule
    if isinstance(process_or_schedule, NoiseSchedule):
        return DiscreteProcess(process_or_schedule)
    raise TypeError(f"expected a refdiff process or NoiseSchedule, got {type(process_or_schedule).__name__}")
