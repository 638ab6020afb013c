"""refdiff.nn: the from-scratch autograd, the functional ops, and layers with named parameters.

    autograd.py   Tensor: reverse-mode autodiff, each op's forward and backward side by side
    functional.py the ops of the networks (linear, conv2d, group_norm, attention, ...), with gradients
    jacobian.py   the trace of a network's Jacobian, exact or by Hutchinson's estimator (the ODE likelihood)
    testing.py    check_gradients: autograd against central finite differences
    module.py     Module, ModuleList (parameters, state_dict / load_state_dict, train / eval, to)
    init.py       PyTorch's default initialisation from a seeded generator
    layers.py     Linear, Conv2d, GroupNorm, SiLU, Dropout, Embedding
    attention.py  Attention: multi-head self-attention over H*W
    resnet.py     ResnetBlock: residual block with timestep-embedding injection (or none: temb_channels=None)
    sampling.py   Downsample, Upsample
    timestep.py   TimestepEmbedding: the MLP on the sinusoidal timestep features
    blocks.py     DownBlock, MidBlock, UpBlock: the U-Net's stages; DownEncoderBlock, UpDecoderBlock:
                  the autoencoder's
"""
from .attention import Attention
from .blocks import DownBlock, DownEncoderBlock, MidBlock, UpBlock, UpDecoderBlock
from .layers import Conv2d, Dropout, Embedding, GroupNorm, Linear, SiLU
from .module import Module, ModuleList
from .resnet import ResnetBlock
from .sampling import Downsample, Upsample
from .timestep import TimestepEmbedding

__all__ = ["Module", "ModuleList", "Linear", "Conv2d", "GroupNorm", "SiLU", "Dropout", "Embedding",
           "Attention", "ResnetBlock", "Downsample", "Upsample", "TimestepEmbedding", "DownBlock", "MidBlock", "UpBlock",
           "DownEncoderBlock", "UpDecoderBlock"]
