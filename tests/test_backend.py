"""Backend selection: numpy always, cuda where CuPy sees a GPU, one clear error otherwise."""
import subprocess
import sys
import types

import numpy as np
import pytest
from _gpu import requires_gpu

import refdiff
from refdiff import backend
from refdiff.backend import BackendUnavailable, get_backend


@pytest.fixture
def fresh_backends(monkeypatch):
    """An empty backend cache, so that get_backend builds the backend under the test's conditions."""
    monkeypatch.setattr(backend, "_BACKENDS", {})


def _fake_cupy(device_count):
    """A stand-in for the cupy module whose runtime reports `device_count` (an int or an exception)."""
    def get_device_count():
        if isinstance(device_count, Exception):
            raise device_count
        return device_count

    cupy = types.ModuleType("cupy")
    cupy.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=get_device_count))
    return cupy


def test_numpy_backend_holds_numpy_and_the_reference_functions():
    b = get_backend("numpy")
    assert b.name == "numpy" and b.xp is np
    assert b.q_sample is refdiff.q_sample and b.ddim_step is refdiff.ddim_step
    assert get_backend("numpy") is b  # built once
    assert get_backend(b) is b  # a Backend passes through


@pytest.mark.parametrize("name", ["gpu", "CUDA", "", None, 0])
def test_unknown_backend_name_is_a_value_error_listing_the_choices(name):
    with pytest.raises(ValueError, match=r"unknown backend .*expected 'numpy' or 'cuda'"):
        get_backend(name)


def test_cuda_without_cupy_says_cupy_is_missing_and_how_to_install(fresh_backends, monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` fail, installed or not
    with pytest.raises(BackendUnavailable, match=r"needs CuPy, which is not installed.*pip install 'refdiff\[cuda\]'"):
        get_backend("cuda")
    assert "cuda" not in backend._BACKENDS  # a failure is not cached


@pytest.mark.parametrize("device_count", [0, RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")])
def test_cuda_with_cupy_but_no_gpu_says_no_gpu_is_visible(fresh_backends, monkeypatch, device_count):
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(device_count))
    with pytest.raises(BackendUnavailable, match=r"CuPy is installed but sees no CUDA GPU") as info:
        get_backend("cuda")
    assert "CuPy is not installed" not in str(info.value)
    if isinstance(device_count, Exception):
        assert "cudaErrorNoDevice" in str(info.value)  # the driver's reason is passed on


def test_cuda_with_the_simulator_switched_on_says_so(fresh_backends, monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(1))
    monkeypatch.setenv("NUMBA_ENABLE_CUDASIM", "1")
    with pytest.raises(BackendUnavailable, match=r"NUMBA_ENABLE_CUDASIM=1"):
        get_backend("cuda")


def test_cuda_without_numba_names_numba_cuda():
    """numba is imported only when the kernels are bound: its absence still surfaces as BackendUnavailable."""
    code = (
        "import os, sys, types; os.environ.pop('NUMBA_ENABLE_CUDASIM', None); sys.modules['numba'] = None\n"
        "cupy = types.ModuleType('cupy')\n"
        "cupy.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: 1))\n"
        "sys.modules['cupy'] = cupy\n"
        "from refdiff.backend import BackendUnavailable, get_backend\n"
        "try:\n    get_backend('cuda')\nexcept BackendUnavailable as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert "needs numba-cuda" in out and "pip install 'refdiff[cuda]'" in out


def test_backend_unavailable_is_a_runtime_error():
    assert issubclass(BackendUnavailable, RuntimeError)


def test_simulated_cuda_backend_runs_the_fused_kernels_on_numpy_arrays():
    """The backend wiring without a GPU: the fused ops are refdiff.kernels' and agree with numpy's."""
    from refdiff.kernels.testing import SIMULATED, U, _schedule

    if not SIMULATED:  # on a GPU the simulated backend refuses to exist
        with pytest.raises(BackendUnavailable, match="NUMBA_ENABLE_CUDASIM=1"):
            backend._simulated_cuda_backend()
        return
    sim = backend._simulated_cuda_backend()
    assert sim.q_sample is refdiff.kernels.q_sample and sim.xp is np
    s = _schedule("cosine", 10)
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    ref = get_backend("numpy").q_sample(x.astype(np.float64), np.array([0, 9]), x.astype(np.float64), s)
    np.testing.assert_allclose(sim.q_sample(x, np.array([0, 9]), x, s), ref, rtol=0, atol=8 * U * 4)  # 4u(|x0|+|eps|), |x| < 4


@requires_gpu
def test_cuda_backend_holds_cupy_and_the_kernels():
    import cupy

    b = get_backend("cuda")
    assert b.name == "cuda" and b.xp is cupy
    assert b.ddpm_step is refdiff.kernels.ddpm_step and b.timestep_embedding is refdiff.kernels.timestep_embedding


@requires_gpu
def test_cuda_backend_moves_arrays_to_the_device_and_back_unchanged():
    import cupy

    b = get_backend("cuda")
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    d = b.asarray(a)
    assert isinstance(d, cupy.ndarray)
    np.testing.assert_array_equal(b.to_numpy(d), a)


@requires_gpu
def test_cuda_backend_rng_is_seeded():
    b = get_backend("cuda")
    draw = lambda: b.to_numpy(b.rng(3).standard_normal((5,), dtype=np.float32))  # noqa: E731
    np.testing.assert_array_equal(draw(), draw())
