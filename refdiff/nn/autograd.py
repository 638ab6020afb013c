"""Reverse-mode automatic differentiation over NumPy (or CuPy) arrays.

A `Tensor` wraps an array. Every operation on Tensors returns a new Tensor that remembers its
inputs (`_parents`) and a closure `_backward` that, given the gradient of the final scalar with
respect to the output (`out.grad`), adds the gradient with respect to each input to that input's
`.grad` (the chain rule, one op at a time). `loss.backward()` sorts the graph topologically and
runs the closures from the loss back to the leaves. The style is micrograd's: each op's forward
and backward sit side by side, and a comment gives the derivative used.

Conventions
- Array-module agnostic: the array module `xp` (numpy or cupy) is taken from the data through
  `refdiff.backend.array_module`, so the same code runs on the CUDA backend unchanged.
- dtype is preserved: float32 data gives float32 outputs and float32 gradients. A Python (or
  NumPy) scalar operand stays a Python number in the arithmetic (`x * 2.0` computes
  `x.data * 2.0`), so it takes the dtype of the Tensor it meets (NumPy 2 and CuPy treat Python
  scalars as "weak", NEP 50) and, on CuPy, costs no array allocation and no host-to-device copy.
  It is a constant: it gets no gradient.
- Broadcasting: an op whose inputs were broadcast sums its gradient back to each input's shape
  (`unbroadcast`).
- Gradients of leaves (Tensors created by the user, e.g. parameters) accumulate across
  `backward()` calls until the caller resets `.grad = None` (an optimizer's `zero_grad`).
  Intermediate results keep no gradient after `backward()`, and the graph is released as
  `backward()` walks it (`retain_graph=True` keeps both), so memory is freed early.
- Under `with no_grad():` no graph is recorded: no parents, no closures.

References: A. Karpathy, micrograd (engine.py); Baydin et al., "Automatic differentiation in
machine learning: a survey", JMLR 2018, sec. 3.2 (reverse mode).
"""
import contextlib
import numbers

import numpy as np

from ..backend import array_module, to_numpy

_grad_enabled = True


def is_grad_enabled() -> bool:
    """True unless inside a `no_grad()` block."""
    return _grad_enabled


@contextlib.contextmanager
def no_grad():
    """Context manager: operations inside record no graph (for sampling and evaluation)."""
    global _grad_enabled
    previous = _grad_enabled
    _grad_enabled = False
    try:
        yield
    finally:
        _grad_enabled = previous


@contextlib.contextmanager
def enable_grad():
    """Context manager: record the graph again inside a no_grad() block (classifier guidance takes
    a gradient with respect to x_t in the middle of sampling)."""
    global _grad_enabled
    previous = _grad_enabled
    _grad_enabled = True
    try:
        yield
    finally:
        _grad_enabled = previous


def unbroadcast(grad, shape):
    """Sum `grad` over the axes that broadcasting added or stretched, so it has `shape`.

    If y = broadcast(x) then dL/dx = sum of dL/dy over the copies of each element of x.
    """
    shape = tuple(shape)
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)  # leading axes added by broadcasting
    stretched = tuple(extra + i for i, n in enumerate(shape) if n == 1 and grad.shape[extra + i] != 1)
    return grad.sum(axis=tuple(range(extra)) + stretched, keepdims=True).reshape(shape)


def _is_float(dtype) -> bool:
    return np.issubdtype(dtype, np.floating)


class Tensor:
    """An array with a gradient: `Tensor(data, requires_grad=False)`.

    `data` is a NumPy or CuPy array (kept as is, no copy), or anything `numpy.asarray` accepts
    (Python scalars and lists). `.grad` is None until `backward()` reaches this Tensor, then an
    array of the same shape and dtype as `.data`.
    """

    # `array (op) Tensor` defers to Tensor's reflected operator instead of looping over elements
    __array_ufunc__ = None
    __array_priority__ = 100

    def __init__(self, data, requires_grad=False):
        if isinstance(data, Tensor):
            data = data.data
        elif array_module(data) is np and not isinstance(data, np.ndarray):
            data = np.asarray(data)
        if requires_grad and not _is_float(data.dtype):
            raise TypeError(f"only floating-point Tensors can require gradients, got dtype {data.dtype}")
        self.data = data
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._parents = ()
        self._backward = None

    # ---- plumbing: building the graph ------------------------------------------------------

    def _lift(self, other):
        """`other` as an operand: a Tensor as it is, a scalar as a _Scalar (a Python number), an
        array as a constant Tensor."""
        if isinstance(other, Tensor):
            return other
        if isinstance(other, numbers.Number):
            return _Scalar(other)
        return Tensor(other)

    def _child(self, data, *parents):
        """The output Tensor of an op on `parents`, recording the graph when a gradient is needed."""
        out = Tensor(data)
        if _grad_enabled and any(p.requires_grad for p in parents):
            out.requires_grad = True
            out._parents = parents
        return out

    def _set_backward(self, backward):
        """Attach an op's backward closure to its output (only when a graph is recorded)."""
        if self.requires_grad and self._parents:
            self._backward = backward
        return self

    def _accumulate(self, grad):
        """self.grad += grad, after summing broadcast axes away and casting to self.dtype."""
        if not self.requires_grad:
            return
        grad = unbroadcast(grad, self.shape)
        if self.grad is None:
            # a leaf owns its gradient (optimizers may update it in place): copy; an intermediate
            # result may share the array with the op that produced it (read, never written)
            self.grad = grad.astype(self.dtype, copy=not self._parents)
        elif self._parents:
            self.grad = self.grad + grad
        else:
            self.grad += grad

    @property
    def xp(self):
        """The array module of the data: numpy or cupy."""
        return array_module(self.data)

    @property
    def shape(self):
        return self.data.shape

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def size(self):
        return self.data.size

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor(shape={self.shape}, dtype={self.dtype}{grad})"

    def detach(self):
        """A Tensor sharing this data, cut from the graph."""
        return Tensor(self.data)

    def item(self):
        """The value of a one-element Tensor as a Python number (a host transfer on CUDA)."""
        return self.data.item()

    def numpy(self):
        """The data as a NumPy array on the host."""
        return to_numpy(self.data)

    # ---- backward pass ---------------------------------------------------------------------

    def backward(self, grad=None, retain_graph=False):
        """Accumulate d(self)/d(leaf) into the `.grad` of every leaf that requires a gradient.

        `grad` is dL/d(self) for some outer L; it may be omitted only for a one-element Tensor
        (then dL/dself = 1). Without `retain_graph`, the graph is freed as it is walked (intermediate
        results drop their closures, inputs and gradients), and a second backward() through it raises.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a Tensor that does not require grad (no graph was recorded)")
        if grad is None:
            if self.size != 1:
                raise RuntimeError(
                    f"backward() without a grad argument needs a one-element Tensor, got shape {self.shape}"
                )
            grad = self.xp.ones(self.shape, dtype=self.dtype)
        else:
            grad = grad.data if isinstance(grad, Tensor) else self.xp.asarray(grad, dtype=self.dtype)
            if grad.shape != self.shape:
                raise ValueError(f"backward(): grad of shape {grad.shape} for a Tensor of shape {self.shape}")

        order = self._topological_order()
        for node in order:  # intermediate gradients from an earlier backward() must not leak in
            if node._parents:
                node.grad = None
        self._accumulate(grad)
        for node in reversed(order):
            if node._backward is not None and node.grad is not None:
                node._backward()
            if node._parents and not retain_graph:
                node._parents, node._backward, node.grad = (), _graph_freed, None

    def _topological_order(self):
        """Nodes of the graph ending at self, each after all of its inputs (iterative DFS)."""
        order, visited, stack = [], set(), [(self, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                order.append(node)
                continue
            if id(node) in visited:
                continue
            visited.add(id(node))
            stack.append((node, True))
            for parent in node._parents:
                if id(parent) not in visited:
                    stack.append((parent, False))
        return order

    # ---- elementwise arithmetic --------------------------------------------------------------

    def __add__(self, other):
        other = self._lift(other)
        out = self._child(self.data + other.data, self, other)

        def backward():  # d(a+b)/da = 1, d(a+b)/db = 1
            self._accumulate(out.grad)
            other._accumulate(out.grad)

        return out._set_backward(backward)

    def __radd__(self, other):
        return self._lift(other) + self

    def __sub__(self, other):
        other = self._lift(other)
        out = self._child(self.data - other.data, self, other)

        def backward():  # d(a-b)/da = 1, d(a-b)/db = -1
            self._accumulate(out.grad)
            if other.requires_grad:
                other._accumulate(-out.grad)

        return out._set_backward(backward)

    def __rsub__(self, other):
        return self._lift(other) - self

    def __mul__(self, other):
        other = self._lift(other)
        out = self._child(self.data * other.data, self, other)

        def backward():  # d(a*b)/da = b, d(a*b)/db = a
            if self.requires_grad:
                self._accumulate(out.grad * other.data)
            if other.requires_grad:
                other._accumulate(out.grad * self.data)

        return out._set_backward(backward)

    def __rmul__(self, other):
        return self._lift(other) * self

    def __truediv__(self, other):
        other = self._lift(other)
        out = self._child(self.data / other.data, self, other)

        def backward():  # d(a/b)/da = 1/b, d(a/b)/db = -a/b^2 = -(a/b)/b
            g_over_b = out.grad / other.data
            self._accumulate(g_over_b)
            if other.requires_grad:
                other._accumulate(-g_over_b * out.data)

        return out._set_backward(backward)

    def __rtruediv__(self, other):
        return self._lift(other) / self

    def __neg__(self):
        out = self._child(-self.data, self)

        def backward():  # d(-a)/da = -1
            self._accumulate(-out.grad)

        return out._set_backward(backward)

    def __pow__(self, exponent):
        if isinstance(exponent, Tensor) or not isinstance(exponent, numbers.Number):
            raise TypeError(f"Tensor ** exponent needs a Python scalar exponent, got {type(exponent).__name__}")
        exponent = _python_number(exponent)
        out = self._child(self.data**exponent, self)

        def backward():  # d(a^p)/da = p a^(p-1)
            self._accumulate(out.grad * (exponent * self.data ** (exponent - 1)))

        return out._set_backward(backward)

    def exp(self):
        out = self._child(self.xp.exp(self.data), self)

        def backward():  # d(e^a)/da = e^a
            self._accumulate(out.grad * out.data)

        return out._set_backward(backward)

    def log(self):
        out = self._child(self.xp.log(self.data), self)

        def backward():  # d(log a)/da = 1/a
            self._accumulate(out.grad / self.data)

        return out._set_backward(backward)

    def sqrt(self):
        out = self._child(self.xp.sqrt(self.data), self)

        def backward():  # d(sqrt a)/da = 1 / (2 sqrt a)
            self._accumulate(out.grad / (2 * out.data))

        return out._set_backward(backward)

    # ---- matrix product ------------------------------------------------------------------------

    def __matmul__(self, other):
        other = other if isinstance(other, Tensor) else Tensor(other)
        if self.ndim == 0 or other.ndim == 0:
            raise ValueError(f"matmul needs at least 1-D operands, got shapes {self.shape} and {other.shape}")
        if self.shape[-1] != other.shape[-2 if other.ndim > 1 else -1]:
            raise ValueError(f"matmul shape mismatch: {self.shape} @ {other.shape}")
        out = self._child(self.data @ other.data, self, other)

        def backward():  # C = A B: dA = dC B^T, dB = A^T dC (batch axes summed by unbroadcast)
            xp = self.xp
            # view 1-D operands as matrices: a (n,) as (1, n), b (n,) as (n, 1)
            a = self.data[None, :] if self.ndim == 1 else self.data
            b = other.data[:, None] if other.ndim == 1 else other.data
            g = out.grad
            if other.ndim == 1:
                g = xp.expand_dims(g, -1)
            if self.ndim == 1:
                g = xp.expand_dims(g, -2)
            if self.requires_grad:
                ga = g @ xp.swapaxes(b, -1, -2)
                self._accumulate(ga[..., 0, :] if self.ndim == 1 else ga)
            if other.requires_grad:
                gb = xp.swapaxes(a, -1, -2) @ g
                other._accumulate(gb[..., :, 0] if other.ndim == 1 else gb)

        return out._set_backward(backward)

    def __rmatmul__(self, other):
        return Tensor(other) @ self

    # ---- reductions ----------------------------------------------------------------------------

    def _axes(self, axis):
        """`axis` (None, int or tuple) as a tuple of non-negative axes."""
        if axis is None:
            return tuple(range(self.ndim))
        axes = (axis,) if isinstance(axis, numbers.Integral) else tuple(axis)
        return tuple(a % self.ndim if self.ndim else a for a in axes)

    def sum(self, axis=None, keepdims=False):
        axes = self._axes(axis)
        out = self._child(self.data.sum(axis=axes, keepdims=keepdims), self)

        def backward():  # d(sum_i a_i)/da_j = 1: copy the gradient along the summed axes
            g = out.grad if keepdims else self.xp.expand_dims(out.grad, axes)
            self._accumulate(self.xp.broadcast_to(g, self.shape))

        return out._set_backward(backward)

    def mean(self, axis=None, keepdims=False):
        axes = self._axes(axis)
        count = 1
        for a in axes:
            count *= self.shape[a]
        return self.sum(axis=axes, keepdims=keepdims) * (1.0 / count)  # mean = sum / count

    # ---- shape -----------------------------------------------------------------------------------

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        out = self._child(self.data.reshape(shape), self)

        def backward():  # reshape moves no values: reshape the gradient back
            self._accumulate(out.grad.reshape(self.shape))

        return out._set_backward(backward)

    def transpose(self, *axes):
        """Permute axes (all reversed when none given), like numpy.transpose."""
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        axes = tuple(reversed(range(self.ndim))) if not axes else tuple(a % self.ndim for a in axes)
        if sorted(axes) != list(range(self.ndim)):
            raise ValueError(f"transpose axes {axes} are not a permutation of the {self.ndim} axes of {self.shape}")
        out = self._child(self.data.transpose(axes), self)

        def backward():  # apply the inverse permutation to the gradient
            inverse = [0] * len(axes)
            for i, a in enumerate(axes):
                inverse[a] = i
            self._accumulate(out.grad.transpose(inverse))

        return out._set_backward(backward)

    permute = transpose

    @property
    def T(self):
        return self.transpose()

    def __getitem__(self, index):
        index = _plain_index(index, self.xp)
        out = self._child(self.data[index], self)

        def backward():  # x[index] picks values: scatter-add the gradient back to where they came from
            g = self.xp.zeros(self.shape, dtype=out.grad.dtype)
            if _is_basic_index(index):
                g[index] = out.grad  # a basic index names each element at most once
            else:
                self.xp.add.at(g, index, out.grad)  # integer arrays may repeat an element
            self._accumulate(g)

        return out._set_backward(backward)


class _Scalar(Tensor):
    """A scalar operand of an op (the 2.0 of `x * 2.0` or `2.0 - x`): a constant leaf of the graph
    whose .data is the Python number itself, not an array. The ops use it as they use a Tensor
    (`2.0 - x` runs Tensor.__sub__ with this as `self`); it never requires a gradient."""

    def __init__(self, value):  # no array: nothing to allocate, nothing to copy to a device
        self.data, self.grad, self.requires_grad = _python_number(value), None, False
        self._parents, self._backward = (), None

    def __repr__(self):
        return f"_Scalar({self.data!r})"


def _python_number(value):
    """A NumPy scalar (np.float64(0.5)) as the Python number it holds: NumPy 2 would let a
    float64 scalar promote a float32 array, a Python number keeps the array's dtype."""
    return value.item() if isinstance(value, np.generic) else value


def _graph_freed():
    raise RuntimeError(
        "backward() reached a part of the graph that an earlier backward() already freed; "
        "call the earlier backward(retain_graph=True) to keep it"
    )


def _plain_index(index, xp):
    """An index with Tensors replaced by their arrays, and index arrays moved to `xp` (CuPy)."""
    def plain(i):
        i = i.data if isinstance(i, Tensor) else i
        if xp is not np and isinstance(i, (np.ndarray, list)):
            i = xp.asarray(i)
        return i

    return tuple(plain(i) for i in index) if isinstance(index, tuple) else plain(index)


def _is_basic_index(index):
    """True for an index of ints, slices, None and Ellipsis only (a view, no repeats)."""
    parts = index if isinstance(index, tuple) else (index,)
    return all(isinstance(i, (numbers.Integral, slice, type(None), type(Ellipsis))) for i in parts)


def concat(tensors, axis=0):
    """Join Tensors along an existing axis (numpy.concatenate); the gradient is split back."""
    tensors = [t if isinstance(t, Tensor) else Tensor(t) for t in tensors]
    if not tensors:
        raise ValueError("concat needs at least one Tensor")
    first = tensors[0]
    axis = axis % first.ndim
    for t in tensors[1:]:
        if t.ndim != first.ndim or any(a != b for i, (a, b) in enumerate(zip(t.shape, first.shape)) if i != axis):
            shapes = [t.shape for t in tensors]
            raise ValueError(f"concat along axis {axis}: shapes {shapes} differ outside that axis")
    out = first._child(first.xp.concatenate([t.data for t in tensors], axis=axis), *tensors)

    def backward():  # each input gets its own slice of the gradient
        start = 0
        for t in tensors:
            stop = start + t.shape[axis]
            if t.requires_grad:
                index = (slice(None),) * axis + (slice(start, stop),)
                t._accumulate(out.grad[index])
            start = stop

    return out._set_backward(backward)
