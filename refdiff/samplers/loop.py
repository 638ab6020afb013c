"""sample_loop: any registered sampler, any process, any model given as a plain function.

    x_0 = rd.sample_loop(model, x_T, process_or_schedule, sampler="dpmpp_2m", steps=20, rng=None,
                         prediction_type="epsilon", **options)

- model(x, t): x in the scale the network was trained on (on a DDPM schedule x = sqrt(abar_t) x_0 +
  sqrt(1 - abar_t) eps: what diffusers hands the UNet after scale_model_input), t a Python float
  (ddpm, ddim: int) in the process's units; returns the output read by prediction_type:
  "epsilon", "sample", "v_prediction" or "flow" (the velocity u = eps - x_0).
- x_T: the start, in that scale, at the first time of the grid. rng: anything with NumPy
  Generator's standard_normal(size, dtype=...), drawn from step by step (stochastic samplers).
- options: the grid's (`sigmas` "default" | "karras" | "exponential" | an array, `spacing`,
  `steps_offset`; refdiff.samplers.grids), `callback`, and the sampler's own. An unknown option
  raises TypeError naming it and the valid ones.

What the loop does for a sampler on sigmas (k-diffusion's shape, fn(denoise, x, sigmas, rng, **opts)):
build the grid; convert x_T to the variance-exploding scale x / signal_scale = x_0 + sigma eps
(EDM sec. 2; k-diffusion's convention); hand the sampler `denoise(x, i)`, the x_0 prediction
D(x; sigmas[i]) (the model called at x signal_scale and time grid.times[i]); count the model
evaluations (NFE); return x_0 in the model's scale at the last grid time. The flow samplers get
x_T itself and `velocity(x, i)` (their ODE is written in the model's scale, as diffusers'
FlowMatchEulerDiscreteScheduler). ddpm and ddim keep their integer timesteps: the loop hands them
the schedule and a denoiser at int t and runs their generator.

`sigmas` reaches a sampler as a tuple of Python floats: NumPy scalars would promote a float32
state to float64 (NEP 50). denoise.scales(i) gives (signal_scale, noise_std) at grid point i
(DPM-Solver's alpha_t, sigma_t; process.scales_from_sigma), for the samplers written in them.
"""
import inspect

import numpy as np

from ..backend import get_backend
from ..checks import check_choice, check_float_array, check_model_output
from ..gaussian.parameterization import LOOP_PREDICTION_TYPES, eps_from_x0_formula, x0_from_model_output
from ..gaussian.process import DiscreteProcess, as_process
from ..gaussian.schedule import NoiseSchedule
from .common import guided
from .grids import build_grid, family_options
from .registry import sampler_spec, split_options


class Denoiser:
    """The model seen by a sampler on a grid: denoise(x, i) = D(x; sigmas[i]), the x_0 prediction.

    model_pair(x, t) -> (model_output, model_output_uncond or None): the model at its own scale and
    time; with an unconditional output, the output used is uncond + s (cond - uncond) (Ho & Salimans
    2022 eq. 6). nfe counts the model evaluations. backend: the Backend whose fused step kernels the
    samplers call (samplers.common.fused); None: the reference functions.
    """

    def __init__(self, model_pair, process, grid, prediction_type, guidance_scale=1.0, callback=None, backend=None):
        self.model_pair, self.process, self.grid, self.backend = model_pair, process, grid, backend
        self.prediction_type, self.guidance_scale, self.callback = prediction_type, guidance_scale, callback
        self.sigmas = tuple(float(s) for s in grid.sigmas)
        self.times = tuple(float(t) for t in grid.times)
        self.nfe = 0

    def scales(self, i):
        """(signal_scale, noise_std) at grid point i (process.scales_from_sigma), Python floats."""
        a, s = self.process.scales_from_sigma(self.sigmas[i])
        return float(a), float(s)

    def _output(self, x_model, t, i):
        out, uncond = self.model_pair(x_model, t)
        self.nfe += 1
        check_model_output(out, x_model, i, t)
        if uncond is not None:
            check_model_output(uncond, x_model, i, t)
        return guided(out, uncond, self.guidance_scale)

    def __call__(self, x, i):
        """D(x; sigmas[i]): x in the variance-exploding scale, the model called at x signal_scale, time times[i]."""
        return self.at(x, self.sigmas[i], self.times[i], i)

    def at(self, x, sigma, t=None, i=None):
        """D(x; sigma) at any noise level (t = process.t_from_sigma(sigma) unless given): for the
        samplers that evaluate off the grid (EDM Algorithm 2's churned sigma_hat)."""
        t = float(self.process.t_from_sigma(sigma)) if t is None else t
        a, s = (float(v) for v in self.process.scales_from_sigma(sigma))
        x_model = x * a
        out = self._output(x_model, t, i)
        denoised = x0_from_model_output(x_model, out, a, s, self.prediction_type)
        if self.callback is not None:
            self.callback(i, sigma, x_model, denoised)
        return denoised

    def velocity(self, x, i):
        """u(x, t_i) = eps - x_0 at grid point i, x in the model's scale (the flow samplers)."""
        t = self.times[i]
        a, s = float(self.process.signal_scale(t)), float(self.process.noise_std(t))
        out = self._output(x, t, i)
        if self.prediction_type == "flow":
            u = out
        else:
            x0 = x0_from_model_output(x, out, a, s, self.prediction_type)
            u = eps_from_x0_formula(x, x0, a, s) - x0
        if self.callback is not None:
            self.callback(i, self.sigmas[i], x, x - t * u)
        return u


def sample_loop(model, x_T, process, sampler="dpmpp_2m", steps=20, rng=None, prediction_type="epsilon", **options):
    """x_0 from x_T by `sampler` on `process` (a refdiff process or NoiseSchedule), the model given as
    model(x, t) -> output read by prediction_type; see the module docstring (the contract of
    refdiff/samplers; k-diffusion's sampler shape, EDM sec. 2's variance-exploding view).

    callback(i, sigma, x, denoised), if given, is called after every model evaluation with the grid
    index, the noise level, x in the model's scale and the x_0 prediction (ddpm, ddim: after every
    update, with the integer timestep in place of sigma and denoised None).
    Returns x_0 of x_T's shape and dtype.
    """
    x, _ = run_sampler(lambda x, t: (model(x, t), None), x_T, process, sampler, steps, rng, prediction_type,
                       **options)
    return x


def run_sampler(model_pair, x_T, process, sampler, steps, rng, prediction_type, backend=None, guidance_scale=1.0,
                defaults=None, on_step=None, **options):
    """sample_loop's work, with what GaussianDiffusion adds: a model giving (output, uncond output),
    the backend whose fused ddpm/ddim steps run, the guidance scale, option defaults for the samplers
    that declare them, and on_step(i, x) after update i (ddpm, ddim) or at each model evaluation at grid
    point i (the others; x in the model's scale).
    Returns (x_0, number of model evaluations)."""
    spec = sampler_spec(sampler)
    grid_options, sampler_options = split_options(spec, options)
    callback = options.get("callback")
    check_choice(prediction_type, LOOP_PREDICTION_TYPES, "prediction_type")
    check_float_array(x_T, "x_T")
    rng = np.random.default_rng() if rng is None else rng
    for name, value in (defaults or {}).items():
        if (name in spec.options or spec.takes_any) and name not in sampler_options:
            sampler_options[name] = value
    if spec.works_on == "timesteps":
        return _run_timestep_sampler(spec, model_pair, x_T, process, steps, rng, prediction_type, backend,
                                     guidance_scale, grid_options, sampler_options, callback, on_step)

    process = as_process(process)
    grid = build_grid(spec.grid, process, steps, **grid_options,
                      **{k: v for k, v in sampler_options.items() if k in family_options(spec.grid)})

    def hook(i, sigma, x_model, denoised):
        if on_step is not None and i is not None:
            on_step(i, x_model)
        if callback is not None:
            callback(i, sigma, x_model, denoised)

    denoise = Denoiser(model_pair, process, grid, prediction_type, guidance_scale, hook, backend)
    if spec.works_on == "velocity":
        x = spec.fn(denoise.velocity, x_T, denoise.times, rng, **sampler_options)
        return x.astype(x_T.dtype, copy=False), denoise.nfe
    if not np.isfinite(grid.sigmas[0]):
        raise ValueError(f"sampler {spec.name!r} works on x / signal_scale, which is infinite at the grid's first "
                         f"time (sigma = inf, the start of the flow path): use a flow sampler or finite sigmas")
    signal_scale_first, _ = denoise.scales(0)
    signal_scale_last, _ = denoise.scales(-1)
    x = spec.fn(denoise, x_T / signal_scale_first, denoise.sigmas, rng, **sampler_options)
    return (x * signal_scale_last).astype(x_T.dtype, copy=False), denoise.nfe


def _run_timestep_sampler(spec, model_pair, x_T, process, steps, rng, prediction_type, backend, guidance_scale,
                          grid_options, sampler_options, callback, on_step):
    """ddpm, ddim (and any sampler of their shape) on the schedule's integer timesteps."""
    if isinstance(process, DiscreteProcess):
        process = process.schedule
    if not isinstance(process, NoiseSchedule):
        raise TypeError(f"sampler {spec.name!r} runs on the integer timesteps of a NoiseSchedule, "
                        f"got {type(process).__name__}")
    if prediction_type == "flow":
        raise ValueError(f"sampler {spec.name!r} reads epsilon, sample or v_prediction outputs, not 'flow'")
    nfe = [0]

    def denoise(x_t, t):
        nfe[0] += 1
        return model_pair(x_t, t)

    loop_values = dict(steps=steps, spacing=grid_options.get("spacing") or "leading",
                       steps_offset=grid_options.get("steps_offset", 0), prediction_type=prediction_type,
                       guidance_scale=guidance_scale)
    declared = inspect.signature(spec.fn).parameters
    kwargs = {k: v for k, v in loop_values.items() if k in declared or spec.takes_any}
    kwargs.update(sampler_options)
    x = x_T
    backend = backend if backend is not None else get_backend("numpy")
    for i, (t, x) in enumerate(spec.fn(denoise, x_T, process, backend, rng, **kwargs)):
        if on_step is not None:
            on_step(i, x)
        if callback is not None:
            callback(i, t, x, None)
    return x, nfe[0]
