"""Optimizers, gradient clipping, learning-rate warmup and the exponential moving average.

References
    SGD with momentum    PyTorch torch.optim.SGD (dampening 0, no Nesterov)
    Adam                 Kingma & Ba 2015, "Adam: A Method for Stochastic Optimization", Algorithm 1
    AdamW                Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization", Algorithm 2,
                         with PyTorch's placement of the decay: p <- p - lr * wd * p before the Adam update
    clip_grad_norm       PyTorch torch.nn.utils.clip_grad_norm_ (global L2 norm, 1e-6 in the denominator)
    warmup_lr            diffusers get_constant_schedule_with_warmup (linear from 0 to base_lr)
    EMA                  diffusers training_utils.EMAModel (decay schedule, update_after_step, warm-up)

A parameter is any object with `.data` (a NumPy or CuPy array) and `.grad` (an array of the same
shape, or None). Optimizers update `.data` in place (so anything holding the array sees the new
values) and never write into `.grad`; a parameter whose `.grad` is None is skipped for that step.
Every update runs through the array module of the parameter (`refdiff.backend.array_module`), so
the same code serves the NumPy and the CUDA backends. Moment buffers have the parameter's dtype.

Checked once against torch 2.13 (torch.optim.SGD/Adam/AdamW and clip_grad_norm_, float64, 20
steps with warmup and clipping): the parameters agree to 2.2e-16, the norms to 1e-12 relative.

State dicts are flat {str: value}: "step" (int) and the per-parameter arrays keyed by the
parameter's index in the list given to the constructor ("exp_avg.3"), as NumPy arrays, so a
checkpoint can keep the arrays in a safetensors file and the scalars in JSON, and resume exactly.
"""
import math

import numpy as np

from ..backend import array_module, to_numpy


# ----------------------------------------------------------------------------------------------
# plumbing shared by the optimizers and the EMA


def _param_list(params):
    """The parameters as a list; accepts an iterable of parameters or a module with .parameters()."""
    if hasattr(params, "parameters") and callable(params.parameters):
        params = params.parameters()
    params = list(params)
    if not params:
        raise ValueError("got an empty list of parameters")
    for i, p in enumerate(params):
        if not hasattr(p, "data") or not hasattr(p, "grad"):
            raise TypeError(f"parameter {i} ({type(p).__name__}) has no .data and .grad: pass Tensors")
    return params


def _to_numpy(a):
    """A NumPy copy of array `a` (from the GPU for a CuPy array)."""
    return np.array(to_numpy(a))  # np.array copies a host array too


def _writable(p):
    """Make p.data writable in place (arrays read from a file can be read-only views)."""
    flags = getattr(p.data, "flags", None)
    if flags is not None and not getattr(flags, "writeable", True):
        p.data = p.data.copy()


def _check_number(name, value, low, high, low_open=False, high_open=False):
    """Raise ValueError unless `value` is a finite real number in the interval low..high."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if not math.isfinite(value) or too_low or too_high:
        interval = ("(" if low_open else "[") + f"{low}, {high}" + (")" if high_open else "]")
        raise ValueError(f"{name} must be in {interval}, got {value}")
    return value


def _check_betas(betas):
    if len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    return (
        _check_number("beta1", betas[0], 0.0, 1.0, high_open=True),
        _check_number("beta2", betas[1], 0.0, 1.0, high_open=True),
    )


class Optimizer:
    """Holds the parameter list, the learning rate, the step count and per-parameter state.

    `self.state[name][i]` is the array `name` (e.g. "exp_avg") of parameter i, or None until the
    parameter first receives a gradient. Subclasses name their state in `_state_names` and
    implement `step()`.
    """

    _state_names = ()

    def __init__(self, params, lr):
        self.params = _param_list(params)
        self.lr = lr
        self.step_count = 0  # number of step() calls so far: the t of Adam's bias correction
        self.state = {name: [None] * len(self.params) for name in self._state_names}

    @property
    def lr(self):
        return self._lr

    @lr.setter
    def lr(self, value):
        # 0 is allowed here (a warmup schedule starts at 0); the constructors require lr > 0
        self._lr = _check_number("lr", value, 0.0, math.inf, high_open=True)

    def zero_grad(self):
        """Forget the gradients: every parameter's .grad becomes None (PyTorch set_to_none=True)."""
        for p in self.params:
            p.grad = None

    def _buffer(self, name, i):
        """State array `name` of parameter i, created as zeros of the parameter's shape and dtype."""
        if self.state[name][i] is None:
            p = self.params[i]
            self.state[name][i] = array_module(p.data).zeros_like(p.data)
        return self.state[name][i]

    def _params_with_grad(self):
        """(index, parameter, gradient) for every parameter that has a gradient, data made writable."""
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            if p.grad.shape != p.data.shape:
                raise ValueError(f"parameter {i}: grad shape {p.grad.shape} != data shape {p.data.shape}")
            _writable(p)
            yield i, p, p.grad

    def state_dict(self):
        """{"step": int, "<name>.<i>": NumPy array} for every state array that exists."""
        sd = {"step": int(self.step_count)}
        for name in self._state_names:
            for i, a in enumerate(self.state[name]):
                if a is not None:
                    sd[f"{name}.{i}"] = _to_numpy(a)
        return sd

    def load_state_dict(self, sd):
        """Restore what state_dict() returned; arrays go to each parameter's array module and dtype.

        Raises KeyError/ValueError naming the key for a missing step, an unknown key, an index out
        of range or a shape that does not match the parameter.
        """
        if "step" not in sd:
            raise KeyError("optimizer state dict has no 'step'")
        state = {name: [None] * len(self.params) for name in self._state_names}
        for key, value in sd.items():
            if key == "step":
                continue
            name, _, index = key.rpartition(".")
            if name not in state or not index.isdigit():
                expected = ", ".join(f"'{n}.<i>'" for n in self._state_names) or "only 'step'"
                raise KeyError(f"unexpected key {key!r} in {type(self).__name__} state dict (expected {expected})")
            i = int(index)
            if i >= len(self.params):
                raise ValueError(f"key {key!r}: parameter index {i} out of range for {len(self.params)} parameters")
            p = self.params[i]
            if tuple(np.shape(value)) != tuple(p.data.shape):
                raise ValueError(f"key {key!r}: shape {tuple(np.shape(value))} != parameter shape {p.data.shape}")
            state[name][i] = array_module(p.data).asarray(value, dtype=p.data.dtype).copy()
        self.step_count = int(np.asarray(sd["step"]))  # a 0-d array (from safetensors) is fine too
        self.state = state

    def __repr__(self):
        return f"{type(self).__name__}(lr={self.lr}, {len(self.params)} parameters, step={self.step_count})"


# ----------------------------------------------------------------------------------------------
# the update rules


class SGD(Optimizer):
    """Stochastic gradient descent with momentum and L2 weight decay (PyTorch torch.optim.SGD).

        g_t = grad + weight_decay * p                    (L2 penalty folded into the gradient)
        b_t = momentum * b_{t-1} + g_t,   b_0 = 0        (heavy-ball momentum buffer, no dampening)
        p  <- p - lr * b_t                               (b_t = g_t when momentum == 0)
    """

    _state_names = ("momentum_buffer",)

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0):
        _check_number("lr", lr, 0.0, math.inf, low_open=True, high_open=True)
        super().__init__(params, lr)
        self.momentum = _check_number("momentum", momentum, 0.0, 1.0, high_open=True)
        self.weight_decay = _check_number("weight_decay", weight_decay, 0.0, math.inf, high_open=True)

    def step(self):
        self.step_count += 1
        for i, p, grad in self._params_with_grad():
            g = grad + self.weight_decay * p.data if self.weight_decay else grad
            if self.momentum:
                b = self._buffer("momentum_buffer", i)
                b *= self.momentum
                b += g
                g = b
            p.data -= self.lr * g


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015, Algorithm 1), with optional L2 weight decay folded into the gradient.

        g_t   = grad + weight_decay * p                  (L2 penalty, as torch.optim.Adam)
        m_t   = beta1 * m_{t-1} + (1 - beta1) * g_t      (biased first moment)
        v_t   = beta2 * v_{t-1} + (1 - beta2) * g_t^2    (biased second raw moment)
        mhat  = m_t / (1 - beta1^t)                      (bias correction)
        vhat  = v_t / (1 - beta2^t)
        p    <- p - lr * mhat / (sqrt(vhat) + eps)

    t counts the step() calls (shared by all parameters). State: "exp_avg.i" (m), "exp_avg_sq.i" (v).
    """

    _state_names = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        _check_number("lr", lr, 0.0, math.inf, low_open=True, high_open=True)
        super().__init__(params, lr)
        self.betas = _check_betas(betas)
        self.eps = _check_number("eps", eps, 0.0, math.inf, low_open=True, high_open=True)
        self.weight_decay = _check_number("weight_decay", weight_decay, 0.0, math.inf, high_open=True)

    def _l2_gradient(self, p, grad):
        return grad + self.weight_decay * p.data if self.weight_decay else grad

    def _adam_update(self, i, p, g):
        """m, v, bias correction and the parameter update of Algorithm 1 for parameter i."""
        xp = array_module(p.data)
        beta1, beta2 = self.betas
        t = self.step_count
        m = self._buffer("exp_avg", i)
        v = self._buffer("exp_avg_sq", i)
        m *= beta1
        m += (1.0 - beta1) * g  # m_t = beta1 m_{t-1} + (1 - beta1) g_t
        v *= beta2
        v += (1.0 - beta2) * (g * g)  # v_t = beta2 v_{t-1} + (1 - beta2) g_t^2
        bias_correction1 = 1.0 - beta1**t
        bias_correction2 = 1.0 - beta2**t
        mhat = m / bias_correction1
        vhat = v / bias_correction2
        p.data -= self.lr * mhat / (xp.sqrt(vhat) + self.eps)

    def step(self):
        self.step_count += 1
        for i, p, grad in self._params_with_grad():
            self._adam_update(i, p, self._l2_gradient(p, grad))


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter 2019, Algorithm 2): Adam with weight decay decoupled from g.

        p <- p - lr * weight_decay * p                   (decoupled decay, applied first, as PyTorch)
        then the Adam update of `Adam` with g_t = grad (no L2 term in the moments)

    The paper multiplies the decay by a schedule multiplier eta_t; PyTorch (and here) use lr.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    def step(self):
        self.step_count += 1
        for i, p, grad in self._params_with_grad():
            if self.weight_decay:
                p.data -= (self.lr * self.weight_decay) * p.data
            self._adam_update(i, p, grad)


# ----------------------------------------------------------------------------------------------
# gradient clipping and learning-rate warmup


def clip_grad_norm(params, max_norm, error_if_nonfinite=False, sync=True):
    """Scale all gradients together so that their global L2 norm is at most `max_norm`.

        total = sqrt(sum_p sum_i grad_p,i^2)             (parameters with grad None are left out)
        coef  = max_norm / (total + 1e-6)
        grad <- grad * coef      if coef < 1             (torch.nn.utils.clip_grad_norm_)

    The sum of squares is accumulated in float64. Gradients are replaced by new arrays, never
    scaled in place (two parameters may share one gradient array). Returns the total norm before
    clipping as a Python float. With a NaN or infinite norm the gradients are left as they are,
    or a ValueError is raised when error_if_nonfinite is True.

    On the CUDA backend the returned float costs one host synchronisation per call (the norm is
    read back once, after the sum). sync=False never reads it: the norm is returned as a 0-d
    float64 array where the gradients live, and every gradient is multiplied by
    min(1, coef) (by 1 where the norm is NaN or inf), as PyTorch does, which gives the same
    values; error_if_nonfinite needs sync=True. Without any gradient the norm is 0.0 either way.
    """
    params = _param_list(params)
    max_norm = _check_number("max_norm", max_norm, 0.0, math.inf, low_open=True, high_open=True)
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return 0.0
    xp = array_module(grads[0].grad)
    sum_sq = sum(xp.sum(xp.square(p.grad.astype(xp.float64))) for p in grads)  # a 0-d array, not read
    if not sync:
        if error_if_nonfinite:
            raise ValueError("error_if_nonfinite=True needs sync=True (it reads the norm on the host)")
        total = xp.sqrt(sum_sq)
        coef = xp.minimum(max_norm / (total + 1e-6), 1.0)
        coef = xp.where(xp.isfinite(total), coef, 1.0)
        for p in grads:
            p.grad = p.grad * coef.astype(p.grad.dtype)
        return total
    total = math.sqrt(float(sum_sq))  # the one read from the device
    if not math.isfinite(total):
        if error_if_nonfinite:
            raise ValueError(f"the total gradient norm is {total}: the gradients hold NaN or inf")
        return total
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for p in grads:
            p.grad = p.grad * p.grad.dtype.type(coef)
    return total


def warmup_lr(step, base_lr, warmup_steps):
    """Linear warmup: lr = base_lr * min(1, step / warmup_steps); base_lr when warmup_steps == 0.

    `step` is the number of optimizer steps already taken (0 for the first step), so the first
    step runs at lr 0, as diffusers' get_constant_schedule_with_warmup (LambdaLR) does.
    """
    if step < 0 or warmup_steps < 0:
        raise ValueError(f"step and warmup_steps must be >= 0, got step={step}, warmup_steps={warmup_steps}")
    if warmup_steps == 0:
        return float(base_lr)
    return float(base_lr) * min(1.0, step / warmup_steps)


# ----------------------------------------------------------------------------------------------
# exponential moving average of the parameters


class EMA:
    """Exponential moving average of parameters (diffusers EMAModel semantics).

    Each step():
        optimization_step += 1
        step  = max(0, optimization_step - update_after_step - 1)
        decay = 0                                          if step <= 0
              = 1 - (1 + step / inv_gamma)^(-power)        if use_ema_warmup
              = (1 + step) / (10 + step)                   otherwise
        decay = clamp(decay, min_decay, self.decay)
        shadow <- shadow - (1 - decay) * (shadow - p)      for p with requires_grad (default True)
        shadow <- p                                        for p with requires_grad False (frozen)

    Only the parameters passed in are averaged: pass model.parameters() (or the model, whose
    .parameters() is used), never buffers. The average does not look at .grad: a parameter that
    got no gradient this step still has its current value averaged in (as in diffusers).
    Shadow arrays live in the parameter's array module and dtype.
    """

    def __init__(self, params, decay=0.9999, min_decay=0.0, update_after_step=0, use_ema_warmup=False,
                 inv_gamma=1.0, power=2 / 3):
        params = _param_list(params)
        self.decay = _check_number("decay", decay, 0.0, 1.0)
        self.min_decay = _check_number("min_decay", min_decay, 0.0, self.decay)
        if int(update_after_step) != update_after_step or update_after_step < 0:
            raise ValueError(f"update_after_step must be an integer >= 0, got {update_after_step}")
        self.update_after_step = int(update_after_step)
        self.use_ema_warmup = bool(use_ema_warmup)
        self.inv_gamma = _check_number("inv_gamma", inv_gamma, 0.0, math.inf, low_open=True, high_open=True)
        self.power = _check_number("power", power, 0.0, math.inf, low_open=True, high_open=True)
        self.shadow_params = [p.data.copy() for p in params]
        self.optimization_step = 0
        self.cur_decay_value = None
        self._stored = None

    def get_decay(self, optimization_step):
        """The decay used at `optimization_step` (diffusers EMAModel.get_decay)."""
        step = max(0, optimization_step - self.update_after_step - 1)
        if step <= 0:
            return 0.0
        if self.use_ema_warmup:
            decay = 1.0 - (1.0 + step / self.inv_gamma) ** -self.power
        else:
            decay = (1.0 + step) / (10.0 + step)
        decay = min(decay, self.decay)
        return max(decay, self.min_decay)

    def _check_same(self, params):
        params = _param_list(params)
        if len(params) != len(self.shadow_params):
            raise ValueError(f"EMA holds {len(self.shadow_params)} parameters, got {len(params)}")
        for i, (s, p) in enumerate(zip(self.shadow_params, params)):
            if s.shape != p.data.shape:
                raise ValueError(f"parameter {i}: shape {p.data.shape} != EMA shape {s.shape}")
        return params

    def step(self, params):
        """Move every shadow array towards its parameter: shadow -= (1 - decay) * (shadow - p)."""
        params = self._check_same(params)
        self.optimization_step += 1
        decay = self.get_decay(self.optimization_step)
        self.cur_decay_value = decay
        for s, p in zip(self.shadow_params, params):
            if getattr(p, "requires_grad", True):
                s -= (1.0 - decay) * (s - p.data)
            else:
                s[...] = p.data

    def copy_to(self, params):
        """Write the averaged values into the parameters' arrays (in place)."""
        for s, p in zip(self.shadow_params, self._check_same(params)):
            _writable(p)
            p.data[...] = s

    def store(self, params):
        """Keep a copy of the parameters' current values, to put back with restore()."""
        self._stored = [p.data.copy() for p in self._check_same(params)]

    def restore(self, params):
        """Put back the values saved by store() (e.g. after sampling with the EMA weights)."""
        if self._stored is None:
            raise RuntimeError("EMA.restore() called before EMA.store()")
        for a, p in zip(self._stored, self._check_same(params)):
            _writable(p)
            p.data[...] = a
        self._stored = None

    def state_dict(self):
        """Scalars (JSON-able) and "shadow.<i>" NumPy arrays; load_state_dict() restores them all."""
        sd = {
            "decay": self.decay,
            "min_decay": self.min_decay,
            "optimization_step": int(self.optimization_step),
            "update_after_step": self.update_after_step,
            "use_ema_warmup": self.use_ema_warmup,
            "inv_gamma": self.inv_gamma,
            "power": self.power,
        }
        for i, s in enumerate(self.shadow_params):
            sd[f"shadow.{i}"] = _to_numpy(s)
        return sd

    def load_state_dict(self, sd):
        """Restore state_dict(); every shadow array must be present with the stored shape."""
        scalars = ("decay", "min_decay", "optimization_step", "update_after_step", "use_ema_warmup",
                   "inv_gamma", "power")
        n = len(self.shadow_params)
        expected = set(scalars) | {f"shadow.{i}" for i in range(n)}
        missing = sorted(expected - set(sd))
        unexpected = sorted(set(sd) - expected)
        if missing or unexpected:
            raise KeyError(f"EMA state dict: missing keys {missing}, unexpected keys {unexpected}")
        shadow = []
        for i, s in enumerate(self.shadow_params):
            value = sd[f"shadow.{i}"]
            if tuple(np.shape(value)) != tuple(s.shape):
                raise ValueError(f"key 'shadow.{i}': shape {tuple(np.shape(value))} != EMA shape {s.shape}")
            shadow.append(array_module(s).asarray(value, dtype=s.dtype).copy())
        self.decay = float(np.asarray(sd["decay"]))
        self.min_decay = float(np.asarray(sd["min_decay"]))
        self.optimization_step = int(np.asarray(sd["optimization_step"]))
        self.update_after_step = int(np.asarray(sd["update_after_step"]))
        self.use_ema_warmup = bool(np.asarray(sd["use_ema_warmup"]))
        self.inv_gamma = float(np.asarray(sd["inv_gamma"]))
        self.power = float(np.asarray(sd["power"]))
        self.shadow_params = shadow
