"""Make the learned-variance golden files of tests/test_learned_variance_diffusers.py with diffusers itself.

Builds a tiny diffusers UNet2DModel whose out_channels = 2 * in_channels (the output, then the
variance values v: improved DDPM's learned sigma), with random perturbed weights, saves it with
save_pretrained into tiny_lv_unet/ and records whole sampling loops on fixed noise into
learned_variance_golden.npz:

- DDPMScheduler(variance_type="learned_range"), all 20 steps of a T = 20 linear schedule;
- DDPMScheduler(variance_type="learned_range"), 10 strided ("leading") steps of a T = 1000 schedule:
  beta and beta_tilde of each step recomputed from the strided abar (diffusers' _get_variance);
- DDIMScheduler, 10 steps of T = 1000, eta = 0 and eta = 1: DDIMScheduler has no learned
  variance, so the variance channels are split off before the step, as diffusers' pipelines
  for such models do (DeepFloyd IF: noise_pred.split(C, dim=1)).

The step noise is fed: DDPM's randn_tensor is replaced by a function returning the recorded array
of the current step; DDIM takes it as variance_noise. Each case stores x_T, noise (steps, B, C, H, W;
step i's noise is the one drawn at the i-th model call, unused where t = 0), timesteps, out.

Run once, outside the repository's environment (it needs torch and diffusers):
    python3 -m venv /tmp/dvenv && /tmp/dvenv/bin/pip install torch==2.13.0 diffusers==0.42.1
    /tmp/dvenv/bin/python tests/data/make_learned_variance_golden.py
"""
import json
import os

import numpy as np
import torch

import diffusers
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from diffusers.schedulers import scheduling_ddpm

from make_tiny_unet import perturb  # one weight perturbation for every tiny diffusers model (run from tests/data)

HERE = os.path.dirname(os.path.abspath(__file__))
NAME = "tiny_lv_unet"
OUT = os.path.join(HERE, "learned_variance_golden.npz")

CONFIG = dict(
    sample_size=8, in_channels=2, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=4, norm_eps=1e-6, attention_head_dim=None, flip_sin_to_cos=False, freq_shift=1,
    downsample_padding=0, act_fn="silu", time_embedding_type="positional",
)

CASES = [
    dict(scheduler="DDPMScheduler", T=20, steps=20, eta=None),
    dict(scheduler="DDPMScheduler", T=1000, steps=10, eta=None),
    dict(scheduler="DDIMScheduler", T=1000, steps=10, eta=0.0),
    dict(scheduler="DDIMScheduler", T=1000, steps=10, eta=1.0),
]


def run(model, case, x_T, noise):
    C = x_T.shape[1]
    common = dict(num_train_timesteps=case["T"], beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                  clip_sample=True)
    if case["scheduler"] == "DDPMScheduler":
        scheduler = DDPMScheduler(variance_type="learned_range", **common)
    else:
        scheduler = DDIMScheduler(**common)
    scheduler.set_timesteps(case["steps"])
    step_index = {"i": 0}

    def recorded_noise(shape, generator=None, device=None, dtype=None, layout=None):
        return torch.from_numpy(noise[step_index["i"]])

    scheduling_ddpm.randn_tensor = recorded_noise
    sample = torch.from_numpy(x_T)
    for i, t in enumerate(scheduler.timesteps):
        step_index["i"] = i
        with torch.no_grad():
            out = model(sample, t).sample  # (B, 2C, H, W)
        if case["scheduler"] == "DDPMScheduler":
            sample = scheduler.step(out, t, sample).prev_sample
        else:
            eps, _ = out.split(C, dim=1)  # the variance channels, unused by DDIM
            sample = scheduler.step(eps, t, sample, eta=case["eta"],
                                    variance_noise=torch.from_numpy(noise[i]) if case["eta"] else None).prev_sample
    return scheduler.timesteps.numpy().astype(np.int64), sample.numpy().astype(np.float32)


def main():
    torch.manual_seed(0)
    rng = np.random.default_rng(20261129)
    model = UNet2DModel(**CONFIG).eval()
    perturb(model, seed=7)
    model.save_pretrained(os.path.join(HERE, NAME), safe_serialization=True)
    B, C, S = 2, CONFIG["in_channels"], CONFIG["sample_size"]
    golden = {"diffusers_version": np.array(diffusers.__version__), "torch_version": np.array(torch.__version__)}
    for k, case in enumerate(CASES):
        x_T = rng.standard_normal((B, C, S, S)).astype(np.float32)
        noise = rng.standard_normal((case["steps"], B, C, S, S)).astype(np.float32)
        timesteps, out = run(model, case, x_T, noise)
        if not np.isfinite(out).all():
            raise RuntimeError(f"case {case}: diffusers gives a non-finite sample")
        golden.update({f"case/{k}/meta": np.array(json.dumps(case)), f"case/{k}/x_T": x_T,
                       f"case/{k}/noise": noise, f"case/{k}/timesteps": timesteps, f"case/{k}/out": out})
    # the variance channels at x_T of case 1 and its first timestep, to show they span [-1, 1]
    with torch.no_grad():
        golden["v_first_step"] = model(torch.from_numpy(golden["case/1/x_T"]), 900).sample[:, C:].numpy()
    np.savez_compressed(OUT, **golden)
    print(f"wrote {OUT}: {len(CASES)} cases, {os.path.getsize(OUT)} bytes; "
          f"v at the first step in [{golden['v_first_step'].min():.2f}, {golden['v_first_step'].max():.2f}]")


if __name__ == "__main__":
    main()
