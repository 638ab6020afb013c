"""The timestep-embedding MLP: sinusoidal features of t -> Linear -> SiLU -> Linear.

Ho et al. 2020, appendix B: "diffusion time t is specified by adding the Transformer sinusoidal
position embedding into each residual block", after a two-layer MLP. The sinusoid itself is
refdiff.gaussian.embedding.timestep_embedding (math); this module is the trained MLP on top of it,
named as diffusers' TimestepEmbedding (linear_1, act, linear_2).
"""
from .init import as_rng
from .layers import Linear, SiLU
from .module import Module


class TimestepEmbedding(Module):
    """(B, in_channels) sinusoidal features -> (B, time_embed_dim)."""

    def __init__(self, in_channels, time_embed_dim, rng=None):
        super().__init__()
        rng = as_rng(rng)
        self.linear_1 = Linear(in_channels, time_embed_dim, rng=rng)
        self.act = SiLU()
        self.linear_2 = Linear(time_embed_dim, time_embed_dim, rng=rng)

    def forward(self, features):
        return self.linear_2(self.act(self.linear_1(features)))
