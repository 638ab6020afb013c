"""Fused forward process: x_t, and the training target, in one pass over x_0 and the noise.

Twins: refdiff.gaussian.forward.q_sample and refdiff.gaussian.forward.q_sample_with_target.

    x_t    = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps                        DDPM eq. 4
    target = eps                                      prediction_type "epsilon"  (DDPM eq. 14)
           = x_0                                      "sample"
           = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0  "v_prediction"   (Salimans & Ho 2022, sec. 4)

sqrt(abar_t) and sqrt(1 - abar_t) are gathered per sample from float32 device tables of the
schedule (cached per schedule in kernels/_launch.py), rounded once from float64 as the reference
rounds them; t is read per sample from a (B,) array, or passed by value when it is an int.

Napkin math, per element of float32:
  q_sample              reads x_0, eps (8 B), writes x_t (4 B)              12 B
  q_sample_with_target  reads x_0, eps (8 B), writes x_t and target (8 B)   16 B
  (unfused: q_sample 12 B + target 8-12 B and a second launch)
Per sample: t (8 B) and two table entries (8 B), negligible beyond a handful of elements.
"""
import math

import numpy as np
from numba import cuda

from refdiff import checks
from refdiff.gaussian.parameterization import PREDICTION_CODES

from . import _launch
from ._device import v_from_x0_eps_formula, x_t_formula



@cuda.jit
def _q_sample_kernel(x0, noise, t, t_scalar, t_per_sample, sqrt_alphas_cumprod, sqrt_one_minus_alphas_cumprod,
                     T, target_code, B, N, x_t, target):
    """Loops: samples b over grid y, elements j of sample b over grid x (both grid-stride)."""
    for b in range(cuda.blockIdx.y, B, cuda.gridDim.y):
        tb = t[b] if t_per_sample else t_scalar
        if tb >= 0 and tb < T:
            sqrt_abar = sqrt_alphas_cumprod[tb]  # float32
            sqrt_one_minus_abar = sqrt_one_minus_alphas_cumprod[tb]
        else:  # a timestep outside the schedule (only possible for a device-side t): NaN out
            sqrt_abar = np.float32(math.nan)
            sqrt_one_minus_abar = np.float32(math.nan)
        base = b * N
        for j in range(cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x, N, cuda.gridDim.x * cuda.blockDim.x):
            x0_j = x0[base + j]
            eps_j = noise[base + j]
            x_t[base + j] = x_t_formula(x0_j, eps_j, sqrt_abar, sqrt_one_minus_abar)  # DDPM eq. 4
            if target_code == 0:
                target[base + j] = eps_j
            elif target_code == 1:
                target[base + j] = x0_j
            elif target_code == 2:
                target[base + j] = v_from_x0_eps_formula(x0_j, eps_j, sqrt_abar, sqrt_one_minus_abar)  # v


def _launch_q_sample(x0, t, noise, schedule, target_code):
    x0 = _launch.check_array(x0, "x0")
    noise = _launch.check_like(x0, noise, "x0", "noise")
    _launch.check_finite_if_debugging(x0, "x0")
    _launch.check_finite_if_debugging(noise, "noise")
    tables = _launch.schedule_tables(schedule)
    B, N = _launch.batch_and_size(x0)
    t = _launch.timestep_arg(t, tables.T, B)
    x_t = _launch.empty_like(x0)
    target = _launch.empty_like(x0) if target_code != _launch.TARGET_NONE else None
    view = _launch.device_view
    _launch.launch(
        _q_sample_kernel, B, N,
        view(_launch.flat(x0)), view(_launch.flat(noise)), t.array, t.scalar, t.per_sample,
        tables.sqrt_alphas_cumprod, tables.sqrt_one_minus_alphas_cumprod, tables.T, target_code, B, N,
        _launch.output_view(_launch.flat(x_t)),
        _launch.output_view(_launch.flat(target)) if target is not None else _launch.optional_array(None)[0],
    )
    return x_t, target


def q_sample(x0, t, noise, schedule):
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise (DDPM eq. 4), fused; twin of refdiff.q_sample.

    x0, noise: float32 C-contiguous (B, ...) CuPy arrays (NumPy under the simulator), same shape.
    t: int or int array (B,) in 0..T-1. Returns x_t, a new array like x0.
    """
    return _launch_q_sample(x0, t, noise, schedule, _launch.TARGET_NONE)[0]


def q_sample_with_target(x0, t, noise, schedule, prediction_type="epsilon"):
    """(x_t, target) in one pass; twin of refdiff.q_sample_with_target.

    target: noise ("epsilon"), x0 ("sample") or sqrt(abar_t) noise - sqrt(1 - abar_t) x0
    ("v_prediction"), a new array. Arguments as q_sample.
    """
    checks.check_prediction_type(prediction_type)
    return _launch_q_sample(x0, t, noise, schedule, PREDICTION_CODES[prediction_type])


# numba argument types of each launch above, one signature per @cuda.jit kernel (compiled once);
# read by refdiff.kernels.testing, checked against real launches by tests/test_kernels_launch.py
LAUNCH_SIGNATURES = {
    "_q_sample_kernel": [
        "float32[::1], float32[::1], int64[::1], int64, boolean, float32[::1], float32[::1], "
        "int64, int64, int64, int64, float32[::1], float32[::1]",
    ],
}
