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

Cases:
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
                       EulerDiscreteScheduler, LDMPipeline, UNet2DModel)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from _pipelines import PIPELINES  # noqa: E402

OUT = os.path.join(HERE, "tiny_pipelines_golden.npz")
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


if __name__ == "__main__":
    main()
