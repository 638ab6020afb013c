"""Sigma grids: the noise levels a sampler visits, and the model time at each.

A grid is two arrays of N + 1 entries for N steps: `sigmas`, descending noise levels sigma_0 > ... >
sigma_N (usually sigma_N = 0), and `times`, the process time at which the model is called for each
sigma (the entry under sigma_N = 0 is never used by a model call).

    "karras"       sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,
                   rho = 7                                                   EDM (Karras et al. 2022) eq. 5
    "exponential"  log sigma_i evenly spaced from log sigma_max to log sigma_min   (k-diffusion
                   get_sigmas_exponential)
    "default"      the grid diffusers' scheduler of the sampler's family builds with its defaults
    an array       taken literally: sigma_N included, the model called at process.t_from_sigma(sigma_i)

Named grids reproduce diffusers sampler family by sampler family (each family registers its builder
with @register_grid_family). The "euler" family (diffusers' Euler, EulerAncestral, Heun and LMS
discrete schedulers) on a DDPM schedule: timesteps by `spacing` ("linspace" by default, unrounded),
sigma at each by *linear* interpolation of the sigma table (diffusers' interpolation_type="linear"),
then for "karras" / "exponential" new sigmas between the ends of that grid, each called at
diffusers' _sigma_to_t (log-sigma interpolation: process.t_from_sigma). diffusers keeps these
tables in float32; refdiff in float64.

Continuous processes (VP, VE, EDM) have no diffusers scheduler: "default" is uniform in time from
t_max to t_min (DPM-Solver's "time_uniform"), "karras" and "exponential" run between sigma(t_min)
and sigma(t_max).
"""
import inspect
from dataclasses import dataclass

import numpy as np

from ..checks import check_choice, check_num_steps, check_positive_int, check_sigma_grid
from ..gaussian.process import DiscreteProcess, FlowProcess
from .timesteps import SPACINGS, inference_timesteps

NAMED_GRIDS = ("default", "karras", "exponential")
GRID_OPTIONS = ("sigmas", "spacing", "steps_offset")
GRID_FAMILIES = {}


@dataclass(frozen=True)
class Grid:
    """sigmas (N + 1,) descending noise levels; times (N + 1,) the model time at each (float64)."""

    sigmas: np.ndarray
    times: np.ndarray

    @property
    def steps(self):
        return len(self.sigmas) - 1


def register_grid_family(name):
    """Decorator: register fn(process, steps, kind, spacing, steps_offset[, *options]) -> Grid as family
    `name`; keyword parameters past the five are sampler options that shape the grid (family_options)."""

    def register(fn):
        GRID_FAMILIES[name] = fn
        return fn

    return register


def karras_sigmas(sigma_min, sigma_max, n, rho=7.0):
    """n noise levels from sigma_max to sigma_min, evenly spaced in sigma^(1/rho)   (EDM eq. 5, rho = 7)."""
    ramp = np.linspace(0, 1, n)
    max_inv_rho, min_inv_rho = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def exponential_sigmas(sigma_min, sigma_max, n):
    """n noise levels from sigma_max to sigma_min, evenly spaced in log sigma (k-diffusion
    get_sigmas_exponential; diffusers' _convert_to_exponential)."""
    return np.exp(np.linspace(np.log(sigma_max), np.log(sigma_min), n))


def spacing_timesteps(steps, T, spacing, steps_offset):
    """The descending (float) timesteps of diffusers' Euler-family set_timesteps: "linspace" is
    linspace(0, T - 1, steps) unrounded; "leading" and "trailing" as refdiff.inference_timesteps."""
    if spacing == "linspace":
        return np.linspace(0, T - 1, steps)[::-1].copy()
    return inference_timesteps(steps, T, spacing, steps_offset).astype(np.float64)


def family_options(family):
    """The sampler options a grid family's builder also takes (its keyword parameters after the five
    of register_grid_family, e.g. the DPM-Solver family's final_sigmas_type): the loop hands them over."""
    return tuple(inspect.signature(GRID_FAMILIES[family]).parameters)[5:] if family in GRID_FAMILIES else ()


def build_grid(family, process, steps, sigmas="default", spacing=None, steps_offset=0, **options):
    """The Grid of a sampler family on a process: a named grid built by the family's rule, or an
    explicit array of sigmas taken literally. steps must be None or len(sigmas) - 1 for an array.
    options: the family's own (family_options), for named grids only."""
    if not isinstance(sigmas, str):
        if options:
            raise ValueError(f"{', '.join(options)} shapes a named grid; an explicit sigmas array is taken "
                             f"literally (its last entry is the final sigma)")
        sigmas = check_sigma_grid(sigmas)
        if steps is not None and check_positive_int(steps, "steps") != len(sigmas) - 1:
            raise ValueError(f"steps={steps} but the explicit sigmas hold {len(sigmas) - 1} steps "
                             f"(len(sigmas) - 1); pass steps=None with an explicit grid")
        return explicit_grid(process, sigmas)
    check_choice(sigmas, NAMED_GRIDS, "sigmas")
    if spacing is not None:
        check_choice(spacing, SPACINGS, "spacing")
    steps_offset = check_positive_int(steps_offset, "steps_offset", minimum=0)
    if steps is None:
        raise ValueError("steps is needed with a named grid (sigmas='default', 'karras' or 'exponential')")
    steps = check_positive_int(steps, "steps")
    if isinstance(process, DiscreteProcess):
        steps = check_num_steps(steps, process.T, "steps")
    return GRID_FAMILIES[family](process, steps, sigmas, spacing, steps_offset, **options)


def explicit_grid(process, sigmas):
    """The given sigmas, each called at the exact (float) t = process.t_from_sigma(sigma).

    On a DDPM schedule every nonzero sigma must lie within the schedule's [sigma_0, sigma_{T-1}]:
    outside it diffusers' _sigma_to_t clips t, and the model would be called at another noise level.
    """
    if isinstance(process, DiscreteProcess):
        lo, hi = process.sigmas[0], process.sigmas[-1]
        positive = sigmas[sigmas > 0]
        bad = positive[(positive > hi * (1 + 1e-9)) | (positive < lo * (1 - 1e-9))]
        if bad.size:
            raise ValueError(f"sigmas must lie in the schedule's range [{lo:.6g}, {hi:.6g}] (or be 0), got {bad[0]!r}")
    return Grid(sigmas, _times(process, sigmas))


def _times(process, sigmas):
    """process.t_from_sigma of each sigma; where that is undefined (sigma = 0 on VE), t_min."""
    with np.errstate(divide="ignore", invalid="ignore"):
        times = np.asarray(process.t_from_sigma(sigmas), dtype=np.float64)
    return np.where(np.isfinite(times), times, process.t_min)


def _named(process, kind, sigma_min, sigma_max, steps):
    """karras or exponential sigmas between sigma_min and sigma_max, with their times (no final 0)."""
    make = karras_sigmas if kind == "karras" else exponential_sigmas
    sigmas = make(sigma_min, sigma_max, steps)
    return sigmas, _times(process, sigmas)


def continuous_grid(process, steps, kind):
    """A grid on a continuous process: "default" uniform in t from t_max to t_min (DPM-Solver sec. 3.3,
    "time_uniform"), "karras" / "exponential" between sigma(t_min) and sigma(t_max); then sigma = 0."""
    if kind == "default":
        times = np.linspace(process.t_max, process.t_min, steps)
        sigmas = np.asarray(process.sigma(times), dtype=np.float64)
    else:
        sigmas, times = _named(process, kind, process.sigma_min, process.sigma_max, steps)
    return Grid(np.append(sigmas, 0.0), np.append(times, _times(process, np.zeros(1))))


@register_grid_family("euler")
def euler_grid(process, steps, kind, spacing, steps_offset):
    """diffusers' EulerDiscreteScheduler.set_timesteps (also Euler ancestral, Heun, LMS) on a DDPM
    schedule: timesteps by spacing (default "linspace"), sigmas linear in the sigma table
    (np.interp), "karras"/"exponential" between that grid's ends at _sigma_to_t; final sigma 0."""
    if not isinstance(process, DiscreteProcess):
        return continuous_grid(process, steps, kind)
    times = spacing_timesteps(steps, process.T, spacing or "linspace", steps_offset)
    sigmas = np.interp(times, np.arange(process.T, dtype=np.float64), process.sigmas)
    if kind != "default":
        sigmas, times = _named(process, kind, sigmas[-1], sigmas[0], steps)
    return Grid(np.append(sigmas, 0.0), np.append(times, 0.0))


@register_grid_family("flow")
def flow_grid(process, steps, kind, spacing, steps_offset):
    """diffusers' FlowMatchEulerDiscreteScheduler.set_timesteps: flow times t_i evenly spaced from 1 to
    shifted(1 / num_train_timesteps), then shifted t -> shift t / (1 + (shift - 1) t), "karras"/"exponential"
    re-spaced between those ends *in t* (diffusers' quirk: it treats the flow time as the sigma),
    then t = 0. The grid's sigmas are the noise levels t / (1 - t) of those times (inf at t = 1)."""
    if not isinstance(process, FlowProcess):
        raise ValueError(f"the flow samplers need a FlowProcess, got {type(process).__name__}")
    if spacing is not None:
        raise ValueError("spacing applies to DDPM schedules; the flow grid is set by steps (and the process's shift)")
    # diffusers: t runs from the shifted training range's ends, then is shifted again (so the low end
    # is shifted twice: a quirk kept for parity; shift = 1 is unaffected)
    times = np.linspace(1.0, float(process.shifted(1.0 / process.num_train_timesteps)), steps)
    times = process.shifted(times)
    if kind == "karras":
        times = karras_sigmas(times[-1], times[0], steps)
    elif kind == "exponential":
        times = exponential_sigmas(times[-1], times[0], steps)
    times = np.append(times, 0.0)
    return Grid(np.asarray(process.sigma(times), dtype=np.float64), times)
