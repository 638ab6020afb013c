"""Record whole DPM-Solver++ and UniPC sampling loops from diffusers: writes tests/data/diffusers_dpm_golden.npz.

Not run by the tests (CI has no diffusers). To regenerate, in a virtual environment outside the
repository:

    python3 -m venv /tmp/diffusers-venv
    /tmp/diffusers-venv/bin/pip install torch==2.13.0 diffusers==0.42.1
    /tmp/diffusers-venv/bin/python tests/data/make_diffusers_dpm_golden.py

Each case is one whole sampling loop (set_timesteps, then for every timestep: model call, step)
of DPMSolverMultistepScheduler (dpmsolver++ and sde-dpmsolver++, solver_order 2 and 3),
DPMSolverSinglestepScheduler (dpmsolver++, orders 2 and 3) or UniPCMultistepScheduler (bh2,
orders 2 and 3), on a fake model: deterministic, smooth in x and t, no network. It is the exact
denoiser of Gaussian data x_0 ~ N(B, S2 I) (S2 = 0.25) plus a smooth error, returned as the case's
prediction type, with the scheduler's own float32 table abar = alphas_cumprod[t]:

    alpha = sqrt(abar), std = sqrt(1 - abar)
    x0  = B + alpha S2 (x - alpha B) / (alpha^2 S2 + std^2) + 0.1 tanh(A x + B) (0.6 + 0.3 cos(t / 250))
    eps = (x - alpha x0) / std;   output eps ("epsilon") or alpha eps - std x0 ("v_prediction")

A, B: fixed arrays (stored). So the x_0 the solvers see stays of the data's size at every noise
level, as with a trained network (an output unrelated to x_t would give x_0 ~ x_t / alpha).

What is recorded (float32 unless said otherwise):
- fake_model/A, fake_model/B; x_T (the start, in the model's scale, shared by every case).
- case/<NNN>/meta: a JSON object: "scheduler" (the diffusers class name), "config" (its constructor
  arguments), "sampler" and "options" (the refdiff sampler name and options that should reproduce the
  case), "schedule" (refdiff's name of the beta schedule), "prediction_type", "steps".
- case/<NNN>/timesteps (int64): the t of every model call, in order (scheduler.timesteps).
- case/<NNN>/sigmas: scheduler.sigmas (diffusers' float32 grid, last entry included).
- case/<NNN>/model_inputs: x handed to the model at each call (steps, *x_T.shape).
- case/<NNN>/noise: for sde-dpmsolver++ only, the noise fed to each step (steps, *x_T.shape).
- case/<NNN>/out: the final sample.
- schedule/<name>/alphas_cumprod: the scheduler's float32 alphas_cumprod (after diffusers' own
  zero-SNR clamp of the last entry to 2^-24).

Every loop starts with set_begin_index(0): where a grid repeats its first timestep (Karras
sigmas on the cosine schedule give 999, 999, 999, ...), diffusers would otherwise start at the
second occurrence (index_for_timestep's rule for img2img) and skip a sigma. Cases where diffusers
itself gives a non-finite sample are left out (and said so where they are left out).
"""
import json
import math
import os
from itertools import product

import numpy as np
import torch

import diffusers
from diffusers import DPMSolverMultistepScheduler, DPMSolverSinglestepScheduler, UniPCMultistepScheduler
from diffusers.schedulers import scheduling_dpmsolver_multistep

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "diffusers_dpm_golden.npz")
SHAPE = (2, 2, 3, 3)  # (B, C, H, W) of x_T
S2 = 0.25  # the fake model's data variance

# refdiff's schedule name -> diffusers' scheduler arguments
SCHEDULES = {
    "linear": dict(beta_schedule="linear"),
    "scaled_linear": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    "cosine": dict(beta_schedule="squaredcos_cap_v2"),
    "scaled_linear_zero_snr": dict(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True
    ),
}

SIGMA_FLAGS = {"default": {}, "karras": dict(use_karras_sigmas=True), "exponential": dict(use_exponential_sigmas=True)}


def f32(a):
    return np.asarray(a.detach().cpu().numpy() if torch.is_tensor(a) else a, dtype=np.float32)


def fake_model(A, B, alphas_cumprod, prediction_type):
    """The model of the module docstring, for one schedule's (float32) alphas_cumprod table."""

    def model(x, t):
        abar = alphas_cumprod[int(t)]
        alpha, std = abar.sqrt(), (1 - abar).sqrt()
        x0 = B + alpha * S2 * (x - alpha * B) / (alpha**2 * S2 + std**2)  # E[x_0 | x_t] for x_0 ~ N(B, S2)
        x0 = x0 + 0.1 * torch.tanh(A * x + B) * (0.6 + 0.3 * math.cos(t / 250.0))
        eps = (x - alpha * x0) / std
        return eps if prediction_type == "epsilon" else alpha * eps - std * x0

    return model


def cases():
    """(scheduler class, refdiff sampler, refdiff options, extra config, schedule, prediction, sigmas, steps)."""
    out = []
    multistep = {
        ("dpmsolver++", 2): "dpmpp_2m", ("dpmsolver++", 3): "dpmpp_3m",
        ("sde-dpmsolver++", 2): "dpmpp_2m_sde", ("sde-dpmsolver++", 3): "dpmpp_3m_sde",
    }
    # the main grid: every algorithm and order, every sigma grid, both prediction types
    for (algo, order), sigmas, pred in product(multistep, SIGMA_FLAGS, ("epsilon", "v_prediction")):
        out.append((DPMSolverMultistepScheduler, multistep[algo, order], {},
                    dict(algorithm_type=algo, solver_order=order), "linear", pred, sigmas, 10))
    # schedules, step counts, spacings
    for (algo, order), schedule, steps in product(multistep, ("scaled_linear", "cosine"), (7, 20)):
        out.append((DPMSolverMultistepScheduler, multistep[algo, order], {},
                    dict(algorithm_type=algo, solver_order=order), schedule, "epsilon", "karras", steps))
    for spacing, offset in (("leading", 0), ("leading", 1), ("trailing", 0)):
        out.append((DPMSolverMultistepScheduler, "dpmpp_2m", dict(spacing=spacing, steps_offset=offset),
                    dict(algorithm_type="dpmsolver++", solver_order=2, timestep_spacing=spacing, steps_offset=offset),
                    "scaled_linear", "epsilon", "default", 12))
    for steps in (1, 2, 3):
        for order in (2, 3):
            out.append((DPMSolverMultistepScheduler, multistep["dpmsolver++", order], {},
                        dict(algorithm_type="dpmsolver++", solver_order=order), "linear", "epsilon", "default", steps))
    # lower_order_final, euler_at_final, final_sigmas_type, solver_type. On the default grid: a Karras or
    # exponential grid ends at sigma_min already, so final_sigmas_type="sigma_min" would append a step of
    # length 0 there, where the third-order update divides 0 by 0
    for (algo, order), lof, eaf, fst in product(multistep, (True, False), (False, True), ("zero", "sigma_min")):
        opts = dict(lower_order_final=lof, euler_at_final=eaf, final_sigmas_type=fst)
        out.append((DPMSolverMultistepScheduler, multistep[algo, order], opts,
                    dict(algorithm_type=algo, solver_order=order, **opts), "linear", "epsilon", "default", 8))
    for algo, order in multistep:
        if order == 2:
            out.append((DPMSolverMultistepScheduler, multistep[algo, order], dict(solver_type="heun"),
                        dict(algorithm_type=algo, solver_order=order, solver_type="heun"), "linear", "epsilon",
                        "exponential", 10))
    # zero terminal SNR (v-prediction, trailing spacing: Lin et al. 2023)
    for (algo, order), sigmas in product(multistep, ("default", "karras")):
        out.append((DPMSolverMultistepScheduler, multistep[algo, order], dict(spacing="trailing"),
                    dict(algorithm_type=algo, solver_order=order, timestep_spacing="trailing"),
                    "scaled_linear_zero_snr", "v_prediction", sigmas, 10))

    # ---- singlestep ----
    singlestep = {2: "dpmpp_2s", 3: "dpmpp_3s"}
    for order, sigmas, pred in product((2, 3), SIGMA_FLAGS, ("epsilon", "v_prediction")):
        out.append((DPMSolverSinglestepScheduler, singlestep[order], {}, dict(solver_order=order), "linear", pred,
                    sigmas, 12))
    for order, steps in product((2, 3), (1, 2, 7, 10, 11)):
        out.append((DPMSolverSinglestepScheduler, singlestep[order], {}, dict(solver_order=order), "scaled_linear",
                    "epsilon", "karras", steps))
    for order, lof, st in product((2, 3), (True, False), ("midpoint", "heun")):
        opts = dict(lower_order_final=lof, final_sigmas_type="sigma_min", solver_type=st)
        out.append((DPMSolverSinglestepScheduler, singlestep[order], opts, dict(solver_order=order, **opts),
                    "linear", "epsilon", "default", 12))
    for order in (2, 3):
        out.append((DPMSolverSinglestepScheduler, singlestep[order], {}, dict(solver_order=order), "cosine",
                    "epsilon", "karras", 12))

    # ---- UniPC (bh2) ----
    for order, sigmas, pred in product((2, 3), SIGMA_FLAGS, ("epsilon", "v_prediction")):
        out.append((UniPCMultistepScheduler, "unipc", dict(solver_order=order), dict(solver_order=order), "linear",
                    pred, sigmas, 10))
    for order, schedule, steps in product((2, 3), ("scaled_linear", "cosine"), (1, 2, 3, 7, 20)):
        out.append((UniPCMultistepScheduler, "unipc", dict(solver_order=order), dict(solver_order=order), schedule,
                    "epsilon", "karras", steps))
    for order, lof, fst in product((2, 3), (True, False), ("zero", "sigma_min")):
        if not lof and fst == "zero":
            continue  # diffusers divides by a zero step there (lambda = inf at sigma = 0): non-finite output
        opts = dict(solver_order=order, lower_order_final=lof, final_sigmas_type=fst)
        out.append((UniPCMultistepScheduler, "unipc", opts, dict(opts), "linear", "epsilon", "default", 8))
    for spacing, offset in (("leading", 1), ("trailing", 0)):
        out.append((UniPCMultistepScheduler, "unipc", dict(spacing=spacing, steps_offset=offset),
                    dict(timestep_spacing=spacing, steps_offset=offset), "scaled_linear", "epsilon", "default", 12))
    for order, sigmas in product((2, 3), ("default", "karras")):
        out.append((UniPCMultistepScheduler, "unipc", dict(solver_order=order, spacing="trailing"),
                    dict(solver_order=order, timestep_spacing="trailing"), "scaled_linear_zero_snr", "v_prediction",
                    sigmas, 10))
    return out


def main():
    rng = np.random.default_rng(20260418)
    A = rng.uniform(0.3, 1.2, SHAPE[1:]).astype(np.float32)
    B = rng.uniform(-0.5, 0.5, SHAPE[1:]).astype(np.float32)
    x_T = rng.standard_normal(SHAPE).astype(np.float32)
    golden = {
        "diffusers_version": np.array(diffusers.__version__), "torch_version": np.array(torch.__version__),
        "fake_model/A": A, "fake_model/B": B, "x_T": x_T,
    }

    fed = {"queue": []}

    def fake_randn(shape, generator=None, device=None, dtype=None, layout=None):
        noise = fed["source"].standard_normal(tuple(shape)).astype(np.float32)
        fed["queue"].append(noise)
        return torch.from_numpy(noise).to(dtype)

    # both DPM schedulers draw their SDE noise through randn_tensor in their own module
    scheduling_dpmsolver_multistep.randn_tensor = fake_randn
    from diffusers.schedulers import scheduling_dpmsolver_singlestep

    scheduling_dpmsolver_singlestep.randn_tensor = fake_randn

    for i, (cls, sampler, options, config, schedule, pred, sigmas, steps) in enumerate(cases()):
        kwargs = dict(num_train_timesteps=1000, prediction_type=pred, **SCHEDULES[schedule], **SIGMA_FLAGS[sigmas],
                      **config)
        s = cls(**kwargs)
        golden.setdefault(f"schedule/{schedule}/alphas_cumprod", f32(s.alphas_cumprod))
        model = fake_model(torch.from_numpy(A), torch.from_numpy(B), s.alphas_cumprod.to(torch.float32), pred)
        s.set_timesteps(steps)
        s.set_begin_index(0)  # start at the first timestep even where the grid repeats it (see above)
        fed["queue"], fed["source"] = [], np.random.default_rng(1000 + i)
        x = torch.from_numpy(x_T.copy())
        inputs = []
        for t in s.timesteps:
            inputs.append(f32(x))
            try:
                x = s.step(model(x, int(t)), t, x).prev_sample
            except Exception as e:
                raise RuntimeError(f"case {i}: {cls.__name__} {kwargs} steps={steps}") from e
        out = f32(x)
        if not np.isfinite(out).all():
            raise RuntimeError(f"case {i} ({cls.__name__}, {kwargs}) gave a non-finite sample")
        key = f"case/{i:03d}"
        ref_options = dict(options)
        if sigmas != "default":
            ref_options["sigmas"] = sigmas
        golden[f"{key}/meta"] = np.array(json.dumps(dict(
            scheduler=cls.__name__, config=kwargs, sampler=sampler, options=ref_options, schedule=schedule,
            prediction_type=pred, steps=steps), sort_keys=True))
        golden[f"{key}/timesteps"] = s.timesteps.numpy().astype(np.int64)
        golden[f"{key}/sigmas"] = f32(s.sigmas)
        golden[f"{key}/model_inputs"] = np.stack(inputs)
        if fed["queue"]:
            golden[f"{key}/noise"] = np.stack(fed["queue"])
        golden[f"{key}/out"] = out

    np.savez_compressed(OUT, **golden)
    n = len({k.split("/")[1] for k in golden if k.startswith("case/")})
    print(f"wrote {OUT}: {n} cases, {len(golden)} arrays, {os.path.getsize(OUT) / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
