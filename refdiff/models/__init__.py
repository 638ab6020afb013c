"""refdiff.models: the denoising networks, built from refdiff.nn, and their checkpoints' interop.

    unet.py          UNet: the DDPM U-Net with diffusers' UNet2DModel block layout and key names
    mlp.py           MLPDenoiser: a small MLP for 2-D toy data
    classifier.py    NoiseClassifier: p_phi(y | x_t, t), the U-Net's encoder half plus a pooled linear head, and
                     grad_x log p_phi(y | x_t) by the autograd (classifier guidance, Dhariwal & Nichol 2021)
    autoencoder.py   AutoencoderKL: the KL autoencoder of latent diffusion, diffusers' layout and key names
    diffusers_io.py  reading and writing diffusers UNet2DModel and AutoencoderKL folders (config.json +
                     safetensors, no PyTorch)
"""
