"""Assemble the tiny diffusers pipeline folders of tests/data/tiny_pipelines (shared by the tests and
tests/data/make_tiny_pipelines.py).

Each committed pipeline folder holds only its small JSON files (model_index.json,
scheduler/scheduler_config.json, unet/config.json, vae/config.json): the weights are the committed
tiny parts', copied in here, so the repository keeps one copy of them:
  unet/  diffusion_pytorch_model.safetensors of tests/data/tiny_ddpm_unet (the config may differ in
         sample_size only: the latent pipeline's unet works on 8 x 8 latents)
  vae/   diffusion_pytorch_model.safetensors of tests/data/tiny_vae
"""
import os
import shutil

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
PIPELINES = os.path.join(DATA, "tiny_pipelines")
WEIGHTS = "diffusion_pytorch_model.safetensors"
PART_WEIGHTS = {"unet": "tiny_ddpm_unet", "vae": "tiny_vae", "vqvae": "tiny_vae"}


def assemble(name, dest):
    """Copy tiny_pipelines/<name> to dest and add the tiny parts' weights; returns dest."""
    shutil.copytree(os.path.join(PIPELINES, name), dest, dirs_exist_ok=True)
    for part, source in PART_WEIGHTS.items():
        if os.path.isdir(os.path.join(dest, part)):
            shutil.copyfile(os.path.join(DATA, source, WEIGHTS), os.path.join(dest, part, WEIGHTS))
    return dest
