"""The KL autoencoder of latent diffusion: x -> q(z | x) = N(mean, diag(exp(logvar))) -> z -> x_hat.

References:
  Kingma & Welling 2014, "Auto-Encoding Variational Bayes": the Gaussian encoder, the
    reparameterisation z = mean + std * noise (sec. 2.4) and the KL term against N(0, I)
    (appendix B: -KL = 1/2 sum(1 + logvar - mean^2 - exp(logvar))).
  Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models" (LDM),
    sec. 3 and appendix G: the "KL-reg" autoencoder, trained with a reconstruction loss plus a
    slight KL penalty (weight ~1e-6), whose latents are multiplied by a scaling factor
    (1 / std of the latents, sec. 4.3.2 and D.1) before diffusion.
  Esser et al. 2021 (VQGAN): the encoder / decoder architecture the KL autoencoder reuses.
  diffusers' AutoencoderKL, Encoder, Decoder and DiagonalGaussianDistribution
    (models/autoencoders/autoencoder_kl.py, vae.py): the block layout, the parameter names, the
    log-variance clamp to [-30, 20]; so its checkpoints load by name and give its outputs.

Shapes (B = batch, L = len(block_out_channels), C_i = block_out_channels[i], f = 2**(L-1)):
  encoder: x (B, in_channels, H, W) -> conv_in (B, C_0, H, W)
           -> L DownEncoderBlocks (all but the last halve H, W) -> mid block (resnet, attention,
           resnet) -> GroupNorm, SiLU, conv_out (B, 2 latent_channels, H/f, W/f)
           -> quant_conv (1x1) -> split on channels: mean, logvar (B, latent_channels, H/f, W/f)
  decoder: z (B, latent_channels, H/f, W/f) -> post_quant_conv (1x1) -> conv_in (B, C_{L-1}, .)
           -> mid block -> L UpDecoderBlocks (layers_per_block + 1 resnets; all but the last
           double H, W) -> GroupNorm, SiLU, conv_out (B, out_channels, H, W)
Every GroupNorm of the autoencoder uses eps = 1e-6 (diffusers' Encoder / Decoder hard-code it).
"""
import numpy as np

from ..backend import array_module, get_backend
from ..checks import (check_bool, check_choice, check_float_array, check_nonnegative_real, check_positive_int,
                      check_positive_ints, check_positive_real, check_seed)
from ..nn import Conv2d, GroupNorm, Module, ModuleList, SiLU
from ..nn import functional as F
from ..nn.autograd import Tensor
from ..nn.blocks import DownEncoderBlock, MidBlock, UpDecoderBlock
from ..nn.init import as_rng

NORM_EPS = 1e-6  # diffusers' Encoder and Decoder: resnet_eps=1e-6 and GroupNorm(eps=1e-6)
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0  # diffusers' DiagonalGaussianDistribution clamps logvar to this range
RECONSTRUCTION_LOSSES = ("l1", "l2")


class Encoder(Module):
    """x (B, in_channels, H, W) -> (B, out_channels, H/f, W/f); diffusers' Encoder (double_z folded
    into out_channels: the autoencoder asks for 2 * latent_channels)."""

    def __init__(self, in_channels, out_channels, block_out_channels, layers_per_block, norm_num_groups,
                 mid_attention=True, rng=None):
        super().__init__()
        rng = as_rng(rng)
        L = len(block_out_channels)
        self.conv_in = Conv2d(in_channels, block_out_channels[0], 3, padding=1, rng=rng)
        self.down_blocks = ModuleList([
            DownEncoderBlock(block_out_channels[max(i - 1, 0)], block_out_channels[i], layers_per_block,
                             add_downsample=i < L - 1, groups=norm_num_groups, eps=NORM_EPS, downsample_padding=0,
                             rng=rng)
            for i in range(L)])
        # one attention head over all channels (diffusers: attention_head_dim = channels)
        self.mid_block = MidBlock(block_out_channels[-1], None, attention=mid_attention, groups=norm_num_groups,
                                  attn_groups=norm_num_groups, eps=NORM_EPS, rng=rng)
        self.conv_norm_out = GroupNorm(norm_num_groups, block_out_channels[-1], eps=NORM_EPS)
        self.conv_act = SiLU()
        self.conv_out = Conv2d(block_out_channels[-1], out_channels, 3, padding=1, rng=rng)

    def forward(self, x):
        h = self.conv_in(x)  # (B, C_0, H, W)
        for block in self.down_blocks:
            h = block(h)
        h = self.mid_block(h, None)  # (B, C_{L-1}, H/f, W/f)
        return self.conv_out(self.conv_act(self.conv_norm_out(h)))


class Decoder(Module):
    """z (B, in_channels, h, w) -> (B, out_channels, h f, w f); diffusers' Decoder (norm_type "group")."""

    def __init__(self, in_channels, out_channels, block_out_channels, layers_per_block, norm_num_groups,
                 mid_attention=True, rng=None):
        super().__init__()
        rng = as_rng(rng)
        L = len(block_out_channels)
        reversed_channels = list(block_out_channels)[::-1]
        self.conv_in = Conv2d(in_channels, reversed_channels[0], 3, padding=1, rng=rng)
        self.mid_block = MidBlock(reversed_channels[0], None, attention=mid_attention, groups=norm_num_groups,
                                  attn_groups=norm_num_groups, eps=NORM_EPS, rng=rng)
        self.up_blocks = ModuleList([
            UpDecoderBlock(reversed_channels[max(i - 1, 0)], reversed_channels[i], layers_per_block + 1,
                           add_upsample=i < L - 1, groups=norm_num_groups, eps=NORM_EPS, rng=rng)
            for i in range(L)])
        self.conv_norm_out = GroupNorm(norm_num_groups, block_out_channels[0], eps=NORM_EPS)
        self.conv_act = SiLU()
        self.conv_out = Conv2d(block_out_channels[0], out_channels, 3, padding=1, rng=rng)

    def forward(self, z):
        h = self.conv_in(z)  # (B, C_{L-1}, h, w)
        h = self.mid_block(h, None)
        for block in self.up_blocks:
            h = block(h)
        return self.conv_out(self.conv_act(self.conv_norm_out(h)))  # (B, out_channels, H, W)


class AutoencoderKL(Module):
    """The KL-regularised autoencoder of latent diffusion, parameter-for-parameter a diffusers AutoencoderKL.

    Args (diffusers' names and defaults, so a config.json translates one to one):
      in_channels, out_channels: image channels in and out (out_channels=None: same as in).
      block_out_channels: channels of each level; L = len(block_out_channels) levels, the
        latent is 2**(L-1) times smaller than the image on each side.
      layers_per_block: residual blocks per encoder level (the decoder has one more).
      latent_channels: channels of z.
      norm_num_groups: GroupNorm groups everywhere (every level's channels divisible by it).
      sample_size: the image side the checkpoint was trained at (kept in the config; the network
        takes any H, W divisible by 2**(L-1)).
      scaling_factor: latents for diffusion are z * scaling_factor (LDM sec. 4.3.2: 1 / std of
        the latents); decode them as decode(z_scaled / scaling_factor).
      use_quant_conv, use_post_quant_conv: the 1x1 convolutions after the encoder and before
        the decoder.
      mid_block_add_attention: self-attention in the encoder's and decoder's mid blocks.
      force_upcast: kept for the diffusers config; refdiff computes in the dtype it is given.
      backend: "numpy" or "cuda".  seed: seeds the initialisation.

    mean, logvar = vae.encode(x)       q(z | x): (B, latent_channels, H/f, W/f) each, logvar clamped
    z = vae.sample_latent(mean, logvar, rng)     z = mean + exp(logvar / 2) * noise
    x_hat = vae.decode(z)
    loss = vae.loss(x, rng, kl_weight=1e-6)      reconstruction + kl_weight * KL (autograd scalar)
    .config is the dict of the arguments (without backend); AutoencoderKL(**vae.config) rebuilds it.
    """

    def __init__(self, in_channels=3, out_channels=None, block_out_channels=(64,), layers_per_block=1,
                 latent_channels=4, norm_num_groups=32, sample_size=32, scaling_factor=0.18215, use_quant_conv=True,
                 use_post_quant_conv=True, mid_block_add_attention=True, force_upcast=True, backend="numpy", seed=0):
        super().__init__()
        in_channels = check_positive_int(in_channels, "in_channels")
        out_channels = in_channels if out_channels is None else check_positive_int(out_channels, "out_channels")
        block_out_channels = list(check_positive_ints(block_out_channels, "block_out_channels"))
        layers_per_block = check_positive_int(layers_per_block, "layers_per_block")
        latent_channels = check_positive_int(latent_channels, "latent_channels")
        norm_num_groups = check_positive_int(norm_num_groups, "norm_num_groups")
        if isinstance(sample_size, (list, tuple)):
            sample_size = list(check_positive_ints(sample_size, "sample_size"))
        else:
            sample_size = check_positive_int(sample_size, "sample_size")
        scaling_factor = check_positive_real(scaling_factor, "scaling_factor")
        use_quant_conv = check_bool(use_quant_conv, "use_quant_conv")
        use_post_quant_conv = check_bool(use_post_quant_conv, "use_post_quant_conv")
        mid_block_add_attention = check_bool(mid_block_add_attention, "mid_block_add_attention")
        force_upcast = check_bool(force_upcast, "force_upcast")
        seed = check_seed(seed)
        bad = [c for c in block_out_channels if c % norm_num_groups]
        if bad:
            raise ValueError(f"every level's channels {block_out_channels} must be divisible by "
                             f"norm_num_groups={norm_num_groups}")
        self.config = dict(
            in_channels=in_channels, out_channels=out_channels, block_out_channels=block_out_channels,
            layers_per_block=layers_per_block, latent_channels=latent_channels, norm_num_groups=norm_num_groups,
            sample_size=sample_size, scaling_factor=scaling_factor, use_quant_conv=use_quant_conv,
            use_post_quant_conv=use_post_quant_conv, mid_block_add_attention=mid_block_add_attention,
            force_upcast=force_upcast, seed=seed,
        )
        self.scaling_factor = scaling_factor
        self.levels = len(block_out_channels)
        rng = np.random.default_rng(seed)
        common = dict(block_out_channels=block_out_channels, layers_per_block=layers_per_block,
                      norm_num_groups=norm_num_groups, mid_attention=mid_block_add_attention, rng=rng)
        self.encoder = Encoder(in_channels, 2 * latent_channels, **common)
        self.decoder = Decoder(latent_channels, out_channels, **common)
        self.quant_conv = Conv2d(2 * latent_channels, 2 * latent_channels, 1, rng=rng) if use_quant_conv else None
        self.post_quant_conv = Conv2d(latent_channels, latent_channels, 1, rng=rng) if use_post_quant_conv else None

        self.backend = get_backend(backend)
        if self.backend.name != "numpy":
            self.to(self.backend)

    @classmethod
    def from_diffusers(cls, path, backend="numpy"):
        """Load a diffusers AutoencoderKL folder (config.json + diffusion_pytorch_model.safetensors),
        or the vae/ folder of a saved pipeline. No PyTorch needed; options refdiff does not
        implement raise a ValueError naming them."""
        from .diffusers_io import load_autoencoder_kl

        return load_autoencoder_kl(path, backend=backend)

    def save_diffusers(self, path):
        """Write this autoencoder as a diffusers AutoencoderKL folder (AutoencoderKL.from_pretrained loads it)."""
        from .diffusers_io import save_autoencoder_kl

        return save_autoencoder_kl(self, path)

    # -- the network ---------------------------------------------------------------------------
    def encode(self, x):
        """q(z | x): (mean, logvar), Tensors of shape (B, latent_channels, H/f, W/f).

        logvar is clamped to [-30, 20] as diffusers does (std between 3e-7 and 2.2e4), with no
        gradient outside that range.
        """
        x = self._input(x, self.config["in_channels"], "x", "in_channels", self.levels - 1)
        moments = self.encoder(x)  # (B, 2 latent_channels, H/f, W/f)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        c = self.config["latent_channels"]
        mean, logvar = moments[:, :c], moments[:, c:]
        return mean, F.clamp(logvar, LOGVAR_MIN, LOGVAR_MAX)

    def decode(self, z):
        """x_hat = decoder(post_quant_conv(z)): (B, latent_channels, h, w) -> (B, out_channels, h f, w f)."""
        z = self._input(z, self.config["latent_channels"], "z", "latent_channels", 0)
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def forward(self, x, rng=None):
        """decode(z): z drawn from q(z | x) with `rng`, or z = mean when rng is None (diffusers'
        sample_posterior=False)."""
        mean, logvar = self.encode(x)
        return self.decode(mean if rng is None else self.sample_latent(mean, logvar, rng))

    # -- the diagonal Gaussian latent ------------------------------------------------------------
    @staticmethod
    def sample_latent(mean, logvar, rng):
        """z = mean + exp(logvar / 2) * noise, noise ~ N(0, I) drawn from `rng` (Kingma & Welling
        2014, sec. 2.4: the reparameterisation, so gradients reach mean and logvar).

        rng: anything with numpy.random.Generator's standard_normal(size, dtype=...).
        """
        if not hasattr(rng, "standard_normal"):
            raise TypeError(f"rng must be a random generator with standard_normal (e.g. numpy.random.default_rng(0)), "
                            f"got {type(rng).__name__}")
        xp = array_module(mean.data)
        noise = Tensor(xp.asarray(rng.standard_normal(mean.shape, dtype=mean.dtype)))  # (B, c, h, w)
        std = (logvar * 0.5).exp()
        return mean + std * noise

    @staticmethod
    def kl(mean, logvar):
        """KL(N(mean, diag(exp(logvar))) || N(0, I)) per sample, (B,): summed over the latent's
        elements (Kingma & Welling 2014, appendix B; diffusers' DiagonalGaussianDistribution.kl):
            KL = 1/2 sum(mean^2 + exp(logvar) - 1 - logvar)."""
        per_element = mean * mean + logvar.exp() - 1.0 - logvar
        return per_element.sum(axis=(1, 2, 3)) * 0.5

    def loss(self, x, rng, kl_weight=1e-6, reconstruction="l1"):
        """The KL autoencoder's training loss (LDM appendix G, without the perceptual and GAN terms):

            z ~ q(z | x),  x_hat = decode(z)
            loss = mean_i |x_i - x_hat_i|  (or the squared error, reconstruction="l2")
                   + kl_weight * mean_b KL(q(z | x_b) || N(0, I))

        The reconstruction term is a mean over pixels, the KL a sum over the latent's elements
        averaged over the batch. Returns a 0-d Tensor; backward() fills every parameter's grad.
        """
        kl_weight = check_nonnegative_real(kl_weight, "kl_weight")
        check_choice(reconstruction, RECONSTRUCTION_LOSSES, "reconstruction")
        x = self._input(x, self.config["in_channels"], "x", "in_channels", self.levels - 1)
        if self.config["out_channels"] != self.config["in_channels"]:
            raise ValueError(f"loss compares x_hat with x: needs out_channels == in_channels, got "
                             f"{self.config['out_channels']} and {self.config['in_channels']}")
        mean, logvar = self.encode(x)
        x_hat = self.decode(self.sample_latent(mean, logvar, rng))
        rec = F.l1_loss(x_hat, x) if reconstruction == "l1" else F.mse_loss(x_hat, x)
        if kl_weight == 0:
            return rec
        return rec + self.kl(mean, logvar).mean() * kl_weight

    # -- input checks --------------------------------------------------------------------------
    def _input(self, a, channels, name, channels_name, halvings):
        xp = array_module(self.encoder.conv_in.weight.data)
        check_float_array(a.data if isinstance(a, Tensor) else a, name)  # float32/float64, finite
        if not isinstance(a, Tensor):
            a = Tensor(xp.asarray(a))
        if a.ndim != 4 or a.shape[1] != channels:
            raise ValueError(f"AutoencoderKL expects {name} of shape (B, {channels_name}={channels}, H, W), "
                             f"got {tuple(a.shape)}")
        factor = 2 ** halvings
        if a.shape[2] % factor or a.shape[3] % factor:
            raise ValueError(f"AutoencoderKL with {self.levels} levels halves H and W {halvings} times, so both "
                             f"must be divisible by {factor}; got {name} of shape {tuple(a.shape)}")
        return a

    def extra_repr(self):
        c = self.config
        return (f"block_out_channels={tuple(c['block_out_channels'])}, latent_channels={c['latent_channels']}, "
                f"scaling_factor={c['scaling_factor']}")
