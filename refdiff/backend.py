"""Backends: where arrays live and which implementation of the fused ops runs.

A backend holds an array module (`numpy` or `cupy`) and the fused ops: one per entry of the
kernel registry `refdiff.kernels.TWINS` (q_sample, q_sample_with_target, timestep_embedding,
ddpm_step, ddim_step), reached as attributes (`backend.q_sample(...)`). The "numpy" backend binds
each name to its reference twin; the "cuda" backend uses CuPy arrays and binds each name to the
fused kernel of `refdiff.kernels`, which has the same signature.

This is plumbing, not math: the only module of the package (with kernels/) allowed to import
CuPy or Numba, and it does so only when the "cuda" backend is asked for.
"""
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
