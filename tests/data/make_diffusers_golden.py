"""Record diffusers' numbers for refdiff's parity tests: writes tests/data/diffusers_golden.npz.

Not run by the tests (CI has no diffusers). To regenerate, in a virtual environment outside the
repository:

    python3 -m venv /tmp/diffusers-venv
    /tmp/diffusers-venv/bin/pip install torch==2.13.0 diffusers
    /tmp/diffusers-venv/bin/python tests/data/make_diffusers_golden.py

What is recorded (every array float32 unless said otherwise; int64 for timesteps):
- schedule/<name>/betas, schedule/<name>/alphas_cumprod: DDPMScheduler's tables for each
  beta_schedule (T = 1000), with and without rescale_betas_zero_snr.
- snr/<name>: diffusers.training_utils.compute_snr at timesteps snr_t.
- forward/*: DDPMScheduler.add_noise (q_sample) and get_velocity (the v target).
- ddpm/<case>/*: DDPMScheduler.step for fixed inputs, one timestep per batch row.
- ddim/<case>/*: DDIMScheduler.step for fixed inputs, one timestep per batch row.
- timesteps/<spacing>/<T>/<n>/<offset>: DDIMScheduler.set_timesteps tables.
- embedding/<case>: get_timestep_embedding outputs.
Each case also stores its settings, so the test reads the settings from the file.
"""
import os
from itertools import product

import numpy as np
import torch

import diffusers
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.schedulers import scheduling_ddpm
from diffusers.training_utils import compute_snr

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "diffusers_golden.npz")
T = 1000
SHAPE = (2, 4, 4)  # per-sample shape of the step inputs (C, H, W)

# the schedules refdiff has, as diffusers' scheduler arguments
SCHEDULES = {
    "linear": dict(beta_schedule="linear"),
    "scaled_linear": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    "quadratic": dict(beta_schedule="scaled_linear", beta_start=1e-4, beta_end=0.02),
    "cosine": dict(beta_schedule="squaredcos_cap_v2"),
    "sigmoid": dict(beta_schedule="sigmoid"),
    "linear_zero_snr": dict(beta_schedule="linear", rescale_betas_zero_snr=True),
    "scaled_linear_zero_snr": dict(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True
    ),
    "cosine_zero_snr": dict(beta_schedule="squaredcos_cap_v2", rescale_betas_zero_snr=True),
}


def f32(a):
    return np.asarray(a.detach().cpu().numpy() if torch.is_tensor(a) else a, dtype=np.float32)


def main():
    rng = np.random.default_rng(20260101)
    golden = {"diffusers_version": np.array(diffusers.__version__), "torch_version": np.array(torch.__version__)}

    # ---- schedules ---------------------------------------------------------------------
    for name, kwargs in SCHEDULES.items():
        s = DDPMScheduler(num_train_timesteps=T, **kwargs)
        golden[f"schedule/{name}/betas"] = f32(s.betas)
        golden[f"schedule/{name}/alphas_cumprod"] = f32(s.alphas_cumprod)
    for T_small in (1, 2, 10):  # short cosine schedules (the last beta hits max_beta)
        s = DDPMScheduler(num_train_timesteps=T_small, beta_schedule="squaredcos_cap_v2")
        golden[f"schedule/cosine_T{T_small}/betas"] = f32(s.betas)

    snr_t = np.array([0, 1, 7, 100, 500, 998, 999], dtype=np.int64)
    golden["snr_t"] = snr_t
    for name in ("linear", "cosine"):
        s = DDPMScheduler(num_train_timesteps=T, **SCHEDULES[name])
        golden[f"snr/{name}"] = f32(compute_snr(s, torch.from_numpy(snr_t)))

    # ---- forward: add_noise (q_sample) and get_velocity (v target) ---------------------
    K = 8
    x0 = rng.uniform(-1, 1, (K,) + SHAPE).astype(np.float32)
    noise = rng.standard_normal((K,) + SHAPE).astype(np.float32)
    t = np.array([0, 1, 2, 50, 300, 700, 998, 999], dtype=np.int64)
    golden.update({"forward/x0": x0, "forward/noise": noise, "forward/t": t})
    for name in ("linear", "cosine", "scaled_linear_zero_snr"):
        s = DDPMScheduler(num_train_timesteps=T, **SCHEDULES[name])
        tt = torch.from_numpy(t)
        golden[f"forward/{name}/x_t"] = f32(s.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), tt))
        golden[f"forward/{name}/v"] = f32(s.get_velocity(torch.from_numpy(x0), torch.from_numpy(noise), tt))

    # ---- step inputs shared by all step cases ------------------------------------------
    K = 10
    x_t = (1.5 * rng.standard_normal((K,) + SHAPE)).astype(np.float32)
    model_output = rng.standard_normal((K,) + SHAPE).astype(np.float32)
    step_noise = rng.standard_normal((K,) + SHAPE).astype(np.float32)
    golden.update({"step/x_t": x_t, "step/model_output": model_output, "step/noise": step_noise})

    fixed_noise = {}

    def fake_randn(shape, generator=None, device=None, dtype=None, layout=None):
        return fixed_noise["value"].to(dtype)

    scheduling_ddpm.randn_tensor = fake_randn  # DDPMScheduler.step draws its noise through this

    # ---- DDPMScheduler.step, unstrided: t_prev = t - 1 ---------------------------------
    t_plain = np.array([0, 1, 2, 5, 10, 100, 500, 900, 998, 999], dtype=np.int64)
    cases = []
    for schedule, pred, var, clip in product(
        ("linear", "cosine"), ("epsilon", "sample", "v_prediction"), ("fixed_small", "fixed_large"),
        ((True, 1.0), (False, 1.0), (True, 2.0)),
    ):
        cases.append((schedule, pred, var, clip, None, 0))
    # zero terminal SNR: x_0 from eps divides by 0 at t = T-1, so v and sample only (as the paper advises)
    for pred, var in product(("sample", "v_prediction"), ("fixed_small", "fixed_large")):
        cases.append(("scaled_linear_zero_snr", pred, var, (True, 1.0), None, 0))
    # strided DDPM: set_timesteps(10) with each spacing
    for spacing, var, pred in product(("leading", "trailing", "linspace"), ("fixed_small", "fixed_large"),
                                      ("epsilon", "v_prediction")):
        cases.append(("linear", pred, var, (True, 1.0), spacing, 0))
    cases.append(("linear", "epsilon", "fixed_small", (True, 1.0), "leading", 1))

    for i, (schedule, pred, var, (clip, clip_range), spacing, offset) in enumerate(cases):
        s = DDPMScheduler(
            num_train_timesteps=T, prediction_type=pred, variance_type=var, clip_sample=clip,
            clip_sample_range=clip_range, timestep_spacing=spacing or "leading", steps_offset=offset,
            **SCHEDULES[schedule],
        )
        if spacing is None:
            ts = t_plain
            prevs = ts - 1
        else:
            s.set_timesteps(10)
            ts = s.timesteps.numpy().astype(np.int64)
            prevs = np.array([int(s.previous_timestep(int(tk))) for tk in ts], dtype=np.int64)
        out = np.empty_like(x_t)
        for k, tk in enumerate(ts):
            fixed_noise["value"] = torch.from_numpy(step_noise[k : k + 1])
            res = s.step(torch.from_numpy(model_output[k : k + 1]), int(tk), torch.from_numpy(x_t[k : k + 1]))
            out[k] = f32(res.prev_sample)[0]
        key = f"ddpm/{i:03d}"
        golden[f"{key}/schedule"] = np.array(schedule)
        golden[f"{key}/prediction_type"] = np.array(pred)
        golden[f"{key}/variance_type"] = np.array(var)
        golden[f"{key}/clip_sample"] = np.array(clip)
        golden[f"{key}/clip_sample_range"] = np.array(clip_range)
        golden[f"{key}/t"] = ts
        golden[f"{key}/t_prev"] = prevs
        golden[f"{key}/out"] = out

    # ---- DDIMScheduler.step ------------------------------------------------------------
    cases = []
    for schedule, pred, eta, clip in product(
        ("linear", "cosine"), ("epsilon", "sample", "v_prediction"), (0.0, 0.5, 1.0),
        ((True, 1.0), (False, 1.0)),
    ):
        cases.append((schedule, pred, eta, clip, "leading", 0, True))
    for spacing, offset, eta in product(("leading", "trailing", "linspace"), (0, 1), (0.0, 1.0)):
        cases.append(("scaled_linear", "epsilon", eta, (True, 1.0), spacing, offset, True))
    for pred, eta in product(("sample", "v_prediction"), (0.0, 1.0)):
        cases.append(("scaled_linear_zero_snr", pred, eta, (True, 1.0), "trailing", 0, True))
    # set_alpha_to_one=False (Stable Diffusion's config): abar_prev = abar_0 at the last step
    cases.append(("scaled_linear", "epsilon", 0.0, (False, 1.0), "leading", 1, False))

    for i, (schedule, pred, eta, (clip, clip_range), spacing, offset, alpha_one) in enumerate(cases):
        s = DDIMScheduler(
            num_train_timesteps=T, prediction_type=pred, clip_sample=clip, clip_sample_range=clip_range,
            timestep_spacing=spacing, steps_offset=offset, set_alpha_to_one=alpha_one, **SCHEDULES[schedule],
        )
        s.set_timesteps(K)
        ts = s.timesteps.numpy().astype(np.int64)
        prevs = ts - T // K
        out = np.empty_like(x_t)
        for k, tk in enumerate(ts):
            res = s.step(
                torch.from_numpy(model_output[k : k + 1]), int(tk), torch.from_numpy(x_t[k : k + 1]), eta=eta,
                variance_noise=torch.from_numpy(step_noise[k : k + 1]),
            )
            out[k] = f32(res.prev_sample)[0]
        key = f"ddim/{i:03d}"
        golden[f"{key}/schedule"] = np.array(schedule)
        golden[f"{key}/prediction_type"] = np.array(pred)
        golden[f"{key}/eta"] = np.array(eta)
        golden[f"{key}/clip_sample"] = np.array(clip)
        golden[f"{key}/clip_sample_range"] = np.array(clip_range)
        golden[f"{key}/set_alpha_to_one"] = np.array(alpha_one)
        golden[f"{key}/t"] = ts
        golden[f"{key}/t_prev"] = prevs
        golden[f"{key}/out"] = out

    # ---- set_timesteps tables ----------------------------------------------------------
    for T_, n, spacing, offset in product((1000, 50, 17, 7), (1, 3, 7, 10, 61, 50, 999, 1000),
                                          ("leading", "trailing", "linspace"), (0, 1)):
        if n > T_:
            continue
        s = DDIMScheduler(num_train_timesteps=T_, timestep_spacing=spacing, steps_offset=offset)
        s.set_timesteps(n)
        golden[f"timesteps/{spacing}/{T_}/{n}/{offset}"] = s.timesteps.numpy().astype(np.int64)

    # ---- get_timestep_embedding --------------------------------------------------------
    t_emb = np.array([0, 1, 2, 10, 99, 250, 500, 999], dtype=np.int64)
    golden["embedding_t"] = t_emb
    emb_cases = list(product((1, 3, 8, 33, 64, 320), (False, True), (0, 1)))
    emb_cases += [(32, True, 0, 2.5, 10000), (32, False, 1, 1.0, 100), (16, True, 1, 1000.0, 10000)]
    for i, case in enumerate(emb_cases):
        dim, flip, shift = case[:3]
        scale, max_period = case[3:] if len(case) > 3 else (1.0, 10000)
        if dim // 2 == shift and dim // 2 > 0:
            continue  # diffusers divides by zero here; refdiff raises (tested separately)
        emb = get_timestep_embedding(
            torch.from_numpy(t_emb), dim, flip_sin_to_cos=flip, downscale_freq_shift=shift, scale=scale,
            max_period=max_period,
        )
        key = f"embedding/{i:03d}"
        golden[f"{key}/dim"] = np.array(dim)
        golden[f"{key}/flip_sin_to_cos"] = np.array(flip)
        golden[f"{key}/downscale_freq_shift"] = np.array(shift)
        golden[f"{key}/scale"] = np.array(scale)
        golden[f"{key}/max_period"] = np.array(max_period)
        golden[f"{key}/out"] = f32(emb)

    np.savez_compressed(OUT, **golden)
    print(f"wrote {OUT}: {len(golden)} arrays, {os.path.getsize(OUT) / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
