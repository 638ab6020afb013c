"""The sampler registry: a name -> sampler function table that sample_loop, GaussianDiffusion and the CLI read.

A sampler registers under a name, and its options are read from its signature:

    @register_sampler("euler", grid="euler")
    def sample_euler(denoise, x, sigmas, rng, *, s_churn=0.0, ...):   # options: keyword-only parameters

    grid        the grid family that builds its named grids (refdiff.samplers.grids); None for the
                samplers on integer timesteps (ddpm, ddim: fn(denoise, x, schedule, backend, rng,
                steps=None, <options>) yielding (t, x) after each update)
    works_on    "denoised" (x in k-diffusion's scale x / signal_scale, denoise(x, i) the x_0
                prediction at grid point i), "velocity" (x in the model's scale, velocity(x, i)
                the flow-matching velocity; the flow samplers) or "timesteps" (ddpm, ddim)

An option that neither the loop, the grid nor the sampler takes is refused with a TypeError that
names it (and the sampler that owns it, if one does) and lists the valid ones.
"""
import inspect
from dataclasses import dataclass

from ..checks import check_sampler_options

SAMPLERS = {}

# what sample_loop itself takes besides the grid options (refdiff.samplers.loop)
LOOP_OPTIONS = ("callback",)
# the parameters of a timestep sampler that the loop fills in itself
_TIMESTEP_LOOP_PARAMS = ("denoise", "x", "schedule", "backend", "rng", "steps", "spacing", "steps_offset",
                         "prediction_type", "guidance_scale", "first_step")
_GRID_OPTIONS = ("sigmas", "spacing", "steps_offset")


@dataclass(frozen=True)
class SamplerSpec:
    """What the loop knows of a sampler: its name, grid family, what it works on and its options
    (name -> default)."""

    name: str
    fn: object
    grid: str
    works_on: str
    options: dict
    takes_any: bool = False  # a timestep sampler with **options (kept for old plug-ins)

    def grid_options(self):
        return ("spacing", "steps_offset") if self.works_on == "timesteps" else _GRID_OPTIONS


def register_sampler(name, grid=None, works_on=None):
    """Decorator: register a sampler function under `name` (replacing any previous one).

    grid: the grid family (refdiff.samplers.grids) for a sampler on sigmas; None for a sampler on
    integer timesteps (the ddpm/ddim shape). works_on: "denoised" (default with a grid) or "velocity".
    """
    if grid is None and works_on not in (None, "timesteps"):
        raise ValueError(f"a sampler that works on {works_on!r} needs a grid family")
    kind = "timesteps" if grid is None else (works_on or "denoised")
    if kind not in ("timesteps", "denoised", "velocity"):
        raise ValueError(f"works_on must be 'denoised' or 'velocity', got {works_on!r}")

    def register(fn):
        fn.sampler_spec = _spec(name, fn, grid, kind)
        SAMPLERS[name] = fn
        return fn

    return register


def _spec(name, fn, grid, kind):
    params = inspect.signature(fn).parameters.values()
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params)
    if kind == "timesteps":
        options = {p.name: p.default for p in params
                   if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in _TIMESTEP_LOOP_PARAMS}
    else:
        if takes_any:
            raise TypeError(f"sampler {name!r} takes **options: declare its options as keyword-only parameters")
        options = {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY}
    return SamplerSpec(name, fn, grid, kind, options, takes_any)


def get_sampler(name):
    """The sampler registered as `name` (a function is returned as is); a clear error lists the known names."""
    if callable(name):
        return name
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}: registered samplers are {sorted(SAMPLERS)}")
    return SAMPLERS[name]


def sampler_spec(name):
    """The SamplerSpec of a registered name or a sampler function (an unregistered function is read
    as a timestep sampler, the ddpm/ddim shape)."""
    fn = get_sampler(name)
    spec = getattr(fn, "sampler_spec", None)
    if spec is None:
        spec = _spec(getattr(fn, "__name__", "custom"), fn, None, "timesteps")
    return spec


def split_options(spec, options):
    """(grid options, sampler options) of a call; TypeError for an option nobody takes."""
    grid_names = spec.grid_options()
    if not spec.takes_any:
        owners = {}
        for other in SAMPLERS.values():
            other_spec = getattr(other, "sampler_spec", None)
            for o in (other_spec.options if other_spec else ()):
                owners.setdefault(o, []).append(other_spec.name)
        check_sampler_options(spec.name, options, {"sample_loop": LOOP_OPTIONS, "grid": grid_names,
                                                   spec.name: tuple(spec.options)}, owners)
    grid = {k: v for k, v in options.items() if k in grid_names}
    rest = {k: v for k, v in options.items() if k not in grid_names and k not in LOOP_OPTIONS}
    return grid, rest


def valid_options(name):
    """Every option a call with sampler `name` accepts: the loop's, the grid's and the sampler's."""
    spec = sampler_spec(name)
    return tuple(LOOP_OPTIONS) + tuple(spec.grid_options()) + tuple(spec.options)
