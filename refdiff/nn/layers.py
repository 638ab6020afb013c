"""The basic layers: Linear, Conv2d, GroupNorm, SiLU, Dropout, Embedding.

Each one holds its parameters (names and shapes as in PyTorch, so diffusers checkpoints load)
and calls the matching op of refdiff.nn.functional, where forward and backward are written.
"""
from . import functional as F
from ..checks import (check_bool, check_index_range, check_positive_int, check_positive_real, check_probability,
                      check_seed, value_checks_on)
from .autograd import Tensor
from ..backend import array_module
from . import init
from .module import Module


class Linear(Module):
    """y = x W^T + b,  W: (out_features, in_features), b: (out_features,)."""

    def __init__(self, in_features, out_features, bias=True, rng=None):
        super().__init__()
        rng = init.as_rng(rng)
        self.in_features = check_positive_int(in_features, "Linear: in_features")
        self.out_features = check_positive_int(out_features, "Linear: out_features")
        check_bool(bias, "Linear: bias")
        self.weight = Tensor(init.fan_in_uniform(rng, (out_features, in_features), in_features), requires_grad=True)
        if bias:
            self.bias = Tensor(init.fan_in_uniform(rng, (out_features,), in_features), requires_grad=True)
        else:
            self.bias = None

    def forward(self, x):
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Linear expects last dimension {self.in_features}, got input of shape {tuple(x.shape)}")
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


class Conv2d(Module):
    """2-D cross-correlation over NCHW input: weight (out, in, k, k), bias (out,)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, rng=None):
        super().__init__()
        rng = init.as_rng(rng)
        self.in_channels = in_channels = check_positive_int(in_channels, "Conv2d: in_channels")
        self.out_channels = out_channels = check_positive_int(out_channels, "Conv2d: out_channels")
        self.kernel_size = kernel_size = check_positive_int(kernel_size, "Conv2d: kernel_size")
        self.stride = check_positive_int(stride, "Conv2d: stride")
        self.padding = check_positive_int(padding, "Conv2d: padding", minimum=0)
        check_bool(bias, "Conv2d: bias")
        fan_in = in_channels * kernel_size * kernel_size
        shape = (out_channels, in_channels, kernel_size, kernel_size)
        self.weight = Tensor(init.fan_in_uniform(rng, shape, fan_in), requires_grad=True)
        self.bias = Tensor(init.fan_in_uniform(rng, (out_channels,), fan_in), requires_grad=True) if bias else None

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"Conv2d expects input (B, {self.in_channels}, H, W), got shape {tuple(x.shape)}")
        return F.conv2d(x, self.weight, self.bias, stride=self.stride, padding=self.padding)

    def zero_(self):
        """Set weight and bias to zero (the U-Net's output convolution starts at zero)."""
        self.weight.data[...] = 0
        if self.bias is not None:
            self.bias.data[...] = 0
        return self

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}")


class GroupNorm(Module):
    """Group normalisation (Wu & He 2018, eq. 1-3): per sample and group of channels,
    y = (x - mean) / sqrt(var + eps) * gamma + beta; gamma ("weight") and beta ("bias") per channel."""

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True):
        super().__init__()
        num_groups = check_positive_int(num_groups, "GroupNorm: num_groups")
        num_channels = check_positive_int(num_channels, "GroupNorm: num_channels")
        check_positive_real(eps, "GroupNorm: eps")
        if num_channels % num_groups != 0:
            raise ValueError(f"GroupNorm: num_channels={num_channels} is not divisible by num_groups={num_groups}")
        self.num_groups, self.num_channels, self.eps = int(num_groups), int(num_channels), float(eps)
        if affine:
            self.weight = Tensor(init.ones((num_channels,)), requires_grad=True)
            self.bias = Tensor(init.zeros((num_channels,)), requires_grad=True)
        else:
            self.weight = self.bias = None

    def forward(self, x):
        if x.shape[1] != self.num_channels:
            raise ValueError(f"GroupNorm expects {self.num_channels} channels, got input of shape {tuple(x.shape)}")
        return F.group_norm(x, self.num_groups, self.weight, self.bias, eps=self.eps)

    def extra_repr(self):
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}"


class SiLU(Module):
    """silu(x) = x * sigmoid(x) (a.k.a. swish)."""

    def forward(self, x):
        return F.silu(x)


class Dropout(Module):
    """Zero each entry with probability p and scale the rest by 1/(1-p), in training mode only.

    The mask comes from a generator seeded with `seed`, made on first use with the array module
    of the input (so it works unchanged on the CUDA backend).
    """

    def __init__(self, p=0.0, seed=0):
        super().__init__()
        self.p = check_probability(p, "Dropout probability p", open_high=True)
        self.seed = check_seed(seed)
        self._rng = None

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        if self._rng is None:
            self._rng = array_module(x.data).random.default_rng(self.seed)
        return F.dropout(x, self.p, training=True, rng=self._rng)

    def _moved(self):
        self._rng = None

    def extra_repr(self):
        return f"p={self.p}"


class Embedding(Module):
    """A lookup table: row i of weight (num_embeddings, embedding_dim) for index i."""

    def __init__(self, num_embeddings, embedding_dim, rng=None):
        super().__init__()
        rng = init.as_rng(rng)
        self.num_embeddings = check_positive_int(num_embeddings, "Embedding: num_embeddings")
        self.embedding_dim = check_positive_int(embedding_dim, "Embedding: embedding_dim")
        self.weight = Tensor(init.normal(rng, (num_embeddings, embedding_dim)), requires_grad=True)

    def forward(self, indices):
        idx = indices.data if isinstance(indices, Tensor) else indices
        if value_checks_on(idx):  # host data; device indices only with REFDIFF_KERNEL_CHECKS=1 (it syncs)
            check_index_range(array_module(idx).asarray(idx), self.num_embeddings, "Embedding indices")
        return F.embedding(idx, self.weight)

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}"
