"""Small pieces every reverse step shares: the guided output, the clipped x_0, a noise draw, the fused step.

Each is a few lines of plumbing around one equation that lives elsewhere (guidance in
refdiff.gaussian.guidance); the steps in ddpm.py and ddim.py read as their papers' equations.
"""
from ..backend import array_module
from ..gaussian.guidance import guided_output


def guided(model_output, model_output_uncond, guidance_scale):
    """The output a step uses: the model output, or uncond + s (cond - uncond) when uncond is given
    (classifier-free guidance, Ho & Salimans 2022 eq. 6)."""
    if model_output_uncond is None:
        return model_output
    return guided_output(model_output, model_output_uncond, guidance_scale)


def clipped(x0_pred, clip_sample, clip_sample_range):
    """x_0 clipped to [-clip_sample_range, clip_sample_range] if clip_sample (diffusers' clip_sample)."""
    if not clip_sample:
        return x0_pred
    return array_module(x0_pred).clip(x0_pred, -clip_sample_range, clip_sample_range)


def draw_noise(rng, x):
    """A standard normal array of x's shape and dtype from the generator rng."""
    return rng.standard_normal(x.shape, dtype=x.dtype)


def fused(denoise, twin):
    """The function that computes `twin`'s step here: on a device backend, the fused kernel that
    refdiff.kernels.TWINS registers as twin's (one launch instead of one per array operation),
    else twin itself. denoise.backend is the Backend the model runs on (None for a plain function
    given to sample_loop, where the arrays are NumPy's)."""
    backend = getattr(denoise, "backend", None)
    return twin if backend is None else getattr(backend, twin.__name__)
