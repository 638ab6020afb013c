"""Learned variance against diffusers 0.42.1: a tiny UNet2DModel with out_channels = 2 in_channels
(tests/data/tiny_lv_unet) loaded with rd.UNet.from_diffusers, sampled by refdiff's ddpm and ddim
samplers with variance_type="learned_range", reproduces DDPMScheduler(variance_type="learned_range")
and DDIMScheduler loops recorded by tests/data/make_learned_variance_golden.py on the same noise.

Tolerance: refdiff's UNet agrees with diffusers' per call within 2e-5 in float32
(tests/test_from_diffusers.py); the schedules differ by float32 rounding (diffusers keeps
alphas_cumprod in float32, refdiff in float64 rounded per step), ~1e-7 relative. A step multiplies
an incoming error by coef_xt <= 1 / sqrt(alpha_t) ~ 1.01 and adds the model's error times
coef_x0 / sqrt(abar_t) (<= ~1 except at the noisiest strided steps, where clipping of x_0 caps
it): over 10-20 steps of values of size ~1-3 that is ~20 x 2e-5 = 4e-4 at most; measured
max |diff|: 5.7e-6, 1.0e-5 (ddpm T=20, strided), 8.6e-5, 3.5e-6 (ddim eta 0, 1). atol 5e-4 is that bound.
"""
import json
import os

import numpy as np
import pytest

import refdiff as rd

DATA = os.path.join(os.path.dirname(__file__), "data")
GOLDEN = np.load(os.path.join(DATA, "learned_variance_golden.npz"))
ATOL = 5e-4


class RecordedNoise:
    """A generator whose standard_normal returns the recorded noise of step i at its i-th call."""

    def __init__(self, noise):
        self.noise, self.i = noise, 0

    def standard_normal(self, size, dtype=np.float32):
        z = self.noise[self.i]
        assert z.shape == tuple(size)
        self.i += 1
        return z.astype(dtype)


@pytest.fixture(scope="module")
def unet():
    return rd.UNet.from_diffusers(os.path.join(DATA, "tiny_lv_unet"))


def _sample(unet, k, sampler, variance_type="learned_range"):
    case = json.loads(str(GOLDEN[f"case/{k}/meta"]))
    schedule = rd.NoiseSchedule.linear(T=case["T"], beta_start=1e-4, beta_end=0.02)

    def model(x, t):
        return unet(x, np.full(x.shape[0], t)).data

    options = dict(variance_type=variance_type, clip_sample=True)
    if sampler == "ddim":
        options["eta"] = case["eta"]
    return rd.sample_loop(model, GOLDEN[f"case/{k}/x_T"], schedule, sampler=sampler, steps=case["steps"],
                          rng=RecordedNoise(GOLDEN[f"case/{k}/noise"]), **options)


def test_the_checkpoint_loads_with_twice_the_input_channels_out(unet):
    """The folder is a learned-sigma model (2C outputs) and its variance channels span [-1, 1]:
    catches a golden file made with a plain UNet (which would test nothing of the variance)."""
    assert unet.config["out_channels"] == 2 * unet.config["in_channels"]
    v = GOLDEN["v_first_step"]
    assert v.min() < -0.5 and v.max() > 0.5


@pytest.mark.parametrize("k", [0, 1], ids=["T20_all_steps", "T1000_10_strided_steps"])
def test_ddpm_learned_range_loop_matches_diffusers(unet, k):
    """The whole DDPMScheduler(variance_type="learned_range") loop (measured max |diff| 5.7e-6 and 1.0e-5).
    Catches: frac not mapped from [-1, 1] (v used as the fraction), beta and beta_tilde swapped,
    the interpolation in variance instead of log-variance, sqrt(exp) instead of exp(log_var / 2),
    the strided step's beta read from the schedule's single-step table instead of 1 - abar_t /
    abar_prev (case T1000), the wrong channel half read as eps."""
    out = _sample(unet, k, "ddpm")
    np.testing.assert_allclose(out, GOLDEN[f"case/{k}/out"], rtol=0, atol=ATOL)


def test_ddpm_learned_range_differs_from_the_fixed_variances_by_far_more_than_the_tolerance(unet):
    """The golden loop tells the learned variance apart from both fixed ones: a sampler that
    ignored v would fail the parity test (the difference is > 100 x ATOL)."""
    for fixed in ("fixed_small", "fixed_large"):
        case = json.loads(str(GOLDEN["case/1/meta"]))
        schedule = rd.NoiseSchedule.linear(T=case["T"])

        def model(x, t):
            return unet(x, np.full(x.shape[0], t)).data[:, :2]

        out = rd.sample_loop(model, GOLDEN["case/1/x_T"], schedule, sampler="ddpm", steps=case["steps"],
                             rng=RecordedNoise(GOLDEN["case/1/noise"]), variance_type=fixed)
        assert np.abs(out - GOLDEN["case/1/out"]).max() > 100 * ATOL


@pytest.mark.parametrize("k", [2, 3], ids=["eta0", "eta1"])
def test_ddim_reads_the_first_channels_and_ignores_the_learned_variance_as_diffusers(unet, k):
    """DDIM with a 2C-output model: eps is the first C channels, sigma_t(eta) DDIM eq. 16's
    (diffusers splits the variance off before DDIMScheduler.step). Catches: the variance channels
    read as eps, or the learned variance used for the eta noise."""
    out = _sample(unet, k, "ddim")
    np.testing.assert_allclose(out, GOLDEN[f"case/{k}/out"], rtol=0, atol=ATOL)
