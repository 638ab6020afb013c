"""Make the golden files of tests/test_autoencoder.py with diffusers itself.

Builds two tiny diffusers AutoencoderKL networks with random weights, saves them with
save_pretrained (config.json + diffusion_pytorch_model.safetensors) and records diffusers'
encoder mean and log-variance (latent_dist.mean, latent_dist.logvar) for a fixed image and its
decoder output for a fixed latent, in float32 and in float64, in tiny_vae_io.npz. The tests then
check refdiff against these numbers without PyTorch.

  tiny_vae/        2 levels (8, 16 channels), 2 resnets per encoder level, 3 latent channels,
                   quant_conv / post_quant_conv, attention in both mid blocks (the SD layout in
                   miniature)
  tiny_vae_plain/  3 levels (8, 8, 16), 1 resnet per level, 1 input and 2 output channels, no
                   quant convs, no mid-block attention, scaling_factor 0.5

Run once, outside the repository's environment (it needs torch and diffusers):
    python3 -m venv /tmp/dvenv && /tmp/dvenv/bin/pip install torch==2.13.0 diffusers==0.42.1
    /tmp/dvenv/bin/python tests/data/make_tiny_vae.py
"""
import os

import numpy as np
import torch
from diffusers import AutoencoderKL

from make_tiny_unet import perturb  # one weight perturbation for every tiny diffusers model (run from tests/data)

HERE = os.path.dirname(os.path.abspath(__file__))

CONFIGS = {
    "tiny_vae": dict(
        in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=2, latent_channels=3,
        norm_num_groups=4, sample_size=16, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    ),
    "tiny_vae_plain": dict(
        in_channels=1, out_channels=2, block_out_channels=(8, 8, 16), layers_per_block=1, latent_channels=2,
        norm_num_groups=2, sample_size=16, down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, use_quant_conv=False, use_post_quant_conv=False,
        mid_block_add_attention=False, scaling_factor=0.5,
    ),
}


def main():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    io = {}
    for i, (name, config) in enumerate(CONFIGS.items()):
        model = AutoencoderKL(**config).eval()
        perturb(model, seed=i)
        model.save_pretrained(os.path.join(HERE, name), safe_serialization=True)
        L = len(config["block_out_channels"])
        x = rng.uniform(-1, 1, (2, config["in_channels"], 16, 16)).astype(np.float32)
        z = rng.standard_normal((2, config["latent_channels"], 16 // 2 ** (L - 1), 16 // 2 ** (L - 1)))
        z = z.astype(np.float32)
        io[f"{name}/x"], io[f"{name}/z"] = x, z
        with torch.no_grad():
            for dtype, tag in ((torch.float32, "float32"), (torch.float64, "float64")):
                m = model.to(dtype)
                dist = m.encode(torch.from_numpy(x).to(dtype)).latent_dist
                io[f"{name}/mean_{tag}"] = dist.mean.numpy()
                io[f"{name}/logvar_{tag}"] = dist.logvar.numpy()
                io[f"{name}/decoded_{tag}"] = m.decode(torch.from_numpy(z).to(dtype)).sample.numpy()
            model.to(torch.float32)
    np.savez_compressed(os.path.join(HERE, "tiny_vae_io.npz"), **io)
    print({k: v.shape for k, v in io.items()})


if __name__ == "__main__":
    main()
