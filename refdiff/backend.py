"""Backends: where arrays live and which implementation of the fused ops runs.

A backend holds an array module (`numpy` or `cupy`) and the fused ops: one per entry of the
kernel registry `refdiff.kernels.TWINS` (q_sample, q_sample_with_target, timestep_embedding,
ddpm_step, ddim_step), reached as attributes (`backend.q_sample(...)`). The "numpy" backend binds
each name to its reference twin; the "cuda" backend uses CuPy arrays and binds each name to the
fused kernel of `refdiff.kernels`, which has the same signature.

It also holds the two device routes that the autograd's forward ops call where a NumPy function
would not do on a GPU during a CUDA-graph capture: `matmul` and `einsum` (cuBLAS, or cuTENSOR
while the current stream is capturing; see "matrix products" below), and `CapturedStep`, one
step captured into a CUDA graph and replayed.

This is plumbing, not math: the only module of the package (with kernels/) allowed to import
CuPy or Numba, and it does so only when the "cuda" backend is asked for.
"""
import gc
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Callable, Mapping

import numpy as np

from .kernels import TWINS, reference_twin  # the registry of fused ops (NumPy only: no numba)


def array_module(x) -> ModuleType:
    """The array module of `x`: cupy for a CuPy array, numpy for anything else.

    Checked by the type's module name so that CuPy is never imported to answer the question.
    """
    if type(x).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    return np


def is_device_array(a):
    """True for an array that lives on a GPU (a CuPy array)."""
    return array_module(a) is not np


def to_numpy(a) -> np.ndarray:
    """`a` as a host NumPy array (a CuPy array is copied from the device; this waits for the GPU)."""
    if is_device_array(a):
        return a.get()
    return np.asarray(a)


def per_sample(values, x):
    """Per-sample coefficients (B,) as an array of x's dtype and array module, shape (B, 1, ..., 1).

    The gather helper of the math modules: coefficients come from the float64 schedule and are
    rounded once to x's dtype, so that `per_sample(c, x) * x` broadcasts over every axis but
    the batch axis.
    """
    xp = array_module(x)
    values = np.asarray(values, dtype=np.float64).astype(x.dtype)
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    if xp is not np and values.size and (values == values.flat[0]).all():
        # one value for the batch (a sampler's step): filled in on the device, the value a kernel
        # argument, rather than a host-to-device copy at every step
        return xp.full(shape, values.flat[0], dtype=x.dtype)
    return xp.asarray(values).reshape(shape)


@dataclass(frozen=True)
class Backend:
    """An array module and the fused ops, reached as attributes: backend.q_sample(...)."""

    name: str
    xp: ModuleType
    ops: Mapping[str, Callable]  # fused op name (a key of refdiff.kernels.TWINS) -> implementation

    def __getattr__(self, name):  # only called for names that are not fields or methods
        ops = self.__dict__.get("ops", {})
        if name not in ops:
            raise AttributeError(f"backend has no attribute or fused op {name!r}")
        return ops[name]

    def asarray(self, a, dtype=None):
        """`a` as an array of this backend (a copy to the device for cuda)."""
        return self.xp.asarray(a, dtype=dtype)

    def to_numpy(self, a) -> np.ndarray:
        """`a` as a NumPy array on the host."""
        return to_numpy(a)

    def rng(self, seed=None):
        """A random generator of this backend with `.standard_normal(size, dtype)` and `.integers`."""
        return self.xp.random.default_rng(seed)

    def __repr__(self):
        return f"Backend({self.name!r})"


def _numpy_backend() -> Backend:
    return Backend("numpy", np, {name: reference_twin(name) for name in TWINS})


_BACKENDS = {}


def get_backend(name="numpy") -> Backend:
    """The backend called `name` ("numpy" or "cuda"); a Backend passed in is returned as is."""
    if isinstance(name, Backend):
        return name
    if not isinstance(name, str) or name not in ("numpy", "cuda"):
        raise ValueError(f"unknown backend {name!r}: expected 'numpy' or 'cuda'")
    if name not in _BACKENDS:
        _BACKENDS[name] = _numpy_backend() if name == "numpy" else _cuda_backend()
    return _BACKENDS[name]


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here; the message says why (no CuPy, no GPU, ...)."""


INSTALL_HINT = "pip install 'refdiff[cuda]' (CUDA 13 drivers; 'refdiff[cuda12]' for a CUDA 12 driver)"

# The CUDA libraries CuPy loads at run time, each with a call that loads it and uses it once
# (the GPU is known to be visible when these run): (name, what refdiff needs it for, probe(cupy)).
# An absent library fails only at its first use (cuBLAS at the first matmul), so each is tried
# here and the one that fails is named. CuPy 14 finds the [ctk] wheels' libraries when a module is
# first reached as cupy.cuda.<name> (a plain `import cupy_backends.cuda.libs.cublas` does not).


def _cublas(cupy):
    cupy.cuda.cublas.getVersion(cupy.cuda.device.get_cublas_handle())


def _curand(cupy):
    curand = cupy.cuda.curand
    curand.destroyGenerator(curand.createGenerator(curand.CURAND_RNG_PSEUDO_DEFAULT))


def _nvrtc(cupy):
    cupy.cuda.nvrtc.getVersion()
    if int((cupy.arange(4, dtype=cupy.float32) * 2).sum()) != 12:  # compiles an elementwise and a reduction kernel
        raise RuntimeError("CuPy computed 2 * (0 + 1 + 2 + 3) wrongly")


CUPY_LIBRARIES = (
    ("CUDA runtime", "every array", lambda cupy: cupy.cuda.runtime.runtimeGetVersion()),
    ("cuBLAS", "the U-Net's and the MLP's matrix products", _cublas),
    ("cuRAND", "noise, x_T and dropout masks", _curand),
    ("NVRTC", "CuPy's own elementwise and reduction kernels", _nvrtc),
)

_NUMBA_LAUNCH_CHECK = """
import cupy
from numba import cuda

@cuda.jit
def add_one(a):
    i = cuda.grid(1)
    if i < a.size:
        a[i] += 1.0

a = cupy.zeros(5, dtype=cupy.float32)
add_one[1, 32](cuda.as_cuda_array(a))
assert float(a.sum()) == 5.0, a
"""


def cuda_problem():
    """None when the cuda backend can run here, else one line saying what is missing.

    The one place that answers "can the GPU be used here, and if not, why?": the cuda backend,
    the test suite's GPU markers, the GPU benchmarks and benchmarks/device_check.sh all ask it.
    In order: CuPy imports; it sees a GPU; NUMBA_ENABLE_CUDASIM is not set; each library of
    CUPY_LIBRARIES loads (named if not); numba imports; numba-cuda compiles and launches a
    kernel on a CuPy array (in a child process, so that a failure leaves this process free to
    switch on the simulator, as tests/conftest.py does). The answer is cached per process once
    it is None; a problem is looked at again on the next call.
    """
    if _CUDA_OK:
        return None
    try:
        import cupy
    except ImportError as e:
        return f"needs CuPy, which is not installed (or does not import: {e}); install it with: {INSTALL_HINT}"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
        detail = ""
    except Exception as e:  # no driver, or a driver that sees no device
        count, detail = 0, f": {type(e).__name__}: {e}"
    if count == 0:
        return f"CuPy is installed but sees no CUDA GPU{detail} (check nvidia-smi and CUDA_VISIBLE_DEVICES)"
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1":
        return ("NUMBA_ENABLE_CUDASIM=1 is set, so the kernels would run in Numba's CPU simulator on NumPy "
                "arrays; unset it to run them on the GPU")
    for name, use, probe in CUPY_LIBRARIES:
        try:
            probe(cupy)
        except Exception as e:
            return (f"CuPy sees a GPU but cannot load {name} (needed for {use}): {type(e).__name__}: "
                    f"{_first_line(e)}; install the CUDA libraries with: {INSTALL_HINT}")
    try:
        import numba  # noqa: F401  (numba.cuda is not imported here: see the docstring)
    except ImportError as e:
        return f"needs numba-cuda for its kernels ({e}); install it with: {INSTALL_HINT}"
    problem = _numba_launch_problem()
    if problem is None:
        _mark_cuda_ok()
    return problem


_CUDA_OK = False


def _mark_cuda_ok():
    global _CUDA_OK
    _CUDA_OK = True


def _first_line(e):
    lines = str(e).strip().splitlines()
    return lines[0][:300] if lines else ""


def _numba_launch_problem(timeout=300):
    """None if numba-cuda compiles and launches a kernel on a CuPy array, else why not (one line)."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    try:
        done = subprocess.run([sys.executable, "-c", _NUMBA_LAUNCH_CHECK], env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"numba-cuda did not compile and launch a test kernel within {timeout} s"
    if done.returncode == 0:
        return None
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    why = lines[-1][:300] if lines else f"exit code {done.returncode}"
    return (f"numba-cuda cannot compile and launch a kernel on a CuPy array ({why}); it needs NVVM and the CUDA "
            f"runtime of its version: {INSTALL_HINT}")


def _cuda_backend() -> Backend:
    """CuPy arrays and the fused kernels of refdiff.kernels; one clear error if that cannot run."""
    problem = cuda_problem()
    if problem is not None:
        raise BackendUnavailable(f"backend 'cuda': {problem}; use backend='numpy' on this machine")
    import cupy

    try:
        ops = _kernels()  # imports numba
    except ImportError as e:
        raise BackendUnavailable(f"backend 'cuda' needs numba-cuda for its kernels ({e}); install it with: {INSTALL_HINT}") from e
    return Backend("cuda", cupy, ops)


def _kernels():
    """Fused op name -> the kernel of refdiff.kernels registered under it, for every name in TWINS."""
    from . import kernels

    return {name: getattr(kernels, name) for name in TWINS}


def _simulated_cuda_backend() -> Backend:
    """For tests on machines without a GPU: NumPy arrays and the fused kernels run by Numba's
    CUDA simulator (NUMBA_ENABLE_CUDASIM=1 must be set before numba is imported). Not public."""
    from .kernels import _launch

    if not _launch.SIMULATED:
        raise BackendUnavailable("the simulated cuda backend needs NUMBA_ENABLE_CUDASIM=1 set before numba is imported")
    return Backend("cuda-simulator", np, _kernels())


# ---- matrix products: one call for NumPy, cuBLAS and the capture-safe cuTENSOR route -----------
# CuPy refuses every cuBLAS call while the current stream is capturing a CUDA graph
# (cupy_backends/cuda/libs/cublas.pyx setStream: NotImplementedError; cupy/cupy#6290), and every
# Linear, Conv and attention product of the networks is a cuBLAS GEMM. cuTENSOR contractions are
# allowed during a capture, so while the current stream captures, the products go through
# cupyx.cutensor.contraction (the GEMM written as an Einstein contraction: C_mn = A_mk B_kn).
# Why cuTENSOR and not nvmath-python's cuBLASLt matmul: cuTENSOR comes with CuPy's own API
# (nothing new to import, CuPy arrays and CuPy's current stream as they are; only the library,
# the `cutensor-cu12`/`cutensor-cu13` wheel, must be installed), while nvmath-python would be a
# second package with its own stream and operand model, not installed on the GPU machines lent
# here (no registry reachable there). Outside a capture the eager path keeps cuBLAS (faster, and
# what every other CuPy user runs). A contraction in a capture allocates its workspace and output
# from CuPy's pool: CapturedStep captures under a private pool, warmed by one eager run, so that
# the graph's memory belongs to it alone.


def stream_is_capturing(xp):
    """True while CuPy's current stream is capturing a CUDA graph (False for NumPy)."""
    return xp is not np and bool(xp.cuda.get_current_stream().is_capturing())


def matmul(a, b, out=None):
    """a @ b with NumPy's matmul broadcasting (operands of 2 or more axes), into `out` if given.

    NumPy arrays: numpy.matmul itself. CuPy arrays: cupy.matmul (cuBLAS), or a cuTENSOR
    contraction while the current stream is capturing (capture-safe; see above).
    """
    xp = array_module(a)
    if not stream_is_capturing(xp):
        return xp.matmul(a, b, out=out)
    return _contract_matmul(xp, a, b, out)


def einsum(subscripts, a, b):
    """numpy.einsum(subscripts, a, b) for two operands and an explicit output ("ngm,ngm->ng").

    CuPy arrays while the current stream is capturing: one cuTENSOR contraction (cupy.einsum
    would reach cuBLAS); otherwise the array module's own einsum.
    """
    xp = array_module(a)
    if not stream_is_capturing(xp):
        return xp.einsum(subscripts, a, b)
    inputs, out_modes = subscripts.replace(" ", "").split("->")
    modes_a, modes_b = inputs.split(",")
    extent = dict(zip(modes_a, a.shape)) | dict(zip(modes_b, b.shape))
    out = xp.empty(tuple(extent[m] for m in out_modes), dtype=np.result_type(a.dtype, b.dtype))
    return _contraction(xp, a.astype(out.dtype, copy=False), tuple(modes_a), b.astype(out.dtype, copy=False),
                        tuple(modes_b), out, tuple(out_modes))


def _contract_matmul(xp, a, b, out):
    """a (..., M, K) @ b (..., K, N) as one contraction C[..., m, n] = sum_k A[..., m, k] B[..., k, n].

    The batch axes broadcast as in numpy.matmul: a batch axis of extent 1 against a longer one is
    dropped from that operand (a view), so that each mode has one extent, as cuTENSOR requires.
    """
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(f"matmul during a capture needs operands of 2 or more axes, got shapes {a.shape} and {b.shape}")
    batch = tuple(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]))
    dtype = np.result_type(a.dtype, b.dtype)
    shape = batch + (a.shape[-2], b.shape[-1])
    if out is None:
        out = xp.empty(shape, dtype=dtype)
    m, k, n = len(batch), len(batch) + 1, len(batch) + 2

    def operand(x, last_modes):
        lead = x.ndim - 2
        index, modes = [], []
        for i in range(lead):
            mode = len(batch) - lead + i
            if x.shape[i] == 1 and batch[mode] != 1:
                index.append(0)  # broadcast: dropped
            else:
                index.append(slice(None))
                modes.append(mode)
        return x[tuple(index)].astype(dtype, copy=False), tuple(modes) + last_modes

    a_view, modes_a = operand(a, (m, k))
    b_view, modes_b = operand(b, (k, n))
    return _contraction(xp, a_view, modes_a, b_view, modes_b, out, tuple(range(len(batch))) + (m, n))


def _contraction(xp, a, modes_a, b, modes_b, out, modes_out):
    """out = A B contracted over the modes not in modes_out (cupyx.cutensor.contraction, beta = 0)."""
    try:
        from cupyx import cutensor
    except ImportError as e:  # CuPy without the cuTENSOR library
        raise BackendUnavailable(
            f"a matrix product during a CUDA-graph capture needs cuTENSOR (CuPy refuses cuBLAS there): {e}; "
            f"install it with: pip install cutensor-cu13 (cutensor-cu12 for CUDA 12)") from e
    return cutensor.contraction(1.0, a, modes_a, b, modes_b, 0.0, out, modes_out)


# ---- one step captured into a CUDA graph ------------------------------------------------------


class CapturedStep:
    """A step, captured once into a CUDA graph on a non-blocking stream of its own, then replayed.

    body(): a function of no arguments that reads and writes device buffers made beforehand
    (a graph replays its kernels with the arguments and addresses of the capture: a value that
    changes from step to step must change in device memory, e.g. a timestep buffer, never in a
    Python argument). state: the buffers body() updates in place, restored after the warm-up.
    Write the buffers between two replays on `self.stream` (`with step.stream: ...`), so that
    the writes and the replays are ordered on one stream.

    1. warm-up: body() run `warmup` times eagerly on the stream, under a memory pool of its own:
       fills every first-use cache (the kernels' device tables, which cuda.to_device copies, a
       blocking call illegal in a capture; compiled kernels; cuTENSOR plans) and leaves the
       pool's blocks free for the capture, which then takes memory without growing the pool.
    2. capture: begin_capture(); body(); end_capture(), under the same pool: the memory the graph
       uses belongs to this object alone (nothing else allocates from its pool), for as long as
       it lives. A failure inside ends the capture and re-raises the error that broke it.
    3. replay(): graph.launch(stream): the whole step in one launch, no host work per kernel.
    During the capture the networks' matrix products take the cuTENSOR route (`matmul` above).
    """

    def __init__(self, body, xp, state=(), warmup=1):
        self.xp = xp
        xp.cuda.get_current_stream().synchronize()  # the buffers were written on the caller's stream
        self.stream = xp.cuda.Stream(non_blocking=True)
        self.pool = xp.cuda.MemoryPool()
        saved = [s.copy() for s in state]
        with self.stream, xp.cuda.using_allocator(self.pool.malloc):
            for _ in range(warmup):
                body()
            for s, v in zip(state, saved):
                s[...] = v
        del saved
        gc.collect()  # free the warm-up's temporaries into the pool before the capture takes them
        self.stream.synchronize()
        with self.stream, xp.cuda.using_allocator(self.pool.malloc):
            self.stream.begin_capture()
            try:
                body()
            except BaseException:
                try:
                    self.stream.end_capture()
                except Exception:  # the capture is broken anyway: the error to show is the first one
                    pass
                raise
            self.graph = self.stream.end_capture()

    def replay(self):
        """Run the captured step once (asynchronously, on self.stream)."""
        self.graph.launch(self.stream)

    def synchronize(self):
        """Wait for the replays launched so far."""
        self.stream.synchronize()
