"""Samplers: the reverse process as loops over the reference steps, and a registry of them.

A sampler turns pure noise x_T into a sample x_0 by calling the model at a sequence of timesteps
and applying one reverse update per call. Every sampler here is a generator function

    sampler(denoise, x, schedule, backend, rng, steps=None, **options)
        yields (t, x) after each update, the last x being the sample

    denoise(x_t, t) -> (model_output, model_output_uncond)
        the model evaluated at the int timestep t; model_output_uncond is None without
        classifier-free guidance, else the null-label output (the step combines the two:
        uncond + s * (cond - uncond), Ho & Salimans 2022 eq. 6)
    backend: refdiff.backend.Backend, whose fused ddpm_step / ddim_step are used (the reference
        functions on "numpy", the CUDA kernels on "cuda")
    rng: the backend's random generator, for the noise of stochastic steps

Samplers register under a name with @register_sampler("name") (registry.py), so a new one
(DPM-Solver++, Euler, ...) plugs into GaussianDiffusion.sample(sampler="name") without touching
the model or the diffusion class: one module per family, holding its step and its loop.

    registry.py    the name -> sampler table
    timesteps.py   which timesteps a sampler visits (spacings, steps_offset, (t, t_prev) pairs)
    common.py      the guided output, the clipped x_0, a noise draw
    ddpm.py        ddpm_step and sample_ddpm ("ddpm")
    ddim.py        ddim_step and sample_ddim ("ddim")

Timesteps are integers 0..T-1 (index t is the paper's step t+1); t_prev < 0 means "before the
first step" (abar_prev = 1).

References: DDPM (Ho et al. 2020) Algorithm 2; DDIM (Song et al. 2021) eq. 12; timestep
spacings as in diffusers (leading / trailing / linspace, steps_offset), Lin et al. 2023 Table 2.
"""
from .ddim import ddim_step, sample_ddim
from .ddpm import ddpm_step, sample_ddpm
from .registry import SAMPLERS, get_sampler, register_sampler
from .timesteps import inference_timesteps, previous_timestep, timestep_pairs

__all__ = [
    "SAMPLERS", "register_sampler", "get_sampler", "timestep_pairs", "inference_timesteps", "previous_timestep",
    "ddpm_step", "ddim_step", "sample_ddpm", "sample_ddim",
]
