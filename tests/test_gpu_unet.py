"""Whole-model agreement on a GPU: the same U-Net, weights and noise on cuda and on numpy.

Needs a visible CUDA GPU (skips with the reason elsewhere). Each test runs the computation three
times: on the cuda backend in float32, on the numpy backend in float32, and on the numpy
backend in float64 (the ground truth). Tolerance: cuda and numpy differ in float32 only by
rounding (cuBLAS vs CPU BLAS summation order, CuPy vs NumPy reductions; CuPy's TF32 is off by
default, CUPY_TF32=0), so the cuda result must be as close to the float64 truth as the numpy
float32 result is, up to a factor 10 for different summation orders and lengths:
    max |cuda - f64| <= 10 max |numpy32 - f64| + 1e-6 max |f64|
(the 1e-6 relative floor, ~16 float32 ulps, covers a numpy32 result that happens to be exact).

Each test runs twice: on the GPU ("gpu", skipped with the reason where none is visible), and,
where no GPU is visible, on a strict stand-in for CuPy ("stand-in", tests/_fake_device.py): the
"cuda" model's arrays are DeviceArrays, which are not NumPy arrays and refuse what CuPy refuses
(np.asarray, NumPy operands, `.data` as values), and the fused ops are refdiff's kernels run by
Numba's CUDA simulator. So a test that could not pass on CuPy (issue 15: `.data` of a CuPy
array is a MemoryPointer) fails in CI, before any GPU is reached.
"""
import numpy as np
import pytest
from _gpu import GPU_MARKS

import _fake_device as fake
from conftest import GPU_VISIBLE

CONFIG = dict(in_channels=3, base_channels=32, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(8,),
              sample_size=16, norm_groups=8)
B = 2

STAND_IN_MARKS = [pytest.mark.skipif(GPU_VISIBLE, reason="a GPU is visible: the tests run on real CuPy arrays")]


@pytest.fixture(params=[pytest.param("gpu", marks=GPU_MARKS), pytest.param("stand-in", marks=STAND_IN_MARKS)])
def cuda(request, monkeypatch):
    """The backend the "cuda" model runs on: the real one, or the strict stand-in for CuPy."""
    from refdiff.backend import get_backend

    if request.param == "gpu":
        return get_backend("cuda")
    fake.installed(monkeypatch)  # `import cupy` answers with the stand-in for this test
    return fake.backend(embedding="kernel")


def assert_as_close_to_float64_as_numpy(cuda, numpy32, truth, what):
    cuda, numpy32, truth = (np.asarray(a, dtype=np.float64) for a in (cuda, numpy32, truth))
    err_cuda = np.abs(cuda - truth).max()
    err_numpy = np.abs(numpy32 - truth).max()
    bound = 10 * err_numpy + 1e-6 * np.abs(truth).max()
    assert err_cuda <= bound, f"{what}: cuda float32 is {err_cuda:.3g} from float64, numpy float32 {err_numpy:.3g}"


def three_unets(cuda, seed=0):
    """The same randomised U-Net on cuda (float32), numpy (float32) and numpy (float64).

    Every weight gets random noise added, so that the zero-initialised output convolution does
    not hide the gradients of the rest of the network.
    """
    from refdiff.models.unet import UNet

    base = UNet(**CONFIG, seed=seed)
    rng = np.random.default_rng(seed)
    state = {k: (v + 0.05 * rng.standard_normal(v.shape)).astype(v.dtype) if np.issubdtype(v.dtype, np.floating) else v
             for k, v in base.state_dict().items()}
    models = {}
    for name, backend, dtype in (("cuda", cuda, np.float32), ("numpy32", "numpy", np.float32), ("f64", "numpy", np.float64)):
        m = UNet(**CONFIG, seed=seed)
        m.load_state_dict(state)
        m.to(backend, dtype=dtype)
        models[name] = m
    return models


def backend_of(name, cuda):
    from refdiff.backend import get_backend

    return cuda if name == "cuda" else get_backend("numpy")


def inputs(seed=1, dtype=np.float32):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, 3, 16, 16)).astype(np.float32)
    t = np.array([0, 999])
    return x, t


def on(name, a, cuda, dtype=None):
    """Array `a` on the backend of model `name` (cuda: a CuPy copy), optionally cast."""
    a = a.astype(dtype) if dtype is not None else a
    return backend_of(name, cuda).asarray(a)


def host(a):
    """A Tensor's or an array's values as a NumPy array (a CuPy array is copied with .get()).

    Only a Tensor's `.data` holds its values: a CuPy array's `.data` is a MemoryPointer."""
    from refdiff.backend import to_numpy
    from refdiff.nn.autograd import Tensor

    return to_numpy(a.data if isinstance(a, Tensor) else a)


DTYPES = {"cuda": np.float32, "numpy32": np.float32, "f64": np.float64}


def test_unet_forward_on_cuda_matches_numpy(cuda):
    models = three_unets(cuda)
    x, t = inputs()
    out = {n: host(m(on(n, x, cuda, DTYPES[n]), t)) for n, m in models.items()}
    assert_as_close_to_float64_as_numpy(out["cuda"], out["numpy32"], out["f64"], "U-Net output")


def test_unet_input_and_parameter_gradients_on_cuda_match_numpy(cuda):
    from refdiff.nn.autograd import Tensor

    models = three_unets(cuda)
    x, t = inputs()
    w = np.random.default_rng(2).standard_normal((B, 3, 16, 16))  # L = sum(w * out): dL/dout = w
    grads = {}
    for n, m in models.items():
        xt = Tensor(on(n, x, cuda, DTYPES[n]), requires_grad=True)
        loss = (m(xt, t) * Tensor(on(n, w, cuda, DTYPES[n]))).sum()
        loss.backward()
        grads[n] = {"x": host(xt.grad), **{k: host(p.grad) for k, p in m.named_parameters()}}
    for key in grads["f64"]:
        assert_as_close_to_float64_as_numpy(grads["cuda"][key], grads["numpy32"][key], grads["f64"][key], f"grad of {key}")


def test_one_training_step_on_cuda_matches_numpy(cuda):
    """q_sample_with_target (fused on cuda), U-Net, mse loss, backward, SGD with momentum: the
    updated weights agree. (SGD, not Adam: Adam's first step is lr * sign(g), which flips for
    gradients within rounding of 0 and would test rounding luck, not the backends.)"""
    from refdiff.nn import functional as F
    from refdiff.training.optim import SGD
    from refdiff.gaussian.schedule import NoiseSchedule

    models = three_unets(cuda)
    s = NoiseSchedule.linear(T=1000)
    rng = np.random.default_rng(3)
    x0 = rng.uniform(-1, 1, (B, 3, 16, 16)).astype(np.float32)
    noise = rng.standard_normal((B, 3, 16, 16)).astype(np.float32)
    t = np.array([5, 700])
    updated, losses = {}, {}
    for n, m in models.items():
        be = backend_of(n, cuda)
        opt = SGD(m.parameters(), lr=1e-2, momentum=0.9)
        x_t, target = be.q_sample_with_target(on(n, x0, cuda, DTYPES[n]), on(n, t, cuda), on(n, noise, cuda, DTYPES[n]), s)
        loss = F.mse_loss(m(x_t, t), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses[n] = float(host(loss))
        updated[n] = {k: host(p.data) for k, p in m.named_parameters()}
    assert_as_close_to_float64_as_numpy(losses["cuda"], losses["numpy32"], losses["f64"], "loss")
    for key in updated["f64"]:
        assert_as_close_to_float64_as_numpy(updated["cuda"][key], updated["numpy32"][key], updated["f64"][key], f"updated {key}")


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_eta0_trajectory_on_cuda_matches_numpy(prediction_type, cuda):
    """Ten deterministic DDIM steps (eta = 0) from the same x_T: every x_t along the way agrees."""
    from refdiff.gaussian.schedule import NoiseSchedule
    from refdiff.samplers.timesteps import inference_timesteps, previous_timestep

    models = three_unets(cuda)
    s = NoiseSchedule.cosine(T=1000)
    steps = 10
    x_T = np.random.default_rng(4).standard_normal((B, 3, 16, 16)).astype(np.float32)
    trajectories = {}
    for n, m in models.items():
        be = backend_of(n, cuda)
        x = on(n, x_T, cuda, DTYPES[n])
        path = []
        for t in inference_timesteps(steps, s.T):
            t, t_prev = int(t), int(previous_timestep(int(t), steps, s.T))
            out = m(x, np.full(B, t)).data
            x = be.ddim_step(x, out, t, t_prev, s, eta=0.0, prediction_type=prediction_type)
            path.append(host(x))
        trajectories[n] = path
    for i, (c, n32, f) in enumerate(zip(*(trajectories[k] for k in ("cuda", "numpy32", "f64")))):
        assert_as_close_to_float64_as_numpy(c, n32, f, f"x after DDIM step {i + 1}")
