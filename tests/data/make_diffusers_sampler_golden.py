"""Record whole Euler-family and flow-matching sampling loops from diffusers: writes
tests/data/diffusers_sampler_golden.npz.

Not run by the tests (CI has no diffusers). To regenerate, in a virtual environment outside the
repository:

    python3 -m venv /tmp/diffusers-venv
    /tmp/diffusers-venv/bin/pip install torch==2.13.0 diffusers==0.42.1
    /tmp/diffusers-venv/bin/python tests/data/make_diffusers_sampler_golden.py

Each case is one whole sampling loop (set_timesteps, then for every timestep: scale_model_input,
the model, step) of EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, HeunDiscreteScheduler,
LMSDiscreteScheduler or FlowMatchEulerDiscreteScheduler, on the fake model of
tests/_sampler_fake_model.py (deterministic, smooth, NumPy; the test calls the same function).
The loop starts from x_T given in the model's scale (refdiff's contract): diffusers' first sample
is x_T sqrt(sigma_0^2 + 1) (x_T itself on the flow path). The ancestral sampler's noise is fed:
diffusers' randn_tensor is replaced by a function that returns the recorded arrays in order.

What is recorded (float32 unless said otherwise):
- x_T (4, 6): the start, shared by every case.
- case/<NNN>/meta: JSON: "scheduler" (diffusers class), "config" (its constructor arguments),
  "sampler", "options" (refdiff's sampler and sampler options), "grid" (refdiff's grid options),
  "schedule" (refdiff's NoiseSchedule constructor, or "flow"), "zero_snr", "shift",
  "prediction_type", "steps".
- case/<NNN>/timesteps: scheduler.timesteps (the t of every model call, in order).
- case/<NNN>/sigmas: scheduler.sigmas (diffusers' float32 grid, final entry included).
- case/<NNN>/noise: the noise handed to each step (ancestral cases only).
- case/<NNN>/out: the final sample.
- case/<NNN>/alphas_cumprod: the scheduler's float32 alphas_cumprod (after diffusers' zero-SNR clamp
  of the last entry to 2^-24); not for the flow scheduler.
"""
import json
import os
import sys

import numpy as np
import torch

import diffusers
from diffusers import (
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LMSDiscreteScheduler,
)
from diffusers.schedulers import scheduling_euler_ancestral_discrete

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from _sampler_fake_model import fake_model  # noqa: E402

OUT = os.path.join(HERE, "diffusers_sampler_golden.npz")

SCHEDULES = {
    "linear": dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02),
    "scaled_linear": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
}
CLASSES = {
    "euler": EulerDiscreteScheduler,
    "euler_ancestral": EulerAncestralDiscreteScheduler,
    "heun": HeunDiscreteScheduler,
    "lms": LMSDiscreteScheduler,
    "flow_euler": FlowMatchEulerDiscreteScheduler,
}


def case(sampler, schedule="linear", prediction_type="epsilon", sigmas="default", spacing=None, steps_offset=0,
         zero_snr=False, steps=10, shift=1.0):
    return dict(sampler=sampler, schedule=schedule, prediction_type=prediction_type, sigmas=sigmas, spacing=spacing,
                steps_offset=steps_offset, zero_snr=zero_snr, steps=steps, shift=shift)


CASES = [
    case("euler"),
    case("euler", steps=25),
    case("euler", "scaled_linear", sigmas="karras"),
    case("euler", "scaled_linear", sigmas="exponential"),
    case("euler", prediction_type="v_prediction"),
    case("euler", "scaled_linear", "v_prediction", spacing="trailing", zero_snr=True),
    case("euler", "scaled_linear", spacing="leading", steps_offset=1),
    case("euler_ancestral"),
    case("euler_ancestral", "scaled_linear", "v_prediction", spacing="trailing", zero_snr=True),
    case("heun"),
    case("heun", "scaled_linear", sigmas="karras"),
    case("heun", "scaled_linear", "v_prediction", sigmas="exponential"),
    case("lms"),
    case("lms", "scaled_linear", sigmas="karras"),
    case("lms", prediction_type="v_prediction"),
    case("flow_euler", "flow", "flow"),
    case("flow_euler", "flow", "flow", shift=3.0),
    case("flow_euler", "flow", "flow", sigmas="karras", steps=12),
]


def config_of(c):
    if c["sampler"] == "flow_euler":
        config = dict(num_train_timesteps=1000, shift=c["shift"])
    else:
        config = dict(num_train_timesteps=1000, prediction_type=c["prediction_type"], **SCHEDULES[c["schedule"]])
        if c["spacing"] is not None:
            config["timestep_spacing"] = c["spacing"]
        if c["steps_offset"]:
            config["steps_offset"] = c["steps_offset"]
        if c["zero_snr"]:
            config["rescale_betas_zero_snr"] = True
    if c["sigmas"] == "karras":
        config["use_karras_sigmas"] = True
    elif c["sigmas"] == "exponential":
        config["use_exponential_sigmas"] = True
    return config


def run(c, x_T, rng):
    scheduler = CLASSES[c["sampler"]](**config_of(c))
    scheduler.set_timesteps(c["steps"])
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(0)
    sigmas = scheduler.sigmas.numpy().astype(np.float32)
    flow = c["sampler"] == "flow_euler"
    start = x_T.astype(np.float64) * (1.0 if flow else np.sqrt(float(sigmas[0]) ** 2 + 1))
    sample = torch.from_numpy(start.astype(np.float32))
    noises = []

    def recorded_noise(shape, generator=None, device=None, dtype=None, layout=None):
        z = rng.standard_normal(tuple(shape)).astype(np.float32)
        noises.append(z)
        return torch.from_numpy(z)

    scheduling_euler_ancestral_discrete.randn_tensor = recorded_noise
    for t in scheduler.timesteps:
        model_input = sample if flow else scheduler.scale_model_input(sample, t)
        model_t = float(t) / 1000.0 if flow else float(t)
        out = fake_model(model_input.numpy(), model_t, c["prediction_type"]).astype(np.float32)
        sample = scheduler.step(torch.from_numpy(out), t, sample).prev_sample
    result = {"timesteps": scheduler.timesteps.numpy().astype(np.float32), "sigmas": sigmas,
              "out": sample.numpy().astype(np.float32)}
    if noises:
        result["noise"] = np.stack(noises)
    if not flow:
        result["alphas_cumprod"] = scheduler.alphas_cumprod.numpy().astype(np.float32)
    return result


def main():
    rng = np.random.default_rng(20260418)
    x_T = rng.standard_normal((4, 6)).astype(np.float32)
    golden = {"diffusers_version": np.array(diffusers.__version__), "torch_version": np.array(torch.__version__),
              "x_T": x_T}
    for k, c in enumerate(CASES):
        result = run(c, x_T, rng)
        if not np.isfinite(result["out"]).all():
            raise RuntimeError(f"case {c}: diffusers gives a non-finite sample")
        meta = dict(scheduler=CLASSES[c["sampler"]].__name__, config=config_of(c), **c)
        golden[f"case/{k:03d}/meta"] = np.array(json.dumps(meta))
        for name, value in result.items():
            golden[f"case/{k:03d}/{name}"] = value
    np.savez_compressed(OUT, **golden)
    print(f"wrote {OUT}: {len(CASES)} cases, {os.path.getsize(OUT)} bytes")


if __name__ == "__main__":
    main()
