"""The samplers on sigmas call their fused kernels on a device backend, as ddpm/ddim do (issue 15).

euler, euler_ancestral and heun call refdiff.kernels.euler_step / heun_step, dpmpp_2m calls
dpmpp_2m_step, once per step, when the model lives on a device backend (the fake CuPy of
tests/_fake_device.py, whose fused ops are the kernels run by Numba's CUDA simulator on the device
arrays); on NumPy they run the reference functions. The samples equal the reference's.
"""
import numpy as np
import pytest

import _fake_device as fake
from refdiff.backend import Backend
from refdiff.diffusion import GaussianDiffusion
from refdiff.gaussian.schedule import NoiseSchedule
from refdiff.models.mlp import MLPDenoiser

pytestmark = pytest.mark.skipif(
    not fake.kernels_simulated(), reason="the fake device runs refdiff's kernels under Numba's CUDA simulator, "
                                         "which is off where a GPU is visible (the GPU suite covers that case)")

STEPS = 5
# sampler -> {fused op: launches in STEPS steps}: heun corrects every step but the last (to sigma = 0)
LAUNCHES = {
    "euler": {"euler_step": STEPS},
    "euler_ancestral": {"euler_step": STEPS},
    "heun": {"euler_step": STEPS, "heun_step": STEPS - 1},
    "dpmpp_2m": {"dpmpp_2m_step": STEPS},
}


def mlp():
    model = MLPDenoiser(dim=2, hidden=16, num_blocks=2, time_dim=8, num_classes=3)
    model.out_proj.weight.data[...] = 0.1 * np.random.default_rng(1).standard_normal(model.out_proj.weight.shape)
    return model


def counting_backend(calls):
    """The fake device's backend with each fused op counting its calls in `calls`."""
    base = fake.backend(embedding="kernel")

    def counted(name, op):
        def call(*args, **kwargs):
            calls[name] = calls.get(name, 0) + 1
            return op(*args, **kwargs)

        return call

    return Backend(name="fake-device-counting", xp=base.xp, ops={k: counted(k, v) for k, v in base.ops.items()})


@pytest.mark.parametrize("sampler", sorted(LAUNCHES))
def test_a_sampler_on_sigmas_runs_its_fused_kernel_on_the_device_and_gives_the_reference_samples(
        monkeypatch, sampler):
    """Catches: a sampler that keeps the unfused array arithmetic on the device (no launch counted),
    a fused call with its arguments in the wrong order or sigmas of the wrong step (samples off by
    O(1)), a second-order step routed as first order (dpmpp_2m's samples off by O(h^2)).
    Tolerance: the kernels compute in float32 with coefficients rounded once to float32, the reference
    in float32 arrays with float64 scalars: a few ulp (6e-8 relative) per operation, ~10 operations a
    step, 5 steps, amplified by the steps' coefficients (|x| <= ~80 at sigma_max, < 10 growth): 1e-4."""
    schedule = NoiseSchedule.linear(T=40)
    y = np.array([0, 1, 2])
    options = dict(sampler=sampler, steps=STEPS, y=y, seed=3, progress=False)
    reference = GaussianDiffusion(mlp(), schedule).sample(3, **options)

    fake.installed(monkeypatch)
    calls = {}
    device = counting_backend(calls)
    samples = GaussianDiffusion(mlp().to(device), schedule).sample(3, **options)
    launches = {k: v for k, v in calls.items() if k != "timestep_embedding"}
    assert launches == LAUNCHES[sampler]
    np.testing.assert_allclose(samples, reference, rtol=1e-4, atol=1e-4)
    assert not np.allclose(samples, 0)


def test_on_numpy_the_samplers_on_sigmas_keep_the_reference_functions():
    """sample_loop with a plain function (no backend): no kernel, the reference path exactly as before."""
    import refdiff as rd
    from refdiff.samplers import common

    x_T = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    out = rd.sample_loop(lambda x, t: 0.1 * x, x_T, NoiseSchedule.linear(T=40), sampler="dpmpp_2m", steps=4)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert common.fused(type("D", (), {"backend": None})(), common.draw_noise) is common.draw_noise
