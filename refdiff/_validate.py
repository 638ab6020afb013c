"""Input checks and per-sample coefficient plumbing shared by the math modules.

Nothing here is diffusion math. Every check raises a ValueError or TypeError whose message
names the argument and the problem (shape, dtype, range, NaN), so that a caller learns what to
fix. The helpers work on NumPy arrays and, where cheap, on CuPy arrays (through
`refdiff.backend.array_module`); timesteps always end up as a host NumPy int64 array because
the schedule's coefficient tables are host NumPy float64 arrays.
"""
import numbers

import numpy as np

from .backend import array_module

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def to_numpy(a):
    """`a` as a host NumPy array (CuPy arrays are copied from the device)."""
    if array_module(a) is not np:
        return a.get()
    return np.asarray(a)


def check_float_array(x, name):
    """`x` as an array of dtype float32 or float64 with at least one axis (the batch axis).

    Python lists and scalars are refused: the dtype of the result would be a guess.
    """
    if not hasattr(x, "dtype") or not hasattr(x, "shape"):
        raise TypeError(f"{name} must be a float32 or float64 array, got {type(x).__name__}")
    if np.dtype(x.dtype) not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {x.dtype}")
    if x.ndim < 1:
        raise ValueError(f"{name} must have shape (B, ...) with a batch axis, got a 0-d array")
    return x


def check_same_shape(a, b, name_a, name_b):
    """Raise unless `a` and `b` have the same shape."""
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"{name_b} must have the shape of {name_a} {tuple(a.shape)}, got {tuple(b.shape)}")


def check_same_dtype(a, b, name_a, name_b):
    """Raise unless `a` and `b` have the same dtype (results keep the dtype of the inputs)."""
    if a.dtype != b.dtype:
        raise TypeError(
            f"{name_b} must have the dtype of {name_a} ({a.dtype}), got {b.dtype}; "
            f"convert one of them with .astype()"
        )


def check_like(x, other, name_x, name_other):
    """`other` as a float array with the shape and dtype of `x`."""
    check_float_array(other, name_other)
    check_same_shape(x, other, name_x, name_other)
    check_same_dtype(x, other, name_x, name_other)
    if array_module(other) is not array_module(x):
        raise TypeError(f"{name_other} must live with {name_x} (both NumPy or both CuPy)")
    return other


def check_finite(x, name):
    """Raise if `x` holds a NaN or an infinity."""
    xp = array_module(x)
    if not bool(xp.isfinite(x).all()):
        kind = "NaN" if bool(xp.isnan(x).any()) else "inf"
        raise ValueError(f"{name} contains {kind}")
    return x


def check_float_dtype(dtype, name="dtype"):
    """`dtype` as a NumPy dtype, float32 or float64."""
    dtype = np.dtype(dtype)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {dtype}")
    return dtype


def check_choice(value, choices, name):
    """Raise unless `value` is one of `choices`."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_prediction_type(prediction_type):
    return check_choice(prediction_type, PREDICTION_TYPES, "prediction_type")


def check_positive_int(n, name, minimum=1):
    """`n` as a python int >= minimum (bools and floats refused)."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(n).__name__}")
    if n < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {n}")
    return int(n)


def check_timesteps(t, T, batch=None, name="t", allow_negative=False):
    """Integer timesteps as a host int64 array of shape (B,), each in 0..T-1.

    t: a python int or 0-d integer array (the same step for the whole batch, broadcast to
    `batch`) or an integer array of shape (batch,). Floats are refused even when integral:
    the schedule is indexed, not interpolated. With `allow_negative`, any negative value is
    allowed too (a previous timestep < 0 stands for "before the first step", abar = 1).
    With batch=None, t must be 1-D and defines the batch.
    """
    if isinstance(t, bool) or isinstance(t, np.bool_):
        raise TypeError(f"{name} must be an integer or an integer array, got a bool")
    if isinstance(t, numbers.Integral):
        t_arr = np.asarray(int(t), dtype=np.int64)
    elif hasattr(t, "dtype") and hasattr(t, "shape"):
        t_arr = to_numpy(t)
        if not np.issubdtype(t_arr.dtype, np.integer):
            raise TypeError(f"{name} must be an integer or an integer array, got dtype {t_arr.dtype}")
        t_arr = t_arr.astype(np.int64)
    else:
        raise TypeError(f"{name} must be an integer or an integer array, got {type(t).__name__}")

    if batch is None:
        if t_arr.ndim != 1:
            raise ValueError(f"{name} must have shape (B,), got {t_arr.shape}")
    elif t_arr.ndim == 0:
        t_arr = np.full((batch,), int(t_arr), dtype=np.int64)
    elif t_arr.shape != (batch,):
        raise ValueError(
            f"{name} must be an integer or have shape ({batch},) (one per sample), got shape {t_arr.shape}"
        )

    upper = t_arr >= T
    lower = np.zeros_like(upper) if allow_negative else t_arr < 0
    if upper.any() or lower.any():
        bad = t_arr[upper | lower][0]
        valid = f"< {T}" if allow_negative else f"in 0..{T - 1}"
        raise ValueError(f"{name} must be {valid} (the schedule has T={T} steps), got {bad}")
    return t_arr


def per_sample(values, x):
    """Per-sample coefficients (B,) as an array of x's dtype and array module, shape (B, 1, ..., 1).

    The coefficients come from the float64 schedule and are rounded once to x's dtype, so that
    `per_sample(c, x) * x` broadcasts over every axis but the batch axis.
    """
    xp = array_module(x)
    values = np.asarray(values, dtype=np.float64).astype(x.dtype)
    return xp.asarray(values).reshape((x.shape[0],) + (1,) * (x.ndim - 1))
