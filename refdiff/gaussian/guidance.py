"""Classifier-free guidance: one network, conditional and unconditional, combined at sampling.

    guided = uncond + s (cond - uncond)          Ho & Salimans 2022, eq. 6, with s = 1 + w

The paper writes (1 + w) cond - w uncond; diffusers' guidance_scale s = 1 + w, so s = 1 gives
the conditional output and s = 0 the unconditional one. The same combine works on any
prediction type (eps, x_0, v): it is linear.

Reference: Ho, Salimans 2022, Classifier-Free Diffusion Guidance, arXiv:2207.12598.
"""
from ..checks import check_float_array, check_like, check_real


def guided_output(cond, uncond, guidance_scale):
    """uncond + s (cond - uncond)   (Ho & Salimans 2022, eq. 6 with w = s - 1). Inputs trusted."""
    return uncond + guidance_scale * (cond - uncond)


def classifier_free_guidance(model_output_cond, model_output_uncond, guidance_scale):
    """Guided output = uncond + s (cond - uncond)   (Ho & Salimans 2022, eq. 6 with w = s - 1).

    Arrays (B, ...) of the same shape and dtype, no NaN/inf; guidance_scale a finite real
    number. Returns a new array of that dtype.
    """
    cond = check_float_array(model_output_cond, "model_output_cond")
    uncond = check_like(cond, model_output_uncond, "model_output_cond", "model_output_uncond")
    return guided_output(cond, uncond, check_real(guidance_scale, "guidance_scale"))
