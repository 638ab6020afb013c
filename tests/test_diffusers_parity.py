"""refdiff's math against numbers recorded from diffusers (tests/data/diffusers_golden.npz).

The file is written by tests/data/make_diffusers_golden.py (diffusers + torch, not needed here).
diffusers computes in float32 throughout (schedules included); refdiff computes its schedules
and coefficients in float64 and rounds once. Every tolerance below is a bound on diffusers'
own float32 rounding, in units of EPS32 = 2^-24 (the unit roundoff of float32), scaled by the
size of the quantities that diffusers rounds.
"""
import os

import numpy as np
import pytest

import refdiff as rd
from refdiff.samplers.timesteps import inference_timesteps

GOLDEN = np.load(os.path.join(os.path.dirname(__file__), "data", "diffusers_golden.npz"))
EPS32 = 2.0**-24
T = 1000

CONSTRUCTORS = {
    "linear": lambda: rd.NoiseSchedule.linear(),
    "scaled_linear": lambda: rd.NoiseSchedule.scaled_linear(),
    "quadratic": lambda: rd.NoiseSchedule.quadratic(),
    "cosine": lambda: rd.NoiseSchedule.cosine(),
    "sigmoid": lambda: rd.NoiseSchedule.sigmoid(),
    "linear_zero_snr": lambda: rd.NoiseSchedule.linear().rescale_zero_terminal_snr(),
    "scaled_linear_zero_snr": lambda: rd.NoiseSchedule.scaled_linear().rescale_zero_terminal_snr(),
    "cosine_zero_snr": lambda: rd.NoiseSchedule.cosine().rescale_zero_terminal_snr(),
}


def cases(prefix):
    return sorted({k.split("/")[1] for k in GOLDEN.files if k.startswith(prefix + "/")})


def diffusers_schedule(name):
    """The schedule whose alphas_cumprod are diffusers' float32 ones (to float64 rounding).

    Built from the betas 1 - abar_t / abar_{t-1} of diffusers' abar, so that the step tests
    compare the step arithmetic alone, not the float32 rounding of diffusers' cumprod.
    """
    abar = GOLDEN[f"schedule/{name}/alphas_cumprod"].astype(np.float64)
    return rd.NoiseSchedule(1 - abar / np.concatenate([[1.0], abar[:-1]]))


# ---- schedules ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONSTRUCTORS))
def test_alphas_cumprod_match_diffusers(name):
    ours = CONSTRUCTORS[name]().alphas_cumprod
    theirs = GOLDEN[f"schedule/{name}/alphas_cumprod"].astype(np.float64)
    t = np.arange(T)
    # diffusers' float32 betas carry <= 1 rounding each (2 for the zero-SNR rescale, which
    # rounds sqrt, the shift, the scale and the square), and its float32 cumprod one more per
    # factor: relative error <= 4 (t + 1) EPS32, plus the final rounding to float32.
    tol = EPS32 * (4 * (t + 1) * theirs + 1)
    assert np.all(np.abs(ours - theirs) <= tol)


@pytest.mark.parametrize("name", sorted(CONSTRUCTORS))
def test_betas_match_diffusers(name):
    s = CONSTRUCTORS[name]()
    theirs = GOLDEN[f"schedule/{name}/betas"].astype(np.float64)
    # betas <= 1 are stored in float32: a few EPS32 absolute. The zero-SNR rescale also reads
    # beta_t = 1 - abar_t / abar_{t-1} back from sqrt(abar) values that diffusers shifted and
    # scaled in float32 (absolute error ~2 EPS32 each, i.e. relative 2 EPS32 / sqrt(abar)); the
    # ratio of squares doubles that, and alpha_t = 1 - beta_t turns it into an absolute error.
    with np.errstate(divide="ignore", invalid="ignore"):
        amplification = s.alphas * (1 / s.sqrt_alphas_cumprod + 1 / np.sqrt(s.alphas_cumprod_prev))
    amplification = np.where(s.alphas > 0, amplification, 0.0)  # beta = 1 exactly at a zero-SNR end
    assert np.all(np.abs(s.betas - theirs) <= 8 * EPS32 * (1 + amplification))


@pytest.mark.parametrize("T_small", [1, 2, 10])
def test_short_cosine_betas_match_diffusers(T_small):
    theirs = GOLDEN[f"schedule/cosine_T{T_small}/betas"].astype(np.float64)
    # computed in float64 by both (math.cos in diffusers), then stored in float32: 1 rounding
    np.testing.assert_allclose(rd.NoiseSchedule.cosine(T_small).betas, theirs, rtol=EPS32, atol=0)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_snr_matches_diffusers_compute_snr(name):
    t = GOLDEN["snr_t"]
    s = CONSTRUCTORS[name]()
    abar = s.alphas_cumprod[t]
    # diffusers: (sqrt(abar) / sqrt(1 - abar))^2 from its float32 abar: relative error of abar
    # (<= 4 (t + 1) EPS32, see above) plus 1 - abar rounded in float32 (EPS32 / (1 - abar)
    # relative), plus a few roundings of the sqrt, division and square.
    rtol = EPS32 * (4 * (t + 1) + 4 / (1 - abar) + 8)
    assert np.all(np.abs(s.snr[t] - GOLDEN[f"snr/{name}"]) <= rtol * s.snr[t])


# ---- forward process -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["linear", "cosine", "scaled_linear_zero_snr"])
def test_q_sample_and_v_target_match_diffusers_add_noise_and_get_velocity(name):
    s = diffusers_schedule(name)
    x0, noise, t = GOLDEN["forward/x0"], GOLDEN["forward/noise"], GOLDEN["forward/t"]
    x_t, v = rd.q_sample_with_target(x0, t, noise, s, prediction_type="v_prediction")
    abar = s.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    size = np.abs(x0) + np.abs(noise)
    # diffusers rounds sqrt(abar) and 1 - abar then its sqrt in float32: the coefficient of the
    # noise has relative error ~EPS32 / (1 - abar) (cancellation in 1 - abar near t = 0),
    # plus a few roundings of the products and the sum.
    tol = 4 * EPS32 * size * (1 + 1 / np.sqrt(1 - abar))
    assert np.all(np.abs(x_t - GOLDEN[f"forward/{name}/x_t"]) <= tol)
    assert np.all(np.abs(v - GOLDEN[f"forward/{name}/v"]) <= tol)


# ---- reverse steps -------------------------------------------------------------------------


def step_tolerance(s, t, t_prev, *arrays):
    """Bound on diffusers' float32 error of one step, per sample (B, 1, 1, 1).

    diffusers computes abar_t / abar_prev, 1 - that (beta of the step) and 1 - abar_t in float32,
    each with absolute error ~EPS32: relative errors EPS32 / beta_step and EPS32 / (1 - abar_t)
    in the coefficients; predicting x_0 divides the inputs' rounding by sqrt(abar_t). So the
    error is a few EPS32 times the inputs' size times the sum of those three factors.
    """
    abar = s.alphas_cumprod[t]
    abar_prev = np.where(t_prev >= 0, s.alphas_cumprod[np.maximum(t_prev, 0)], 1.0)
    size = np.max([np.abs(a).reshape(len(t), -1).max(axis=1) for a in arrays], axis=0)
    with np.errstate(divide="ignore"):  # abar_t = 0 at the last step of zero-SNR schedules
        factor = 1 / np.sqrt(abar) + 1 / (1 - abar / abar_prev) + 1 / (1 - abar)
    return (4 * EPS32 * size * factor).reshape(-1, 1, 1, 1)


def step_inputs():
    return GOLDEN["step/x_t"], GOLDEN["step/model_output"], GOLDEN["step/noise"]


@pytest.mark.parametrize("case", cases("ddpm"))
def test_ddpm_step_matches_diffusers_ddpm_scheduler_step(case):
    g = lambda name: GOLDEN[f"ddpm/{case}/{name}"]  # noqa: E731
    s = diffusers_schedule(str(g("schedule")))
    x_t, model_output, noise = step_inputs()
    t, t_prev = g("t"), g("t_prev")
    out = rd.ddpm_step(
        x_t, model_output, t, s, noise, prediction_type=str(g("prediction_type")),
        variance_type=str(g("variance_type")), clip_sample=bool(g("clip_sample")),
        clip_sample_range=float(g("clip_sample_range")), t_prev=t_prev,
    )
    assert out.dtype == np.float32
    assert np.all(np.abs(out - g("out")) <= step_tolerance(s, t, t_prev, x_t, model_output, noise))


@pytest.mark.parametrize("case", cases("ddim"))
def test_ddim_step_matches_diffusers_ddim_scheduler_step(case):
    g = lambda name: GOLDEN[f"ddim/{case}/{name}"]  # noqa: E731
    s = diffusers_schedule(str(g("schedule")))
    x_t, model_output, noise = step_inputs()
    t, t_prev = g("t"), g("t_prev")
    if not bool(g("set_alpha_to_one")):
        # set_alpha_to_one=False: the last step lands on abar_0, i.e. t_prev = 0 in refdiff
        t_prev = np.maximum(t_prev, 0)
    out = rd.ddim_step(
        x_t, model_output, t, t_prev, s, eta=float(g("eta")), noise=noise,
        prediction_type=str(g("prediction_type")), clip_sample=bool(g("clip_sample")),
        clip_sample_range=float(g("clip_sample_range")),
    )
    ref = g("out")
    assert out.dtype == np.float32
    assert np.all(np.isfinite(out))
    # documented deviation: with abar_t = 0 and eta = 1, diffusers' 1 - abar_prev - sigma^2 rounds
    # below 0 and gives NaN; refdiff floors it at 0. Compare everywhere diffusers is finite.
    finite = np.isfinite(ref)
    assert finite.all() or (float(g("eta")) == 1.0 and s.alphas_cumprod[t[0]] == 0 and finite[1:].all())
    tol = np.broadcast_to(step_tolerance(s, t, t_prev, x_t, model_output, noise), out.shape)
    assert np.all(np.abs(out - ref)[finite] <= tol[finite])


# ---- timesteps and embedding ---------------------------------------------------------------


def timestep_tables():
    return sorted(k for k in GOLDEN.files if k.startswith("timesteps/"))


@pytest.mark.parametrize("key", timestep_tables())
def test_inference_timesteps_match_diffusers_set_timesteps(key):
    _, spacing, T_, n, offset = key.split("/")
    theirs = GOLDEN[key]
    T_, n, offset = int(T_), int(n), int(offset)
    if spacing == "leading" and theirs.max() > T_ - 1:
        # diffusers returns a timestep T (out of range) for e.g. n = T with steps_offset = 1; refdiff raises
        with pytest.raises(ValueError, match="outside"):
            inference_timesteps(n, T_, spacing, offset)
        return
    ours = inference_timesteps(n, T_, spacing, offset)
    # documented deviation: diffusers' float arange for "trailing" can yield one extra step
    # (a -1 at the end, e.g. T=1000 with 61 steps); refdiff keeps the first num_steps
    np.testing.assert_array_equal(ours, theirs[:n])
    assert len(theirs) == n or (spacing == "trailing" and len(theirs) == n + 1 and theirs[-1] == -1)


@pytest.mark.parametrize("case", cases("embedding"))
def test_timestep_embedding_matches_diffusers_get_timestep_embedding(case):
    g = lambda name: GOLDEN[f"embedding/{case}/{name}"]  # noqa: E731
    t = GOLDEN["embedding_t"]
    dim, shift = int(g("dim")), int(g("downscale_freq_shift"))
    scale, max_period = float(g("scale")), float(g("max_period"))
    ours = rd.timestep_embedding(
        t, dim, max_period=max_period, flip_sin_to_cos=bool(g("flip_sin_to_cos")),
        downscale_freq_shift=shift, scale=scale,
    )
    assert ours.dtype == np.float32 and ours.shape == g("out").shape
    # diffusers rounds the exponent -ln(max_period) i / (half - shift) (|.| <= ln(max_period) + 1,
    # error <= that times EPS32, which exp turns into relative error), the frequency and the
    # angle scale * t * freq in float32: angle error <= (ln(max_period) + 3) EPS32 |angle|;
    # sin and cos are 1-Lipschitz, and their float32 results add EPS32.
    half = dim // 2
    freqs = np.exp(-np.log(max_period) * np.arange(half) / max(half - shift, 1))
    angle = np.abs(scale * t[:, None] * freqs[None, :])
    angle = np.concatenate([angle, angle, np.zeros((len(t), dim - 2 * half))], axis=1)
    tol = EPS32 * ((np.log(max_period) + 3) * angle + 1)
    assert np.all(np.abs(ours - g("out")) <= tol)
