"""NoiseClassifier: p_phi(y | x_t, t), the noise-conditional classifier of classifier guidance.

Dhariwal & Nichol 2021, sec. 4 and appendix: "the downsampling trunk of the UNet model with an
attention pool at the 8x8 layer". Here the trunk is the encoder half of refdiff's UNet, built from
the same blocks (refdiff.nn.blocks DownBlock and MidBlock, the UNet's timestep embedding), and the
head is the simple one guided-diffusion also offers (pool="adaptive"): group norm, SiLU, global
average pool, linear to the class logits.

Shapes (B = batch, C = base_channels, L = len(channel_mults)):
  x (B, in_channels, H, W) -> conv_in (B, C, H, W) -> L down blocks -> mid block
  -> (B, C * channel_mults[-1], H / 2**(L-1), W / 2**(L-1)) -> GroupNorm, SiLU, mean over H, W
  -> Linear -> logits (B, num_classes)

log p_phi(y | x_t) = log softmax(logits)_y; its gradient with respect to x_t, which guidance
needs (Dhariwal & Nichol 2021, Algorithm 1 and eq. 14), is taken by refdiff's autograd in
log_prob_gradient.

Reference: Dhariwal, Nichol 2021, Diffusion Models Beat GANs on Image Synthesis,
arXiv:2105.05233; guided-diffusion's EncoderUNetModel (guided_diffusion/unet.py).
"""
import numpy as np

from ..backend import array_module, get_backend
from ..checks import check_positive_int
from ..nn import GroupNorm, Linear, Module, SiLU
from ..nn.autograd import Tensor, enable_grad, no_grad
from .unet import UNet


class NoiseClassifier(Module):
    """A classifier of noised data x_t at time t: logits (B, num_classes) of p_phi(y | x_t, t).

    Args: num_classes K, and the encoder's arguments, with the meaning they have for refdiff.UNet
    (in_channels, base_channels, channel_mults, num_res_blocks, attention_resolutions,
    sample_size, dropout, norm_groups, attention_head_dim, norm_eps, flip_sin_to_cos, freq_shift,
    time_embedding_dim, downsample_padding, resnet_time_scale_shift, mid_attention), backend, seed.

    The encoder is a UNet's own conv_in, time_embedding, down_blocks and mid_block: a UNet with
    these arguments is built and its up path dropped, so the classifier's trunk is exactly a
    U-Net's down half (same blocks, same parameter names), never a copy of its code.

    model(x, t) -> Tensor logits (B, K). .config rebuilds it: NoiseClassifier(**model.config).
    """

    takes_scalar_timestep = True

    def __init__(self, num_classes, in_channels=3, base_channels=64, channel_mults=(1, 2, 2), num_res_blocks=2,
                 attention_resolutions=(16,), sample_size=32, dropout=0.0, norm_groups=32, attention_head_dim=None,
                 norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0, time_embedding_dim=None, downsample_padding=1,
                 resnet_time_scale_shift="default", mid_attention=True, backend="numpy", seed=0):
        super().__init__()
        num_classes = check_positive_int(num_classes, "num_classes")  # the encoder's arguments: checked by UNet
        trunk = UNet(in_channels=in_channels, base_channels=base_channels, channel_mults=channel_mults,
                     num_res_blocks=num_res_blocks, attention_resolutions=attention_resolutions,
                     sample_size=sample_size, dropout=dropout, num_classes=None, norm_groups=norm_groups,
                     attention_head_dim=attention_head_dim, norm_eps=norm_eps, flip_sin_to_cos=flip_sin_to_cos,
                     freq_shift=freq_shift, time_embedding_dim=time_embedding_dim,
                     downsample_padding=downsample_padding, resnet_time_scale_shift=resnet_time_scale_shift,
                     mid_attention=mid_attention, backend="numpy", seed=seed)
        config = {k: v for k, v in trunk.config.items() if k in _ENCODER_ARGS}
        self.config = dict(num_classes=num_classes, **config)
        self.num_classes = num_classes
        self.sample_shape = (trunk.config["in_channels"], sample_size, sample_size)
        self._trunk_input = trunk  # input checks and timestep features of a UNet (not a submodule)
        self.conv_in = trunk.conv_in
        self.time_embedding = trunk.time_embedding
        self.down_blocks = trunk.down_blocks
        self.mid_block = trunk.mid_block
        width = base_channels * channel_mults[-1]
        rng = np.random.default_rng([seed, 1])
        self.norm_out = GroupNorm(norm_groups, width, eps=norm_eps)
        self.act_out = SiLU()
        self.linear_out = Linear(width, num_classes, rng=rng)
        self.backend = get_backend(backend)
        if self.backend.name != "numpy":
            self.to(self.backend)
            trunk.backend = self.backend

    def __setattr__(self, name, value):
        if name == "_trunk_input":  # kept out of the module tree: its modules are registered one by one
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def forward(self, x, t):
        """logits of p_phi(y | x_t, t): x (B, in_channels, H, W) Tensor or array, t a number or (B,)."""
        x = self._trunk_input._input(x)
        emb = self.time_embedding(self._trunk_input._time_features(t, x.shape[0]))  # (B, temb_dim)
        h = self.conv_in(x)  # (B, C, H, W)
        for block in self.down_blocks:
            h, _ = block(h, emb)
        h = self.mid_block(h, emb)  # (B, C_L, H', W')
        h = self.act_out(self.norm_out(h)).mean(axis=(2, 3))  # (B, C_L): global average pool
        return self.linear_out(h)  # (B, K)

    def log_prob(self, x, t, y):
        """log p_phi(y | x_t) = log softmax(logits)_y per sample: a Tensor (B,). y: int labels (B,)."""
        return log_softmax_at(self(x, t), y)

    def log_prob_gradient(self, x, t, y):
        """grad_x log p_phi(y | x_t, t), by the autograd with respect to x_t: an array of x's shape
        and dtype, where the parameters live. Each sample's log-probability depends on its own x
        only (group norm and the pool act within a sample), so the gradient of their sum is the
        per-sample gradient. The parameters' .grad are left as they were."""
        xp = array_module(self.conv_in.weight.data)
        x_in = Tensor(xp.asarray(x), requires_grad=True)
        params = list(self.parameters())
        saved = [p.grad for p in params]
        was_training = self.training
        self.eval()
        try:
            with enable_grad():  # sampling runs under no_grad
                self.log_prob(x_in, t, y).sum().backward()
        finally:
            for p, g in zip(params, saved):
                p.grad = g
            if was_training:
                self.train()
        return x_in.grad.astype(x_in.dtype, copy=False)

    def predict(self, x, t):
        """The most likely class at time t: int64 (B,) on the host."""
        with no_grad():
            logits = self(x, t).data
        return np.asarray(self.backend.to_numpy(logits)).argmax(axis=1).astype(np.int64)

    def extra_repr(self):
        c = self.config
        return f"num_classes={c['num_classes']}, base_channels={c['base_channels']}, channel_mults={tuple(c['channel_mults'])}"


_ENCODER_ARGS = ("in_channels", "base_channels", "channel_mults", "num_res_blocks", "attention_resolutions",
                 "sample_size", "dropout", "norm_groups", "attention_head_dim", "norm_eps", "flip_sin_to_cos",
                 "freq_shift", "time_embedding_dim", "downsample_padding", "resnet_time_scale_shift",
                 "mid_attention", "seed")


def log_softmax_at(logits, y):
    """log softmax(z)_y = z_y - m - log sum_j exp(z_j - m) per row (m = max_j z_j held constant: it
    cancels, and keeps exp from overflowing). logits a Tensor (B, K), y int labels (B,): Tensor (B,)."""
    xp = logits.xp
    z = logits - xp.max(logits.data, axis=1, keepdims=True)  # (B, K)
    log_softmax = z - z.exp().sum(axis=1, keepdims=True).log()  # (B, K)
    one_hot = xp.eye(logits.shape[1], dtype=logits.dtype)[xp.asarray(y)]  # (B, K)
    return (log_softmax * one_hot).sum(axis=1)  # (B,)
