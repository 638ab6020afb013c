"""The neural-network ops of the U-Net, each as a forward and its hand-written backward.

Every function takes Tensors (arrays are wrapped) and returns a Tensor. As in `refdiff.nn.autograd`,
the backward closure sits right under the forward and a comment gives the derivative. Ops that
the chain rule could build from Tensor primitives (group norm, softmax, attention, linear, mse)
are fused here instead: one graph node each, a hand-derived backward with fewer temporaries,
and the formula in one place.

Ops: linear, embedding, silu, gelu (tanh approximation), softmax, clamp, pad2d, conv2d, group_norm,
upsample_nearest2x, avg_pool2d, dropout, mse_loss, l1_loss, scaled_dot_product_attention.

Shapes: images are NCHW (batch, channels, height, width); a conv weight is
(out_channels, in_channels, kh, kw) and a linear weight is (out_features, in_features), as in
PyTorch and diffusers, so their checkpoints load as they are.

All array calls go through `xp = array_module(data)`, so the same code runs on CuPy arrays. The
forward matrix products call refdiff.backend's `matmul` / `einsum` (numpy.matmul / numpy.einsum on
NumPy arrays): on CuPy they take a route that works inside a CUDA-graph capture.
"""
import contextlib
import math
import numbers
import threading

import numpy as np

from .autograd import Tensor
from ..backend import array_module, einsum, matmul


def _tensor(x):
    return x if isinstance(x, Tensor) else Tensor(x)


def _node(data, *parents):
    """The output Tensor of an op on `parents` (records the graph unless under no_grad)."""
    return parents[0]._child(data, *parents)


def _pair(v, name):
    if isinstance(v, numbers.Integral):
        return int(v), int(v)
    if len(v) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return int(v[0]), int(v[1])


def _channel_shape(x, C):
    """Shape (1, C, 1, ..., 1) that broadcasts a per-channel vector against x."""
    return (1, C) + (1,) * (x.ndim - 2)


# ---- dense layers -----------------------------------------------------------------------------


def linear(x, weight, bias=None):
    """y = x W^T + b for x (..., in), weight (out, in), bias (out,): one GEMM each way."""
    x, weight = _tensor(x), _tensor(weight)
    bias = None if bias is None else _tensor(bias)
    out_features, in_features = weight.shape
    if x.shape[-1] != in_features:
        raise ValueError(f"linear: input of shape {x.shape} does not match weight of shape {weight.shape}")
    x2 = x.data.reshape(-1, in_features)  # (B, in), B = all leading axes
    y = matmul(x2, weight.data.T)  # (B, out)
    if bias is not None:
        y += bias.data
    parents = (x, weight) if bias is None else (x, weight, bias)
    out = _node(y.reshape(x.shape[:-1] + (out_features,)), *parents)

    def backward():  # dx = dy W, dW = dy^T x, db = sum_B dy
        g = out.grad.reshape(-1, out_features)
        if x.requires_grad:
            x._accumulate((g @ weight.data).reshape(x.shape))
        if weight.requires_grad:
            weight._accumulate(g.T @ x2)
        if bias is not None and bias.requires_grad:
            bias._accumulate(g.sum(axis=0))

    return out._set_backward(backward)


def embedding(indices, weight):
    """Rows of `weight` (num, dim) picked by the integer array `indices`: out[...] = weight[indices[...]]."""
    weight = _tensor(weight)
    indices = indices.data if isinstance(indices, Tensor) else indices
    xp = weight.xp
    indices = xp.asarray(indices)
    if weight.ndim != 2:
        raise ValueError(f"embedding weight must be (num_embeddings, dim), got shape {weight.shape}")
    if indices.dtype.kind not in "iu":
        raise TypeError(f"embedding indices must be integers, got dtype {indices.dtype}")
    out = _node(weight.data[indices], weight)  # (..., dim)

    def backward():  # dW[i] = sum of dy over the positions that picked row i
        g = xp.zeros(weight.shape, dtype=out.grad.dtype)
        xp.add.at(g, indices.reshape(-1), out.grad.reshape(-1, weight.shape[1]))
        weight._accumulate(g)

    return out._set_backward(backward)


# ---- activations -----------------------------------------------------------------------------


def silu(x):
    """SiLU (swish): y = x * sigmoid(x) = x / (1 + e^-x) (Elfwing et al. 2018; the U-Net's nonlinearity).

    Written as x / (1 + e^-x) on one buffer: 4 passes over the data (negate, exp, +1, divide)
    instead of 5 with the tanh form (1 + tanh(x/2)) / 2 of before (kept in the tests as the
    definition), and NumPy's float32 exp is ~1.6x faster than its tanh on AVX2 (1.8 vs 2.9 ns
    per element): 5.9 -> 3.0 ns per element without a gradient (2-core Xeon, 4M elements).
    For x << 0, e^-x overflows to inf and y = x / inf = -0 (the right limit); that overflow is
    expected and not reported.
    """
    x = _tensor(x)
    xp = x.xp
    a = x.data
    with _overflow_ignored(xp):
        e = xp.negative(a)
        xp.exp(e, out=e)
        e += 1  # 1 + e^-x = 1 / sigmoid(x)
    out = _node(a / e, x)
    if not out.requires_grad:
        return out
    s = xp.divide(1, e, out=e)  # sigmoid(x), kept for the backward

    def backward():  # dy/dx = s + x s (1 - s) = s (1 + x (1 - s))
        d = 1 - s  # one buffer, updated in place (the op is memory-bound)
        d *= a
        d += 1
        d *= s
        d *= out.grad
        x._accumulate(d)

    return out._set_backward(backward)


def _overflow_ignored(xp):
    """np.errstate(over="ignore") on NumPy; nothing to silence elsewhere (CuPy does not warn)."""
    return np.errstate(over="ignore") if xp is np else contextlib.nullcontext()


_GELU_C = math.sqrt(2.0 / math.pi)


def gelu(x):
    """GELU, tanh approximation: y = x/2 (1 + tanh(c (x + 0.044715 x^3))), c = sqrt(2/pi).

    Hendrycks & Gimpel 2016, sec. 2 (the approximation of x Phi(x)); PyTorch's
    gelu(approximate="tanh"). NumPy has no vectorised erf, so the exact x Phi(x) is not used:
    the two differ by at most ~5e-4 (absolute).
    """
    x = _tensor(x)
    a = x.data
    u = _GELU_C * (a + 0.044715 * a**3)
    t = x.xp.tanh(u)
    out = _node(0.5 * a * (1 + t), x)

    def backward():  # dy/dx = (1 + t)/2 + x/2 (1 - t^2) c (1 + 3 * 0.044715 x^2)
        du = _GELU_C * (1 + 3 * 0.044715 * a * a)
        x._accumulate(out.grad * (0.5 * (1 + t) + 0.5 * a * (1 - t * t) * du))

    return out._set_backward(backward)


def softmax(x, axis=-1):
    """y_i = exp(x_i - max x) / sum_j exp(x_j - max x) along `axis` (shifting by max avoids overflow)."""
    x = _tensor(x)
    xp = x.xp
    e = xp.exp(x.data - x.data.max(axis=axis, keepdims=True))
    y = e / e.sum(axis=axis, keepdims=True)
    out = _node(y, x)

    def backward():  # dx_i = y_i (dy_i - sum_j dy_j y_j)
        g = out.grad
        x._accumulate(y * (g - (g * y).sum(axis=axis, keepdims=True)))

    return out._set_backward(backward)


def clamp(x, min_value, max_value):
    """y = min(max(x, min_value), max_value), elementwise (torch.clamp; the autoencoder clamps its log-variance).

    The gradient passes where min_value <= x <= max_value (bounds included, as PyTorch) and is 0 outside.
    """
    x = _tensor(x)
    xp = x.xp
    a = x.data
    out = _node(xp.clip(a, min_value, max_value), x)

    def backward():  # dy/dx = 1 inside [min_value, max_value], 0 outside
        inside = (a >= min_value) & (a <= max_value)
        x._accumulate(out.grad * inside)

    return out._set_backward(backward)


# ---- padding -------------------------------------------------------------------------------


def pad2d(x, padding):
    """Zero padding of the last two axes: y[..., top + h, left + w] = x[..., h, w], zeros elsewhere.

    padding: p (p rows or columns on every side) or (left, right, top, bottom), the order of
    torch.nn.functional.pad for the last two axes; diffusers' Downsample2D pads with (0, 1, 0, 1),
    one column on the right and one row at the bottom.
    """
    x = _tensor(x)
    if isinstance(padding, numbers.Integral):
        left = right = top = bottom = int(padding)
    elif len(padding) == 4:
        left, right, top, bottom = (int(p) for p in padding)
    else:
        raise ValueError(f"pad2d: padding must be an int or (left, right, top, bottom), got {padding!r}")
    if min(left, right, top, bottom) < 0:
        raise ValueError(f"pad2d: padding must be >= 0, got {padding!r}")
    if x.ndim < 2:
        raise ValueError(f"pad2d needs x with at least 2 axes (..., H, W), got shape {x.shape}")
    H, W = x.shape[-2:]
    y = x.xp.zeros(x.shape[:-2] + (top + H + bottom, left + W + right), dtype=x.dtype)
    y[..., top : top + H, left : left + W] = x.data
    out = _node(y, x)

    def backward():  # y copies each x pixel once: dx = dy at the same place (the zeros get no gradient)
        x._accumulate(x.xp.ascontiguousarray(out.grad[..., top : top + H, left : left + W]))

    return out._set_backward(backward)


# ---- convolution ----------------------------------------------------------------------------


def _conv_output_size(size, k, stride, pad):
    return (size + 2 * pad - k) // stride + 1


# Scratch buffers for conv2d's large temporaries (fast path). Why: an array above glibc's mmap
# threshold (32 MiB at most) is handed out as fresh pages that the kernel zeroes on first touch,
# on every call: 0.62-0.70 s of system time per CIFAR U-Net forward at batch 16, ~19% of the
# CPU time (issue 13). The im2col columns, the padded input, the GEMM result and the backward's
# spread gradient are only needed inside one conv2d call, so each lives in one buffer per role
# and thread, grown to the largest size asked for and reused (NumPy only: CuPy has its own pool).
# Measured gain: see conv2d's docstring. What an op returns is never a scratch buffer.
_scratch = threading.local()


def _workspace(xp, role, shape, dtype):
    """An uninitialised array of `shape` that is only valid until the next request for `role`."""
    if xp is not np:
        return xp.empty(shape, dtype=dtype)
    dtype = np.dtype(dtype)
    size = math.prod(shape)
    key = (role, dtype)
    buffers = _scratch.__dict__
    buf = buffers.get(key)
    if buf is None or buf.size < size:
        buf = buffers[key] = np.empty(size, dtype=dtype)
    return buf[:size].reshape(shape)


def _padded_channels_last(x, ph, pw):
    """x (N, C, H, W) as x_pad (N, H + 2 ph, W + 2 pw, C), zeros around, in a scratch buffer."""
    xp = array_module(x)
    N, C, H, W = x.shape
    x_pad = _workspace(xp, "pad", (N, H + 2 * ph, W + 2 * pw, C), x.dtype)  # (N, Hp, Wp, C)
    if ph:
        x_pad[:, :ph] = 0
        x_pad[:, ph + H :] = 0
    if pw:
        x_pad[:, :, :pw] = 0
        x_pad[:, :, pw + W :] = 0
    x_pad[:, ph : ph + H, pw : pw + W, :] = x.transpose(0, 2, 3, 1)
    return x_pad


def _im2col(x, kh, kw, sh, sw, ph, pw):
    """Receptive fields as rows: (N, C, H, W) -> cols (N*Ho*Wo, kh*kw*C),

        cols[(n, h, w), (i, j, c)] = x_pad[n, c, sh h + i, sw w + j],

    x_pad being x with ph zero rows above and below and pw zero columns left and right. The
    padded copy is channels-last (N, Hp, Wp, C), so a row is kh*kw runs of C contiguous values;
    a strided view picks the windows (no copy) and one copy gathers them. Both the padded copy
    and the columns are scratch buffers: valid until the next conv2d.
    """
    xp = array_module(x)
    N, C, H, W = x.shape
    Ho, Wo = _conv_output_size(H, kh, sh, ph), _conv_output_size(W, kw, sw, pw)
    x_pad = _padded_channels_last(x, ph, pw)
    sN, sH, sW, sC = x_pad.strides
    windows = xp.lib.stride_tricks.as_strided(
        x_pad, shape=(N, Ho, Wo, kh, kw, C), strides=(sN, sH * sh, sW * sw, sH, sW, sC)
    )
    cols = _workspace(xp, "cols", (N, Ho, Wo, kh, kw, C), x.dtype)
    cols[...] = windows
    return cols.reshape(N * Ho * Wo, kh * kw * C)


def _correlate(x, w, sh, sw, ph, pw):
    """y[n,o,h,w] = sum_{c,i,j} w[o,c,i,j] x_pad[n, c, sh h + i, sw w + j] as im2col + one GEMM:

    Y (N*Ho*Wo, O) = cols (N*Ho*Wo, kh*kw*C) @ W (kh*kw*C, O), returned as (N, O, Ho, Wo), a
    new array. (The long N*Ho*Wo axis goes first: OpenBLAS runs this ~1.6x faster than
    W @ cols^T when O is small, measured at the U-Net's shapes.)
    """
    xp = array_module(x)
    N, C, H, W = x.shape
    O, _, kh, kw = w.shape
    Ho, Wo = _conv_output_size(H, kh, sh, ph), _conv_output_size(W, kw, sw, pw)
    cols = _im2col(x, kh, kw, sh, sw, ph, pw)
    w2 = w.transpose(2, 3, 1, 0).reshape(kh * kw * C, O)  # rows (i, j, c), like the columns of cols
    y = matmul(cols, w2, out=_workspace(xp, "gemm", (N * Ho * Wo, O), cols.dtype))  # (N*Ho*Wo, O)
    return y.reshape(N, Ho, Wo, O).transpose(0, 3, 1, 2).copy()  # a new C-ordered array, even when O = 1


def _is_pointwise(kh, kw, sh, sw, ph, pw):
    """A 1x1 convolution without stride or padding: a matrix product per image."""
    return (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0)


def conv2d(x, weight, bias=None, stride=1, padding=0):
    """2-D cross-correlation, NCHW: y[n,o,h,w] = b[o] + sum_{c,i,j} W[o,c,i,j] x_pad[n, c, s h + i, s w + j].

    x (N, C, H, W), weight (O, C, kh, kw), bias (O,); zero padding on each side; stride and
    padding are ints or (h, w) pairs. Computed as im2col + one GEMM (_correlate).
    Backward: dW is one GEMM with the columns rebuilt from x (keeping them from the forward would
    hold kh*kw copies of the input per layer until the backward); dx is itself a correlation,
    of dY with the flipped kernel (Dumoulin & Visin 2016, "A guide to convolution arithmetic", sec. 4).

    Fast paths (the plain definition they are checked against is conv2d_plain in
    tests/test_functional.py, outputs and gradients in float64 on hypothesis shapes):
    - the temporaries (padded input, columns, GEMM result, spread gradient) are reused scratch
      buffers (_workspace), not fresh pages from the kernel at each call;
    - a 1x1 convolution (stride 1, no padding) is y[n] = W x[n] with x[n] viewed as (C, H*W):
      one stacked GEMM straight in NCHW, no im2col copy and no layout transposes.
    Measured gains: benchmarks/RESULTS.md, "Forward passes and sampling on the CPU".
    """
    x, weight = _tensor(x), _tensor(weight)
    bias = None if bias is None else _tensor(bias)
    if x.ndim != 4 or weight.ndim != 4:
        raise ValueError(f"conv2d needs x (N, C, H, W) and weight (O, C, kh, kw), got shapes {x.shape} and {weight.shape}")
    N, C, H, W = x.shape
    O, Cw, kh, kw = weight.shape
    if C != Cw:
        raise ValueError(
            f"conv2d: input x of shape {x.shape} has {C} channels but weight of shape {weight.shape} expects {Cw}"
        )
    if bias is not None and bias.shape != (O,):
        raise ValueError(f"conv2d: bias of shape {bias.shape} does not match weight of shape {weight.shape}")
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    if min(sh, sw) < 1 or min(ph, pw) < 0:
        raise ValueError(f"conv2d: stride must be >= 1 and padding >= 0, got stride {stride}, padding {padding}")
    Ho, Wo = _conv_output_size(H, kh, sh, ph), _conv_output_size(W, kw, sw, pw)
    if Ho < 1 or Wo < 1:
        raise ValueError(f"conv2d: kernel {kh}x{kw} is larger than the padded input of shape {x.shape}")
    xp = x.xp
    if _is_pointwise(kh, kw, sh, sw, ph, pw):
        return _conv2d_pointwise(x, weight, bias)

    y = _correlate(x.data, weight.data, sh, sw, ph, pw)  # (N, O, Ho, Wo)
    if bias is not None:
        y += bias.data.reshape(1, O, 1, 1)
    parents = (x, weight) if bias is None else (x, weight, bias)
    out = _node(y, *parents)

    def backward():
        g = out.grad  # (N, O, Ho, Wo)
        if weight.requires_grad:  # dW[o,c,i,j] = sum_{n,h,w} dY[n,o,h,w] x_pad[n, c, s h + i, s w + j] = cols^T dY
            g2 = _workspace(xp, "grad", (N, Ho, Wo, O), g.dtype)
            g2[...] = g.transpose(0, 2, 3, 1)
            cols = _im2col(x.data, kh, kw, sh, sw, ph, pw)  # (N*Ho*Wo, kh*kw*C)
            dw = (cols.T @ g2.reshape(N * Ho * Wo, O)).reshape(kh, kw, C, O).transpose(3, 2, 0, 1)
            weight._accumulate(xp.ascontiguousarray(dw))
        if bias is not None and bias.requires_grad:  # db = sum dY over batch and space
            bias._accumulate(g.sum(axis=(0, 2, 3)))
        if x.requires_grad:
            # dx_pad[n,c,a,b] = sum_{o,i,j} W[o,c,i,j] dY[n, o, (a - i)/s, (b - j)/s] over the terms where
            # s divides a - i and b - j. Spread dY on a zero grid at stride s with kh-1, kw-1 zeros of
            # margin; then dx_pad = that grid correlated with W flipped (i -> kh-1-i) and C, O swapped.
            # Only rows ph..ph+H-1 (columns pw..pw+W-1) of dx_pad are dx, so only those are computed.
            grid = _workspace(xp, "grid", (N, O, H + 2 * ph + kh - 1, W + 2 * pw + kw - 1), g.dtype)
            grid[...] = 0
            grid[:, :, kh - 1 : kh - 1 + sh * Ho : sh, kw - 1 : kw - 1 + sw * Wo : sw] = g
            grid = grid[:, :, ph : ph + H + kh - 1, pw : pw + W + kw - 1]
            w_flip = weight.data[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)  # (C, O, kh, kw)
            x._accumulate(_correlate(grid, w_flip, 1, 1, 0, 0))  # (N, C, H, W)

    return out._set_backward(backward)


def _conv2d_pointwise(x, weight, bias):
    """conv2d's fast path for a 1x1 kernel, stride 1, no padding: y[n] = W x[n] (+ b), x[n] as (C, H*W).

    Why: through im2col the 1x1 convolutions ran at 46-75 GFLOP/s against 97-133 for the bare
    GEMM (issue 13): the columns are a transposed copy of x and the result is transposed back.
    """
    xp = x.xp
    N, C, H, W = x.shape
    O = weight.shape[0]
    x3 = x.data.reshape(N, C, H * W)  # (N, C, HW) (a copy only if x is not contiguous)
    w2 = weight.data.reshape(O, C)
    y = matmul(w2, x3)  # (N, O, HW)
    if bias is not None:
        y += bias.data.reshape(1, O, 1)
    parents = (x, weight) if bias is None else (x, weight, bias)
    out = _node(y.reshape(N, O, H, W), *parents)

    def backward():  # dW = sum_n dY[n] x[n]^T, db = sum dY over batch and space, dx[n] = W^T dY[n]
        g3 = out.grad.reshape(N, O, H * W)
        if weight.requires_grad:
            weight._accumulate(xp.matmul(g3, x3.transpose(0, 2, 1)).sum(axis=0).reshape(O, C, 1, 1))
        if bias is not None and bias.requires_grad:
            bias._accumulate(g3.sum(axis=(0, 2)))
        if x.requires_grad:
            x._accumulate(xp.matmul(w2.T, g3).reshape(N, C, H, W))

    return out._set_backward(backward)


# ---- normalisation -------------------------------------------------------------------------


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):
    """Group normalisation (Wu & He 2018, eq. 1-2): per sample and group of C/G channels,

        xhat = (x - mu) / sqrt(var + eps),   y = gamma_c xhat + beta_c,

    mu and var (biased) taken over the group's channels and all spatial positions.
    x (N, C, ...), weight = gamma (C,), bias = beta (C,).
    """
    x = _tensor(x)
    weight = None if weight is None else _tensor(weight)
    bias = None if bias is None else _tensor(bias)
    if x.ndim < 2:
        raise ValueError(f"group_norm needs x of shape (N, C, ...), got {x.shape}")
    N, C = x.shape[:2]
    G = num_groups
    if G < 1 or C % G:
        raise ValueError(f"group_norm: {C} channels (x of shape {x.shape}) cannot split into {G} groups")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and p.shape != (C,):
            raise ValueError(f"group_norm: {name} of shape {p.shape} does not match {C} channels of x {x.shape}")
    xp = x.xp
    cshape = _channel_shape(x, C)

    xg = x.data.reshape(N, G, -1)  # (N, G, M), M = C/G * spatial
    M = xg.shape[-1]
    mu = xg.mean(axis=-1, keepdims=True)
    xhat = xg - mu  # centred now, normalised in place below (this op is memory-bound)
    var = einsum("ngm,ngm->ng", xhat, xhat)[..., None] / M  # biased variance, no temporary
    rstd = 1 / xp.sqrt(var + eps)  # (N, G, 1)
    xhat *= rstd  # (N, G, M)
    y = xhat.reshape(x.shape)  # shares xhat's memory until the affine step makes a new array
    if weight is not None:
        y = y * weight.data.reshape(cshape)
    if bias is not None:
        if weight is not None:
            y += bias.data.reshape(cshape)  # y is the fresh product: update it in place
        else:
            y = y + bias.data.reshape(cshape)
    parents = tuple(p for p in (x, weight, bias) if p is not None)
    out = _node(y, *parents)

    def backward():
        # dgamma = sum dy xhat, dbeta = sum dy (over batch and space);
        # dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)), means over the group, dxhat = gamma dy
        # (differentiate xhat through mu and var; Wu & He 2018, Ioffe & Szegedy 2015 sec. 3).
        # Computed as gs = rstd dxhat, dx = gs - mean(gs) - xhat mean(gs xhat): rstd folded into gamma.
        g = out.grad.reshape(N, C, -1)  # (N, C, spatial)
        if weight is not None and weight.requires_grad:
            weight._accumulate(xp.einsum("ncl,ncl->c", g, xhat.reshape(N, C, -1)))
        if bias is not None and bias.requires_grad:
            bias._accumulate(g.sum(axis=2).sum(axis=0))
        if x.requires_grad:
            scale = xp.repeat(rstd[:, :, 0], C // G, axis=1)  # (N, C): rstd of each channel's group
            if weight is not None:
                scale = scale * weight.data
            gs = (g * scale[:, :, None]).reshape(N, G, M)  # rstd dxhat
            mean_gs = gs.mean(axis=-1, keepdims=True)
            mean_gs_xhat = xp.einsum("ngm,ngm->ng", gs, xhat)[..., None] / M
            gs -= xhat * mean_gs_xhat
            gs -= mean_gs
            x._accumulate(gs.reshape(x.shape))

    return out._set_backward(backward)


# ---- resampling -----------------------------------------------------------------------------


def upsample_nearest2x(x):
    """Nearest-neighbour upsampling by 2: y[n, c, h, w] = x[n, c, h // 2, w // 2]."""
    x = _tensor(x)
    if x.ndim != 4:
        raise ValueError(f"upsample_nearest2x needs x (N, C, H, W), got shape {x.shape}")
    N, C, H, W = x.shape
    y = x.data.repeat(2, axis=3).repeat(2, axis=2)  # (N, C, 2H, 2W)
    out = _node(y, x)

    def backward():  # each input pixel fed a 2x2 block: sum the gradient over the block
        g = out.grad.reshape(N, C, H, 2, W, 2)
        rows = g[:, :, :, 0] + g[:, :, :, 1]  # (N, C, H, W, 2): sum the block's two rows
        x._accumulate(rows[..., 0] + rows[..., 1])  # then its two columns

    return out._set_backward(backward)


def avg_pool2d(x, kernel_size=2):
    """Average pooling with stride = kernel_size k: y[n,c,h,w] = mean of the k x k block at (k h, k w).

    Rows and columns that do not fill a whole block are dropped (PyTorch's default floor mode).
    """
    x = _tensor(x)
    if x.ndim != 4:
        raise ValueError(f"avg_pool2d needs x (N, C, H, W), got shape {x.shape}")
    k = int(kernel_size)
    N, C, H, W = x.shape
    Ho, Wo = H // k, W // k
    if Ho < 1 or Wo < 1:
        raise ValueError(f"avg_pool2d: kernel {k} is larger than the input of shape {x.shape}")
    blocks = x.data[:, :, : Ho * k, : Wo * k].reshape(N, C, Ho, k, Wo, k)
    out = _node(blocks.mean(axis=(3, 5)), x)

    def backward():  # dy/dx = 1/k^2 for each pixel of the block
        xp = x.xp
        g = xp.broadcast_to((out.grad * (1.0 / (k * k)))[:, :, :, None, :, None], (N, C, Ho, k, Wo, k))
        g = g.reshape(N, C, Ho * k, Wo * k)
        if (Ho * k, Wo * k) != (H, W):
            full = xp.zeros(x.shape, dtype=g.dtype)
            full[:, :, : Ho * k, : Wo * k] = g
            g = full
        x._accumulate(g)

    return out._set_backward(backward)


# ---- regularisation and losses -------------------------------------------------------------


def dropout(x, p, training=True, rng=None):
    """Inverted dropout: y = x * m / (1 - p), m ~ Bernoulli(1 - p) (Srivastava et al. 2014).

    Identity when not training or p == 0. `rng` is a numpy (or cupy) Generator, required when
    dropout is active, so that a run is reproducible.
    """
    x = _tensor(x)
    if not 0 <= p < 1:
        raise ValueError(f"dropout probability p must be in [0, 1), got {p}")
    if not training or p == 0:
        return x
    if rng is None:
        raise ValueError("dropout with p > 0 in training needs an explicit rng (e.g. numpy.random.default_rng(seed))")
    keep = rng.random(x.shape, dtype=x.dtype) >= p
    mask = keep.astype(x.dtype) * (1.0 / (1 - p))
    out = _node(x.data * mask, x)

    def backward():  # dy/dx = m / (1 - p)
        x._accumulate(out.grad * mask)

    return out._set_backward(backward)


def mse_loss(pred, target, weights=None):
    """Mean squared error: L = mean_b w_b mean_i (pred_bi - target_bi)^2 (w_b = 1 without weights).

    `weights` (B,) are per-sample weights (e.g. min-SNR-gamma, refdiff.gaussian.losses.loss_weight);
    they are constants (no gradient) and take pred's dtype. Returns a 0-d Tensor.
    """
    pred, target = _tensor(pred), _tensor(target)
    if pred.shape != target.shape:
        raise ValueError(f"mse_loss: pred of shape {pred.shape} and target of shape {target.shape} differ")
    xp = pred.xp
    diff = pred.data - target.data
    dtype = diff.dtype
    if weights is not None:
        weights = weights.data if isinstance(weights, Tensor) else weights
        weights = xp.asarray(weights, dtype=dtype)
        if weights.shape != pred.shape[:1]:
            raise ValueError(f"mse_loss: weights of shape {weights.shape} need shape ({pred.shape[0]},) for pred {pred.shape}")
        w = weights.reshape((-1,) + (1,) * (pred.ndim - 1))  # (B, 1, ..., 1)
    scale = 1.0 / max(diff.size, 1)
    sq = diff * diff
    if weights is not None:
        sq = sq * w
    out = _node(sq.sum() * scale, pred, target)

    def backward():  # dL/dpred = 2 w_b (pred - target) / (number of elements) = -dL/dtarget
        g = out.grad * (2 * scale) * diff
        if weights is not None:
            g = g * w
        pred._accumulate(g)
        if target.requires_grad:
            target._accumulate(-g)

    return out._set_backward(backward)


def l1_loss(pred, target):
    """Mean absolute error: L = mean_i |pred_i - target_i| (the autoencoder's reconstruction loss, LDM).

    The derivative of |d| is sign(d), taken as 0 at d = 0 (PyTorch's choice). Returns a 0-d Tensor.
    """
    pred, target = _tensor(pred), _tensor(target)
    if pred.shape != target.shape:
        raise ValueError(f"l1_loss: pred of shape {pred.shape} and target of shape {target.shape} differ")
    xp = pred.xp
    diff = pred.data - target.data
    scale = 1.0 / max(diff.size, 1)
    out = _node(xp.abs(diff).sum() * scale, pred, target)

    def backward():  # dL/dpred = sign(pred - target) / (number of elements) = -dL/dtarget
        g = out.grad * scale * xp.sign(diff)
        pred._accumulate(g)
        if target.requires_grad:
            target._accumulate(-g)

    return out._set_backward(backward)


# ---- attention ------------------------------------------------------------------------------


def scaled_dot_product_attention(q, k, v, scale=None):
    """Attention (Vaswani et al. 2017, eq. 1): softmax(Q K^T / sqrt(d)) V, one fused op.

    q (..., L, d), k (..., S, d), v (..., S, dv) -> (..., L, dv). `scale` defaults to 1/sqrt(d).
    """
    q, k, v = _tensor(q), _tensor(k), _tensor(v)
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"attention: shapes q {q.shape}, k {k.shape}, v {v.shape} do not fit (..., L, d), (..., S, d), (..., S, dv)")
    xp = q.xp
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    q_scaled = q.data * scale  # scale the (L, d) operand, not the (L, S) scores
    p = matmul(q_scaled, xp.swapaxes(k.data, -1, -2))  # scores S = scale Q K^T (..., L, S), made into P in place:
    p -= p.max(axis=-1, keepdims=True)  # shift each row by its max: exp cannot overflow
    xp.exp(p, out=p)
    p /= p.sum(axis=-1, keepdims=True)  # attention weights P = softmax(S), rows sum to 1
    out = _node(matmul(p, v.data), q, k, v)  # (..., L, dv)

    def backward():
        # O = P V: dV = P^T dO, dP = dO V^T; P = softmax(S): dS = P (dP - rowsum(dP P));
        # S = scale Q K^T: dQ = scale dS K, dK = scale dS^T Q
        g = out.grad
        if v.requires_grad:
            v._accumulate(xp.swapaxes(p, -1, -2) @ g)
        if q.requires_grad or k.requires_grad:
            ds = g @ xp.swapaxes(v.data, -1, -2)  # dP (..., L, S), made into dS in place:
            ds -= (ds * p).sum(axis=-1, keepdims=True)  # dP - rowsum(dP P)
            ds *= p
            if q.requires_grad:
                q._accumulate(ds @ (k.data * scale))
            if k.requires_grad:
                k._accumulate(xp.swapaxes(ds, -1, -2) @ q_scaled)

    return out._set_backward(backward)
