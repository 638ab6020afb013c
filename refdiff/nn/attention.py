"""Multi-head self-attention over the H*W positions of a feature map.

Vaswani et al. 2017, eq. 1, per head:  Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V,
with Q = h W_q, K = h W_k, V = h W_v, h = GroupNorm(x) flattened to (B, H*W, C). DDPM (Ho et
al. 2020, appendix B) uses it, one head, at the 16x16 level, as a residual block:
    out = (x + W_o Attention(Q, K, V)) / rescale_output_factor.
Parameter names follow diffusers' Attention (group_norm, to_q, to_k, to_v, to_out.0).
"""
from . import functional as F
from ..checks import check_positive_int, check_positive_real
from .init import as_rng
from .layers import Dropout, GroupNorm, Linear
from .module import Module, ModuleList


class Attention(Module):
    """Self-attention block over a (B, C, H, W) feature map.

    channels: C.  head_dim: channels per head (None: one head of all C channels, as in DDPM).
    norm_groups: groups of the input GroupNorm (None: no normalisation).
    rescale_output_factor: the residual sum is divided by it (diffusers' name).
    """

    def __init__(self, channels, head_dim=None, norm_groups=32, eps=1e-5, rescale_output_factor=1.0, rng=None):
        super().__init__()
        rng = as_rng(rng)
        channels = check_positive_int(channels, "Attention: channels")
        head_dim = channels if head_dim is None else check_positive_int(head_dim, "Attention: head_dim")
        if channels % head_dim != 0:
            raise ValueError(f"Attention: channels={channels} is not divisible by head_dim={head_dim}")
        self.channels, self.head_dim, self.heads = int(channels), head_dim, channels // head_dim
        self.rescale_output_factor = check_positive_real(rescale_output_factor, "Attention: rescale_output_factor")
        self.group_norm = GroupNorm(norm_groups, channels, eps=eps) if norm_groups is not None else None
        self.to_q = Linear(channels, channels, rng=rng)
        self.to_k = Linear(channels, channels, rng=rng)
        self.to_v = Linear(channels, channels, rng=rng)
        self.to_out = ModuleList([Linear(channels, channels, rng=rng), Dropout(0.0)])

    def forward(self, x):
        B, C, H, W = x.shape
        N, heads, d = H * W, self.heads, self.head_dim
        h = self.group_norm(x) if self.group_norm is not None else x
        h = h.reshape(B, C, N).transpose(0, 2, 1)  # (B, N, C)

        def split_heads(t):  # (B, N, C) -> (B * heads, N, d): each head a separate batch entry
            return t.reshape(B, N, heads, d).transpose(0, 2, 1, 3).reshape(B * heads, N, d)

        q, k, v = split_heads(self.to_q(h)), split_heads(self.to_k(h)), split_heads(self.to_v(h))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(Q K^T / sqrt(d)) V: (B * heads, N, d)
        out = out.reshape(B, heads, N, d).transpose(0, 2, 1, 3).reshape(B, N, C)  # heads side by side again
        out = self.to_out[1](self.to_out[0](out))  # W_o (and diffusers' no-op dropout)
        out = out.transpose(0, 2, 1).reshape(B, C, H, W)
        out = x + out  # residual connection
        if self.rescale_output_factor != 1.0:
            out = out / self.rescale_output_factor
        return out

    def extra_repr(self):
        return f"channels={self.channels}, heads={self.heads}, head_dim={self.head_dim}"
