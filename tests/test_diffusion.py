"""GaussianDiffusion: the training loss against a hand computation, label dropout, sampling plumbing."""
import numpy as np
import pytest

import refdiff as rd
from refdiff.nn.autograd import Tensor, is_grad_enabled
from refdiff.diffusion import GaussianDiffusion
from refdiff.models.mlp import MLPDenoiser
from refdiff.kernels import TWINS


class RecordingModel:
    """Returns a fixed function of (x, t, y) and records what it was called with."""

    def __init__(self, dim=2, num_classes=None):
        self.sample_shape = (dim,)
        self.num_classes = num_classes
        self.calls = []

    def __call__(self, x, t, y=None):
        self.calls.append({"x": np.array(x), "t": np.array(t), "y": None if y is None else np.array(y),
                           "grad": is_grad_enabled()})
        shift = 0.0 if y is None else (np.asarray(y, dtype=np.float64)[:, None] + 1.0) / 10.0
        return Tensor(np.asarray(0.5 * x + shift, dtype=x.dtype))


def _draws(seed, B, shape, T, dtype=np.float32):
    """What GaussianDiffusion.loss draws from default_rng(seed) on numpy: t, then the noise."""
    rng = np.random.default_rng(seed)
    t = rng.integers(0, T, size=B)
    noise = rng.standard_normal((B, *shape), dtype=dtype)
    return t, noise


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_loss_is_the_mse_between_model_output_and_the_target_of_ddpm_eq4(prediction_type):
    schedule = rd.NoiseSchedule.linear(T=100)
    model = RecordingModel()
    x0 = np.random.default_rng(0).uniform(-1, 1, (16, 2))  # float64: the loss stays float64
    loss = GaussianDiffusion(model, schedule, prediction_type=prediction_type).loss(x0, rng=7)

    t, eps = _draws(7, 16, (2,), 100, np.float64)
    abar = schedule.alphas_cumprod[t][:, None]
    x_t = np.sqrt(abar) * x0 + np.sqrt(1 - abar) * eps  # DDPM eq. 4
    target = {"epsilon": eps, "sample": x0, "v_prediction": np.sqrt(abar) * eps - np.sqrt(1 - abar) * x0}[prediction_type]
    expected = np.mean((0.5 * x_t - target) ** 2)
    np.testing.assert_allclose(model.calls[0]["x"], x_t, rtol=1e-12)
    # float64 throughout: only rounding separates the two computations
    np.testing.assert_allclose(loss.item(), expected, rtol=1e-12)


def test_min_snr_weighting_weights_each_sample_by_min_snr_gamma_over_snr():
    schedule = rd.NoiseSchedule.linear(T=100)
    x0 = np.random.default_rng(1).uniform(-1, 1, (32, 2))
    loss = GaussianDiffusion(RecordingModel(), schedule, loss_weighting="min_snr", min_snr_gamma=5.0).loss(x0, rng=3)
    t, eps = _draws(3, 32, (2,), 100, np.float64)
    abar = schedule.alphas_cumprod[t]
    snr = abar / (1 - abar)  # Hang et al. 2023: w = min(snr, gamma) / snr for eps-prediction
    x_t = np.sqrt(abar)[:, None] * x0 + np.sqrt(1 - abar)[:, None] * eps
    per_sample = np.mean((0.5 * x_t - eps) ** 2, axis=1)
    np.testing.assert_allclose(loss.item(), np.mean(np.minimum(snr, 5.0) / snr * per_sample), rtol=1e-12)


def test_loss_backpropagates_into_the_network_parameters():
    model = MLPDenoiser(dim=2, hidden=16, num_blocks=1, seed=0)
    model.out_proj.weight.data[...] = 0.1  # the output layer starts at zero; make gradients reach the rest
    loss = GaussianDiffusion(model, rd.NoiseSchedule.linear(T=50)).loss(np.zeros((8, 2), np.float32), rng=0)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads) and sum(float(np.abs(g).sum()) for g in grads) > 0


@pytest.mark.parametrize("p, expected_null_fraction", [(0.0, 0.0), (1.0, 1.0)])
def test_label_dropout_replaces_labels_by_the_null_class(p, expected_null_fraction):
    model = RecordingModel(num_classes=3)
    y = np.array([0, 1, 2, 1] * 4)
    GaussianDiffusion(model, rd.NoiseSchedule.linear(T=10)).loss(np.zeros((16, 2)), y=y, cond_drop_prob=p, rng=0)
    seen = model.calls[0]["y"]
    assert np.mean(seen == 3) == expected_null_fraction
    if p == 0.0:
        np.testing.assert_array_equal(seen, y)


def test_label_dropout_rate_is_close_to_cond_drop_prob():
    model = RecordingModel(num_classes=10)
    y = np.zeros(4000, dtype=np.int64)
    GaussianDiffusion(model, rd.NoiseSchedule.linear(T=10)).loss(np.zeros((4000, 2)), y=y, cond_drop_prob=0.2, rng=0)
    # binomial(4000, 0.2): standard deviation 0.0063; 0.03 is ~5 sigma
    assert abs(np.mean(model.calls[0]["y"] == 10) - 0.2) < 0.03


def test_labels_out_of_range_and_labels_for_unconditional_models_are_rejected():
    d = GaussianDiffusion(RecordingModel(num_classes=3), rd.NoiseSchedule.linear(T=10))
    with pytest.raises(ValueError, match=r"class labels in \[0, 3\)"):
        d.loss(np.zeros((2, 2)), y=np.array([0, 3]))
    with pytest.raises(ValueError, match="unconditional"):
        GaussianDiffusion(RecordingModel(), rd.NoiseSchedule.linear(T=10)).loss(np.zeros((2, 2)), y=np.array([0, 1]))
    with pytest.raises(ValueError, match="NaN"):
        d.loss(np.full((2, 2), np.nan))


def test_sampling_runs_without_recording_a_graph():
    model = MLPDenoiser(dim=2, hidden=16, num_blocks=1, seed=0)
    seen = []
    original = model.forward

    def forward(*args, **kw):
        out = original(*args, **kw)
        seen.append((is_grad_enabled(), out.requires_grad))
        return out

    model.forward = forward
    GaussianDiffusion(model, rd.NoiseSchedule.linear(T=20)).sample(3, progress=False)
    assert seen and all(state == (False, False) for state in seen)


def test_same_seed_gives_the_same_samples_and_another_seed_other_samples():
    d = GaussianDiffusion(RecordingModel(), rd.NoiseSchedule.linear(T=20))
    a = d.sample(4, seed=5, progress=False)
    np.testing.assert_array_equal(a, d.sample(4, seed=5, progress=False))
    assert not np.array_equal(a, d.sample(4, seed=6, progress=False))


def test_guidance_evaluates_cond_and_null_labels_in_one_batch_and_combines_them():
    schedule = rd.NoiseSchedule.linear(T=10)
    model = RecordingModel(num_classes=4)
    d = GaussianDiffusion(model, schedule, clip_sample=False)
    y = np.array([0, 2, 3])
    out = d.sample(3, sampler="ddim", steps=1, spacing="trailing", y=y, guidance_scale=3.0, seed=0, progress=False, dtype=np.float64)
    call = model.calls[0]
    np.testing.assert_array_equal(call["y"], [0, 2, 3, 4, 4, 4])  # cond half, then the null label 4
    x_T = call["x"][:3]
    eps_cond = 0.5 * x_T + (y[:, None] + 1) / 10
    eps_uncond = 0.5 * x_T + 0.5
    eps = eps_uncond + 3.0 * (eps_cond - eps_uncond)  # Ho & Salimans 2022 eq. 6
    abar = schedule.alphas_cumprod[9]
    expected = (x_T - np.sqrt(1 - abar) * eps) / np.sqrt(abar)  # one DDIM step to t_prev = -1 (abar_prev = 1)
    np.testing.assert_allclose(out, expected, rtol=1e-12)


def test_guidance_without_labels_is_rejected():
    d = GaussianDiffusion(RecordingModel(num_classes=2), rd.NoiseSchedule.linear(T=10))
    with pytest.raises(ValueError, match="guidance_scale != 1 needs class labels"):
        d.sample(2, guidance_scale=2.0, progress=False)


def test_trajectory_starts_at_x_T_and_ends_at_the_samples():
    d = GaussianDiffusion(RecordingModel(), rd.NoiseSchedule.linear(T=30))
    x, trajectory = d.sample(4, sampler="ddim", steps=5, seed=0, return_trajectory=True, progress=False)
    assert trajectory.shape == (6, 4, 2)
    np.testing.assert_array_equal(trajectory[-1], x)
    x_T = np.random.default_rng(0).standard_normal((4, 2), dtype=np.float32)  # the numpy backend's generator
    np.testing.assert_array_equal(trajectory[0], x_T)


def test_unet_samples_have_the_image_shape():
    model = rd.UNet(in_channels=1, base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(),
                    sample_size=8, norm_groups=4, seed=0)
    x = GaussianDiffusion(model, rd.NoiseSchedule.linear(T=10)).sample(2, sampler="ddim", steps=2, progress=False)
    assert x.shape == (2, 1, 8, 8) and x.dtype == np.float32


def _spy_backend(calls):
    """The numpy backend with every fused op wrapped to record its name."""
    import dataclasses

    base = rd.get_backend("numpy")

    def spy(name):
        op = getattr(base, name)

        def wrapped(*args, **kwargs):
            calls.append(name)
            return op(*args, **kwargs)

        return wrapped

    return dataclasses.replace(base, name="spy", ops={name: spy(name) for name in TWINS})


def test_loss_and_samplers_call_the_fused_ops_of_the_backend():
    """So that backend="cuda" runs the fused kernels: nothing bypasses the backend's ops."""
    calls = []
    d = GaussianDiffusion(RecordingModel(), rd.NoiseSchedule.linear(T=10), backend=_spy_backend(calls))
    d.loss(np.zeros((4, 2), np.float32), rng=0)
    assert calls == ["q_sample_with_target"]
    calls.clear()
    d.sample(2, sampler="ddpm", steps=5, progress=False)
    assert calls == ["ddpm_step"] * 5
    calls.clear()
    d.sample(2, sampler="ddim", steps=3, progress=False)
    assert calls == ["ddim_step"] * 3


def test_kernel_backend_under_the_simulator_samples_what_the_reference_samples():
    """The fused kernels (Numba's CUDA simulator on NumPy arrays) inside the whole sampling loop."""
    from refdiff.backend import BackendUnavailable, _simulated_cuda_backend

    try:
        sim = _simulated_cuda_backend()
    except BackendUnavailable as e:  # a GPU is visible: the GPU tests cover the kernels there
        pytest.skip(str(e))
    model = MLPDenoiser(dim=2, hidden=16, num_blocks=1, seed=0)
    model.out_proj.weight.data[...] = 0.3  # a non-trivial eps (the output layer starts at zero)
    schedule = rd.NoiseSchedule.linear(T=20)
    y_ref = GaussianDiffusion(model, schedule).sample(3, sampler="ddpm", seed=1, progress=False)
    y_sim = GaussianDiffusion(model, schedule, backend=sim).sample(3, sampler="ddpm", seed=1, progress=False)
    # float32 kernels vs the float32 reference (float64 coefficients rounded once in both) over 20
    # steps: a few ulp per step on O(1) values
    np.testing.assert_allclose(y_sim, y_ref, rtol=0, atol=1e-5)


def test_a_sampler_that_runs_away_is_reported_with_a_hint():
    class Explosive(RecordingModel):
        def __call__(self, x, t, y=None):  # an eps that grows faster than x_t: DDIM's x_t blows up
            return Tensor(np.asarray(1e3 * x, dtype=x.dtype))

    d = GaussianDiffusion(Explosive(), rd.NoiseSchedule.linear(T=100))
    with pytest.raises(FloatingPointError, match="sampling diverged .*use_clipped_model_output=True"):
        with np.errstate(all="ignore"):
            d.sample(3, sampler="ddim", steps=100, seed=0, progress=False)
