"""Module: a tree of layers that owns named parameters, the way PyTorch's nn.Module does.

A module's attributes are of three kinds, sorted out when they are assigned:
  Tensor   -> a parameter (trained, appears in parameters() and state_dict())
  Module   -> a child module (its parameters appear under "child_name.")
  register_buffer(name, array) -> a buffer (saved in state_dict(), never trained)

Names are dotted paths in assignment order ("down_blocks.0.resnets.1.conv1.weight"); the
U-Net picks its attribute names so that these paths equal the keys of a diffusers
UNet2DModel state dict, and a checkpoint then loads by name.

This is plumbing, not math: no equation lives here.
"""
from collections import OrderedDict

import numpy as np

from .autograd import Tensor
from ..backend import array_module, get_backend, to_numpy


class Module:
    """Base class of every layer and network.

    Subclasses set parameters and children as attributes in __init__ and define forward();
    calling the module calls forward().
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # -- attribute bookkeeping ------------------------------------------------------------------
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}.__init__ must call super().__init__() before setting {name!r}")
        for table in (self._parameters, self._buffers, self._modules):
            table.pop(name, None)
        if isinstance(value, Tensor):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        # only called when normal lookup fails: parameters, buffers and children live in tables
        for table in ("_parameters", "_buffers", "_modules"):
            entries = self.__dict__.get(table)
            if entries is not None and name in entries:
                return entries[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def register_buffer(self, name, array):
        """Keep `array` as a non-trained state entry called `name` (saved by state_dict)."""
        self._buffers[name] = array

    # -- walking the tree -----------------------------------------------------------------------
    def named_modules(self, prefix=""):
        """(dotted name, module) for this module and every descendant, depth first."""
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def children(self):
        return iter(self._modules.values())

    def named_parameters(self):
        """(dotted name, Tensor) for every parameter of the tree, in definition order."""
        for module_name, module in self.named_modules():
            for name, p in module._parameters.items():
                yield (f"{module_name}.{name}" if module_name else name), p

    def parameters(self):
        """Every parameter Tensor of the tree (what an optimizer updates)."""
        return [p for _, p in self.named_parameters()]

    def named_buffers(self):
        for module_name, module in self.named_modules():
            for name, b in module._buffers.items():
                yield (f"{module_name}.{name}" if module_name else name), b

    def buffers(self):
        return [b for _, b in self.named_buffers()]

    def num_parameters(self):
        return int(sum(p.data.size for p in self.parameters()))

    # -- modes ----------------------------------------------------------------------------------
    def train(self, mode=True):
        """Training mode (dropout active); returns self."""
        for _, module in self.named_modules():
            object.__setattr__(module, "training", bool(mode))
        return self

    def eval(self):
        """Evaluation mode (dropout off); returns self."""
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    # -- saving and loading ---------------------------------------------------------------------
    def state_dict(self):
        """{dotted name: NumPy array (a host copy)} for every parameter and buffer."""
        out = OrderedDict()
        for name, p in self.named_parameters():
            out[name] = np.array(_to_numpy(p.data))  # a copy: writing it leaves the model alone
        for name, b in self.named_buffers():
            out[name] = np.array(_to_numpy(b))
        return out

    def load_state_dict(self, state_dict, strict=True):
        """Copy arrays from `state_dict` into the parameters and buffers with the same names.

        Each array keeps the dtype and device of the entry it replaces. With strict=True (the
        default) the key sets must be equal and every shape must match; otherwise a ValueError
        lists every missing, unexpected and mis-shaped key. With strict=False missing
        and unexpected keys are skipped (and returned), but shapes must still match.

        Returns (missing_keys, unexpected_keys).
        """
        own = OrderedDict(self._state_entries())
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        misshaped = [
            f"{k}: checkpoint {tuple(np.shape(state_dict[k]))} vs model {tuple(own[k][1].shape)}"
            for k in own
            if k in state_dict and tuple(np.shape(state_dict[k])) != tuple(own[k][1].shape)
        ]
        problems = []
        if strict and missing:
            problems.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
        if strict and unexpected:
            problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
        if misshaped:
            problems.append(f"mis-shaped keys ({len(misshaped)}): {'; '.join(misshaped)}")
        if problems:
            raise ValueError(f"cannot load state dict into {type(self).__name__}: " + " | ".join(problems))
        for key, (owner, current) in own.items():
            if key not in state_dict:
                continue
            value = np.asarray(_to_numpy(state_dict[key]))
            if not np.all(np.isfinite(value)) and np.issubdtype(value.dtype, np.floating):
                raise ValueError(f"cannot load state dict: {key} contains NaN or infinity")
            xp = array_module(current)
            owner(xp.asarray(value, dtype=current.dtype))
        return missing, unexpected

    def _state_entries(self):
        """(name, (setter, current array)) for every parameter and buffer."""
        for module_name, module in self.named_modules():
            for name, p in module._parameters.items():
                full = f"{module_name}.{name}" if module_name else name
                yield full, (_param_setter(p), p.data)
            for name in module._buffers:
                full = f"{module_name}.{name}" if module_name else name
                yield full, (_buffer_setter(module, name), module._buffers[name])

    # -- devices --------------------------------------------------------------------------------
    def to(self, backend=None, dtype=None):
        """Move every parameter and buffer to `backend` ("numpy", "cuda" or a Backend) and/or
        cast floating ones to `dtype`; gradients are dropped. Returns self.

        Modules that keep a backend attribute (the networks) update it.
        """
        be = get_backend(backend) if backend is not None else None
        for _, module in self.named_modules():
            for p in module._parameters.values():
                p.data = _convert(p.data, be, dtype)
                p.grad = None
            for name, b in list(module._buffers.items()):
                module._buffers[name] = _convert(b, be, dtype)
            if be is not None and "backend" in module.__dict__:
                object.__setattr__(module, "backend", be)
            if hasattr(module, "_moved"):
                module._moved()
        return self

    # -- calling --------------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, child in self._modules.items():
            child_lines = repr(child).split("\n")
            lines.append(f"  ({name}): " + "\n  ".join(child_lines))
        return "\n".join(lines) + ")" if len(lines) > 1 else lines[0] + ")"


class ModuleList(Module):
    """A list of modules whose parameters are named by their index: "0.weight", "1.weight", ..."""

    def __init__(self, modules=()):
        super().__init__()
        for module in modules:
            self.append(module)

    def append(self, module):
        if not isinstance(module, Module):
            raise TypeError(f"ModuleList holds Modules, got {type(module).__name__}")
        self._modules[str(len(self._modules))] = module
        return self

    def __getitem__(self, index):
        return list(self._modules.values())[index]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


def _to_numpy(a):
    return to_numpy(a.data if isinstance(a, Tensor) else a)


def _convert(a, backend, dtype):
    if backend is not None:
        a = backend.asarray(a if array_module(a) is backend.xp else _to_numpy(a))
    if dtype is not None and np.issubdtype(a.dtype, np.floating):
        a = a.astype(dtype)
    return a


def _param_setter(p):
    def set_data(value):
        p.data = value
        p.grad = None

    return set_data


def _buffer_setter(module, name):
    def set_buffer(value):
        module._buffers[name] = value

    return set_buffer
