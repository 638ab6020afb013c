"""Every input check of refdiff, once: the reference and the kernels' launchers call these.

Nothing here is diffusion math. Every check raises a ValueError or TypeError whose message
names the argument and the problem (shape, dtype, range, NaN), so that a caller learns what to
fix. The math modules call one check line and then write the equations; the kernel launchers
(kernels/_launch.py) call the same functions and add only what is theirs (float32, contiguity,
the device). Timesteps always end up as a host NumPy int64 array because the schedule's
coefficient tables are host NumPy float64 arrays.

Checks and the device (the rule for the whole package, kernels included)
  - Shape and dtype checks always run: they read metadata, which lives on the host.
  - Checks of array *values* (a range, NaN/inf) run where the values are free to read: on host
    data (NumPy arrays, Python numbers and lists) always. On a device (CuPy) array they are
    skipped, because reading a value means a device-to-host copy that waits for the GPU (a host
    synchronisation per call, and an error inside CUDA-graph capture). Set the environment
    variable REFDIFF_KERNEL_CHECKS=1 to run them on device arrays too (debugging; it syncs).
  - `value_checks_on(a)` answers "may I read the values of `a`?"; the model input helpers
    below (`model_timesteps`, `model_labels`) and the kernels' launchers follow it.
  - A device input is passed on as it is (no copy); host data given to a model whose
    parameters live on the device is checked on the host and copied to the device once.
"""
import math
import numbers
import os

import numpy as np

from .backend import array_module, is_device_array, to_numpy

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
VARIANCE_TYPES = ("fixed_small", "fixed_large", "learned", "learned_range")
LEARNED_VARIANCE_TYPES = ("learned", "learned_range")  # the model outputs 2C channels [eps-or-other, v]

# REFDIFF_KERNEL_CHECKS=1: also check values on device arrays (see the module docstring).
# Read once at import, like the other switches of the kernels.
DEVICE_CHECKS = os.environ.get("REFDIFF_KERNEL_CHECKS", "0") == "1"


# ---- arrays ----------------------------------------------------------------------------------


def value_checks_on(a):
    """True when the values of `a` are to be checked: host data always, a device array only with
    REFDIFF_KERNEL_CHECKS=1 (reading device values synchronises the host with the GPU)."""
    return DEVICE_CHECKS or not is_device_array(a)


def check_float_array(x, name):
    """`x` as an array of dtype float32 or float64 with at least one axis (the batch axis), with
    no NaN or inf where value_checks_on(x).

    Python lists and scalars are refused: the dtype of the result would be a guess. Integer,
    bool, complex and object arrays are refused too (no silent conversion).
    """
    if not hasattr(x, "dtype") or not hasattr(x, "shape"):
        raise TypeError(f"{name} must be a float32 or float64 array, got {type(x).__name__}")
    if np.dtype(x.dtype) not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {x.dtype}")
    if x.ndim < 1:
        raise ValueError(f"{name} must have shape (B, ...) with a batch axis, got a 0-d array")
    if value_checks_on(x):
        check_finite(x, name)
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
    if is_device_array(other) != is_device_array(x):
        raise TypeError(f"{name_other} must live with {name_x} (both NumPy or both CuPy)")
    return other


def check_finite(x, name):
    """Raise if `x` holds a NaN or an infinity."""
    xp = array_module(x)
    if not bool(xp.isfinite(x).all()):
        if bool(xp.isnan(x).any()):
            raise ValueError(f"{name} contains NaN or inf (a NaN)")
        raise ValueError(f"{name} contains inf")
    return x


# ---- numbers and options ---------------------------------------------------------------------


def check_positive_int(n, name, minimum=1):
    """`n` as a python int >= minimum (bools and floats refused)."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(n).__name__}")
    if n < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {n}")
    return int(n)


def check_optional_positive_int(n, name, minimum=1):
    """None, or `n` as a python int >= minimum (check_positive_int). For options where None means
    "derive it"; 0 is refused rather than taken for None."""
    return None if n is None else check_positive_int(n, name, minimum)


def check_seed(seed, name="seed"):
    """A seed as a python int >= 0 (bools, floats and None refused)."""
    return check_positive_int(seed, name, minimum=0)


def check_positive_ints(values, name, minimum=1):
    """A non-empty sequence of ints >= minimum, as a tuple (each entry checked, named by index)."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{name} must be a sequence of integers, got {type(values).__name__}")
    values = tuple(values)
    if not values:
        raise ValueError(f"{name} must not be empty")
    return tuple(check_positive_int(v, f"{name}[{i}]", minimum) for i, v in enumerate(values))


def check_int_sequence(values, name, minimum=1):
    """A possibly empty sequence of ints >= minimum, as a tuple."""
    return check_positive_ints(values, name, minimum) if values is not None and len(tuple(values)) else ()


def check_bool(value, name):
    """`value` as a python bool (True/False or a NumPy bool; 0, 1 and strings refused)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_probability(value, name, open_high=False):
    """`value` as a float in [0, 1] ([0, 1) with open_high)."""
    value = check_real(value, name)
    if not (0.0 <= value < 1.0 if open_high else 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must lie in [0, 1{')' if open_high else ']'}, got {value}")
    return value


def check_nonnegative_real(value, name):
    """`value` as a finite python float >= 0."""
    value = check_real(value, name)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def check_real(value, name):
    """`value` as a finite python float (bools refused)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    return float(value)


def check_positive_real(value, name):
    """`value` as a finite python float > 0."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not (
            math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_choice(value, choices, name):
    """Raise unless `value` is one of `choices`."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_global_batch(batch_size, world_size):
    """Raise unless the global batch divides evenly among the `world_size` data-parallel processes
    (each trains on batch_size / world_size samples of every global batch)."""
    batch_size = check_positive_int(batch_size, "batch_size")
    if batch_size % world_size:
        raise ValueError(
            f"batch_size {batch_size} (the global batch) does not divide by the {world_size} processes: "
            f"choose a multiple of {world_size} (each process then trains on batch_size / {world_size})")
    return batch_size


def check_choice_int(value, choices, name):
    """Raise unless `value` is an integer (not a bool) among `choices`."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return int(value)


def check_prediction_type(prediction_type):
    """One of "epsilon", "sample", "v_prediction" (diffusers' prediction_type)."""
    return check_choice(prediction_type, PREDICTION_TYPES, "prediction_type")


def check_variance_type(variance_type):
    """One of "fixed_small" (beta tilde), "fixed_large" (beta), "learned" or "learned_range" (the
    model's extra C channels: improved DDPM sec. 3.1), diffusers' variance_type."""
    return check_choice(variance_type, VARIANCE_TYPES, "variance_type")


def check_fixed_variance_type(variance_type, where):
    """A fixed variance type ("fixed_small" or "fixed_large"): `where` (a fused kernel, say) has no
    learned variance."""
    check_variance_type(variance_type)
    if variance_type in LEARNED_VARIANCE_TYPES:
        raise ValueError(f"variance_type={variance_type!r} is not supported by {where}: use 'fixed_small' or 'fixed_large'")
    return variance_type


def check_learned_output(model_output, channels, name="model_output"):
    """A model output with 2C channels on axis 1 (C = channels, the data's): [eps-or-other, v]
    (improved DDPM sec. 3.1; diffusers' DDPMScheduler.step splits there)."""
    shape = getattr(model_output, "shape", ())
    if len(shape) < 2 or shape[1] != 2 * channels:
        raise ValueError(f"{name} must have 2 x {channels} = {2 * channels} channels on axis 1 for a learned "
                         f"variance (the output, then v), got shape {tuple(shape)}")
    return model_output


# ---- timesteps -------------------------------------------------------------------------------


def check_integer_timesteps(t, name="t"):
    """Raise unless `t` is an integer or an integer array (host or device); bools refused."""
    if isinstance(t, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer or an integer array, got a bool")
    if hasattr(t, "dtype") and hasattr(t, "shape"):
        if not np.issubdtype(np.dtype(t.dtype), np.integer):
            raise TypeError(f"{name} must be an integer or an integer array, got dtype {t.dtype}")
    elif not isinstance(t, numbers.Integral):
        raise TypeError(f"{name} must be an integer or an integer array, got {type(t).__name__}")
    return t


def check_per_sample_shape(t, batch, name="t"):
    """Raise unless the timestep array `t` has shape (batch,): one timestep per sample."""
    if tuple(t.shape) != (batch,):
        raise ValueError(f"{name} must be an integer or have shape ({batch},) (one per sample), got shape {tuple(t.shape)}")


def check_timestep_range(t, T, name="t", allow_negative=False):
    """Every entry of the host int array `t` in 0..T-1 (or < T with `allow_negative`)."""
    upper = t >= T
    lower = np.zeros_like(upper) if allow_negative else t < 0
    if upper.any() or lower.any():
        bad = t[upper | lower][0]
        valid = f"< {T}" if allow_negative else f"in 0..{T - 1}"
        raise ValueError(f"{name} must be {valid} (the schedule has T={T} steps), got {bad}")


def check_timesteps(t, T, batch=None, name="t", allow_negative=False):
    """Integer timesteps as a host int64 array of shape (B,), each in 0..T-1.

    t: a python int or 0-d integer array (the same step for the whole batch, broadcast to
    `batch`) or an integer array of shape (batch,). Floats are refused even when integral:
    the schedule is indexed, not interpolated. With `allow_negative`, any negative value is
    allowed too (a previous timestep < 0 stands for "before the first step", abar = 1).
    With batch=None, t must be 1-D and defines the batch.
    """
    check_integer_timesteps(t, name)
    t_arr = np.asarray(int(t), dtype=np.int64) if isinstance(t, numbers.Integral) else to_numpy(t).astype(np.int64)

    if batch is None:
        if t_arr.ndim != 1:
            raise ValueError(f"{name} must have shape (B,), got {t_arr.shape}")
    elif t_arr.ndim == 0:
        t_arr = np.full((batch,), int(t_arr), dtype=np.int64)
    else:
        check_per_sample_shape(t_arr, batch, name)

    check_timestep_range(t_arr, T, name, allow_negative)
    return t_arr


def check_num_steps(num_steps, T, name="num_steps"):
    """The number of sampling steps as an int in 1..T (a sampler visits distinct timesteps of the
    T-step training schedule)."""
    num_steps = check_positive_int(num_steps, name)
    if num_steps > T:
        raise ValueError(f"{name} must be an integer in [1, T={T}]: {name}={num_steps} exceeds the T={T} steps "
                         f"of the training schedule")
    return num_steps


def check_t_prev_below_t(t, t_prev):
    """Every t_prev < t (a reverse step goes back in time); t, t_prev host int arrays (B,)."""
    bad = t_prev >= t
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"t_prev must be smaller than t (a reverse step), got t={t[i]}, t_prev={t_prev[i]} at sample {i}"
        )


# ---- a reverse step (the reference steps and the fused kernels) ------------------------------


def check_step_arrays(x_t, model_output, noise, model_output_uncond):
    """The arrays of a reverse step: x_t a float array (B, ...); model_output, and noise and
    model_output_uncond where given, of its shape and dtype; none holds NaN or inf."""
    x_t = check_float_array(x_t, "x_t")  # finite where value_checks_on, like the others
    model_output = check_like(x_t, model_output, "x_t", "model_output")
    if noise is not None:
        noise = check_like(x_t, noise, "x_t", "noise")
    if model_output_uncond is not None:
        model_output_uncond = check_like(x_t, model_output_uncond, "x_t", "model_output_uncond")
    return x_t, model_output, noise, model_output_uncond


def check_step_options(prediction_type, clip_sample, clip_sample_range, guidance_scale, model_output_uncond):
    """(clip_sample, clip_sample_range, guidance_scale) of a reverse step, checked; the
    prediction type too. Shared by the reference steps and the fused kernels."""
    check_prediction_type(prediction_type)
    clip_sample, clip_sample_range = check_clip(clip_sample, clip_sample_range)
    return clip_sample, clip_sample_range, check_guidance_scale(guidance_scale, model_output_uncond)


def check_step_timesteps(t, t_prev, T, batch):
    """(t, t_prev) of a reverse step as host int64 arrays (B,): t in 0..T-1, t_prev < t
    (negative allowed: before the first step); t_prev None means t - 1."""
    t = check_timesteps(t, T, batch)
    if t_prev is None:
        return t, t - 1
    t_prev = check_timesteps(t_prev, T, batch, name="t_prev", allow_negative=True)
    check_t_prev_below_t(t, t_prev)
    return t, t_prev


def check_clip(clip_sample, clip_sample_range):
    """(clip_sample, clip_sample_range) as (bool, float): the x_0 clipping options of a reverse step."""
    if not isinstance(clip_sample, (bool, np.bool_)):
        raise TypeError(f"clip_sample must be True or False, got {clip_sample!r}")
    clip_sample_range = check_real(clip_sample_range, "clip_sample_range")
    if clip_sample and clip_sample_range <= 0:
        raise ValueError(f"clip_sample_range must be > 0, got {clip_sample_range}")
    return bool(clip_sample), clip_sample_range


def check_guidance_scale(guidance_scale, model_output_uncond):
    """guidance_scale as a float; a scale other than 1 needs the unconditional output."""
    guidance_scale = check_real(guidance_scale, "guidance_scale")
    if model_output_uncond is None and guidance_scale != 1.0:
        raise ValueError(
            f"guidance_scale={guidance_scale!r} needs model_output_uncond (the unconditional output); "
            f"without it, leave guidance_scale at 1.0"
        )
    return guidance_scale


def check_eta(eta):
    """DDIM's eta as a float in [0, 1]: 0 is deterministic DDIM, 1 has the DDPM posterior variance."""
    eta = check_real(eta, "eta")
    if not 0 <= eta <= 1:
        raise ValueError(f"eta must lie in [0, 1] (0: DDIM, 1: DDPM variance), got {eta}")
    return eta


def check_t_prev_given(t_prev):
    """A DDIM step needs the timestep it lands on."""
    if t_prev is None:
        raise ValueError("ddim_step needs t_prev (e.g. samplers.timesteps.previous_timestep(t, num_steps, T))")


def check_noise_given(noise, needed, when):
    """Raise if a step needs noise (`needed` True) and none was given; `when` says when it is needed."""
    if noise is None and needed:
        raise ValueError(f"noise is needed {when}")


# ---- processes, grids and the sampler loop (refdiff.gaussian.process, refdiff.samplers.loop) ----


def check_process_range(t, t_min, t_max, name="t"):
    """Times of a process as a float64 array, each finite and in [t_min, t_max]."""
    arr = np.asarray(t, dtype=np.float64)
    bad = ~np.isfinite(arr) | (arr < t_min) | (arr > t_max)
    if bad.any():
        raise ValueError(f"{name} must lie in [{t_min:g}, {t_max:g}] (the process's time range), "
                         f"got {arr[bad].ravel()[0]!r}")
    return arr


def check_sigma_grid(sigmas, name="sigmas"):
    """An explicit sigma grid as a float64 array (N + 1,), N >= 1: finite (the first entry may be
    inf on the flow path), >= 0, strictly decreasing (a sampler goes from noise to data)."""
    arr = np.array(to_numpy(sigmas) if is_device_array(sigmas) else sigmas, dtype=np.float64)
    if arr.ndim != 1 or arr.shape[0] < 2:
        raise ValueError(f"{name} must be a 1-D array of at least 2 noise levels (start .. end), got shape {arr.shape}")
    if np.isnan(arr).any() or np.isinf(arr[1:]).any() or (arr < 0).any():
        raise ValueError(f"{name} must hold finite noise levels >= 0, got {arr.tolist()}")
    steps = np.diff(arr)
    if (steps >= 0).any():
        i = int(np.flatnonzero(steps >= 0)[0])
        raise ValueError(f"{name} must be strictly decreasing (from noise to data), but {name}[{i + 1}] = "
                         f"{arr[i + 1]!r} >= {name}[{i}] = {arr[i]!r}")
    return arr


def check_sampler_options(name, given, valid, owners):
    """Raise TypeError for an option no part of the loop takes: it names the option, the sampler
    that owns it (if any) and the valid ones. given: the option names; valid: {part: names};
    owners: {option: [samplers that take it]}."""
    allowed = {o for names in valid.values() for o in names}
    unknown = [o for o in given if o not in allowed]
    if not unknown:
        return
    o = unknown[0]
    owned = f" (an option of {', '.join(sorted(owners[o]))}, not of {name!r})" if owners.get(o) else ""
    lists = "; ".join(f"{part}: {', '.join(sorted(names)) or '-'}" for part, names in valid.items())
    raise TypeError(f"sampler {name!r} got an unexpected option {o!r}{owned}. Valid options: {lists}")


def check_model_output(out, x, i, t):
    """The model's output at grid point i (time t): an array of x's shape, no NaN or inf."""
    if not hasattr(out, "shape") or tuple(out.shape) != tuple(x.shape):
        raise ValueError(f"the model's output at step {i} (t={t!r}) must have x's shape {tuple(x.shape)}, "
                         f"got {getattr(out, 'shape', type(out).__name__)}")
    if value_checks_on(out):
        xp = array_module(out)
        if not bool(xp.isfinite(out).all()):
            raise FloatingPointError(f"the model returned NaN or inf at step {i} (t={t!r})")
    return out


# ---- the sinusoidal timestep embedding -------------------------------------------------------


def check_embedding_options(dim, max_period, downscale_freq_shift, scale):
    """(dim, scale) of timestep_embedding checked: dim >= 1, max_period > 0, the frequency
    denominator dim // 2 - downscale_freq_shift not 0, scale finite."""
    dim = check_positive_int(dim, "dim")
    check_positive_real(max_period, "max_period")
    check_real(downscale_freq_shift, "downscale_freq_shift")
    half_dim = dim // 2
    if half_dim > 0 and half_dim == downscale_freq_shift:
        raise ValueError(
            f"dim={dim} with downscale_freq_shift={downscale_freq_shift} divides by zero "
            f"(dim // 2 - downscale_freq_shift = 0): use a larger dim or downscale_freq_shift=0"
        )
    return dim, check_real(scale, "scale")


def check_timestep_vector(t, name="t"):
    """A 1-D array (B,) of integer or real timesteps (the embedding's input), NaN/inf refused
    where value_checks_on(t)."""
    if not hasattr(t, "dtype") or not hasattr(t, "shape"):
        raise TypeError(f"{name} must be a 1-D array of timesteps of shape (B,), got {type(t).__name__}")
    if t.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of timesteps of shape (B,), got shape {tuple(t.shape)}")
    kind = np.dtype(t.dtype)
    if not (np.issubdtype(kind, np.integer) or np.issubdtype(kind, np.floating)):
        raise TypeError(f"{name} must hold integer or real timesteps, got dtype {t.dtype}")
    if value_checks_on(t):
        check_finite(t, name)
    return t


# ---- the inputs of a network: timesteps and class labels --------------------------------------
# Both follow the rule of the module docstring: shapes and dtypes are always checked, values
# only where value_checks_on() allows, and a device array goes through without a copy.


def model_timesteps(t, B, xp, name="timesteps t"):
    """Timesteps given to a network, as an array of `xp` of shape (B,) for its sinusoidal embedding.

    t: a number (the same step for the whole batch), or an integer or real array of shape (B,)
    (host or device). Values are checked to be finite where value_checks_on() allows.
    """
    t = _batch(t, B, xp, name)
    if not (np.issubdtype(np.dtype(t.dtype), np.integer) or np.issubdtype(np.dtype(t.dtype), np.floating)):
        raise TypeError(f"{name} must hold integer or real timesteps, got dtype {t.dtype}")
    if value_checks_on(t):
        check_finite(t, name)
    return _on(xp, t, B)


def check_class_labels(y, n, num_classes, name="y"):
    """Class labels a user asks for, as a host int64 array (n,), or None.

    y: None (no labels: an unconditional request), a label, or an integer array of shape (n,)
    (host or device) with values in 0..num_classes-1. The null label num_classes is refused
    here: it is how the library itself asks the network for its unconditional output
    (classifier-free guidance, label dropout), and a user asks for that with y=None. The
    network's own input check, model_labels below, accepts it.
    """
    if y is None:
        return None
    if num_classes is None:
        raise ValueError(f"{name} given but the model is unconditional (num_classes=None)")
    if isinstance(y, (bool, np.bool_)):
        raise TypeError(f"{name} must be integer class labels, got a bool")
    y = np.asarray(y if isinstance(y, numbers.Integral) else to_numpy(y))
    if y.ndim == 0:
        y = np.full(n, int(y))
    if y.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} must be integer class labels, got dtype {y.dtype}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{name} must be class labels in [0, {num_classes}), got range [{y.min()}, {y.max()}]")
    return y.astype(np.int64)


def model_labels(y, B, num_classes, xp, name="class labels y"):
    """Class labels given to a class-conditional network, as an int array of `xp` of shape (B,).

    y: None (every sample gets the null label num_classes, i.e. unconditional), a label, or an
    integer array of shape (B,) (host or device) with values in 0..num_classes, checked where
    value_checks_on() allows. Label num_classes is the null label of classifier-free guidance.
    """
    if y is None:
        return xp.full((B,), num_classes, dtype=np.int64)  # the null label (filled where xp lives)
    y = _batch(y, B, xp, name)
    if not np.issubdtype(np.dtype(y.dtype), np.integer):
        raise TypeError(f"{name} must be integers, got dtype {y.dtype}")
    if value_checks_on(y):
        check_index_range(y, num_classes + 1, name, f" ({num_classes} = the null label)")
    return _on(xp, y, B)


def check_index_range(idx, n, name, note=""):
    """Raise unless every value of the integer array `idx` is in 0..n-1 (reads the values: call it
    only where value_checks_on(idx))."""
    if idx.size and (bool((idx < 0).any()) or bool((idx >= n).any())):
        raise ValueError(f"{name} must be in [0, {n - 1}]{note}, got values in [{int(idx.min())}, {int(idx.max())}]")


def _batch(a, B, xp, name):
    """`a` (a number, a list, or a 0-d or (B,) array) with its shape checked, still where it lives:
    host data as a NumPy array (a number as a 0-d one), a device array as it is (a 0-d one
    broadcast to (B,) on the device)."""
    if is_device_array(a):
        if xp is np:
            raise TypeError(f"{name} is a CuPy array but the model's parameters are NumPy arrays: "
                            f"pass a NumPy array, or move the model to the GPU (backend='cuda')")
        if a.ndim == 0:
            return xp.broadcast_to(a, (B,))
    else:
        a = np.asarray(a)
        if a.ndim == 0:
            return a
    if tuple(a.shape) != (B,):
        raise ValueError(f"{name} must be a scalar or have shape ({B},), got shape {tuple(a.shape)}")
    return a


def _on(xp, a, B):
    """A checked batch input as an array of `xp` of shape (B,): a device array as it is, a host
    number filled in on the device (no copy), a host array copied once."""
    if is_device_array(a):
        return a
    if a.ndim == 0:
        return xp.full((B,), a.item(), dtype=a.dtype)
    return xp.asarray(a)


# ---- the Gaussian mixture (refdiff.gaussian.mixture) -------------------------------------------


def check_mixture(weights, means, covariances):
    """(weights (K,), means (K, d), covariances (K, d, d)) of a Gaussian mixture as fresh float64
    arrays: K >= 1 components, weights > 0 summing to 1 (within 1e-8), everything finite, each
    covariance symmetric (within 1e-10 relative) and positive definite (its Cholesky factor exists)."""
    weights = np.array(weights, dtype=np.float64)
    means = np.array(means, dtype=np.float64)
    covariances = np.array(covariances, dtype=np.float64)
    if weights.ndim != 1 or weights.shape[0] < 1:
        raise ValueError(f"weights must have shape (K,) with K >= 1 components, got shape {weights.shape}")
    K = weights.shape[0]
    if means.ndim != 2 or means.shape[0] != K or means.shape[1] < 1:
        raise ValueError(f"means must have shape (K={K}, d), one row per component, got shape {means.shape}")
    d = means.shape[1]
    if covariances.shape != (K, d, d):
        raise ValueError(f"covariances must have shape (K={K}, d={d}, d={d}), got shape {covariances.shape}")
    for a, name in ((weights, "weights"), (means, "means"), (covariances, "covariances")):
        check_finite(a, name)
    if (weights <= 0).any():
        raise ValueError(f"weights must be > 0 (drop a component of weight 0), got {weights.tolist()}")
    if abs(weights.sum() - 1) > 1e-8:
        raise ValueError(f"weights must sum to 1, got sum {weights.sum()!r}")
    asymmetry = np.abs(covariances - covariances.transpose(0, 2, 1)).max(axis=(1, 2))
    scale = np.abs(covariances).max(axis=(1, 2))
    if (asymmetry > 1e-10 * scale).any():
        k = int(np.flatnonzero(asymmetry > 1e-10 * scale)[0])
        raise ValueError(f"covariances[{k}] must be symmetric, got an asymmetry of {asymmetry[k]:.3g}")
    for k in range(K):
        try:
            np.linalg.cholesky(covariances[k])
        except np.linalg.LinAlgError:
            raise ValueError(f"covariances[{k}] must be positive definite (its Cholesky factorisation fails); "
                             f"eigenvalues {np.linalg.eigvalsh(covariances[k]).tolist()}") from None
    return weights, means, covariances


def check_points(x, d, name="x_t"):
    """`x` as a float64 array (B, d): points of R^d with a batch axis; an array (B, ...) whose
    trailing axes hold d numbers is flattened to (B, d). No NaN or inf."""
    check_float_array(x, name)
    if x.ndim < 2 or math.prod(x.shape[1:]) != d:
        raise ValueError(f"{name} must have shape (B, {d}) (or (B, ...) with {d} numbers per sample), "
                         f"got shape {tuple(x.shape)}")
    return check_finite(np.asarray(x, dtype=np.float64).reshape(x.shape[0], d), name)


def check_signal_noise(signal_scale, noise_std, batch):
    """(signal_scale, noise_std) of q(x_t | x_0) = N(a x_0, s^2 I) as float64 arrays of shape
    () or (batch,): finite, a >= 0, s >= 0, and never a = s = 0 (x_t would hold nothing)."""
    pair = []
    for value, name in ((signal_scale, "signal_scale"), (noise_std, "noise_std")):
        value = np.asarray(to_numpy(value) if is_device_array(value) else value, dtype=np.float64)
        if value.ndim > 1 or (value.ndim == 1 and value.shape != (batch,)):
            raise ValueError(f"{name} must be a number or have shape ({batch},) (one per sample), got shape {value.shape}")
        if not np.isfinite(value).all() or (value < 0).any():
            raise ValueError(f"{name} must be finite and >= 0, got {value.tolist()}")
        pair.append(value)
    if ((pair[0] == 0) & (pair[1] == 0)).any():
        raise ValueError("signal_scale and noise_std are both 0: x_t = 0 x_0 + 0 eps holds no information")
    return tuple(pair)


def check_sigmas_descending(sigmas, name="sigmas"):
    """Noise levels as a float64 array (N,), N >= 1, finite, > 0 and strictly decreasing."""
    arr = np.array(to_numpy(sigmas) if is_device_array(sigmas) else sigmas, dtype=np.float64)
    if arr.ndim != 1 or arr.shape[0] < 1:
        raise ValueError(f"{name} must be a 1-D array of noise levels, got shape {arr.shape}")
    if not np.isfinite(arr).all() or (arr <= 0).any() or (np.diff(arr) >= 0).any():
        raise ValueError(f"{name} must be finite, > 0 and strictly decreasing, got {arr.tolist()}")
    return arr


# ---- sampler options that are flags or small integer choices (DPM-Solver++, UniPC) --------------------


def check_flag(value, name):
    """`value` as a python bool: True or False (a NumPy bool too); 0, 1, strings and None refused."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_int_choice(value, choices, name):
    """`value` as a python int among `choices` (bools and floats refused)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, one of {', '.join(map(str, choices))}; got {value!r}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")
    return int(value)


# ---- the likelihood (refdiff.gaussian.likelihood) ----------------------------------------------------


def check_likelihood_data(x, name="x0"):
    """`x` as a host float array (B, ...) of data in [-1, 1] (8-bit values k / 127.5 - 1): the
    discretized decoder gives each value the probability of its bin, and the outer bins reach to
    -inf and +inf; data outside [-1, 1] have no bin."""
    check_float_array(x, name)
    if is_device_array(x):
        raise TypeError(f"{name} must be a NumPy array (the likelihood is computed on the host); use .get()")
    if x.shape[0] < 1:
        raise ValueError(f"{name} must hold at least one sample, got shape {tuple(x.shape)}")
    low, high = float(x.min()), float(x.max())
    if low < -1 - 1e-6 or high > 1 + 1e-6:
        raise ValueError(f"{name} must lie in [-1, 1] (8-bit data scaled as k / 127.5 - 1), got values in "
                         f"[{low:.4g}, {high:.4g}]")
    return x


def check_distillation_steps(student_steps, T):
    """A progressive-distillation stage's student steps N: an int with 2N <= T (the teacher takes 2N
    distinct timesteps of the T-step schedule; Salimans & Ho 2022 Algorithm 2)."""
    student_steps = check_positive_int(student_steps, "student_steps")
    if 2 * student_steps > T:
        raise ValueError(f"student_steps={student_steps}: the teacher would take {2 * student_steps} steps, more "
                         f"than the T={T} steps of the schedule")
    return student_steps


def check_nested_grids(student, teacher):
    """The student's timesteps are every other one of the teacher's (each student step spans two teacher steps)."""
    if len(teacher) != 2 * len(student) or not np.array_equal(teacher[0::2], student):
        raise ValueError(f"the {len(teacher)}-step teacher grid does not contain the {len(student)}-step student "
                         f"grid as every other timestep")


# ---- image editing (refdiff.samplers.editing) --------------------------------------------------------


def check_strength(strength):
    """img2img's strength as a float in [0, 1] (the fraction of the grid that is run again)."""
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real):
        raise TypeError(f"strength must be a number in [0, 1], got {type(strength).__name__}")
    if not 0.0 <= float(strength) <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    return float(strength)


def check_inpaint_mask(mask, x, name="mask", x_name="x_known"):
    """An inpainting mask for `x` as a bool array: 1 (True) where x is kept, 0 where it is filled in.
    Its shape must be x's, x's without the batch axis, or either with one channel (broadcast over
    the channels); its values 0 and 1 only."""
    mask = np.asarray(to_numpy(mask))
    if mask.dtype == object or not (np.issubdtype(mask.dtype, np.number) or mask.dtype == bool):
        raise TypeError(f"{name} must be an array of 0 and 1, got dtype {mask.dtype}")
    shape, ok = tuple(x.shape), False
    if mask.ndim in (len(shape), len(shape) - 1) and mask.ndim >= 1:
        full = shape[len(shape) - mask.ndim:]
        one_channel = full[:-3] + (1,) + full[-2:] if len(full) >= 3 else None
        ok = tuple(mask.shape) in (full, one_channel) or (mask.ndim == len(shape) and mask.shape[0] == 1
                                                          and tuple(mask.shape[1:]) in (full[1:], (one_channel or (None,))[1:]))
    if not ok:
        raise ValueError(f"{name} must have the shape of {x_name} {shape} (or {shape[1:]}, or with 1 channel), "
                         f"got {tuple(mask.shape)}")
    if not np.isin(mask, (0, 1)).all():
        bad = mask[~np.isin(mask, (0, 1))].flat[0]
        raise ValueError(f"{name} must hold only 0 (fill in) and 1 (keep), got the value {float(bad):g}")
    return mask.astype(bool)


def check_image_factor(x, factor, name):
    """A resolution factor for images x (B, C, H, W): a positive int dividing H and W."""
    factor = check_positive_int(factor, "factor")
    if getattr(x, "ndim", 0) != 4:
        raise ValueError(f"{name} must be images (B, C, H, W), got shape {tuple(getattr(x, 'shape', ()))}")
    if x.shape[2] % factor or x.shape[3] % factor:
        raise ValueError(f"factor {factor} must divide {name}'s height and width, got {x.shape[2]}x{x.shape[3]}")
    return factor


def check_condition_channels(x_cond, in_channels, out_channels, name="x_cond"):
    """A conditioning image for a network conditioned by concatenation: x_cond's channels plus the
    out_channels of x_t must be the network's in_channels."""
    c = int(x_cond.shape[1]) if getattr(x_cond, "ndim", 0) >= 2 else None
    if c is None or c + out_channels != in_channels:
        raise ValueError(f"{name} must have {in_channels - out_channels} channels (the network takes {in_channels} "
                         f"= {out_channels} of x_t + those of {name}), got shape {tuple(getattr(x_cond, 'shape', ()))}")
    return x_cond
GUIDANCE_KINDS = ("classifier_free", "classifier")


def check_guidance(guidance, classifier, y, guidance_scale, num_classes):
    """The guidance of a sampling call: None (classifier-free when guidance_scale != 1), "classifier_free"
    or "classifier". Classifier guidance needs a classifier (an object with log_prob_gradient(x, t, y)
    and num_classes) and labels y; its labels are checked against the classifier's classes by
    check_class_labels. A classifier given without guidance="classifier" is refused (it would be
    ignored). Returns the guidance kind ("classifier_free", "classifier" or None)."""
    if guidance is not None:
        check_choice(guidance, GUIDANCE_KINDS, "guidance")
    guidance_scale = check_real(guidance_scale, "guidance_scale")
    if guidance != "classifier":
        if classifier is not None:
            raise ValueError("classifier given but guidance is not 'classifier': pass guidance='classifier'")
        if guidance_scale != 1.0 and y is None:
            raise ValueError("guidance_scale != 1 needs class labels y (classifier-free guidance)")
        if guidance is None and guidance_scale != 1.0:
            return "classifier_free"
        return guidance
    if classifier is None:
        raise ValueError("guidance='classifier' needs a classifier (classifier=NoiseClassifier or any object "
                         "with log_prob_gradient(x, t, y) and num_classes)")
    if not callable(getattr(classifier, "log_prob_gradient", None)):
        raise TypeError(f"classifier must have a log_prob_gradient(x, t, y) method, got {type(classifier).__name__}")
    if y is None:
        raise ValueError("guidance='classifier' needs class labels y (the classes to guide towards)")
    classes = getattr(classifier, "num_classes", None)
    if num_classes is not None and classes is not None and classes != num_classes:
        raise ValueError(f"the classifier has {classes} classes but the diffusion model {num_classes}")
    return "classifier"


def check_consistency_metric(metric, choices=("l2",)):
    """A consistency model's distance d (Song et al. 2023 eq. 7): one of choices; LPIPS refused with the reason."""
    if metric == "lpips":
        raise ValueError("metric='lpips' needs a pretrained VGG/AlexNet image network, which refdiff neither ships "
                         "nor downloads (and it is undefined for 2-D points): use metric='l2'")
    return check_choice(metric, choices, "metric")


# ---- latent diffusion (refdiff.latent) -----------------------------------------------------------


def check_latent_channels(model_channels, latent_channels):
    """The denoiser of a latent diffusion model sees the autoencoder's latents: its input channels must
    be the autoencoder's latent_channels."""
    if model_channels != latent_channels:
        raise ValueError(f"channel counts do not match: the denoiser takes in_channels={model_channels}, the "
                         f"autoencoder's latents have latent_channels={latent_channels}")


def check_latent_shape(latent_shape, model_shape, image_shape):
    """Images must encode to latents of the shape the denoiser samples (C, h, w)."""
    if tuple(latent_shape) != tuple(model_shape):
        raise ValueError(f"images of shape {tuple(image_shape)} encode to latents of shape {tuple(latent_shape)}, "
                         f"but the denoiser samples shape {tuple(model_shape)} (its in_channels and sample_size)")


def check_same_backend(name_a, backend_a, name_b, backend_b):
    """Two parts of one model must keep their arrays on the same backend."""
    if backend_a != backend_b:
        raise ValueError(f"{name_a} lives on backend {backend_a!r} and {name_b} on {backend_b!r}: "
                         f"build both on the same backend")
