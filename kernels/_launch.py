"""Launcher plumbing shared by the fused kernels: checks, coefficient tables, launch shape, stream.

Nothing here is diffusion math (that is in the kernel files and kernels/_device.py). A launcher
in kernels/<name>.py validates its arguments with the helpers below, allocates its outputs,
and calls `launch(kernel, B, N, *args)`. Everything that costs host time and can be reused
(device tables of a schedule, the launch configuration and the configured kernel, numba stream
objects, placeholder arrays, the numba view of each input buffer: ArgumentCache) is computed
once and cached here.

Two modes, fixed when numba is first imported:
- GPU: arrays are CuPy arrays. Each launch runs on CuPy's current stream (a numba external
  stream wrapping cupy.cuda.get_current_stream().ptr) and CuPy arrays are handed to numba with
  `cuda.as_cuda_array(a, sync=False)`: numba's default for the CUDA Array Interface is to
  synchronise the host with the producer's stream at every launch (NUMBA_CUDA_ARRAY_INTERFACE_SYNC=1),
  which would put a host sync in every sampling step. Nothing here synchronises the host.
- Simulator (NUMBA_ENABLE_CUDASIM=1, set by tests/conftest.py where no GPU is visible): arrays
  are NumPy arrays, the same kernel source runs in Python threads on the CPU. The grid is kept
  small there (see launch_config) so that the grid-stride loops really stride.

Checks that would need a device-to-host copy are not made on device arrays: a timestep array
that lives on the GPU is not range-checked on the host, and array values are not checked for
NaN/inf. Instead the kernels write NaN wherever a sample's timesteps are invalid (never reading
out of bounds). Set REFDIFF_KERNEL_CHECKS=1 to add those checks (they synchronise the host).
"""
import functools
import numbers
import os
import weakref
from collections import namedtuple

import numpy as np
from numba import config as _numba_config
from numba import cuda

from refdiff.backend import to_numpy
from refdiff.checks import (
    DEVICE_CHECKS,
    check_finite,
    check_integer_timesteps,
    check_per_sample_shape,
    check_same_shape,
    check_t_prev_below_t,
    check_timestep_range,
)

SIMULATED = bool(_numba_config.ENABLE_CUDASIM)
# REFDIFF_KERNEL_CHECKS=1, read once by refdiff.checks: the one switch (and rule) that the
# model code follows too (see that module's docstring)
DEBUG_CHECKS = DEVICE_CHECKS

# codes of the string options, as the kernels see them (uniform branches inside the kernel);
# PREDICTION_CODES (0 epsilon, 1 sample, 2 v_prediction) come from refdiff.gaussian.parameterization
TARGET_NONE = -1  # q_sample: write x_t only
VARIANCE_CODES = {"fixed_small": 0, "fixed_large": 1}

# launch shape. On a GPU: up to 256 threads per block, each thread handles about
# ELEMENTS_PER_THREAD elements of a sample so that its per-sample coefficients (computed once
# per sample in float64) are amortised. In the simulator every thread is a Python thread: small
# blocks, and a grid capped well below the problem size so that both loops wrap around.
if SIMULATED:
    MAX_BLOCK, MAX_GRID_X, MAX_GRID_Y, ELEMENTS_PER_THREAD = 32, 2, 3, 1
else:
    MAX_BLOCK, MAX_GRID_X, MAX_GRID_Y, ELEMENTS_PER_THREAD = 256, 65535, 65535, 4


# ---- arrays ------------------------------------------------------------------------------


def array_module_name():
    return "NumPy (simulator)" if SIMULATED else "CuPy"


def _is_device_array(a):
    return type(a).__module__.split(".")[0] == "cupy"


# The checks the reference makes are refdiff.checks' (the launchers call them directly); the
# ones below are the kernels' own: float32, C-contiguous, on the device the kernels run on.


def check_array(x, name):
    """`x` as a float32, C-contiguous array with a batch axis, of the array module the kernels take.

    On a GPU that is a CuPy array; under the simulator a NumPy array.
    """
    if not hasattr(x, "dtype") or not hasattr(x, "shape"):
        raise TypeError(f"{name} must be a float32 array of shape (B, ...), got {type(x).__name__}")
    if SIMULATED and not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array under the CUDA simulator, got {type(x).__module__}.{type(x).__name__}")
    if not SIMULATED and not _is_device_array(x):
        raise TypeError(
            f"{name} must be a CuPy array (the CUDA kernels run on the GPU), got {type(x).__module__}.{type(x).__name__}; "
            f"move it with refdiff.get_backend('cuda').asarray(...)"
        )
    if np.dtype(x.dtype) != np.float32:
        raise TypeError(
            f"{name} must have dtype float32 for the CUDA kernels, got {x.dtype} "
            f"(the NumPy reference in refdiff handles float64)"
        )
    if x.ndim < 1:
        raise ValueError(f"{name} must have shape (B, ...) with a batch axis, got a 0-d array")
    if not x.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (the kernels index it flat); pass xp.ascontiguousarray({name})")
    return x


def check_like(x, other, name_x, name_other):
    """`other` checked as check_array, with the shape of `x`."""
    check_array(other, name_other)
    check_same_shape(x, other, name_x, name_other)
    return other


def check_optional_like(x, other, name_x, name_other):
    """check_like for an optional input: None passes as None."""
    return None if other is None else check_like(x, other, name_x, name_other)


def check_step_arrays(x_t, model_output, noise, model_output_uncond):
    """The arrays of a reverse-step kernel: x_t checked by check_array, the others (noise and
    model_output_uncond may be None) of its shape; NaN/inf checked with REFDIFF_KERNEL_CHECKS=1."""
    x_t = check_array(x_t, "x_t")
    arrays = (x_t, check_like(x_t, model_output, "x_t", "model_output"),
              check_optional_like(x_t, noise, "x_t", "noise"),
              check_optional_like(x_t, model_output_uncond, "x_t", "model_output_uncond"))
    for a, name in zip(arrays, ("x_t", "model_output", "noise", "model_output_uncond")):
        check_finite_if_debugging(a, name)
    return arrays


def check_finite_if_debugging(x, name):
    """With REFDIFF_KERNEL_CHECKS=1: raise if `x` holds NaN or inf (a host sync on a GPU)."""
    if DEBUG_CHECKS and x is not None:
        check_finite(x, name)


def flat(x):
    """The 1-D view of a C-contiguous array (no copy)."""
    return x.reshape(-1)


def empty_like(x):
    return _xp().empty_like(x)


def batch_and_size(x):
    """(B, N): the batch size and the number of elements per sample of an array (B, ...)."""
    B = int(x.shape[0])
    return B, (int(x.size) // B if B else 0)


def empty(shape, dtype):
    return _xp().empty(shape, dtype=dtype)


def _xp():
    if SIMULATED:
        return np
    import cupy

    return cupy


# ---- timesteps ---------------------------------------------------------------------------

# A timestep argument reaches a kernel as (array, scalar, per_sample): a python int is passed by
# value (per_sample False, array a cached 1-element placeholder), an array as an int64 array of
# shape (B,) read at array[b]. `host` keeps the values when they are known on the host (python
# ints and NumPy arrays, also on a GPU), for the checks that relate two timestep arguments.
TimestepArg = namedtuple("TimestepArg", "array scalar per_sample host")


def timestep_arg(t, T, batch, name="t", allow_negative=False):
    """Check timesteps `t` (int or int array (B,)) against a schedule of T steps; see TimestepArg.

    Host values (python ints, NumPy arrays) are fully checked here, with the reference's rules.
    A CuPy array is checked for dtype and shape only (its values are on the device: the kernel
    writes NaN for a sample whose timestep is out of range), unless REFDIFF_KERNEL_CHECKS=1.
    """
    check_integer_timesteps(t, name)
    if isinstance(t, numbers.Integral):
        t = int(t)
        check_timestep_range(np.asarray([t]), T, name, allow_negative)
        return TimestepArg(_placeholder(np.int64), t, False, np.full(batch, t, dtype=np.int64))
    if t.ndim == 0:
        return timestep_arg(int(t), T, batch, name, allow_negative)
    check_per_sample_shape(t, batch, name)
    if _is_device_array(t):
        if SIMULATED:
            raise TypeError(f"{name} must be a NumPy array under the CUDA simulator, got a CuPy array")
        host = None
        if DEBUG_CHECKS:
            host = to_numpy(t).astype(np.int64)
            check_timestep_range(host, T, name, allow_negative)
        return TimestepArg(device_view(t.astype(np.int64, copy=False)), 0, True, host)
    t = np.ascontiguousarray(t, dtype=np.int64)
    check_timestep_range(t, T, name, allow_negative)
    if t.size and (t == t[0]).all():  # one value for the batch: passed by value, no copy to the device
        return TimestepArg(_placeholder(np.int64), int(t[0]), False, t)
    # different values per sample, known on the host: copied to the device at this launch (pass
    # a device array, as GaussianDiffusion.loss does, to avoid the copy)
    return TimestepArg(t if SIMULATED else device_view(_xp().asarray(t)), 0, True, t)


def device_timesteps(t, dtype):
    """A 1-D timestep array (embedding), already checked by refdiff.checks.check_timestep_vector,
    as a contiguous array of `dtype` on the kernels' side: host arrays are copied to the device
    on a GPU, a CuPy array is converted on the device."""
    if _is_device_array(t):
        if SIMULATED:
            raise TypeError("t must be a NumPy array under the CUDA simulator, got a CuPy array")
        return _xp().ascontiguousarray(t.astype(dtype, copy=False))
    t = np.ascontiguousarray(t, dtype=dtype)
    return t if SIMULATED else _xp().asarray(t)


def t_prev_arg(t_prev, t, T, batch):
    """(TimestepArg, mode) of a reverse step's target timestep, as both step kernels take it.

    mode 0: t_prev is None, the kernel uses t - 1; mode 1: one value for the batch (passed by
    value); mode 2: one per sample. t_prev < t is checked here where both are known on the host
    (refdiff.checks.check_t_prev_below_t); for device-side timesteps the kernel writes NaN for a
    sample with t_prev >= t.
    """
    if t_prev is None:
        return TimestepArg(t.array, 0, False, None), 0
    arg = timestep_arg(t_prev, T, batch, name="t_prev", allow_negative=True)
    if t.host is not None and arg.host is not None:
        check_t_prev_below_t(t.host, arg.host)
    return arg, 2 if arg.per_sample else 1


def any_positive(t):
    """True if some timestep is > 0; None if that cannot be known without a device sync."""
    return None if t.host is None else bool((t.host > 0).any())


# ---- the caches' copies to the device ------------------------------------------------------


def to_device(a):
    """A host array copied to the device for one of the caches below (the simulator: as it is).

    The only host-to-device copy the launchers make on their own, at a cache's first use. It is
    a blocking copy, illegal inside a CUDA-graph capture: a step is captured after one warm-up
    call (benchmarks/gpu_bench_common.capture), which fills every cache the step needs.
    """
    return a if SIMULATED else cuda.to_device(a)


# ---- placeholders for absent optional arrays ---------------------------------------------

_PLACEHOLDERS = {}


def _placeholder(dtype):
    """A cached 1-element array standing in for an absent optional argument (never read)."""
    key = (np.dtype(dtype).str, _device_id())
    if key not in _PLACEHOLDERS:
        a = np.zeros(1, dtype=dtype)
        _PLACEHOLDERS[key] = to_device(a)
    return _PLACEHOLDERS[key]


def optional_array(x):
    """(view, present) for an optional float32 input array that may be None."""
    if x is None:
        return _placeholder(np.float32), False
    return device_view(flat(x)), True


# ---- schedule tables on the device -------------------------------------------------------

ScheduleTables = namedtuple(
    "ScheduleTables", "T sqrt_alphas_cumprod sqrt_one_minus_alphas_cumprod alphas_cumprod"
)
_SCHEDULE_TABLES = {}


def schedule_tables(schedule):
    """The device tables a kernel gathers per-sample coefficients from, cached per schedule.

    sqrt_alphas_cumprod, sqrt_one_minus_alphas_cumprod: float32 (T,), the schedule's float64
      values rounded once, exactly as the reference rounds them (q_sample).
    alphas_cumprod: float64 (T,): the reverse steps compute their coefficients from abar_t and
      abar_{t_prev} in float64 once per sample (the reference does the same on the host), which
      avoids float32 cancellation in 1 - abar near t = 0.
    The cache is keyed by the schedule object (schedules are immutable) and the device, and
    dropped when the schedule is garbage collected.
    """
    key = (id(schedule), _device_id())
    entry = _SCHEDULE_TABLES.get(key)
    if entry is not None and entry[0] is schedule.alphas_cumprod:
        return entry[1]
    try:
        T = int(schedule.T)
        arrays = [np.asarray(getattr(schedule, n), dtype=np.float64) for n in
                  ("sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod", "alphas_cumprod")]
    except AttributeError as e:
        raise TypeError(f"schedule must be a refdiff.NoiseSchedule, got {type(schedule).__name__}") from e
    host = (arrays[0].astype(np.float32), arrays[1].astype(np.float32), arrays[2].copy())  # writable copies
    dev = tuple(to_device(np.ascontiguousarray(a)) for a in host)
    tables = ScheduleTables(T, *dev)
    _SCHEDULE_TABLES[key] = (schedule.alphas_cumprod, tables)
    try:
        weakref.finalize(schedule, _SCHEDULE_TABLES.pop, key, None)
    except TypeError:  # an object without weak references: keep the entry
        pass
    return tables


_FREQUENCY_TABLES = {}


def frequency_table(half_dim, max_period, downscale_freq_shift):
    """The embedding's float64 frequencies (half_dim,), from the reference's own function, cached."""
    from refdiff.gaussian.embedding import timestep_frequencies

    key = (half_dim, float(max_period), float(downscale_freq_shift), _device_id())
    if key not in _FREQUENCY_TABLES:
        freqs = np.ascontiguousarray(timestep_frequencies(half_dim, max_period, downscale_freq_shift), dtype=np.float64)
        if freqs.size == 0:
            freqs = np.zeros(1)  # dim = 1: no frequency is read, a placeholder keeps the type
        _FREQUENCY_TABLES[key] = to_device(freqs)
    return _FREQUENCY_TABLES[key]


# ---- launching ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def launch_config(B, N):
    """(grid, block) for a kernel whose loops stride over samples (grid y) and elements (grid x).

    block: a power of two from 32 to MAX_BLOCK covering N; grid x: enough blocks for about
    ELEMENTS_PER_THREAD elements per thread; grid y: one row of blocks per sample, up to the
    hardware limit (the kernels loop over the rest).
    """
    block = min(MAX_BLOCK, max(32, 1 << max(0, (N - 1).bit_length())))
    grid_x = max(1, min(MAX_GRID_X, -(-N // (block * ELEMENTS_PER_THREAD))))
    grid_y = max(1, min(MAX_GRID_Y, B))
    return (grid_x, grid_y), block


_STREAMS = {}


def current_stream():
    """CuPy's current stream as a numba stream (cached per stream pointer); 0 in the simulator."""
    if SIMULATED:
        return 0
    import cupy

    ptr = cupy.cuda.get_current_stream().ptr
    stream = _STREAMS.get(ptr)
    if stream is None:
        stream = _STREAMS[ptr] = cuda.external_stream(ptr) if ptr else cuda.default_stream()
    return stream


# How CuPy arrays reach a kernel (an experiment knob for measuring launch costs, issue 6):
#   "numba"  (default) cuda.as_cuda_array(a, sync=False): a numba device array built from the
#            CUDA Array Interface, without the per-launch host sync; works with every numba-cuda;
#   "direct" the CuPy array itself: recent numba-cuda (0.2x+) imports it through DLPack with the
#            launch stream (no host sync); older ones go through the CUDA Array Interface and then
#            synchronise unless NUMBA_CUDA_ARRAY_INTERFACE_SYNC=0.
ARG_MODE = os.environ.get("REFDIFF_KERNEL_ARG_MODE", "numba")
if ARG_MODE not in ("numba", "direct"):
    raise ValueError(f"REFDIFF_KERNEL_ARG_MODE must be 'numba' or 'direct', got {ARG_MODE!r}")


class ArgumentCache:
    """Kernel arguments converted once and reused: (pointer, shape, strides, dtype, stream) -> the
    converted array, the `capacity` most recently used kept (issue 15, item 5: numba-cuda's
    conversion of a CuPy array costs host microseconds at every launch; a sampling loop passes the
    same buffers step after step).

    Why the key is safe: an entry holds the array it was made from, so that memory cannot be freed
    and handed to another array while the entry lives; another array with the same pointer, shape,
    strides and dtype is then a view of exactly the same memory, for which the cached conversion is
    equally right. Invalidation: an entry goes when `capacity` newer keys have been used since its
    last use (least recently used first; its array may then be freed), or by clear(). The cost: up
    to `capacity` arrays stay alive a little longer than their last use. Hits and misses are counted.
    """

    def __init__(self, capacity=16):
        self.capacity, self.entries, self.hits, self.misses = capacity, {}, 0, 0

    @staticmethod
    def key(a, stream):
        ptr = a.data.ptr if _is_device_array(a) else a.__array_interface__["data"][0]
        return ptr, tuple(a.shape), tuple(a.strides), np.dtype(a.dtype).str, stream

    def get(self, a, convert, stream=0):
        """convert(a), or the conversion made for the same memory before."""
        key = self.key(a, stream)
        entry = self.entries.pop(key, None)  # re-inserted below: the dict's order is the use order
        if entry is None:
            self.misses += 1
            entry = (a, convert(a))
            if len(self.entries) >= self.capacity:
                del self.entries[next(iter(self.entries))]  # the least recently used
        else:
            self.hits += 1
        self.entries[key] = entry
        return entry[1]

    def clear(self):
        self.entries.clear()


# REFDIFF_KERNEL_ARG_CACHE=0 switches the cache off (to measure what it saves)
ARG_CACHE = ArgumentCache() if os.environ.get("REFDIFF_KERNEL_ARG_CACHE", "1") != "0" else None


def _as_numba_array(a):
    return cuda.as_cuda_array(a, sync=False)


def device_view(a):
    """`a` as a kernel argument: NumPy arrays as they are (simulator); CuPy arrays as numba
    device arrays without the CUDA-array-interface synchronisation (see ARG_MODE), converted once
    per buffer (ARG_CACHE; under the simulator the cache runs too, with the identity as conversion,
    so that its logic is exercised by every kernel test)."""
    if ARG_MODE == "direct" or not (SIMULATED or _is_device_array(a)):
        return a
    convert = (lambda array: array) if SIMULATED else _as_numba_array
    if ARG_CACHE is None:
        return convert(a)
    return ARG_CACHE.get(a, convert, 0 if SIMULATED else cupy_stream_ptr())


def cupy_stream_ptr():
    import cupy

    return cupy.cuda.get_current_stream().ptr


def output_view(a):
    """An output array as a kernel argument (in the simulator: written back, never copied in).
    Not through ARG_CACHE: a launcher's output is a new array at every launch (a cached conversion
    would never be hit again and would only keep the array alive)."""
    if SIMULATED:
        return cuda.Out(a)
    return a if ARG_MODE == "direct" else _as_numba_array(a)


def launch(kernel, B, N, *args):
    """Launch `kernel` over B samples of N elements each, on CuPy's current stream.

    In the simulator, NumPy arguments not marked by output_view are passed as inputs (cuda.In:
    copied in, never written back, so read-only arrays such as a schedule's tables work).
    """
    if B == 0 or N == 0:
        return
    grid, block = launch_config(B, N)
    if SIMULATED:
        args = [cuda.In(a) if isinstance(a, np.ndarray) else a for a in args]
    configured(kernel, grid, block, current_stream())(*args)


_CONFIGURED = {}


def configured(kernel, grid, block, stream):
    """kernel[grid, block, stream], made once per (kernel, grid, block, stream) and reused (numba
    builds a launch-configuration object at every kernel[...]). Never invalidated: it holds no
    array, only the kernel and the stream object, which current_stream() caches per pointer too."""
    key = (id(kernel), grid, block, id(stream) if not isinstance(stream, int) else stream)
    entry = _CONFIGURED.get(key)
    if entry is None or entry[0] is not kernel:
        entry = _CONFIGURED[key] = (kernel, kernel[grid, block, stream])
    return entry[1]


def _device_id():
    if SIMULATED:
        return -1
    import cupy

    return cupy.cuda.runtime.getDevice()


__all__ = [
    "check_array", "check_like", "check_optional_like", "timestep_arg", "schedule_tables",
    "frequency_table", "launch", "launch_config", "device_view", "optional_array", "flat", "ArgumentCache",
    "ARG_CACHE", "configured",
]
