"""refdiff.kernels: fused Numba CUDA kernels, each the twin of a reference function.

Installed from the repository's `kernels/` folder as the subpackage `refdiff.kernels`.
Every function here has exactly the signature of its NumPy twin in `refdiff` and computes the
same thing; tests/test_kernels*.py swaps one for the other.

    kernel                                   twin (reference)                   file
    q_sample, q_sample_with_target           refdiff.gaussian.forward                    kernels/q_sample.py
    timestep_embedding                       refdiff.gaussian.embedding                  kernels/timestep_embedding.py
    ddpm_step                                refdiff.samplers.reverse                    kernels/ddpm_step.py
    ddim_step                                refdiff.samplers.reverse                    kernels/ddim_step.py

TWINS maps each kernel's name to its twin's dotted path: the kernel author's harness
(refdiff.kernels.testing) and the tests read it, so registering a new kernel is one line there.

On a GPU the kernels take CuPy float32 arrays and run on CuPy's current stream; under Numba's
CUDA simulator (NUMBA_ENABLE_CUDASIM=1) they take NumPy arrays. Importing this package imports
numba (the `kernels` extra); refdiff itself never needs it.
"""
from .ddim_step import ddim_step
from .ddpm_step import ddpm_step
from .q_sample import q_sample, q_sample_with_target
from .timestep_embedding import timestep_embedding

# kernel name -> its reference twin (module:function)
TWINS = {
    "q_sample": "refdiff.gaussian.forward:q_sample",
    "q_sample_with_target": "refdiff.gaussian.forward:q_sample_with_target",
    "timestep_embedding": "refdiff.gaussian.embedding:timestep_embedding",
    "ddpm_step": "refdiff.samplers.ddpm:ddpm_step",
    "ddim_step": "refdiff.samplers.ddim:ddim_step",
}

__all__ = ["q_sample", "q_sample_with_target", "timestep_embedding", "ddpm_step", "ddim_step", "TWINS"]
