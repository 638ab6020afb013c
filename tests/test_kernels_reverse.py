"""refdiff.kernels.ddpm_step / ddim_step agree with their float64 NumPy twins.

Drawn: shapes (B = 1, odd sizes, sizes past the block), schedules (linear, cosine, zero terminal
SNR), timesteps including 0 and T-1, per-sample or shared, t_prev defaults / strided / negative,
prediction and variance types, clipping, eta, and classifier-free guidance.

Error model, per sample (u = 2^-24, first order; the twin runs in float64 on the same float32
inputs, so every difference is the kernel's float32 rounding). M bounds |x_t|, |model_output|,
|model_output_uncond|, |noise| of the sample. With guidance scale s the guided output
g = uncond + s (cond - uncond) has |g| <= G = M (1 + 2|s|) and error E_g = 3u G (three roundings).
alpha = sqrt(abar_t), sigma = sqrt(1 - abar_t) are rounded (u each). Each formula below is a
handful of roundings (at most five), each u times a term of the listed magnitudes: 6u covers it.
  epsilon:  x_0 = (x_t - sigma g) / alpha     |x_0| <= X = (M + sigma G) / alpha
            e_x0 = (sigma E_g + 6u (M + sigma G)) / alpha,  e_eps = E_g
  sample:   x_0 = g, eps = (x_t - alpha g) / sigma
            e_x0 = E_g,  e_eps = (alpha E_g + 6u (M + alpha G)) / sigma
  v:        x_0 = alpha x_t - sigma g,  eps = alpha g + sigma x_t
            e_x0 = sigma E_g + 6u (alpha M + sigma G),  e_eps = alpha E_g + 6u (alpha G + sigma M)
Clipping is 1-Lipschitz (errors pass through, |x_0| <= clip range). The update adds
c_x0 x_0 + c_2 y + c_n noise (DDPM: y = x_t; DDIM: y = eps), so
  |kernel - twin| <= c_x0 e_x0 + c_2 e_y + 6u (c_x0 |x_0| + c_2 |y| + c_n M).
Where alpha is 0 (zero terminal SNR, t = T-1) an eps prediction has no x_0 (it divides by zero,
in the twin too); the schedule docs advise v_prediction there, and so do these draws.
"""
import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

from refdiff.kernels.testing import U, Call, arrays, batch_shapes, kernel_agreement_test, schedules, timesteps

PREDICTIONS = ["epsilon", "sample", "v_prediction"]


def _host_timesteps(t, batch):
    return np.broadcast_to(np.asarray(t, dtype=np.int64), (batch,))


@st.composite
def step_calls(draw, sampler):
    schedule = draw(schedules())
    shape = draw(batch_shapes())
    B = shape[0]
    x_t, model_output, noise = (draw(arrays(shape)) for _ in range(3))
    t = draw(timesteps(schedule.T, B))
    kwargs = {
        "prediction_type": draw(st.sampled_from(PREDICTIONS)),
        "clip_sample": draw(st.booleans()),
        "clip_sample_range": draw(st.sampled_from([1.0, 0.5, 3.0])),
    }
    if draw(st.booleans()):
        kwargs["model_output_uncond"] = draw(arrays(shape))
        kwargs["guidance_scale"] = draw(st.sampled_from([0.0, 1.0, 3.0, 7.5]))
    t_host = _host_timesteps(t, B)
    zero_snr_end = schedule.alphas_cumprod[t_host].min() == 0
    assume(not (zero_snr_end and kwargs["prediction_type"] == "epsilon"))  # no x_0 from eps at SNR 0: see docstring
    # t_prev: a step of 1..k back, the same for all samples or per sample; may go below 0
    if sampler == "ddpm":
        kwargs["variance_type"] = draw(st.sampled_from(["fixed_small", "fixed_large"]))
        if draw(st.booleans()):
            kwargs["t_prev"] = _draw_t_prev(draw, t, B)
        if (t_host == 0).all() and draw(st.booleans()):
            noise = None  # allowed where no noise is needed
        return Call(args=(x_t, model_output, t, schedule, noise), kwargs=kwargs)
    kwargs["eta"] = draw(st.sampled_from([0.0, 0.3, 1.0]))
    kwargs["noise"] = noise if kwargs["eta"] > 0 or draw(st.booleans()) else None
    return Call(args=(x_t, model_output, t, _draw_t_prev(draw, t, B), schedule), kwargs=kwargs)


def _draw_t_prev(draw, t, B):
    if isinstance(t, int):
        return t - draw(st.integers(1, 40))
    return t - np.array(draw(st.lists(st.integers(1, 40), min_size=B, max_size=B)), dtype=np.int64)


def step_tolerance(call, ref, sampler):
    """Per-sample bound of |kernel - twin| from the error model of the module docstring."""
    kw = call.kwargs
    if sampler == "ddpm":
        x_t, model_output, t, schedule, noise = call.args
        t_prev = kw.get("t_prev")
    else:
        x_t, model_output, t, t_prev, schedule = call.args
        noise = kw.get("noise")
    B = x_t.shape[0]
    axes = tuple(range(1, x_t.ndim))
    uncond = kw.get("model_output_uncond")
    arrays_ = [a for a in (x_t, model_output, uncond, noise) if a is not None]
    M = np.max([np.abs(a.astype(np.float64)).max(axis=axes) if axes else np.abs(a) for a in arrays_], axis=0)  # (B,)
    s = abs(kw.get("guidance_scale", 1.0)) if uncond is not None else None
    G = M * (1 + 2 * s) if s is not None else M
    E_g = 3 * U * G if s is not None else 0.0

    t = _host_timesteps(t, B)
    t_prev = t - 1 if t_prev is None else _host_timesteps(t_prev, B)
    abar = schedule.alphas_cumprod[t]
    abar_prev = np.where(t_prev >= 0, schedule.alphas_cumprod[np.maximum(t_prev, 0)], 1.0)
    alpha, sigma = np.sqrt(abar), np.sqrt(1 - abar)
    with np.errstate(divide="ignore", invalid="ignore"):
        kind = kw["prediction_type"]
        if kind == "epsilon":
            X, EPS = (M + sigma * G) / alpha, G
            e_x0, e_eps = (sigma * E_g + 6 * U * (M + sigma * G)) / alpha, E_g
        elif kind == "sample":
            X, EPS = G, (M + alpha * G) / sigma
            e_x0, e_eps = E_g, (alpha * E_g + 6 * U * (M + alpha * G)) / sigma
        else:
            X, EPS = alpha * M + sigma * G, alpha * G + sigma * M
            e_x0, e_eps = sigma * E_g + 6 * U * (alpha * M + sigma * G), alpha * E_g + 6 * U * (alpha * G + sigma * M)
    if kw["clip_sample"]:
        X = np.minimum(X, kw["clip_sample_range"])

    if sampler == "ddpm":
        alpha_t = abar / abar_prev
        beta_t = 1 - alpha_t
        c_x0 = np.sqrt(abar_prev) * beta_t / (1 - abar)
        c_2, Y, e_y = np.sqrt(alpha_t) * (1 - abar_prev) / (1 - abar), M, 0.0
        var = beta_t if kw["variance_type"] == "fixed_large" else (1 - abar_prev) / (1 - abar) * beta_t
        c_n = np.where((t > 0) & (noise is not None), np.sqrt(np.maximum(var, 0)), 0.0)
    else:
        eta = kw["eta"]
        sig_eta = eta * np.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))
        c_x0 = np.sqrt(abar_prev)
        c_2, Y, e_y = np.sqrt(np.maximum(1 - abar_prev - sig_eta**2, 0)), EPS, e_eps
        c_n = sig_eta if eta > 0 else 0.0
    # terms whose coefficient is 0 contribute nothing (and 0 * inf is not an error bound)
    term = lambda c, v: np.where(c == 0, 0.0, c * v)  # noqa: E731
    tol = term(c_x0, e_x0) + term(c_2, e_y) + 6 * U * (term(c_x0, X) + term(c_2, Y) + c_n * M)
    return tol.reshape((B,) + (1,) * (x_t.ndim - 1))


test_ddpm_step_matches_its_twin = kernel_agreement_test(
    "ddpm_step", step_calls("ddpm"), lambda call, ref: step_tolerance(call, ref, "ddpm")
)
test_ddim_step_matches_its_twin = kernel_agreement_test(
    "ddim_step", step_calls("ddim"), lambda call, ref: step_tolerance(call, ref, "ddim")
)


def test_ddim_eta_0_with_the_twins_own_x0_is_exact_at_the_last_step():
    """Closed form: a DDIM step to t_prev = -1 (abar_prev = 1) returns the clipped x_0 itself;
    for a "sample" prediction that is the model output, exactly (c_x0 = 1, c_dir = 0)."""
    from refdiff.kernels import ddim_step
    from refdiff.kernels.testing import _schedule, _to_host, _to_kernel_side

    rng = np.random.default_rng(0)
    x_t = rng.standard_normal((3, 4, 5)).astype(np.float32)
    out = np.clip(rng.standard_normal((3, 4, 5)), -1, 1).astype(np.float32)
    x_prev = ddim_step(_to_kernel_side(x_t), _to_kernel_side(out), 0, -1, _schedule("linear", 1000), prediction_type="sample")
    np.testing.assert_array_equal(_to_host(x_prev), out)
