"""A sampling step captured into a CUDA graph (issue 15, item 4), proven on the fake device.

tests/_fake_device.py stands for CuPy: `Stream.begin_capture()` .. `end_capture()` records every
device op and raises on what a real capture refuses (cuBLAS, cuRAND, a host read or
synchronisation, numba.cuda.to_device of a kernel cache, an allocation that grows the memory
pool); `Graph.launch()` replays the record on the same memory. What only a GPU can settle (that
cuTENSOR contractions really capture and replay, the speed) is benchmarks/capture_probe.py's and
bench_sampling_gpu.py's job.
"""
import numpy as np
import pytest

import _fake_device as fake
from _gpu import requires_gpu
from test_device_path import mlp, unet  # the same small networks as the device-path tests
from refdiff import backend as rb
from refdiff.diffusion import GaussianDiffusion
from refdiff.gaussian.schedule import NoiseSchedule
from refdiff.nn.autograd import no_grad

needs_simulated_kernels = pytest.mark.skipif(
    not fake.kernels_simulated(), reason="the fake device runs refdiff's kernels under Numba's CUDA simulator, "
                                         "which is off where a GPU is visible (the GPU suite covers that case)")

# float32 products summed in another order (np.einsum for the cuTENSOR stand-in, BLAS for the eager
# matmul): each differs by a few ulp of the sum, |error| <= K eps32 sum|a b| ~ 1e-6 relative for the
# K <= 72 of these tests; 1e-5 leaves a margin and still catches any wrong index (errors of O(1)).
PRODUCT_RTOL = 1e-5


@pytest.fixture
def device(monkeypatch):
    fake.installed(monkeypatch)
    return fake.backend(embedding="kernel") if fake.kernels_simulated() else fake.backend()


def normal(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def captured(fn, warm=True):
    """fn() run inside a capture on a non-blocking stream, under a pool warmed by one eager run of
    fn() (as CapturedStep does): (its result, the graph)."""
    stream, pool = fake.xp.cuda.Stream(non_blocking=True), fake.xp.cuda.MemoryPool()
    with stream, fake.xp.cuda.using_allocator(pool.malloc):
        if warm:
            fn()
        fake.CONTRACTIONS.clear()
        stream.begin_capture()
        try:
            result = fn()
        finally:
            graph = stream.end_capture()
    return result, graph


# ---- the matrix-product route ------------------------------------------------------------------


@pytest.mark.parametrize("shape_a, shape_b, transpose_b", [
    ((5, 7), (3, 7), True),             # linear: x2 @ W.T (a strided view)
    ((6, 9), (9, 4), False),            # conv2d's im2col GEMM
    ((4, 9), (2, 9, 5), False),         # 1x1 conv: W (O, C) @ x (N, C, HW), a broadcast batch
    ((2, 3, 4, 6), (2, 3, 6, 5), False),  # attention: batched (..., L, d) @ (..., d, S)
    ((2, 1, 4, 6), (1, 3, 6, 5), False),  # batch axes of extent 1 broadcast on both sides
])
def test_matmul_takes_cutensor_during_a_capture_and_equals_numpy_matmul(device, shape_a, shape_b, transpose_b):
    """Catches: a wrong mode (index) assignment in the contraction, a broadcast batch axis kept with
    two extents, a transposed view read as if contiguous, cuBLAS reached during the capture."""
    a, b = normal(shape_a), normal(shape_b, seed=1)
    b_used = b.swapaxes(-1, -2) if transpose_b else b
    da, db = fake.to_device(a), fake.to_device(b)
    y, _ = captured(lambda: rb.matmul(da, db.swapaxes(-1, -2) if transpose_b else db))
    assert len(fake.CONTRACTIONS) == 1
    np.testing.assert_allclose(fake.to_host(y), np.matmul(a, b_used), rtol=PRODUCT_RTOL, atol=PRODUCT_RTOL)


def test_matmul_writes_into_out_and_einsum_contracts_during_a_capture(device):
    """Catches: `out=` ignored (conv2d's workspace left unwritten), einsum modes mislabelled."""
    a, b = normal((6, 9)), normal((9, 4), seed=1)
    out = fake.xp.zeros((6, 4), dtype=np.float32)
    x = normal((2, 3, 10), seed=2)
    da, db, dx = fake.to_device(a), fake.to_device(b), fake.to_device(x)
    (y, v), _ = captured(lambda: (rb.matmul(da, db, out=out), rb.einsum("ngm,ngm->ng", dx, dx)))
    assert y is out
    np.testing.assert_allclose(fake.to_host(out), a @ b, rtol=PRODUCT_RTOL, atol=PRODUCT_RTOL)
    np.testing.assert_allclose(fake.to_host(v), np.einsum("ngm,ngm->ng", x, x), rtol=PRODUCT_RTOL)


def test_outside_a_capture_matmul_is_the_array_modules_own(device, monkeypatch):
    """The eager path is unchanged: NumPy gets numpy.matmul's exact result, CuPy cupy.matmul (cuBLAS)."""
    a, b = normal((5, 7)), normal((7, 3), seed=1)
    np.testing.assert_array_equal(rb.matmul(a, b), a @ b)
    y = rb.matmul(fake.to_device(a), fake.to_device(b))
    assert fake.CONTRACTIONS == []
    np.testing.assert_array_equal(fake.to_host(y), a @ b)


def test_the_old_route_a_cublas_matmul_is_refused_during_a_capture(device):
    """What the networks did before: xp.matmul / `@` on device arrays, i.e. cuBLAS, which CuPy
    refuses in a capture (cupy/cupy#6290). The stand-in must refuse it, or the tests above prove nothing."""
    a = fake.to_device(normal((3, 3)))
    for product in (lambda: fake.xp.matmul(a, a), lambda: a @ a, lambda: fake.xp.einsum("ij,jk->ik", a, a)):
        with pytest.raises(fake.CaptureError, match="cuBLAS"):
            captured(product, warm=False)


# ---- the stand-in's graph: what it replays, what it refuses ------------------------------------


def test_a_replay_reruns_the_ops_on_the_captured_memory_and_freezes_python_values(device):
    """The replay semantics the captured sampler relies on: a new value in an input buffer is
    seen by the replay; a Python number used in the capture keeps its captured value.
    Catches a stand-in that re-runs Python (it would see the new Python value) or that does
    not replay at all (the output would not change)."""
    x = fake.to_device(np.ones(4, np.float32))
    out = fake.xp.zeros(4, dtype=np.float32)
    scale = {"value": 2.0}

    def body():
        out[...] = x * scale["value"] + 1.0

    _, graph = captured(body)
    x[...] = fake.to_device(np.full(4, 3.0, np.float32))
    scale["value"] = 100.0
    graph.launch()
    np.testing.assert_array_equal(fake.to_host(out), np.full(4, 7.0, np.float32))  # 3 * 2 + 1, not 3 * 100 + 1


@pytest.mark.parametrize("forbidden, error", [
    (lambda x: fake.xp.random.default_rng(0).standard_normal(x.shape, dtype=np.float32), "cuRAND"),
    (lambda x: float(x.sum()), "transfer"),
    (lambda x: fake.xp.cuda.get_current_stream().synchronize(), "synchronisation"),
], ids=["cuRAND draw", "host read", "stream sync"])
def test_the_capture_refuses_random_draws_host_reads_and_syncs(device, forbidden, error):
    x = fake.to_device(np.ones(4, np.float32))
    with pytest.raises((fake.CaptureError, fake.HostTransfer), match=error):
        captured(lambda: forbidden(x))  # allowed in the eager warm-up, refused in the capture


def test_an_allocation_that_grows_the_pool_is_refused_during_a_capture(device):
    """Catches a captured step whose memory was not warmed: a block the pool does not hold."""
    x = fake.to_device(np.ones(4, np.float32))
    sizes = iter([4, 10_000])  # the capture asks for more than the warm-up did
    with pytest.raises(fake.CaptureError, match="grows the pool"):
        captured(lambda: fake.xp.zeros(next(sizes), dtype=np.float32) + x.sum())
    captured(lambda: (x * 3.0).sum())  # the same sizes as the warm-up: taken from the pool


@needs_simulated_kernels
def test_a_cold_kernel_cache_inside_the_capture_is_refused(device):
    """Catches a CapturedStep without its warm-up: the schedule's tables would be copied by
    numba.cuda.to_device, a blocking copy, inside the capture."""
    x = fake.to_device(normal((2, 5)))
    with pytest.raises(fake.CaptureError, match="to_device"):
        rb.CapturedStep(lambda: device.ddim_step(x, x, 40, 30, NoiseSchedule.linear(T=51)), fake.xp, warmup=0)


# ---- a whole network and a whole sampling loop -------------------------------------------------


def test_the_unet_forward_is_captured_and_its_replay_equals_the_eager_forward(device):
    """The U-Net (convs, 1x1 convs, group norm, attention, linear) inside a capture: every product
    a cuTENSOR contraction, no cuBLAS, no host read; the replay on new x and t in the same buffers
    gives the eager forward's output for them."""
    model = unet().to(device)
    model.eval()
    x, t = fake.to_device(normal((2, 1, 8, 8))), fake.xp.full(2, 10, dtype=np.int64)
    y = fake.to_device(np.array([0, 2]))
    out = fake.xp.zeros((2, 1, 8, 8), dtype=np.float32)

    def body():
        with no_grad():
            out[...] = model(x, t, y).data

    step = rb.CapturedStep(body, fake.xp)
    assert len(fake.CONTRACTIONS) >= 10  # every conv, linear, group norm and attention product
    x[...] = fake.to_device(normal((2, 1, 8, 8), seed=5))
    t.fill(30)
    with step.stream:
        step.replay()
    with no_grad():
        expected = fake.to_host(model(x, t, y).data)
    np.testing.assert_allclose(fake.to_host(out), expected, rtol=PRODUCT_RTOL, atol=PRODUCT_RTOL)
    assert not np.allclose(expected, 0)


@needs_simulated_kernels
@pytest.mark.parametrize("sampler, eta, network", [
    ("ddim", 0.0, "unet"), ("ddim", 0.5, "mlp"), ("ddpm", 0.0, "mlp"),
], ids=["ddim-unet", "ddim-eta-mlp", "ddpm-mlp"])
def test_the_captured_sampler_gives_the_samples_of_the_eager_loop(device, sampler, eta, network):
    """capture_sampler(...).sample(seed) against diffusion.sample(..., seed) on the same device:
    x_T and the noise drawn in the same order, t and t_prev from device memory, the network and
    the fused step kernel replayed. Catches timesteps frozen at their captured values (every
    replay would repeat the first step), noise drawn once instead of per step, the state not
    written back, the warm-up's step left in x. Tolerance: the replay's products are cuTENSOR's
    (the stand-in's np.einsum), the eager loop's cuBLAS (np.matmul): float32 sums in another
    order, amplified by at most a few steps' coefficients (< 10): 1e-4."""
    model = (unet() if network == "unet" else mlp()).to(device)
    diffusion = GaussianDiffusion(model, NoiseSchedule.linear(T=40))
    y = np.array([0, 1, 2]) if network == "mlp" else None
    eager = diffusion.sample(3, sampler=sampler, steps=4, eta=eta if sampler == "ddim" else None, y=y, seed=7,
                             progress=False)
    captured_sampler = diffusion.capture_sampler(3, sampler=sampler, steps=4, eta=eta, y=y)
    fake.TRANSFERS.clear()
    samples = captured_sampler.sample(seed=7)
    assert fake.TRANSFERS == [".get()"]  # the samples, read once
    np.testing.assert_allclose(samples, eager, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(captured_sampler.sample(seed=7), samples, rtol=0, atol=0)  # replays repeat


@needs_simulated_kernels
def test_the_captured_sampler_refuses_what_it_cannot_capture(device):
    diffusion = GaussianDiffusion(mlp().to(device), NoiseSchedule.linear(T=40))
    with pytest.raises(ValueError, match="sampler"):
        diffusion.capture_sampler(2, sampler="euler", steps=4)
    with pytest.raises(ValueError, match="eta"):
        diffusion.capture_sampler(2, sampler="ddpm", steps=4, eta=0.5)


@requires_gpu
@pytest.mark.parametrize("sampler, eta", [("ddim", 0.0), ("ddim", 0.5), ("ddpm", 0.0)])
def test_on_a_gpu_the_captured_sampler_gives_the_samples_of_the_eager_loop(sampler, eta):
    """The real thing (CuPy, cuTENSOR, numba-cuda, a CUDA graph): what the fake-device tests above
    assume. Tolerance: cuTENSOR's products against cuBLAS's in float32 (reordered sums, no TF32
    unless CUPY_TF32 is set), over 4 steps of a small U-Net: 1e-3 relative to max |x|."""
    model = unet().to("cuda")
    diffusion = GaussianDiffusion(model, NoiseSchedule.linear(T=40))
    eager = diffusion.sample(2, sampler=sampler, steps=4, eta=eta if sampler == "ddim" else None, y=np.array([0, 1]),
                             seed=0, progress=False)
    captured = diffusion.capture_sampler(2, sampler=sampler, steps=4, eta=eta, y=np.array([0, 1])).sample(seed=0)
    np.testing.assert_allclose(captured, eager, rtol=0, atol=1e-3 * float(np.abs(eager).max()))
