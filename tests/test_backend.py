"""Backend selection: numpy always, cuda where CuPy sees a GPU, one clear error otherwise."""
import os
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


def _fake_cupy(device_count, missing=None):
    """A stand-in for the cupy module whose runtime reports `device_count` (an int or an exception)
    and whose CUDA libraries all load, except `missing` (a name of backend.CUPY_LIBRARIES)."""
    def get_device_count():
        if isinstance(device_count, Exception):
            raise device_count
        return device_count

    def loads(name, value=None):
        def call(*args):
            if name == missing:
                raise ImportError(f"lib{name}.so.13: cannot open shared object file: No such file or directory")
            return value
        return call

    cupy = types.ModuleType("cupy")
    cupy.cuda = types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDeviceCount=get_device_count, runtimeGetVersion=loads("CUDA runtime", 13000)),
        device=types.SimpleNamespace(get_cublas_handle=loads("cuBLAS", 1)),
        cublas=types.SimpleNamespace(getVersion=loads("cuBLAS", 130000)),
        curand=types.SimpleNamespace(createGenerator=loads("cuRAND", 1), destroyGenerator=loads("cuRAND"),
                                     CURAND_RNG_PSEUDO_DEFAULT=100),
        nvrtc=types.SimpleNamespace(getVersion=loads("NVRTC", (13, 0))))
    cupy.float32 = np.float32
    cupy.arange = np.arange  # NumPy's arithmetic stands for the kernels NVRTC compiles
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
        "import os, sys; sys.modules['numba'] = None\n"
        "sys.path.insert(0, %r)\n"
        "from test_backend import _fake_cupy\n"
        "os.environ.pop('NUMBA_ENABLE_CUDASIM', None)  # conftest switched it on: no GPU here\n"
        "sys.modules['cupy'] = _fake_cupy(1)\n"
        "from refdiff.backend import BackendUnavailable, get_backend\n"
        "try:\n    get_backend('cuda')\nexcept BackendUnavailable as e:\n    print(e)\n"
    ) % os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert "needs numba-cuda" in out and "pip install 'refdiff[cuda]'" in out


@pytest.mark.parametrize("library", [name for name, _, _ in backend.CUPY_LIBRARIES])
def test_cuda_problem_loads_each_cuda_library_and_names_the_missing_one(monkeypatch, library):
    """issue 15: CuPy imports and sees a GPU without cuBLAS (or cuRAND, NVRTC), which fail only at
    their first use; cuda_problem loads each one and names the one that does not load."""
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(1, missing=library))
    monkeypatch.delenv("NUMBA_ENABLE_CUDASIM", raising=False)
    problem = backend.cuda_problem()
    assert problem is not None and f"cannot load {library} " in problem and f"lib{library}.so.13" in problem
    assert "pip install 'refdiff[cuda]'" in problem and "refdiff[cuda12]" in problem
    for other, _, _ in backend.CUPY_LIBRARIES:
        assert other == library or f"load {other} " not in problem


def test_cuda_problem_names_numba_cuda_when_it_cannot_launch_a_kernel(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(1))
    monkeypatch.delenv("NUMBA_ENABLE_CUDASIM", raising=False)
    monkeypatch.setattr(backend, "_numba_launch_problem", lambda: "numba-cuda cannot compile and launch a kernel (libnvvm)")
    assert "libnvvm" in backend.cuda_problem()
    monkeypatch.setattr(backend, "_numba_launch_problem", lambda: None)
    monkeypatch.setattr(backend, "_CUDA_OK", False)
    assert backend.cuda_problem() is None  # every library loads and a kernel ran: usable


def test_the_numba_launch_check_reports_the_last_line_of_the_childs_error(monkeypatch):
    monkeypatch.setattr(backend, "_NUMBA_LAUNCH_CHECK", "raise OSError('libnvvm.so not found')")
    problem = backend._numba_launch_problem()
    assert "OSError: libnvvm.so not found" in problem and "refdiff[cuda]" in problem


def test_pyproject_offers_one_cuda_extra_per_cuda_major_version_with_its_libraries():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    for major in ("12", "13"):
        deps = extras[f"cuda{major}"]
        assert f"cupy-cuda{major}x[ctk]>=14" in deps  # [ctk]: cuBLAS, cuRAND, NVRTC, the runtime of that major
        assert f"numba-cuda[cu{major}]>=0.20" in deps  # NVVM and the runtime numba-cuda links against
        assert f"cutensor-cu{major}>=2" in deps  # the capture-safe matrix products (refdiff.backend.matmul)
    assert extras["cuda"] == ["refdiff[cuda13]"]


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
