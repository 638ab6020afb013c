"""Changing resolution inside the U-Net: Downsample halves H and W, Upsample doubles them.

Ho et al. 2020, appendix B (from PixelCNN++): a strided 3x3 convolution down, nearest-neighbour
x2 followed by a 3x3 convolution up. Names as in diffusers' Downsample2D / Upsample2D ("conv").
"""
from . import functional as F
from .init import as_rng
from .layers import Conv2d
from .module import Module


class Downsample(Module):
    """(B, C, H, W) -> (B, C_out, H/2, W/2) by a 3x3 convolution with stride 2.

    padding=1 pads one pixel all around (PyTorch style). padding=0 instead pads one pixel at the
    right and bottom only, as TensorFlow's "SAME" padding did in the original DDPM code: that is
    what diffusers' Downsample2D does for the ported DDPM checkpoints (downsample_padding=0).
    """

    def __init__(self, channels, out_channels=None, padding=1, rng=None):
        super().__init__()
        if padding not in (0, 1):
            raise ValueError(f"Downsample padding must be 0 or 1, got {padding}")
        out_channels = channels if out_channels is None else out_channels
        self.padding = int(padding)
        self.conv = Conv2d(channels, out_channels, 3, stride=2, padding=padding, rng=as_rng(rng))

    def forward(self, x):
        if self.padding == 0:
            x = F.pad2d(x, (0, 1, 0, 1))  # (left, right, top, bottom), as diffusers' F.pad
        return self.conv(x)


class Upsample(Module):
    """(B, C, H, W) -> (B, C_out, 2H, 2W): nearest-neighbour x2, then a 3x3 convolution."""

    def __init__(self, channels, out_channels=None, rng=None):
        super().__init__()
        out_channels = channels if out_channels is None else out_channels
        self.conv = Conv2d(channels, out_channels, 3, padding=1, rng=as_rng(rng))

    def forward(self, x):
        return self.conv(F.upsample_nearest2x(x))

