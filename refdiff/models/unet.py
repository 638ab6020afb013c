"""The DDPM U-Net: eps_theta(x_t, t) (and, optionally, eps_theta(x_t, t, y)).

References:
  Ho, Jain, Abbeel 2020, "Denoising Diffusion Probabilistic Models", appendix B: a PixelCNN++
    backbone (Wide-ResNet blocks, group normalisation), self-attention at the 16x16 level,
    the timestep added to every residual block through a sinusoidal embedding and an MLP.
  Ronneberger et al. 2015, U-Net: a down path, a middle and an up path that concatenates the
    down path's activations (skip connections).
  Ho & Salimans 2022, classifier-free guidance: a class embedding with one extra "null" label.
  diffusers' UNet2DModel: the parameter names and the block layout, so that its checkpoints
    load by name (see refdiff.models.diffusers_io and UNet.from_diffusers).

Shapes (B = batch, C = base_channels, L = len(channel_mults)):
  x (B, in_channels, H, W) -> conv_in (B, C, H, W)
  -> L down blocks; block i has channels C * channel_mults[i] and, except the last, halves H, W
  -> mid block at (H / 2**(L-1), W / 2**(L-1))
  -> L up blocks mirroring the down path -> GroupNorm, SiLU, conv_out -> (B, out_channels, H, W)
"""
import numpy as np

from ..checks import (check_bool, check_choice, check_choice_int, check_float_array, check_int_sequence,
                      check_optional_positive_int,
                      check_positive_int, check_positive_ints, check_positive_real, check_probability, check_real,
                      check_seed, model_labels, model_timesteps)
from ..nn.autograd import Tensor
from ..backend import array_module, get_backend
from ..nn import Conv2d, Embedding, GroupNorm, Module, ModuleList, SiLU
from ..nn.blocks import DownBlock, MidBlock, UpBlock
from ..nn.resnet import TIME_EMBEDDING_NORMS
from ..nn.timestep import TimestepEmbedding


class UNet(Module):
    """The DDPM U-Net, parameter-for-parameter a diffusers UNet2DModel.

    Args:
      in_channels, out_channels: image channels in and out (out_channels=None: same as in).
      base_channels: channels of the first level (diffusers' block_out_channels[0]).
      channel_mults: level i has base_channels * channel_mults[i] channels; len = number of levels L.
      num_res_blocks: residual blocks per down level (the up levels have one more).
      attention_resolutions: feature-map side lengths at which self-attention follows each
        residual block. Level i has side sample_size // 2**i, so with sample_size=32 and
        channel_mults=(1, 2, 2) the levels are 32, 16, 8 and (16,) puts attention on level 1 (as
        in DDPM's CIFAR-10 model). Every value must be the side of some level.
      sample_size: the image side the attention levels refer to. The network itself accepts any
        H, W divisible by 2**(L-1) (e.g. 28x28 with three levels: 28 -> 14 -> 7).
      dropout: dropout probability inside the residual blocks (training mode only).
      num_classes: None (unconditional) or the number of classes K; then the class embedding has
        K + 1 rows and label K is the null label used for classifier-free guidance.
      norm_groups, norm_eps: GroupNorm groups and epsilon everywhere.
      attention_head_dim: channels per attention head; None = one head over all channels (DDPM).
      flip_sin_to_cos, freq_shift: the sinusoidal embedding's flags (diffusers' names and defaults;
        the DDPM ports use flip_sin_to_cos=False, freq_shift=1).
      time_embedding_dim: width of the timestep MLP (None: 4 * base_channels).
      downsample_padding: 1 (pad all round) or 0 (pad right/bottom, TensorFlow's DDPM).
      resnet_time_scale_shift: "default" (add the embedding) or "scale_shift" (FiLM / AdaGN).
      mid_block_scale_factor: the middle block divides its residual sums by it.
      mid_attention: self-attention in the middle block (True in DDPM).
      attn_norm_groups: GroupNorm groups before the middle attention (None: norm_groups with
        "default", no normalisation with "scale_shift": diffusers' rule).
      center_input_sample: map x from [0, 1] to [-1, 1] first (x -> 2x - 1).
      backend: "numpy" or "cuda": where parameters live.  seed: seeds the initialisation.

    model(x, t, y=None) -> Tensor (B, out_channels, H, W).
    .config is the dict of these arguments (without backend) and UNet(**model.config) rebuilds it.
    """

    takes_scalar_timestep = True  # forward(x, t): t may be one number for the whole batch

    def __init__(self, in_channels=3, out_channels=None, base_channels=64, channel_mults=(1, 2, 2), num_res_blocks=2,
                 attention_resolutions=(16,), sample_size=32, dropout=0.0, num_classes=None, norm_groups=32,
                 attention_head_dim=None, norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0, time_embedding_dim=None,
                 downsample_padding=1, resnet_time_scale_shift="default", mid_block_scale_factor=1.0,
                 mid_attention=True, attn_norm_groups=None, center_input_sample=False, backend="numpy", seed=0):
        super().__init__()
        # every argument checked (refdiff.checks), named in the error: sizes are positive ints
        # (0, negative, float, None and bool refused), flags bools, the reals finite
        in_channels = check_positive_int(in_channels, "in_channels")
        out_channels = in_channels if out_channels is None else check_positive_int(out_channels, "out_channels")
        base_channels = check_positive_int(base_channels, "base_channels")
        channel_mults = check_positive_ints(channel_mults, "channel_mults")
        num_res_blocks = check_positive_int(num_res_blocks, "num_res_blocks")
        attention_resolutions = check_int_sequence(attention_resolutions, "attention_resolutions")
        sample_size = check_positive_int(sample_size, "sample_size")
        dropout = check_probability(dropout, "dropout", open_high=True)
        num_classes = check_optional_positive_int(num_classes, "num_classes")
        norm_groups = check_positive_int(norm_groups, "norm_groups")
        attention_head_dim = check_optional_positive_int(attention_head_dim, "attention_head_dim")
        norm_eps = check_positive_real(norm_eps, "norm_eps")
        flip_sin_to_cos = check_bool(flip_sin_to_cos, "flip_sin_to_cos")
        freq_shift = check_real(freq_shift, "freq_shift")
        time_embedding_dim = check_optional_positive_int(time_embedding_dim, "time_embedding_dim")
        downsample_padding = check_choice_int(downsample_padding, (0, 1), "downsample_padding")
        check_choice(resnet_time_scale_shift, TIME_EMBEDDING_NORMS, "resnet_time_scale_shift")
        mid_block_scale_factor = check_positive_real(mid_block_scale_factor, "mid_block_scale_factor")
        mid_attention = check_bool(mid_attention, "mid_attention")
        attn_norm_groups = check_optional_positive_int(attn_norm_groups, "attn_norm_groups")
        center_input_sample = check_bool(center_input_sample, "center_input_sample")
        seed = check_seed(seed)
        self.config = dict(
            in_channels=in_channels, out_channels=out_channels, base_channels=base_channels,
            channel_mults=list(channel_mults), num_res_blocks=num_res_blocks,
            attention_resolutions=list(attention_resolutions), sample_size=sample_size, dropout=dropout,
            num_classes=num_classes, norm_groups=norm_groups, attention_head_dim=attention_head_dim,
            norm_eps=norm_eps, flip_sin_to_cos=flip_sin_to_cos, freq_shift=freq_shift,
            time_embedding_dim=time_embedding_dim, downsample_padding=downsample_padding,
            resnet_time_scale_shift=resnet_time_scale_shift, mid_block_scale_factor=mid_block_scale_factor,
            mid_attention=mid_attention, attn_norm_groups=attn_norm_groups,
            center_input_sample=center_input_sample, seed=seed,
        )
        sides = _check_architecture(self.config)  # feature-map side of each level
        self.levels = len(channel_mults)
        block_channels = [base_channels * m for m in channel_mults]
        temb_dim = 4 * base_channels if time_embedding_dim is None else time_embedding_dim
        rng = np.random.default_rng(seed)
        common = dict(groups=norm_groups, eps=norm_eps, dropout=dropout, time_embedding_norm=resnet_time_scale_shift,
                      head_dim=attention_head_dim)

        self.conv_in = Conv2d(in_channels, base_channels, 3, padding=1, rng=rng)
        # time_proj is the parameter-free sinusoid (refdiff.gaussian.embedding); then the MLP
        self.time_embedding = TimestepEmbedding(base_channels, temb_dim, rng=rng)
        if num_classes is not None:
            self.class_embedding = Embedding(num_classes + 1, temb_dim, rng=rng)  # row num_classes = null label
        else:
            self.class_embedding = None

        self.down_blocks = ModuleList()
        for i, side in enumerate(sides):
            is_last = i == self.levels - 1
            self.down_blocks.append(DownBlock(
                block_channels[max(i - 1, 0)], block_channels[i], temb_dim, num_res_blocks,
                attention=side in attention_resolutions, add_downsample=not is_last,
                downsample_padding=downsample_padding, rng=rng, **common))

        if attn_norm_groups is None:
            attn_norm_groups = norm_groups if resnet_time_scale_shift == "default" else None
        self.mid_block = MidBlock(block_channels[-1], temb_dim, attention=mid_attention, attn_groups=attn_norm_groups,
                                  output_scale_factor=mid_block_scale_factor, rng=rng, **common)

        self.up_blocks = ModuleList()
        reversed_channels = block_channels[::-1]
        for i, side in enumerate(reversed(sides)):
            self.up_blocks.append(UpBlock(
                reversed_channels[min(i + 1, self.levels - 1)],  # the skips' channels from the level below
                reversed_channels[max(i - 1, 0)],  # incoming h
                reversed_channels[i], temb_dim, num_res_blocks + 1,
                attention=side in attention_resolutions, add_upsample=i < self.levels - 1, rng=rng, **common))

        self.conv_norm_out = GroupNorm(norm_groups, base_channels, eps=norm_eps)
        self.conv_act = SiLU()
        self.conv_out = Conv2d(base_channels, out_channels, 3, padding=1, rng=rng).zero_()  # starts as eps_theta = 0

        self.backend = get_backend(backend)
        if self.backend.name != "numpy":
            self.to(self.backend)

    @classmethod
    def from_diffusers(cls, path, backend="numpy"):
        """Load a diffusers UNet2DModel folder (config.json + diffusion_pytorch_model.safetensors).

        No PyTorch needed. Options refdiff does not implement raise a ValueError naming them.
        """
        from .diffusers_io import load_unet2d

        return load_unet2d(path, backend=backend)

    def save_diffusers(self, path):
        """Write this model as a diffusers UNet2DModel folder (UNet2DModel.from_pretrained loads it)."""
        from .diffusers_io import save_unet2d

        return save_unet2d(self, path)

    # -- the network ---------------------------------------------------------------------------
    def forward(self, x, t, y=None):
        """eps_theta(x_t, t[, y]).

        x: (B, in_channels, H, W) Tensor or array; t: integer timesteps 0..T-1, shape (B,) or a
        scalar; y: class labels (B,) in 0..num_classes (num_classes = null label) or None (for a
        class-conditional model: the null label, i.e. unconditional).
        On the CUDA backend, pass x, t and y as CuPy arrays: then nothing is copied to or read
        from the host (t and y values are not checked there; see refdiff.checks).
        """
        x = self._input(x)
        B = x.shape[0]
        emb = self.time_embedding(self._time_features(t, B))  # (B, temb_dim)
        if self.class_embedding is not None:
            emb = emb + self.class_embedding(self._labels(y, B))
        elif y is not None:
            raise ValueError("this UNet is unconditional (num_classes=None) but class labels y were given")
        if self.config["center_input_sample"]:
            x = x * 2.0 - 1.0

        h = self.conv_in(x)  # (B, C, H, W)
        skips = [h]
        for block in self.down_blocks:
            h, states = block(h, emb)
            skips.extend(states)
        h = self.mid_block(h, emb)
        for block in self.up_blocks:
            n = len(block.resnets)
            h = block(h, skips[-n:], emb)
            del skips[-n:]
        h = self.conv_out(self.conv_act(self.conv_norm_out(h)))  # (B, out_channels, H, W)
        return h

    # -- input checks --------------------------------------------------------------------------
    def _input(self, x):
        xp = array_module(self.conv_in.weight.data)
        if not isinstance(x, Tensor):
            x = Tensor(xp.asarray(x))
        check_float_array(x.data, "x")  # float32/float64, finite where reading it is free
        if x.ndim != 4 or x.shape[1] != self.config["in_channels"]:
            raise ValueError(f"UNet expects x of shape (B, {self.config['in_channels']}, H, W), got {tuple(x.shape)}")
        H, W = x.shape[2], x.shape[3]
        factor = 2 ** (self.levels - 1)
        if H % factor or W % factor:
            raise ValueError(
                f"UNet with {self.levels} levels (channel_mults={tuple(self.config['channel_mults'])}) halves H and W "
                f"{self.levels - 1} times, so both must be divisible by 2**{self.levels - 1} = {factor}; "
                f"got H={H}, W={W}")
        return x

    def _time_features(self, t, B):
        """Sinusoidal features (B, base_channels) of timesteps t, computed where the parameters live.

        A device t goes straight to the backend's embedding; values are checked as
        refdiff.checks's rule says (host data always, device arrays with REFDIFF_KERNEL_CHECKS=1).
        """
        t = model_timesteps(_unwrap(t), B, array_module(self.conv_in.weight.data))
        features = self.backend.timestep_embedding(
            t, self.config["base_channels"], flip_sin_to_cos=self.config["flip_sin_to_cos"],
            downscale_freq_shift=self.config["freq_shift"])
        return Tensor(features.astype(self.conv_in.weight.dtype, copy=False))

    def _labels(self, y, B):
        """Class labels (B,) where the parameters live; None gives the null label num_classes."""
        xp = array_module(self.conv_in.weight.data)
        return model_labels(_unwrap(y), B, self.config["num_classes"], xp)

    def extra_repr(self):
        c = self.config
        return (f"base_channels={c['base_channels']}, channel_mults={tuple(c['channel_mults'])}, "
                f"attention_resolutions={tuple(c['attention_resolutions'])}, num_classes={c['num_classes']}")


def _unwrap(a):
    """The array of a Tensor; anything else as it is."""
    return a.data if isinstance(a, Tensor) else a


def _check_architecture(config):
    """Validate the arguments; return the feature-map side of each level given sample_size."""
    L = len(config["channel_mults"])
    if L < 1 or min(config["channel_mults"]) < 1:
        raise ValueError(f"channel_mults must be a non-empty tuple of positive ints, got {config['channel_mults']}")
    if config["num_res_blocks"] < 1:
        raise ValueError(f"num_res_blocks must be >= 1, got {config['num_res_blocks']}")
    if config["resnet_time_scale_shift"] not in TIME_EMBEDDING_NORMS:
        raise ValueError(f"resnet_time_scale_shift must be one of {TIME_EMBEDDING_NORMS}, "
                         f"got {config['resnet_time_scale_shift']!r}")
    if config["num_classes"] is not None and config["num_classes"] < 1:
        raise ValueError(f"num_classes must be None or >= 1, got {config['num_classes']}")
    channels = [config["base_channels"] * m for m in config["channel_mults"]]
    bad = [c for c in channels if c % config["norm_groups"]]
    if bad:
        raise ValueError(f"every level's channels {channels} must be divisible by norm_groups={config['norm_groups']}")
    head_dim = config["attention_head_dim"]
    if head_dim is not None and any(c % head_dim for c in channels):
        raise ValueError(f"every level's channels {channels} must be divisible by attention_head_dim={head_dim}")
    s = config["sample_size"]
    if s < 1 or s % 2 ** (L - 1):
        raise ValueError(f"sample_size={s} must be divisible by 2**{L - 1} = {2 ** (L - 1)} "
                         f"(the network has {L} levels)")
    sides = [s // 2**i for i in range(L)]
    unused = [r for r in config["attention_resolutions"] if r not in sides]
    if unused:
        raise ValueError(f"attention_resolutions {unused} match no level: with sample_size={s} the levels have "
                         f"feature-map sides {sides}")
    return sides
