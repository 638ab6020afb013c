"""Make the golden files of tests/test_from_diffusers.py with diffusers itself.

Builds two tiny diffusers UNet2DModel networks with random weights, saves them with
save_pretrained (config.json + diffusion_pytorch_model.safetensors) and records diffusers'
outputs for fixed inputs, in float32 and in float64, in tiny_ddpm_unet_io.npz. The tests then
check refdiff against these numbers without PyTorch.

  tiny_ddpm_unet/  the DDPM-port layout (google/ddpm-cifar10-32 in miniature): flip_sin_to_cos
                   False, freq_shift 1, downsample_padding 0, norm_eps 1e-6, one attention head
  tiny_cond_unet/  class-conditional (num_class_embeds 4), scale_shift time embedding,
                   multi-head attention (head dim 8), mid_block_scale_factor 2, a 3-level net

Run once, outside the repository's environment (it needs torch and diffusers):
    python3 -m venv /tmp/dvenv && /tmp/dvenv/bin/pip install torch==2.13.0 diffusers
    /tmp/dvenv/bin/python tests/data/make_tiny_unet.py
"""
import os

import numpy as np
import torch
from diffusers import UNet2DModel

HERE = os.path.dirname(os.path.abspath(__file__))

CONFIGS = {
    "tiny_ddpm_unet": dict(
        sample_size=16, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8, norm_eps=1e-6, attention_head_dim=None, flip_sin_to_cos=False, freq_shift=1,
        downsample_padding=0, act_fn="silu", time_embedding_type="positional",
    ),
    "tiny_cond_unet": dict(
        sample_size=16, in_channels=2, out_channels=2, block_out_channels=(16, 16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4, attention_head_dim=8, resnet_time_scale_shift="scale_shift", num_class_embeds=4,
        mid_block_scale_factor=2.0, flip_sin_to_cos=True, freq_shift=0, downsample_padding=1,
    ),
}


def perturb(model, seed):
    """Move every parameter off its initial value (GroupNorm 1/0, zero biases...), so that a
    weight loaded under the wrong name or transposed cannot go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g) * max(float(p.std()), 0.2))


def main():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    io = {}
    for i, (name, config) in enumerate(CONFIGS.items()):
        model = UNet2DModel(**config).eval()
        perturb(model, seed=i)
        model.save_pretrained(os.path.join(HERE, name), safe_serialization=True)
        B = 3
        x = rng.standard_normal((B, config["in_channels"], 16, 16)).astype(np.float32)
        t = np.array([0, 417, 999], dtype=np.int64)
        y = np.array([0, 3, 1], dtype=np.int64) if config.get("num_class_embeds") else None
        io[f"{name}/x"], io[f"{name}/t"] = x, t
        if y is not None:
            io[f"{name}/y"] = y
        with torch.no_grad():
            for dtype, tag in ((torch.float32, "out_float32"), (torch.float64, "out_float64")):
                m = model.to(dtype)
                labels = None if y is None else torch.from_numpy(y)
                out = m(torch.from_numpy(x).to(dtype), torch.from_numpy(t), class_labels=labels).sample
                io[f"{name}/{tag}"] = out.numpy()
            model.to(torch.float32)
    np.savez_compressed(os.path.join(HERE, "tiny_ddpm_unet_io.npz"), **io)
    print({k: v.shape for k, v in io.items()})


if __name__ == "__main__":
    main()
