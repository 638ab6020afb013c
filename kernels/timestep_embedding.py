"""Fused sinusoidal timestep embedding: (B,) timesteps -> (B, dim) float32 in one launch.

Twin: refdiff.gaussian.embedding.timestep_embedding (diffusers get_timestep_embedding layout).

    freq_i = exp(-ln(max_period) i / (half - downscale_freq_shift)),  i < half = dim // 2
             (float64 table from the reference's timestep_frequencies, cached per
             (half, max_period, shift) in kernels/_launch.py)
    angle  = scale t freq_i                                   float64, as the reference
    emb[b] = [sin(angle), cos(angle)]  ([cos, sin] if flip_sin_to_cos), + a zero column if dim is odd
    each value rounded once to float32, as the reference rounds its float64 result.

Napkin math, per output element: writes 4 B, reads one float64 frequency (8 B, from cache:
half * 8 B per block) and, per sample, t (8 B). Tiny next to a network; fused so that the
embedding costs one launch instead of six array ops.
"""
import math

import numpy as np
from numba import cuda

from refdiff import checks

from . import _launch


@cuda.jit
def _timestep_embedding_kernel(t, freqs, half, flip, scale, B, dim, emb):
    """Loops: samples b over grid y, columns j over grid x (both grid-stride)."""
    for b in range(cuda.blockIdx.y, B, cuda.gridDim.y):
        t_b = t[b] * 1.0  # float64, as the reference's t.astype(np.float64)
        for j in range(cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x, dim, cuda.gridDim.x * cuda.blockDim.x):
            if j >= 2 * half:  # the zero column of an odd dim
                emb[b * dim + j] = np.float32(0.0)
                continue
            i = j if j < half else j - half
            angle = scale * t_b * freqs[i]  # (scale t) freq, the reference's order
            use_sin = (j < half) != flip  # first half sin unless flipped
            emb[b * dim + j] = np.float32(math.sin(angle) if use_sin else math.cos(angle))


def timestep_embedding(t, dim, max_period=10000, flip_sin_to_cos=False, downscale_freq_shift=1, scale=1.0):
    """Sinusoidal embedding (B,) -> (B, dim) float32; twin of refdiff.timestep_embedding.

    t: 1-D integer or real array (B,): a CuPy array (NumPy under the simulator); a NumPy array
    is accepted on a GPU too and copied to the device. Returns a new (B, dim) float32 array.
    """
    dim, scale = checks.check_embedding_options(dim, max_period, downscale_freq_shift, scale)
    checks.check_timestep_vector(t)
    half = dim // 2
    # one dtype per kind reaches the kernel (compiled once for integer and once for real t)
    integer = np.issubdtype(np.dtype(t.dtype), np.integer)
    t = _launch.device_timesteps(t, np.int64 if integer else np.float64)
    freqs = _launch.frequency_table(half, max_period, downscale_freq_shift)
    B = int(t.shape[0])
    emb = _launch.empty((B, dim), np.float32)
    _launch.launch(
        _timestep_embedding_kernel, B, dim,
        _launch.device_view(t), freqs, half, bool(flip_sin_to_cos), scale, B, dim, _launch.output_view(_launch.flat(emb)),
    )
    return emb


# numba argument types of each launch above, one signature per @cuda.jit kernel (compiled once);
# read by refdiff.kernels.testing, checked against real launches by tests/test_kernels_launch.py
LAUNCH_SIGNATURES = {
    "_timestep_embedding_kernel": [  # integer and real timesteps: two compilations
        "int64[::1], float64[::1], int64, boolean, float64, int64, int64, float32[::1]",
        "float64[::1], float64[::1], int64, boolean, float64, int64, int64, float32[::1]",
    ],
}
