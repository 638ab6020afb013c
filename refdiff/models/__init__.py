"""refdiff.models: the denoising networks, built from refdiff.nn, and their checkpoints' interop.

    unet.py          UNet: the DDPM U-Net with diffusers' UNet2DModel block layout and key names
    mlp.py           MLPDenoiser: a small MLP for 2-D toy data
    diffusers_io.py  reading and writing diffusers model folders (config.json + safetensors, no PyTorch)
"""
