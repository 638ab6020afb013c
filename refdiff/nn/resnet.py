"""The residual block of the DDPM U-Net, with the timestep embedding injected in the middle.

Ho et al. 2020, appendix B (after Wide ResNet / PixelCNN++), in diffusers' ResnetBlock2D form:
    h = conv1(silu(norm1(x)))
    "default":      h = silu(norm2(h + time_emb_proj(silu(emb))))
    "scale_shift":  scale, shift = time_emb_proj(silu(emb));  h = silu(norm2(h) * (1 + scale) + shift)
                    (FiLM-style conditioning, Dhariwal & Nichol 2021, "AdaGN")
    h = conv2(dropout(h))
    out = (shortcut(x) + h) / output_scale_factor
shortcut is the identity when the channel count is unchanged, a 1x1 convolution otherwise.
"""
from . import functional as F
from .init import as_rng
from .layers import Conv2d, Dropout, GroupNorm, Linear
from .module import Module

TIME_EMBEDDING_NORMS = ("default", "scale_shift")


class ResnetBlock(Module):
    """Residual block: (B, in_channels, H, W), emb (B, temb_channels) -> (B, out_channels, H, W)."""

    def __init__(self, in_channels, out_channels=None, temb_channels=512, groups=32, eps=1e-5, dropout=0.0,
                 time_embedding_norm="default", output_scale_factor=1.0, rng=None):
        super().__init__()
        if time_embedding_norm not in TIME_EMBEDDING_NORMS:
            raise ValueError(f"time_embedding_norm must be one of {TIME_EMBEDDING_NORMS}, got {time_embedding_norm!r}")
        rng = as_rng(rng)
        out_channels = in_channels if out_channels is None else out_channels
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.time_embedding_norm = time_embedding_norm
        self.output_scale_factor = float(output_scale_factor)

        self.norm1 = GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = Conv2d(in_channels, out_channels, 3, padding=1, rng=rng)
        if temb_channels is not None:
            proj_out = 2 * out_channels if time_embedding_norm == "scale_shift" else out_channels
            self.time_emb_proj = Linear(temb_channels, proj_out, rng=rng)
        else:
            self.time_emb_proj = None
        self.norm2 = GroupNorm(groups, out_channels, eps=eps)
        self.dropout = Dropout(dropout, seed=int(rng.integers(2**31)))  # its own mask stream
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=1, rng=rng)
        self.conv_shortcut = Conv2d(in_channels, out_channels, 1, rng=rng) if in_channels != out_channels else None

    def forward(self, x, emb=None):
        h = self.conv1(F.silu(self.norm1(x)))  # (B, out, H, W)
        if self.time_emb_proj is not None:
            if emb is None:
                raise ValueError("ResnetBlock built with temb_channels needs the timestep embedding `emb`")
            temb = self.time_emb_proj(F.silu(emb))  # (B, out) or (B, 2 out)
            B, n = temb.shape
            temb = temb.reshape(B, n, 1, 1)
        if self.time_emb_proj is None:
            h = self.norm2(h)
        elif self.time_embedding_norm == "default":
            h = self.norm2(h + temb)
        else:  # scale_shift
            C = self.out_channels
            scale, shift = temb[:, :C], temb[:, C:]
            h = self.norm2(h) * (scale + 1.0) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        shortcut = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        out = shortcut + h
        if self.output_scale_factor != 1.0:
            out = out / self.output_scale_factor
        return out

    def extra_repr(self):
        return f"{self.in_channels} -> {self.out_channels}, time_embedding_norm={self.time_embedding_norm!r}"
