"""refdiff.kernels: fused Numba CUDA kernels, each the twin of a reference function.

Installed from the repository's `kernels/` folder as the subpackage `refdiff.kernels`.
Every kernel has exactly the signature of its NumPy twin and computes the same thing;
tests/test_kernels*.py swaps one for the other.

TWINS, below, is the one registry of kernels: kernel name -> its reference twin
("module:function"). Everything else is derived from it:
- the exports: refdiff.kernels.<name> is the kernel, for every name in TWINS and no other;
- the kernel files: every module of this folder except the private plumbing (_launch, _device)
  and the harness (testing). A kernel file defines its registered kernels under their TWINS
  names (kernels/q_sample.py defines q_sample and q_sample_with_target) and ends with
  LAUNCH_SIGNATURES, the argument types each of its @cuda.jit kernels is launched with;
- the fused ops of both backends (refdiff.backend): the twins for "numpy", the kernels for "cuda";
- the harness (refdiff.kernels.testing): twin_of, launch_signatures, compile_ptx.
Adding a kernel is one line in TWINS, its file kernels/<name>.py and its test.

`from refdiff.kernels import TWINS` needs NumPy only: numba is imported when a kernel is first
used (refdiff.kernels.q_sample, ...), so refdiff itself never needs it. On a GPU the kernels take
CuPy float32 arrays and run on CuPy's current stream; under Numba's CUDA simulator
(NUMBA_ENABLE_CUDASIM=1) they take NumPy arrays.
"""
import importlib
import inspect
import pkgutil
import sys
import types

# kernel name -> its reference twin (module:function)
TWINS = {
    "q_sample": "refdiff.gaussian.forward:q_sample",
    "q_sample_with_target": "refdiff.gaussian.forward:q_sample_with_target",
    "timestep_embedding": "refdiff.gaussian.embedding:timestep_embedding",
    "ddpm_step": "refdiff.samplers.ddpm:ddpm_step",
    "ddim_step": "refdiff.samplers.ddim:ddim_step",
    "dpmpp_2m_step": "refdiff.samplers.dpm_solver:dpmpp_2m_step",
    "euler_step": "refdiff.samplers.k_diffusion:euler_step",
    "heun_step": "refdiff.samplers.k_diffusion:heun_step",
}

__all__ = [*TWINS, "TWINS"]


def reference_twin(name):
    """The reference function registered in TWINS as the twin of kernel `name` (imports NumPy code only)."""
    module, function = TWINS[name].split(":")
    return getattr(importlib.import_module(module), function)


def kernel_files():
    """The kernel files, imported (this imports numba): the modules of this folder but _private ones and testing."""
    names = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_") and m.name != "testing"]
    return [importlib.import_module(f"{__name__}.{name}") for name in names]


def __getattr__(name):
    """refdiff.kernels.<name> for a name in TWINS: the function of that name in a kernel file."""
    if name not in TWINS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    for module in kernel_files():  # bind every registered kernel at once
        for kernel_name, value in vars(module).items():
            if kernel_name in TWINS and inspect.isfunction(value) and value.__module__ == module.__name__:
                globals()[kernel_name] = value
    if name not in globals():
        raise AttributeError(f"{name!r} is registered in refdiff.kernels.TWINS but no kernel file defines it")
    return globals()[name]


class _Package(types.ModuleType):
    """This package's module type: a registered name always means the kernel. (Importing a
    submodule sets the package attribute of its name, and kernels/q_sample.py is named after
    the kernel q_sample: that attribute is not set.)"""

    def __setattr__(self, name, value):
        if name in TWINS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
