"""A small denoiser for 2-D toy data: a time-embedded residual MLP, eps_theta(x_t, t[, y]).

The 2-D analogue of the U-Net's residual block (Ho et al. 2020, appendix B), without
convolutions or normalisation:
    emb = MLP(sinusoid(t)) [+ class_embedding(y)]           (as in the U-Net)
    h   = in_proj(x)
    h   = h + linear_2(silu(linear_1(silu(h)) + time_emb_proj(silu(emb))))   (num_blocks times)
    eps = out_proj(silu(h))                                  (out_proj starts at zero)
Class conditioning as in the U-Net: num_classes + 1 embedding rows, the last is the null label
for classifier-free guidance (Ho & Salimans 2022).
"""
import numpy as np

from ..checks import check_float_array, check_positive_int, check_seed, model_labels, model_timesteps
from ..nn.autograd import Tensor
from ..backend import array_module, get_backend
from ..nn import Embedding, Linear, Module, ModuleList
from ..nn.functional import silu
from ..nn.timestep import TimestepEmbedding


class MLPBlock(Module):
    """h + linear_2(silu(linear_1(silu(h)) + time_emb_proj(silu(emb))))."""

    def __init__(self, hidden, temb_channels, rng):
        super().__init__()
        self.linear_1 = Linear(hidden, hidden, rng=rng)
        self.time_emb_proj = Linear(temb_channels, hidden, rng=rng)
        self.linear_2 = Linear(hidden, hidden, rng=rng)

    def forward(self, h, emb):
        r = self.linear_1(silu(h)) + self.time_emb_proj(silu(emb))  # (B, hidden)
        return h + self.linear_2(silu(r))


class MLPDenoiser(Module):
    """eps_theta for points in R^dim.

    Args: dim (data dimension), hidden (width), num_blocks (residual blocks), time_dim (width
    of the sinusoidal timestep features; the timestep MLP has width `hidden`), num_classes
    (None or K: labels 0..K-1 plus the null label K), backend, seed, out_dim (the output width;
    None: dim; 2 dim for a learned variance, improved DDPM sec. 3.1).
    model(x, t, y=None) -> Tensor (B, out_dim).  .config: the arguments (without backend; out_dim
    only where given).
    """

    takes_scalar_timestep = True  # forward(x, t): t may be one number for the whole batch

    def __init__(self, dim=2, hidden=128, num_blocks=3, time_dim=64, num_classes=None, backend="numpy", seed=0,
                 out_dim=None):
        super().__init__()
        dim, hidden = _size(dim, "dim", 1), _size(hidden, "hidden", 1)
        num_blocks, time_dim = _size(num_blocks, "num_blocks", 0), _size(time_dim, "time_dim", 2)
        num_classes = None if num_classes is None else _size(num_classes, "num_classes", 1)
        seed = check_seed(seed)
        self.config = dict(dim=dim, hidden=hidden, num_blocks=num_blocks, time_dim=time_dim,
                           num_classes=num_classes, seed=seed)
        if out_dim is not None:
            self.config["out_dim"] = _size(out_dim, "out_dim", 1)
        rng = np.random.default_rng(seed)
        self.in_proj = Linear(dim, hidden, rng=rng)
        self.time_embedding = TimestepEmbedding(time_dim, hidden, rng=rng)
        self.class_embedding = Embedding(num_classes + 1, hidden, rng=rng) if num_classes is not None else None
        self.blocks = ModuleList([MLPBlock(hidden, hidden, rng) for _ in range(num_blocks)])
        self.out_proj = Linear(hidden, self.config.get("out_dim", dim), rng=rng)
        self.out_proj.weight.data[...] = 0  # eps_theta = 0 at initialisation
        self.out_proj.bias.data[...] = 0
        self.backend = get_backend(backend)
        if self.backend.name != "numpy":
            self.to(self.backend)

    def forward(self, x, t, y=None):
        """x: (B, dim) Tensor or array; t: timesteps (B,) or scalar; y: labels (B,) or None."""
        xp = array_module(self.in_proj.weight.data)
        if not isinstance(x, Tensor):
            x = Tensor(xp.asarray(x))
        check_float_array(x.data, "x")  # float32/float64, finite where reading it is free
        if x.ndim != 2 or x.shape[1] != self.config["dim"]:
            raise ValueError(f"MLPDenoiser expects x of shape (B, {self.config['dim']}), got {tuple(x.shape)}")
        B = x.shape[0]
        # t and y where the parameters live, checked as refdiff.checks's rule says (no host
        # round trip for device arrays)
        t = _unwrap(t)
        # Fast path: a sampler asks for one timestep for the whole batch. Then the timestep path
        # (sinusoid, two linear layers, SiLU, and each block's time_emb_proj) runs on one row
        # and broadcasts over the batch, instead of on B identical rows. Measured gain on 1000
        # DDPM steps of 2000 points: benchmarks/RESULTS.md ("Forward passes and sampling").
        rows = 1 if _same_timestep(t) else B
        t = model_timesteps(t, B, xp)[:rows]
        features = self.backend.timestep_embedding(t, self.config["time_dim"])  # (rows, time_dim)
        emb = self.time_embedding(Tensor(features.astype(self.in_proj.weight.dtype, copy=False)))  # (rows, hidden)
        K = self.config["num_classes"]
        if K is not None:
            emb = emb + self.class_embedding(model_labels(_unwrap(y), B, K, xp))
        elif y is not None:
            raise ValueError("this MLPDenoiser is unconditional (num_classes=None) but class labels y were given")
        h = self.in_proj(x)  # (B, hidden)
        for block in self.blocks:
            h = block(h, emb)
        return self.out_proj(silu(h))  # (B, out_dim)


def _same_timestep(t):
    """True when t is one number for the whole batch: a scalar, or a host array of equal values
    (a device array is not read, which would synchronise with the GPU)."""
    if isinstance(t, np.ndarray):
        return t.ndim == 0 or (t.size > 0 and bool((t == t.flat[0]).all()))
    return np.ndim(t) == 0 and not hasattr(t, "__cuda_array_interface__")


def _unwrap(a):
    """The array of a Tensor; anything else as it is."""
    return a.data if isinstance(a, Tensor) else a


def _size(value, name, minimum):
    """A size argument (refdiff.checks.check_positive_int: floats, bools, None refused), the
    range error naming the MLP."""
    try:
        return check_positive_int(value, name, minimum)
    except ValueError:
        raise ValueError(f"MLPDenoiser: {name} must be an int >= {minimum}, got {value!r}") from None
