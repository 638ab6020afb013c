"""Samplers: the reverse process as loops over a grid of noise levels (or timesteps), and a registry of them.

A sampler turns pure noise x_T into a sample x_0 by calling the model along a grid and applying
one update per call. The public entry point takes any model as a plain function:

    x_0 = refdiff.sample_loop(model, x_T, process_or_schedule, sampler="euler", steps=20, rng=None,
                              prediction_type="epsilon", **options)

(loop.py's docstring is the contract). Two shapes of sampler register there (registry.py):

    on sigmas (k-diffusion's shape): fn(denoise, x, sigmas, rng, *, options) -> x
        x in the variance-exploding scale x / signal_scale = x_0 + sigma eps; denoise(x, i) the
        x_0 prediction at grid point i; options keyword-only (diffusers' names).
    on integer timesteps (ddpm, ddim): fn(denoise, x, schedule, backend, rng, steps=None, options)
        yields (t, x) after each update; denoise(x_t, t) -> (model_output, model_output_uncond)
        (uncond None without classifier-free guidance); backend: whose fused ddpm_step /
        ddim_step run (the reference on "numpy", the CUDA kernels on "cuda").

GaussianDiffusion.sample(sampler="name"), `refdiff sample --sampler name` and sample_loop all run
through loop.run_sampler, so a new sampler plugs in by registering: one module per family.

    registry.py     the name -> sampler table, each sampler's options read from its signature
    grids.py        sigma grids: "default" (diffusers' per family), "karras", "exponential", explicit
    loop.py         sample_loop / run_sampler: grid, scale conversion, the denoiser, NFE, callback
    timesteps.py    which timesteps ddpm/ddim visit (spacings, steps_offset, (t, t_prev) pairs)
    common.py       the guided output, the clipped x_0, a noise draw
    ddpm.py         ddpm_step and sample_ddpm ("ddpm")
    ddim.py         ddim_step and sample_ddim ("ddim")
    k_diffusion.py  euler, euler_ancestral, heun, lms (EDM, k-diffusion)
    flow.py         flow_euler, flow_heun on the flow-matching path
    dpm_solver.py   dpmpp_2m, dpmpp_3m, dpmpp_2m_sde, dpmpp_3m_sde, dpmpp_2s, dpmpp_3s (DPM-Solver++) and their grids
    unipc.py        unipc (UniPC, B(h) = e^-h - 1)
    score_sde.py    score_sde_euler, score_sde_pc, annealed_langevin (the reverse SDE, predictor-corrector, NCSN)
    consistency.py  consistency (Song et al. 2023 Algorithm 1: one step of a consistency model, or a few with re-noising)

Timesteps of ddpm/ddim are integers 0..T-1 (index t is the paper's step t+1); t_prev < 0 means
"before the first step" (abar_prev = 1).

References: DDPM (Ho et al. 2020) Algorithm 2; DDIM (Song et al. 2021) eq. 12; EDM (Karras et al.
2022) Algorithms 1-2; timestep spacings as in diffusers (leading / trailing / linspace,
steps_offset), Lin et al. 2023 Table 2.
"""
from .ddim import ddim_step, sample_ddim
from .ddpm import ddpm_step, sample_ddpm
from .registry import SAMPLERS, get_sampler, register_sampler, sampler_spec, valid_options
from .timesteps import inference_timesteps, previous_timestep, timestep_pairs
from . import flow, k_diffusion  # noqa: F401  (register euler, euler_ancestral, heun, lms, flow_euler, flow_heun)
from . import dpm_solver, unipc  # noqa: F401  (register dpmpp_2m, _3m, _2m_sde, _3m_sde, _2s, _3s, unipc)
from . import score_sde  # noqa: F401  (register score_sde_euler, score_sde_pc, annealed_langevin)
from . import consistency  # noqa: F401  (registers consistency and its grid)
from .grids import Grid, build_grid, exponential_sigmas, karras_sigmas
from .loop import sample_loop

__all__ = [
    "SAMPLERS", "register_sampler", "get_sampler", "timestep_pairs", "inference_timesteps", "previous_timestep",
    "ddpm_step", "ddim_step", "sample_ddpm", "sample_ddim", "sampler_spec", "valid_options",
    "Grid", "build_grid", "karras_sigmas", "exponential_sigmas", "sample_loop",
]
