"""The three kinds of U-Net stage: a down block, the middle block and an up block.

Ho et al. 2020, appendix B (the PixelCNN++ backbone): each resolution level has
num_res_blocks residual blocks (with self-attention after each one at the chosen resolutions)
and then a downsampling; the middle has resnet - attention - resnet; the up path mirrors the
down path with one residual block more per level, each taking the matching down-path activation
concatenated on the channel axis (the skip connections), and then an upsampling.

One class per kind, with or without attention; attribute names equal diffusers' DownBlock2D /
AttnDownBlock2D, UNetMidBlock2D and UpBlock2D / AttnUpBlock2D, so the parameter names do too.

The autoencoder's stages (Rombach et al. 2022, the VQGAN / KL-f encoder and decoder of Esser et al.
2021) are the same residual blocks with no timestep embedding and no skip connections:
DownEncoderBlock and UpDecoderBlock (diffusers' DownEncoderBlock2D / UpDecoderBlock2D), and
MidBlock with temb_channels=None.
"""
from .autograd import concat
from .attention import Attention
from .init import as_rng
from .module import Module, ModuleList
from .resnet import ResnetBlock
from .sampling import Downsample, Upsample


class DownBlock(Module):
    """num_layers x (ResnetBlock [+ Attention]) then an optional Downsample.

    forward(h, emb) -> (h, states): states are the activations the up path will concatenate,
    one after each resnet (or attention) and one after the downsampling.
    """

    def __init__(self, in_channels, out_channels, temb_channels, num_layers, attention=False, add_downsample=True,
                 groups=32, eps=1e-5, dropout=0.0, time_embedding_norm="default", head_dim=None,
                 downsample_padding=1, rng=None):
        super().__init__()
        rng = as_rng(rng)
        resnets, attentions = [], []
        for i in range(num_layers):
            resnets.append(ResnetBlock(in_channels if i == 0 else out_channels, out_channels, temb_channels,
                                       groups=groups, eps=eps, dropout=dropout,
                                       time_embedding_norm=time_embedding_norm, rng=rng))
            if attention:
                attentions.append(Attention(out_channels, head_dim=head_dim, norm_groups=groups, eps=eps, rng=rng))
        if attention:
            self.attentions = ModuleList(attentions)
        self.resnets = ModuleList(resnets)
        if add_downsample:
            self.downsamplers = ModuleList([Downsample(out_channels, padding=downsample_padding, rng=rng)])
        else:
            self.downsamplers = None

    def forward(self, h, emb):
        states = []
        attentions = self.attentions if "attentions" in self._modules else [None] * len(self.resnets)
        for resnet, attn in zip(self.resnets, attentions):
            h = resnet(h, emb)
            if attn is not None:
                h = attn(h)
            states.append(h)
        if self.downsamplers is not None:
            h = self.downsamplers[0](h)
            states.append(h)
        return h, states


class MidBlock(Module):
    """ResnetBlock, Attention (optional), ResnetBlock at the lowest resolution.

    output_scale_factor divides every residual sum in the block (diffusers' mid_block_scale_factor).
    attn_groups: GroupNorm groups of the attention (None: no normalisation before attention).
    """

    def __init__(self, channels, temb_channels, attention=True, groups=32, attn_groups=32, eps=1e-5, dropout=0.0,
                 time_embedding_norm="default", head_dim=None, output_scale_factor=1.0, rng=None):
        super().__init__()
        rng = as_rng(rng)

        def resnet():
            return ResnetBlock(channels, channels, temb_channels, groups=groups, eps=eps, dropout=dropout,
                               time_embedding_norm=time_embedding_norm, output_scale_factor=output_scale_factor,
                               rng=rng)

        first = resnet()
        if attention:
            self.attentions = ModuleList([Attention(channels, head_dim=head_dim, norm_groups=attn_groups, eps=eps,
                                                    rescale_output_factor=output_scale_factor, rng=rng)])
        self.resnets = ModuleList([first, resnet()])

    def forward(self, h, emb):
        h = self.resnets[0](h, emb)
        if "attentions" in self._modules:
            h = self.attentions[0](h)
        return self.resnets[1](h, emb)


class UpBlock(Module):
    """num_layers x (concat skip, ResnetBlock [+ Attention]) then an optional Upsample.

    in_channels: channels of the down-path level below (the last skip of this level comes from
    there); prev_output_channel: channels of the incoming h.
    """

    def __init__(self, in_channels, prev_output_channel, out_channels, temb_channels, num_layers, attention=False,
                 add_upsample=True, groups=32, eps=1e-5, dropout=0.0, time_embedding_norm="default", head_dim=None,
                 rng=None):
        super().__init__()
        rng = as_rng(rng)
        resnets, attentions = [], []
        for i in range(num_layers):
            skip_channels = in_channels if i == num_layers - 1 else out_channels
            h_channels = prev_output_channel if i == 0 else out_channels
            resnets.append(ResnetBlock(h_channels + skip_channels, out_channels, temb_channels, groups=groups,
                                       eps=eps, dropout=dropout, time_embedding_norm=time_embedding_norm, rng=rng))
            if attention:
                attentions.append(Attention(out_channels, head_dim=head_dim, norm_groups=groups, eps=eps, rng=rng))
        if attention:
            self.attentions = ModuleList(attentions)
        self.resnets = ModuleList(resnets)
        self.upsamplers = ModuleList([Upsample(out_channels, rng=rng)]) if add_upsample else None

    def forward(self, h, skips, emb):
        """skips: this level's down-path activations, consumed last first."""
        skips = list(skips)
        attentions = self.attentions if "attentions" in self._modules else [None] * len(self.resnets)
        for resnet, attn in zip(self.resnets, attentions):
            h = concat([h, skips.pop()], axis=1)  # (B, C_h + C_skip, H, W)
            h = resnet(h, emb)
            if attn is not None:
                h = attn(h)
        if self.upsamplers is not None:
            h = self.upsamplers[0](h)
        return h


def _resnets_without_embedding(in_channels, out_channels, num_layers, groups, eps, dropout, rng):
    """num_layers ResnetBlocks with no timestep embedding, in_channels -> out_channels at the first:
    the stack of the autoencoder's encoder and decoder stages."""
    return ModuleList([
        ResnetBlock(in_channels if i == 0 else out_channels, out_channels, temb_channels=None, groups=groups,
                    eps=eps, dropout=dropout, rng=rng)
        for i in range(num_layers)])


class DownEncoderBlock(Module):
    """num_layers x ResnetBlock (no timestep embedding), then an optional Downsample.

    The autoencoder's encoder stage (diffusers' DownEncoderBlock2D): (B, in, H, W) -> (B, out, H/2, W/2),
    or (B, out, H, W) without the downsampling. downsample_padding=0 is what diffusers' Encoder uses.
    """

    def __init__(self, in_channels, out_channels, num_layers, add_downsample=True, groups=32, eps=1e-6,
                 dropout=0.0, downsample_padding=0, rng=None):
        super().__init__()
        rng = as_rng(rng)
        self.resnets = _resnets_without_embedding(in_channels, out_channels, num_layers, groups, eps, dropout, rng)
        if add_downsample:
            self.downsamplers = ModuleList([Downsample(out_channels, padding=downsample_padding, rng=rng)])
        else:
            self.downsamplers = None

    def forward(self, h):
        for resnet in self.resnets:
            h = resnet(h)
        if self.downsamplers is not None:
            h = self.downsamplers[0](h)
        return h


class UpDecoderBlock(Module):
    """num_layers x ResnetBlock (no timestep embedding, no skips), then an optional Upsample.

    The autoencoder's decoder stage (diffusers' UpDecoderBlock2D): (B, in, H, W) -> (B, out, 2H, 2W),
    or (B, out, H, W) without the upsampling.
    """

    def __init__(self, in_channels, out_channels, num_layers, add_upsample=True, groups=32, eps=1e-6, dropout=0.0,
                 rng=None):
        super().__init__()
        rng = as_rng(rng)
        self.resnets = _resnets_without_embedding(in_channels, out_channels, num_layers, groups, eps, dropout, rng)
        self.upsamplers = ModuleList([Upsample(out_channels, rng=rng)]) if add_upsample else None

    def forward(self, h):
        for resnet in self.resnets:
            h = resnet(h)
        if self.upsamplers is not None:
            h = self.upsamplers[0](h)
        return h
