"""The sinusoidal timestep embedding that tells the network which step it is denoising.

    freq_i = exp(-ln(max_period) * i / (half - downscale_freq_shift)),   i = 0 .. half-1, half = dim // 2
    emb    = [sin(scale * t * freq), cos(scale * t * freq)]     (cos first if flip_sin_to_cos)

Vaswani et al. 2017, "Attention Is All You Need", sec. 3.5 (the transformer's positional
encoding), used on timesteps by DDPM (appendix B). The layout and arguments are those of
diffusers' get_timestep_embedding (DDPM's code uses downscale_freq_shift=1 and sin first;
flip_sin_to_cos=True, downscale_freq_shift=0 is the layout of diffusers' UNet2DModel default).
"""
import math

import numpy as np

from ..backend import array_module, to_numpy
from ..checks import check_embedding_options, check_timestep_vector


def timestep_frequencies(half_dim, max_period, downscale_freq_shift):
    """freq_i = exp(-ln(max_period) i / (half_dim - downscale_freq_shift)), float64 (half_dim,)."""
    exponent = -math.log(max_period) * np.arange(half_dim, dtype=np.float64)
    return np.exp(exponent / (half_dim - downscale_freq_shift))


def timestep_embedding(t, dim, max_period=10000, flip_sin_to_cos=False, downscale_freq_shift=1, scale=1.0):
    """Sinusoidal embedding of timesteps t: (B,) -> (B, dim) float32, as diffusers' get_timestep_embedding.

    t: 1-D array (B,) of integer (or real) timesteps; dim >= 1. The first dim // 2 columns hold
    sin(scale t freq), the next dim // 2 cos(scale t freq) (swapped if flip_sin_to_cos); an odd
    dim gets a last column of zeros. Computed in float64 and rounded once to float32 (diffusers
    computes in float32; the two agree to float32 rounding of the angle scale * t * freq).
    The result is a NumPy array, or a CuPy one for CuPy t (computed on the host here; the
    CUDA backend has a fused kernel for it).
    """
    dim, scale = check_embedding_options(dim, max_period, downscale_freq_shift, scale)
    xp = array_module(check_timestep_vector(t))  # the result lives where t lives
    t = to_numpy(t)

    half_dim = dim // 2
    freqs = timestep_frequencies(half_dim, max_period, downscale_freq_shift)  # (half,)
    angles = scale * t.astype(np.float64)[:, None] * freqs[None, :]  # (B, half)
    first, second = (np.cos(angles), np.sin(angles)) if flip_sin_to_cos else (np.sin(angles), np.cos(angles))
    emb = np.concatenate([first, second], axis=1)  # (B, 2 * half)
    if dim % 2 == 1:
        emb = np.concatenate([emb, np.zeros((t.shape[0], 1))], axis=1)  # zero pad to (B, dim)
    return xp.asarray(emb.astype(np.float32))
