"""Consistency sampling: one step of a consistency model, or a few with re-noising in between.

Song, Dhariwal, Chen, Sutskever 2023, Consistency Models (arXiv:2303.01469), Algorithm 1, in the
variance-exploding scale x = x_0 + sigma z of the samplers on sigmas (refdiff.samplers.loop):

    x = f(x_T, sigma_0)                                  x_T ~ N(0, sigma_0^2 I) (one step)
    for sigma_i = sigma_1, sigma_2, ... (> 0):
        x_i = x + sqrt(sigma_i^2 - sigma_min^2) z        z ~ N(0, I)
        x = f(x_i, sigma_i)

The model's output is read as f itself: a consistency model is a model of prediction type "sample"
(refdiff.consistency.ConsistencyDistillation gives it so). sigma_min is the model's epsilon (its
boundary, where f(x, sigma_min) = x); ConsistencyDistillation.sample passes its own.

The "consistency" grid: for N steps, the first N levels of a Karras grid (rho = 7, EDM eq. 5) of N + 1
levels from sigma_max down to sigma_min, then 0: one step is sigma_max alone, and no step is spent
at sigma_min, where f is the identity. An explicit sigmas array is taken literally (the paper picks
its two-step time by hand: 80 then 0.821 on CIFAR-10).
"""
import numpy as np

from ..gaussian.consistency import renoise_std
from .common import draw_noise
from .grids import Grid, _named, _times, register_grid_family
from .registry import register_sampler


@register_grid_family("consistency")
def consistency_grid(process, steps, kind, spacing, steps_offset):
    """The first `steps` levels of a Karras ("default", "karras") or exponential grid of steps + 1 levels
    from process.sigma_max to process.sigma_min, then 0 (Algorithm 1's times)."""
    sigmas, times = _named(process, "exponential" if kind == "exponential" else "karras",
                           float(process.sigma_min), float(process.sigma_max), steps + 1)
    return Grid(np.append(sigmas[:-1], 0.0), np.append(times[:-1], _times(process, np.zeros(1))))


@register_sampler("consistency", grid="consistency")
def sample_consistency(denoise, x, sigmas, rng, *, sigma_min=0.0):
    """Multistep consistency sampling (Algorithm 1): f at sigmas[0], then for each later sigma > 0 re-noise
    x + sqrt(sigma^2 - sigma_min^2) z and apply f again. One evaluation per step."""
    x = denoise(x, 0)
    for i in range(1, len(sigmas)):
        if sigmas[i] == 0:
            break
        x = x + renoise_std(sigmas[i], sigma_min) * draw_noise(rng, x)
        x = denoise(x, i)
    return x
