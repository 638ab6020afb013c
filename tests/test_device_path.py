"""The device path makes no host round trip; the host path keeps its value checks.

No GPU is needed to prove that nothing is read back to the host or copied in from it:
tests/_fake_device.py stands for CuPy (array_module recognises it) and raises HostTransfer on
every host <-> device transfer inside `no_host_transfers()`. A CUDA-graph capture of a whole
sampling or training step (issue 6) needs exactly that: no host synchronisation and no copy of
a Python value to the device. The rule these tests check is written once, in the docstring of
refdiff/checks.py: value checks (ranges, NaN) run on host data always and on device arrays
only with REFDIFF_KERNEL_CHECKS=1.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import _fake_device as fake
from _fake_device import HostTransfer, no_host_transfers
from refdiff import checks, nn
from refdiff.training import optim
from refdiff.nn import functional as F
from refdiff.nn.autograd import Tensor, no_grad
from refdiff.models.mlp import MLPDenoiser
from refdiff.models.unet import UNet


@pytest.fixture
def device(monkeypatch):
    """The fake GPU's backend, with `import cupy` answering with the fake for this test."""
    fake.installed(monkeypatch)
    return fake.backend()


def unet(dropout=0.0):
    """A small class-conditional U-Net (attention, scale-shift) with a non-zero output conv."""
    model = UNet(in_channels=1, base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
                 sample_size=8, norm_groups=4, num_classes=3, resnet_time_scale_shift="scale_shift", dropout=dropout)
    model.conv_out.weight.data[...] = 0.1 * np.random.default_rng(1).standard_normal(model.conv_out.weight.shape)
    return model


def mlp():
    model = MLPDenoiser(dim=2, hidden=16, num_blocks=2, time_dim=8, num_classes=3)
    model.out_proj.weight.data[...] = 0.1 * np.random.default_rng(1).standard_normal(model.out_proj.weight.shape)
    return model


def normal(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ---- the fake itself --------------------------------------------------------------------------


@pytest.mark.parametrize("round_trip", [
    lambda a: int(a.max()), lambda a: float(a.sum()), lambda a: bool((a > 0).all()), lambda a: a.item(),
    lambda a: a.get(), lambda a: np.asarray(a), lambda a: a + np.ones(3, np.float32),
    lambda a: fake.xp.asarray([1.0, 2.0]), lambda a: fake.xp.asarray(np.ones(3)),
], ids=["int", "float", "bool", "item", "get", "np.asarray", "host operand", "asarray list", "asarray host"])
def test_the_fake_device_catches_each_kind_of_host_round_trip(device, round_trip):
    a = fake.to_device(np.arange(3, dtype=np.float32))
    with no_host_transfers(), pytest.raises(HostTransfer):
        round_trip(a)


# ---- no host round trip on the device ---------------------------------------------------------


def test_unet_forward_and_backward_make_no_host_transfer(device):
    model = unet(dropout=0.1).to(device)  # training mode: dropout masks drawn on the device
    x, target = fake.to_device(normal((2, 1, 8, 8))), fake.to_device(normal((2, 1, 8, 8), seed=1))
    t, y = fake.to_device(np.array([0, 999])), fake.to_device(np.array([2, 3]))  # 3 = the null label
    with no_host_transfers():
        loss = F.mse_loss(model(x, t, y), target)
        loss.backward()
    assert all(isinstance(p.grad, fake.DeviceArray) for p in model.parameters())


def test_unet_on_the_device_computes_what_it_computes_on_the_host(device):
    host = unet()
    dev = unet().to(device)
    x, target, t, y = normal((2, 1, 8, 8)), normal((2, 1, 8, 8), seed=1), np.array([5, 500]), np.array([0, 1])
    host_loss = F.mse_loss(host(x, t, y), target)
    host_loss.backward()
    loss = F.mse_loss(dev(fake.to_device(x), fake.to_device(t), fake.to_device(y)), fake.to_device(target))
    loss.backward()
    # the fake computes with the same NumPy operations in the same order (its timestep embedding
    # is the reference's float64 formula), so the two agree exactly: tolerance 0
    assert fake.to_host(loss.data) == host_loss.data
    for (name, p), q in zip(host.named_parameters(), dev.parameters()):
        np.testing.assert_array_equal(fake.to_host(q.grad), p.grad, err_msg=name)


def test_mlp_forward_makes_no_host_transfer(device):
    model = mlp().to(device)
    x, t, y = fake.to_device(normal((4, 2))), fake.to_device(np.array([0, 1, 10, 999])), fake.to_device(np.arange(4))
    with no_host_transfers(), no_grad():  # as in a sampling step
        conditional = model(x, t, y)
        unconditional = model(x, t)  # y=None: the null label is filled in on the device
    assert isinstance(conditional.data, fake.DeviceArray) and isinstance(unconditional.data, fake.DeviceArray)


def test_python_number_timesteps_and_labels_are_filled_in_on_the_device(device):
    model = unet().to(device)
    x = fake.to_device(normal((2, 1, 8, 8)))
    with no_host_transfers():
        out = model(x, 17, 1)  # checked on the host, then xp.full: no copy
    expected = model(x, fake.to_device(np.array([17, 17])), fake.to_device(np.array([1, 1])))
    np.testing.assert_array_equal(fake.to_host(out.data), fake.to_host(expected.data))


def test_a_training_step_makes_no_host_transfer(device):
    model = mlp().to(device)
    params = model.parameters()
    opt, ema = optim.AdamW(params, lr=1e-3), optim.EMA(params, decay=0.9)
    x, target = fake.to_device(normal((4, 2))), fake.to_device(normal((4, 2), seed=1))
    t, y = fake.to_device(np.array([3, 30, 300, 900])), fake.to_device(np.array([0, 1, 2, 0]))
    with no_host_transfers():
        opt.zero_grad()
        F.mse_loss(model(x, t, y), target).backward()
        optim.clip_grad_norm(params, 1.0, sync=False)
        opt.step()
        ema.step(params)


def test_clip_grad_norm_without_sync_returns_the_norm_on_the_device_and_clips_alike(device):
    grads = [normal((3, 4)), normal((5,), seed=1)]
    host = [Tensor(np.zeros_like(g)) for g in grads]
    dev = [Tensor(fake.to_device(np.zeros_like(g))) for g in grads]
    for h, d, g in zip(host, dev, grads):
        h.grad, d.grad = g, fake.to_device(g)
    max_norm = 0.5  # below the norm (about 4): the gradients are scaled
    total = optim.clip_grad_norm(host, max_norm)
    with no_host_transfers():
        total_dev = optim.clip_grad_norm(dev, max_norm, sync=False)
    # same float64 sum in the same order, same float32 coefficient: equal, tolerance 0
    assert fake.to_host(total_dev) == total
    for h, d in zip(host, dev):
        np.testing.assert_array_equal(fake.to_host(d.grad), h.grad)


def test_scalar_operands_allocate_no_device_array(device, monkeypatch):
    calls = []
    real_getattr = type(fake.xp).__getattr__
    monkeypatch.setattr(type(fake.xp), "__getattr__", lambda self, name: calls.append(name) or real_getattr(self, name))
    x = Tensor(fake.to_device(normal((3,))), requires_grad=True)
    calls.clear()
    with no_host_transfers():
        y = ((2.0 - x * 3.0 + 1) / 2.0 + 1.0 / (x * x + 1.0)).mean()
    assert [name for name in calls if not name.startswith("__")] == []  # no xp.full, no xp.asarray
    # (each Python number stays a kernel argument); "__spec__" & co. are `import cupy` looking
    assert y.dtype == np.float32


# ---- dtypes and gradients of scalar operands --------------------------------------------------


def test_numpy_float64_scalars_keep_a_float32_tensor_float32():
    x = Tensor(np.array([1.5, -2.0], np.float32), requires_grad=True)
    for y in (x * np.float64(0.5), np.float64(2.0) - x, np.float64(3.0) / x, x ** np.float64(2.0), x + np.int64(1)):
        assert y.dtype == np.float32


def test_reflected_scalar_ops_have_the_closed_form_gradient():
    x = Tensor(np.array([0.5, -2.0, 3.0], np.float32), requires_grad=True)
    ((2.0 - x) + 3.0 / x + np.float64(0.25) * x).sum().backward()
    # d/dx [(2 - x) + 3/x + x/4] = -1 - 3/x^2 + 1/4, in float64; float32 arithmetic is within a
    # few ulps (|grad| < 13 here, eps32 = 1.2e-7): rtol 1e-6
    a = x.data.astype(np.float64)
    np.testing.assert_allclose(x.grad, -1.0 - 3.0 / a**2 + 0.25, rtol=1e-6)


# ---- host values are still checked --------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_host_timesteps_are_refused(bad):
    with pytest.raises(ValueError, match="timesteps t contains (NaN|inf)"):
        unet()(normal((2, 1, 8, 8)), np.array([1.0, bad]))
    with pytest.raises(ValueError, match="timesteps t contains (NaN|inf)"):
        mlp()(normal((2, 2)), np.array([bad, 1.0]))


@pytest.mark.parametrize("labels", [[-1, 0], [0, 4]])
def test_out_of_range_host_labels_are_refused(labels):
    with pytest.raises(ValueError, match=r"class labels y must be in \[0, 3\] \(3 = the null label\)"):
        unet()(normal((2, 1, 8, 8)), 5, np.array(labels))
    with pytest.raises(ValueError, match=r"class labels y must be in \[0, 3\] \(3 = the null label\)"):
        mlp()(normal((2, 2)), 5, np.array(labels))


def test_non_integer_labels_are_refused():
    with pytest.raises(TypeError, match="class labels y must be integers, got dtype float64"):
        unet()(normal((2, 1, 8, 8)), 5, np.array([0.0, 1.0]))


def test_out_of_range_host_embedding_indices_are_refused():
    with pytest.raises(ValueError, match=r"Embedding indices must be in \[0, 4\], got values in \[-1, 2\]"):
        nn.Embedding(5, 3)(np.array([2, -1]))


def test_device_timesteps_and_labels_are_not_read_by_the_checks(device):
    t_bad, y_bad = fake.to_device(np.array([np.nan, 1.0])), fake.to_device(np.array([0, 9]))
    with no_host_transfers():
        assert checks.model_timesteps(t_bad, 2, fake.xp) is t_bad
        assert checks.model_labels(y_bad, 2, 3, fake.xp) is y_bad


def test_device_timesteps_need_a_device_model(device):
    with pytest.raises(TypeError, match="timesteps t is a CuPy array but the model's parameters are NumPy"):
        mlp()(normal((2, 2)), fake.to_device(np.array([1, 2])))


# ---- REFDIFF_KERNEL_CHECKS=1 brings the checks back on the device --------------------------------


def test_kernel_checks_switch_checks_device_timesteps_labels_and_indices(device, monkeypatch):
    monkeypatch.setattr(checks, "DEVICE_CHECKS", True)
    model = unet().to(device)
    x = fake.to_device(normal((2, 1, 8, 8)))
    with pytest.raises(ValueError, match="timesteps t contains NaN"):
        model(x, fake.to_device(np.array([np.nan, 1.0])))
    with pytest.raises(ValueError, match=r"class labels y must be in \[0, 3\]"):
        model(x, 5, fake.to_device(np.array([0, 4])))
    with pytest.raises(ValueError, match=r"Embedding indices must be in \[0, 3\]"):
        model.class_embedding(fake.to_device(np.array([4])))
    assert any("bool()" in what for what in fake.TRANSFERS)  # the checks did read the device


def test_kernel_checks_switch_is_the_environment_variable_the_kernels_read():
    code = ("import refdiff.checks as v; from refdiff.kernels import _launch; "
            "print(v.DEVICE_CHECKS, _launch.DEBUG_CHECKS)")
    env = dict(os.environ, REFDIFF_KERNEL_CHECKS="1", NUMBA_ENABLE_CUDASIM="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True"]


# ---- whole loops: sampling and training (issue 15) ----------------------------------------------

needs_simulated_kernels = pytest.mark.skipif(
    not fake.kernels_simulated(), reason="the fake device runs refdiff's kernels under Numba's CUDA simulator, "
                                         "which is off where a GPU is visible (the GPU suite covers that case)")


def _transfers_by_kind():
    """(host-to-device copies, device-to-host reads) among fake.TRANSFERS."""
    copies = [w for w in fake.TRANSFERS if w.startswith("xp.asarray() of host data")]
    return copies, [w for w in fake.TRANSFERS if w not in copies]


@needs_simulated_kernels
@pytest.mark.parametrize("sampler, options", [
    ("ddpm", {}), ("ddim", {}), ("ddim", {"eta": 0.5}), ("ddim", {"use_clipped_model_output": True}),
], ids=["ddpm", "ddim", "ddim-eta", "ddim-clipped-eps"])
@pytest.mark.parametrize("guided", [False, True], ids=["plain", "guided"])
def test_a_sampling_loop_reads_nothing_back_until_the_samples(monkeypatch, sampler, options, guided):
    """Every step on the device: the model, guidance, the step kernel and its noise. The only
    transfers of a whole sample() are the labels copied in once and the samples read once, however
    many steps it takes; and the samples are exactly those of the same kernels on NumPy arrays."""
    from refdiff.backend import _simulated_cuda_backend
    from refdiff.diffusion import GaussianDiffusion
    from refdiff.gaussian.schedule import NoiseSchedule

    schedule = NoiseSchedule.linear(T=40)
    y = np.array([0, 1, 2, 0]) if guided else None
    kwargs = dict(sampler=sampler, y=y, guidance_scale=3.0 if guided else 1.0, seed=0, progress=False, **options)
    host = GaussianDiffusion(mlp(), schedule, backend=_simulated_cuda_backend()).sample(4, steps=6, **kwargs)

    fake.installed(monkeypatch)
    device = fake.backend(embedding="kernel")
    diffusion = GaussianDiffusion(mlp().to(device), schedule)
    transfers = {}
    for steps in (3, 6):
        fake.TRANSFERS.clear()
        samples = diffusion.sample(4, steps=steps, **kwargs)
        transfers[steps] = _transfers_by_kind()
    copies, reads = transfers[6]
    assert reads == [".get()"]  # the samples, once
    assert len(copies) == (1 if guided else 0)  # the labels (conditional and null halves), once
    assert transfers[3] == transfers[6]  # nothing per step
    np.testing.assert_array_equal(samples, host)  # same kernels, same noise stream: tolerance 0


@needs_simulated_kernels
@pytest.mark.parametrize("weighting", ["none", "min_snr"])
def test_the_training_loop_copies_the_batch_and_reads_the_losses_every_n_steps(monkeypatch, weighting):
    """Per step only the batch (x0, y) goes to the device; t, the label dropout and the noise are
    drawn there by one generator, and the losses are read LOSS_READ_EVERY steps at a time."""
    from refdiff.diffusion import GaussianDiffusion
    from refdiff.gaussian.schedule import NoiseSchedule
    from refdiff.training.data import Dataset
    from refdiff.training.trainer import Trainer

    fake.installed(monkeypatch)
    device = fake.backend(embedding="kernel")
    created = []
    real_rng = type(device).rng
    monkeypatch.setattr(type(device), "rng", lambda self, seed=None: created.append(seed) or real_rng(self, seed))
    monkeypatch.setattr(Trainer, "LOSS_READ_EVERY", 3)
    data = Dataset(normal((32, 2)) / 4, np.arange(32) % 3)
    diffusion = GaussianDiffusion(mlp().to(device), NoiseSchedule.linear(T=40), loss_weighting=weighting)
    trainer = Trainer(diffusion, data, progress=False, batch_size=8, cond_drop_prob=0.5)
    fake.TRANSFERS.clear()
    losses = trainer.train(7)
    copies, reads = _transfers_by_kind()
    assert reads == [".get()"] * 3  # after steps 3, 6 and the last one
    weight_table = 1 if weighting == "min_snr" else 0  # loss_weight over 0..T-1, copied once
    assert len(copies) == 2 * 7 + weight_table  # x0 and y of each step
    assert len(created) == 1  # one device generator for the whole run
    assert len(losses) == 7 and all(np.isfinite(losses)) and trainer.losses == losses


@needs_simulated_kernels
def test_a_nan_loss_on_the_device_is_caught_at_the_next_read_naming_its_step(monkeypatch):
    from refdiff.diffusion import GaussianDiffusion
    from refdiff.gaussian.schedule import NoiseSchedule
    from refdiff.training.data import Dataset
    from refdiff.training.trainer import Trainer

    fake.installed(monkeypatch)
    device = fake.backend(embedding="kernel")
    monkeypatch.setattr(Trainer, "LOSS_READ_EVERY", 4)
    model = mlp().to(device)
    trainer = Trainer(GaussianDiffusion(model, NoiseSchedule.linear(T=40)), Dataset(normal((32, 2)) / 4, np.arange(32) % 3),
                      progress=False, batch_size=8)
    trainer.train(1)
    model.out_proj.bias.data[...] = np.nan  # the second step's loss is NaN
    fake.TRANSFERS.clear()
    with pytest.raises(FloatingPointError, match=r"loss became nan at step 1 \(read on the device after the step"):
        trainer.train(6)
    assert trainer.step == 4 and len(trainer.losses) == 1  # stopped at the read after steps 1-3; step 1 not recorded


# ---- CUDA-graph capture of a sampling step (issue 15, item 4) ----------------------------------
# fake.capturing() stands for Stream.begin_capture() .. end_capture(): a cuBLAS or cuRAND call or a
# host transfer inside it raises. What a GPU settles: benchmarks/capture_probe.py.


@pytest.mark.parametrize("call, library", [
    (lambda a: a.reshape(3, 1) @ a.reshape(1, 3), "cuBLAS"), (lambda a: fake.xp.matmul(a, a), "cuBLAS"),
    (lambda a: np.einsum("i,i->", a, a), "cuBLAS"), (lambda a: fake.xp.random.default_rng(0), "cuRAND"),
], ids=["@", "xp.matmul", "np.einsum", "new generator"])
def test_the_capture_stand_in_refuses_what_cupy_refuses_during_a_capture(device, call, library):
    a = fake.to_device(np.arange(3, dtype=np.float32))
    with fake.capturing(), pytest.raises(fake.CaptureError, match=library):
        call(a)
    rng = fake.xp.random.default_rng(0)
    with fake.capturing(), pytest.raises(fake.CaptureError, match="cuRAND"):
        rng.standard_normal((2,), dtype=np.float32)
    with fake.capturing():
        (a * 2.0 + a).sum()  # elementwise kernels and reductions are captured


@needs_simulated_kernels
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_a_warm_fused_step_is_capturable_and_reads_its_timesteps_from_device_memory(device, monkeypatch, eta):
    """The step kernel as a captured graph would run it: noise drawn into a buffer before the
    capture, t and t_prev in device buffers (a graph replays its arguments as captured, so the
    values must change in memory, not in the call), caches filled by one call before the capture."""
    from refdiff.gaussian.schedule import NoiseSchedule
    from refdiff.kernels import _launch

    copies = []
    real = _launch.to_device
    monkeypatch.setattr(_launch, "to_device", lambda a: copies.append(a.shape) or real(a))
    schedule = NoiseSchedule.cosine(T=50)
    x, model_output = fake.to_device(normal((2, 3, 4))), fake.to_device(normal((2, 3, 4), seed=1))
    noise = fake.to_device(normal((2, 3, 4), seed=2))  # drawn outside the graph
    t, t_prev = fake.xp.full(2, 40, dtype=np.int64), fake.xp.full(2, 30, dtype=np.int64)
    step = lambda: device.ddim_step(x, model_output, t, t_prev, schedule, eta=eta, noise=noise)  # noqa: E731
    step()  # the warm-up: fills the schedule's device tables (and placeholders not made yet)
    assert copies.count((50,)) == 3  # sqrt_alphas_cumprod, sqrt_one_minus_alphas_cumprod, alphas_cumprod
    warm = len(copies)
    with fake.capturing():
        first = step()
        t.fill(20)  # what happens between two replays: new timesteps written on the device
        t_prev.fill(10)
        second = step()
    assert len(copies) == warm  # no cache filled inside the capture
    expected = device.ddim_step(x, model_output, 20, 10, schedule, eta=eta, noise=noise)
    np.testing.assert_array_equal(fake.to_host(second), fake.to_host(expected))
    assert not np.array_equal(fake.to_host(first), fake.to_host(second))


@needs_simulated_kernels
def test_a_cold_fused_step_would_copy_its_tables_inside_the_capture(device, monkeypatch):
    from refdiff.gaussian.schedule import NoiseSchedule
    from refdiff.kernels import _launch

    def refused(a):
        raise fake.CaptureError("numba.cuda.to_device during stream capture (a blocking copy)")

    x = fake.to_device(normal((2, 5)))
    monkeypatch.setattr(_launch, "to_device", refused)
    with fake.capturing(), pytest.raises(fake.CaptureError, match="to_device"):
        device.ddim_step(x, x, 40, 30, NoiseSchedule.linear(T=50))


def test_the_denoiser_is_capturable_its_matmuls_take_cutensor_during_a_capture(device):
    """Item 4's gap, closed: every Linear of the MLP went through cuBLAS, which CuPy refuses during
    a capture; refdiff.backend.matmul takes cuTENSOR while the stream captures (tests/test_capture.py
    covers the U-Net, the replay and the sampler)."""
    model = mlp().to(device)
    x = fake.to_device(normal((4, 2)))
    with no_grad():
        expected = fake.to_host(model(x, 5).data)  # warm
        with fake.capturing():
            out = model(x, 5).data
    assert fake.CONTRACTIONS  # the products went through cuTENSOR
    np.testing.assert_allclose(fake.to_host(out), expected, rtol=1e-5, atol=1e-6)  # float32 sums reordered
