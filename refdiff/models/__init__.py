"""refdiff.models: the denoising networks, built from refdiff.nn, and their checkpoints' interop.

    unet.py          UNet: the DDPM U-Net with diffusers' UNet2DModel block layout and key names
    mlp.py           MLPDenoiser: a small MLP for 2-D toy data
    autoencoder.py   AutoencoderKL: the KL autoencoder of latent diffusion, diffusers' layout and key names
    diffusers_io.py  reading and writing diffusers UNet2DModel and AutoencoderKL folders (config.json +
                     safetensors, no PyTorch)
"""
