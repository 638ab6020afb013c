"""Record diffusers' own pipelines on tiny pipeline folders: writes tests/data/tiny_pipelines/ (the
folders' JSON files) and tests/data/tiny_pipelines_golden.npz.

Not run by the tests (CI has no diffusers). To regenerate, in a virtual environment outside the
repository:

    python3 -m venv /tmp/diffusers-venv
    /tmp/diffusers-venv/bin/pip install torch==2.13.0 diffusers==0.42.1
    /tmp/diffusers-venv/bin/python tests/data/make_tiny_pipelines.py

Each case builds a diffusers pipeline from the committed tiny parts (tests/data/tiny_ddpm_unet,
tests/data/tiny_vae) and a scheduler config, saves it with save_pretrained (its model_index.json and
configs are committed, the weights are the tiny parts': tests/_pipelines.py puts them back), runs the
pipeline with a fixed torch generator and records:
- <case>/x_T: the initial noise the pipeline drew (randn_tensor in the pipeline's module);
- <case>/noise: the noise every scheduler step drew (randn_tensor in the scheduler's module; DDPM);
- <case>/images: the pipeline's output, output_type="np": (n, H, W, C) in [0, 1];
- <case>/meta: JSON with the steps, the number of images and the pipeline call.

And tests/data/tiny_pipelines/scheduler_configs.json: for one configuration of each diffusers scheduler
class refdiff maps (SCHEDULER_CASES), the config diffusers' save_config writes, the timesteps of its
set_timesteps(10) and its float32 alphas_cumprod at every 50th t and the last; and under
"default/<class>" the config each class writes with diffusers' defaults.

Pipeline cases:
  ddpm      DDPMPipeline, DDPMScheduler (linear betas, fixed_small, clip_sample), 10 steps of 1000
  ddim      DDIMPipeline, DDIMScheduler (scaled_linear, v_prediction, trailing spacing, no clipping), 8 steps
  ldm       LDMPipeline with the AutoencoderKL tiny_vae as its autoencoder (diffusers types it VQModel but
            only calls .decode(latents / scaling_factor).sample and reads config.scaling_factor, which an
            AutoencoderKL has too), DDIMScheduler, 6 steps: latents 3 x 8 x 8, images 3 x 16 x 16.
            The folder names the part "vae" (as refdiff's latent pipelines do); diffusers' save_pretrained
            would call it "vqvae": the script renames it.
  ldm_euler LDMPipeline with an EulerDiscreteScheduler (Karras sigmas): LDMPipeline's loop multiplies the
            noise by init_noise_sigma and calls scale_model_input, the scale convention refdiff's
            sample_loop follows for every sampler on sigmas.
"""
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import torch

import diffusers
from diffusers import (AutoencoderKL, DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler,
                       DPMSolverMultistepScheduler, DPMSolverSinglestepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, HeunDiscreteScheduler, LDMPipeline, LMSDiscreteScheduler, UNet2DModel,
                       UniPCMultistepScheduler)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from _pipelines import PIPELINES  # noqa: E402

OUT = os.path.join(HERE, "tiny_pipelines_golden.npz")
SCHEDULER_OUT = os.path.join(PIPELINES, "scheduler_configs.json")
N = 2

CASES = {
    "ddpm": (DDPMPipeline, DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear"), 10, {}),
    "ddim": (DDIMPipeline, DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                                         beta_end=0.012, prediction_type="v_prediction", timestep_spacing="trailing",
                                         clip_sample=False), 8, {}),
    "ldm": (LDMPipeline, DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.0015,
                                       beta_end=0.0195, clip_sample=False), 6, {}),
    "ldm_euler": (LDMPipeline, EulerDiscreteScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                                                      beta_start=0.0015, beta_end=0.0195, use_karras_sigmas=True), 6, {}),
}


# one config per scheduler class refdiff maps (and a second where options change the sampler), written by
# diffusers' own save_config; with the timesteps its set_timesteps(STEPS) chooses and its alphas_cumprod
SCHEDULER_CASES = {
    "ddpm_fixed_large": DDPMScheduler(variance_type="fixed_large", clip_sample_range=2.0, timestep_spacing="trailing",
                                      beta_schedule="squaredcos_cap_v2"),
    "ddim_offset": DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                 clip_sample=False, prediction_type="v_prediction", rescale_betas_zero_snr=True),
    "euler_karras": EulerDiscreteScheduler(use_karras_sigmas=True, timestep_spacing="leading"),
    "euler_ancestral": EulerAncestralDiscreteScheduler(prediction_type="v_prediction", timestep_spacing="trailing"),
    "heun_exponential": HeunDiscreteScheduler(use_exponential_sigmas=True),
    "lms": LMSDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    "dpmpp_2m": DPMSolverMultistepScheduler(),
    "dpmpp_3m_sde": DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", solver_order=3, solver_type="heun",
                                                final_sigmas_type="sigma_min", euler_at_final=True),
    "dpmpp_3s": DPMSolverSinglestepScheduler(solver_order=3, lower_order_final=True),
    "unipc": UniPCMultistepScheduler(solver_order=3, lower_order_final=False, timestep_spacing="trailing"),
}
STEPS = 10
DEFAULT_CLASSES = (DDPMScheduler, DDIMScheduler, EulerDiscreteScheduler, EulerAncestralDiscreteScheduler,
                   HeunDiscreteScheduler, LMSDiscreteScheduler, DPMSolverMultistepScheduler,
                   DPMSolverSinglestepScheduler, UniPCMultistepScheduler)
ABAR_INDEX = list(range(0, 1000, 50)) + [999]  # alphas_cumprod recorded at these t (the file stays small)


def record_schedulers():
    configs = {}
    for name, scheduler in SCHEDULER_CASES.items():
        with tempfile.TemporaryDirectory() as tmp:
            scheduler.save_config(tmp)
            config = json.load(open(os.path.join(tmp, "scheduler_config.json")))
        scheduler.set_timesteps(STEPS)
        configs[name] = dict(config=config, steps=STEPS, timesteps=scheduler.timesteps.numpy().tolist(),
                             abar_index=ABAR_INDEX, alphas_cumprod=[float(scheduler.alphas_cumprod[i]) for i in ABAR_INDEX])
    for scheduler_class in DEFAULT_CLASSES:  # every class with diffusers' defaults: the config it writes
        with tempfile.TemporaryDirectory() as tmp:
            scheduler_class().save_config(tmp)
            configs[f"default/{scheduler_class.__name__}"] = dict(
                config=json.load(open(os.path.join(tmp, "scheduler_config.json"))))
    with open(SCHEDULER_OUT, "w") as f:
        json.dump(configs, f)
    print("wrote", SCHEDULER_OUT, f"({os.path.getsize(SCHEDULER_OUT)} bytes)")


def recording(module, store):
    """Replace module.randn_tensor by a wrapper that records every draw (the draw itself unchanged)."""
    original = module.randn_tensor

    def randn_tensor(*args, **kwargs):
        z = original(*args, **kwargs)
        store.append(z.detach().numpy().astype(np.float32).copy())
        return z

    module.randn_tensor = randn_tensor
    return original


def main():
    out = {}
    for name, (pipeline_class, scheduler, steps, call) in CASES.items():
        unet = UNet2DModel.from_pretrained(os.path.join(HERE, "tiny_ddpm_unet"))
        parts = dict(unet=unet, scheduler=scheduler)
        if pipeline_class is LDMPipeline:
            unet = UNet2DModel.from_config({**unet.config, "sample_size": 8})
            unet.load_state_dict(UNet2DModel.from_pretrained(os.path.join(HERE, "tiny_ddpm_unet")).state_dict())
            parts = dict(vqvae=AutoencoderKL.from_pretrained(os.path.join(HERE, "tiny_vae")), unet=unet,
                         scheduler=scheduler)
        pipe = pipeline_class(**parts)
        pipe.set_progress_bar_config(disable=True)
        pipeline_module = sys.modules[pipeline_class.__module__]
        scheduler_module = sys.modules[type(pipe.scheduler).__module__]
        starts, noises = [], []
        saved = recording(pipeline_module, starts)
        saved_step = recording(scheduler_module, noises) if hasattr(scheduler_module, "randn_tensor") else None
        try:
            with torch.no_grad():
                images = pipe(N, generator=torch.Generator().manual_seed(0), num_inference_steps=steps,
                              output_type="np", **call).images
        finally:
            pipeline_module.randn_tensor = saved
            if saved_step is not None:
                scheduler_module.randn_tensor = saved_step
        out[f"{name}/x_T"] = starts[0]
        if name == "ddpm":
            out[f"{name}/noise"] = np.stack(noises)
        out[f"{name}/images"] = np.asarray(images, dtype=np.float32)
        out[f"{name}/meta"] = np.array(json.dumps(dict(steps=steps, n=N, pipeline=pipeline_class.__name__,
                                                       diffusers=diffusers.__version__, torch=torch.__version__)))
        # the folder: diffusers' own save_pretrained, weights dropped (tests/_pipelines.py copies the tiny parts')
        folder = os.path.join(PIPELINES, name)
        shutil.rmtree(folder, ignore_errors=True)
        with tempfile.TemporaryDirectory() as tmp:
            pipe.save_pretrained(tmp, safe_serialization=True)
            for root, _, files in os.walk(tmp):
                for f in files:
                    if f.endswith(".json"):
                        rel = os.path.relpath(os.path.join(root, f), tmp).replace("vqvae", "vae")
                        os.makedirs(os.path.dirname(os.path.join(folder, rel)), exist_ok=True)
                        shutil.copyfile(os.path.join(root, f), os.path.join(folder, rel))
        index_file = os.path.join(folder, "model_index.json")
        index = json.load(open(index_file))
        if "vqvae" in index:
            index["vae"] = index.pop("vqvae")
            with open(index_file, "w") as f:
                json.dump(index, f, indent=2, sort_keys=True)
        print(name, {k: v.shape for k, v in out.items() if k.startswith(name + "/")}, "images range",
              float(images.min()), float(images.max()))
    np.savez_compressed(OUT, **out)
    print("wrote", OUT)
    record_schedulers()


if __name__ == "__main__":
    main()
