"""A fake GPU for tests on machines without one: proves that code makes no host round trip.

`DeviceArray` wraps a NumPy array and stands for an array in GPU memory, `xp` stands for
CuPy. Arithmetic, indexing, methods and `xp.<function>` calls compute with NumPy and return
DeviceArrays again ("device to device"). Everything that would move data between host and
device on a real GPU goes through `_transfer()`:
    reading values on the host   .get() .item() .tolist() bool() int() float() repr()
                                 np.asarray(a) (the __array__ protocol)
    copying host data in         xp.asarray / xp.array of host data (NumPy arrays, lists,
                                 Python numbers), a NumPy array as an operand or index
Inside `capturing()` (a CUDA-graph capture) also a cuBLAS or cuRAND call raises CaptureError.
Inside `no_host_transfers()` a transfer raises HostTransfer (naming what did it); outside, it
is allowed and counted in `TRANSFERS`. Python scalars as operands (`a * 2.0`) and
`xp.full(shape, 2.0)` are no transfer: on a GPU they are kernel arguments.

As strict as CuPy, also outside no_host_transfers (issue 15: a test whose arrays are NumPy
hides bugs that fail at the first contact with CuPy): a DeviceArray is not a NumPy array, has no
buffer protocol, refuses implicit conversion (`np.asarray(a)` raises TypeError, as CuPy's
"Implicit conversion to a NumPy array is not allowed"), refuses NumPy arrays as operands of
its arithmetic and of xp functions (CuPy's "Unsupported type"), and its `.data` is a
MemoryPointer (the device address), not the values. Host values come from `.get()`,
`.item()`, `.tolist()`, `float()`/`int()`/`bool()` of one element, as with CuPy.

CuPy is recognised by `refdiff.backend.array_module` through the module name of the array's
type, so DeviceArray says it comes from "cupy" and `installed()` puts `xp` in sys.modules under
that name for the duration of a test (monkeypatch undoes it). `backend()` is a refdiff Backend
on this fake device whose timestep embedding is computed on the device, as the CUDA kernel is;
the other fused ops are not provided.
"""
import contextlib
import math
import sys
import types

import numpy as np

from refdiff.backend import Backend
from refdiff.kernels import TWINS


class HostTransfer(AssertionError):
    """Raised inside no_host_transfers() where a real GPU would copy between host and device."""


class CaptureError(AssertionError):
    """Raised inside capturing() by a call that CuPy refuses during a CUDA-graph capture."""


# During a CUDA-graph capture CuPy refuses cuBLAS and cuRAND calls (cupy/cupy#6290; CuPy 14 raises
# NotImplementedError); a host transfer is a synchronisation, illegal in a capture.
BLAS_FUNCTIONS = {"matmul", "dot", "vdot", "inner", "outer", "tensordot", "einsum", "__matmul__", "__rmatmul__",
                  "__imatmul__"}
_capturing = [False]


@contextlib.contextmanager
def capturing():
    """Inside this block, as inside Stream.begin_capture() / end_capture(): a cuBLAS call (a
    matrix product), a cuRAND call (a random draw, a new generator) or a host transfer raises."""
    previous = _capturing[0]
    _capturing[0] = True
    try:
        with no_host_transfers():
            yield
    finally:
        _capturing[0] = previous


def _library_call(library, what):
    if _capturing[0]:
        raise CaptureError(f"{library} call during stream capture: {what} (CuPy refuses it: cupy/cupy#6290)")


TRANSFERS = []  # what transferred (outside no_host_transfers), in order
_forbidden = [False]


@contextlib.contextmanager
def no_host_transfers():
    """Inside this block any host <-> device transfer raises HostTransfer."""
    previous = _forbidden[0]
    _forbidden[0] = True
    try:
        yield
    finally:
        _forbidden[0] = previous


def _transfer(what):
    if _forbidden[0]:
        raise HostTransfer(f"host <-> device transfer: {what}")
    TRANSFERS.append(what)


# ---- moving between the two worlds --------------------------------------------------------------


def _unwrap(x, operand=True):
    """Arguments as NumPy sees them: DeviceArrays unwrapped, containers walked. A host NumPy
    array among device arguments is refused as CuPy refuses it (TypeError), except as an index
    or an assigned value (operand=False), where CuPy copies it to the device: a transfer."""
    if isinstance(x, DeviceArray):
        return x._a
    if isinstance(x, np.ndarray):
        _transfer(f"a host NumPy array {x.shape} used as a device operand")
        if operand:
            raise TypeError(f"Unsupported type {type(x)} (a host NumPy array {x.shape} as an operand of a "
                            f"CuPy operation: copy it with xp.asarray first)")
        return x
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(i, operand) for i in x)
    if isinstance(x, dict):
        return {k: _unwrap(v, operand) for k, v in x.items()}
    return x


def _device_memory(x):
    """DeviceArrays as the NumPy arrays holding their values, for a kernel that runs on the
    device (no transfer: the kernel reads device memory); containers walked."""
    if isinstance(x, DeviceArray):
        return x._a
    if isinstance(x, (list, tuple)):
        return type(x)(_device_memory(i) for i in x)
    if isinstance(x, dict):
        return {k: _device_memory(v) for k, v in x.items()}
    return x


def _wrap(x):
    """NumPy results as device results: arrays and NumPy scalars (CuPy returns 0-d arrays)."""
    if isinstance(x, np.ndarray):
        return DeviceArray(x)
    if isinstance(x, np.generic):
        return DeviceArray(np.asarray(x))
    if isinstance(x, tuple):
        return tuple(_wrap(i) for i in x)
    if isinstance(x, list):
        return [_wrap(i) for i in x]
    if isinstance(x, np.random.Generator):
        return _Proxy(x, library="cuRAND")
    return x


def _device_call(f):
    def call(*args, **kwargs):
        return _wrap(f(*_unwrap(args), **_unwrap(kwargs)))

    return call


# ---- the array ---------------------------------------------------------------------------------


class DeviceArray:
    """A NumPy array standing for an array in device memory (see the module docstring)."""

    __module__ = "cupy"  # what refdiff.backend.array_module looks at

    def __init__(self, a):
        self._a = a

    # metadata lives on the host: free
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: DeviceArray(self._a.T))

    def __len__(self):
        return len(self._a)

    def __getattr__(self, name):  # methods: .reshape .sum .astype ... run on the device
        if name.startswith("__") or name == "_a":  # no __array_interface__ etc.: NumPy must use __array__
            raise AttributeError(name)
        attr = getattr(self._a, name)
        return _device_call(attr) if callable(attr) else _wrap(attr)

    # reading values on the host
    def get(self):
        _transfer(".get()")
        return self._a.copy()

    def item(self):
        _transfer(".item()")
        return self._a.item()

    def tolist(self):
        _transfer(".tolist()")
        return self._a.tolist()

    def __array__(self, dtype=None, copy=None):
        _transfer("numpy.asarray() of a device array")
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct "
                        "a NumPy array explicitly.")  # CuPy's message

    @property
    def data(self):
        """The device memory, as CuPy's `.data` (a MemoryPointer): not the values."""
        return MemoryPointer(self)

    def __bool__(self):
        _transfer("bool() of a device array")
        return bool(self._a)

    def __int__(self):
        _transfer("int() of a device array")
        return int(self._a)

    def __float__(self):
        _transfer("float() of a device array")
        return float(self._a)

    def __index__(self):
        _transfer("a device array used as a Python int")
        return self._a.__index__()

    def __repr__(self):
        _transfer("repr() of a device array")
        return f"DeviceArray({self._a!r})"

    # NumPy functions and ufuncs called on device arrays stay on the device (as with CuPy)
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if ufunc.__name__ in BLAS_FUNCTIONS:
            _library_call("cuBLAS", f"numpy.{ufunc.__name__}")
        return _wrap(getattr(ufunc, method)(*_unwrap(inputs), **_unwrap(kwargs)))

    def __array_function__(self, func, types, args, kwargs):
        if func.__name__ in BLAS_FUNCTIONS:
            _library_call("cuBLAS", f"numpy.{func.__name__}")
        return _wrap(func(*_unwrap(args), **_unwrap(kwargs)))

    def __getitem__(self, index):
        return _wrap(self._a[_unwrap(index, operand=False)])

    def __setitem__(self, index, value):
        self._a[_unwrap(index, operand=False)] = _unwrap(value, operand=False)


class MemoryPointer:
    """What CuPy's `a.data` is: a device address, with no values to read on the host."""

    def __init__(self, array):
        self.ptr = id(array._a)
        self.mem = None

    def __repr__(self):
        return f"<MemoryPointer 0x{self.ptr:x}>"


def _operator(name, in_place=False):
    def op(self, *other):
        if name in BLAS_FUNCTIONS:
            _library_call("cuBLAS", "a @ b")
        result = getattr(self._a, name)(*_unwrap(other))
        if result is NotImplemented:  # e.g. a refdiff Tensor on the other side: its reflected op runs
            return NotImplemented
        return self if in_place else _wrap(result)

    op.__name__ = name
    return op


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor"):
    setattr(DeviceArray, f"__{_name}__", _operator(f"__{_name}__"))
    setattr(DeviceArray, f"__r{_name}__", _operator(f"__r{_name}__"))
    setattr(DeviceArray, f"__i{_name}__", _operator(f"__i{_name}__", in_place=True))
for _name in ("lt", "le", "gt", "ge", "eq", "ne", "neg", "pos", "abs", "invert"):
    setattr(DeviceArray, f"__{_name}__", _operator(f"__{_name}__"))
DeviceArray.__hash__ = None


# ---- the array module ----------------------------------------------------------------------


class _Proxy:
    """NumPy (or one of its modules, ufuncs, random generators) seen from the device: calls
    take and return DeviceArrays; types (xp.float32) are NumPy's own."""

    def __init__(self, target, library=None):
        self._target = target
        self._library = library  # "cuRAND" for xp.random and its generators

    def __call__(self, *args, **kwargs):
        name = getattr(self._target, "__name__", "")
        if self._library or name in BLAS_FUNCTIONS:
            _library_call(self._library or "cuBLAS", f"xp.{name}")
        return _device_call(self._target)(*args, **kwargs)

    def __getattr__(self, name):
        attr = getattr(self._target, name)
        if isinstance(attr, type):
            return DeviceArray if attr is np.ndarray else attr
        if isinstance(attr, types.ModuleType) or callable(attr):
            return _Proxy(attr, self._library or ("cuRAND" if attr is np.random else None))
        return attr


class _FakeCuPy(_Proxy):
    """The array module of DeviceArrays (stands for cupy)."""

    __name__ = "cupy"

    def asarray(self, a, dtype=None):
        """A device array: no copy for a device array, a host-to-device copy for host data."""
        if isinstance(a, DeviceArray):
            return a if dtype is None or a.dtype == dtype else a.astype(dtype)
        _transfer(f"xp.asarray() of host data ({type(a).__name__})")
        return DeviceArray(np.array(a, dtype=dtype))

    array = asarray


xp = _FakeCuPy(np)


def installed(monkeypatch):
    """Make `import cupy` (and so refdiff.backend.array_module) answer with this fake."""
    monkeypatch.setitem(sys.modules, "cupy", xp)
    TRANSFERS.clear()


def to_device(a):
    """A host array copied to the fake device (a transfer, allowed outside no_host_transfers)."""
    return xp.asarray(np.asarray(a))


def to_host(a):
    """A device array copied to the host (a transfer, allowed outside no_host_transfers)."""
    return a.get()


# ---- a refdiff backend on the fake device -------------------------------------------------------


def timestep_embedding(t, dim, max_period=10000, flip_sin_to_cos=False, downscale_freq_shift=1, scale=1.0):
    """refdiff.gaussian.embedding.timestep_embedding computed with device ops only (the CUDA kernel's job
    on a real GPU): the same float64 formula, so the result equals the reference's."""
    half = dim // 2
    exponent = -math.log(max_period) * xp.arange(half, dtype=np.float64)
    freqs = xp.exp(exponent / (half - downscale_freq_shift))  # (half,)
    angles = scale * t.astype(np.float64)[:, None] * freqs[None, :]  # (B, half)
    first, second = (xp.cos(angles), xp.sin(angles)) if flip_sin_to_cos else (xp.sin(angles), xp.cos(angles))
    emb = xp.concatenate([first, second], axis=1)
    if dim % 2 == 1:
        emb = xp.concatenate([emb, xp.zeros((t.shape[0], 1))], axis=1)
    return emb.astype(np.float32)


def _not_provided(*args, **kwargs):
    raise NotImplementedError("the fake device backend runs the fused kernels only under Numba's CUDA simulator "
                              "(NUMBA_ENABLE_CUDASIM=1, where no GPU is visible)")


def _on_device(kernel):
    """A fused kernel run by Numba's CUDA simulator on the values of DeviceArrays: what the
    launch does on a GPU (the kernel reads and writes device memory; no transfer)."""
    def launch(*args, **kwargs):
        return _wrap(kernel(*_device_memory(args), **_device_memory(kwargs)))

    launch.__name__ = getattr(kernel, "__name__", "kernel")
    return launch


def kernels_simulated():
    from refdiff.kernels import _launch

    return _launch.SIMULATED


def backend(embedding="device formula"):
    """A refdiff Backend on the fake device. Its fused ops are refdiff's kernels run by the CUDA
    simulator on the device arrays (where the simulator is on; elsewhere they raise). Its
    timestep embedding is, by default, `timestep_embedding` above (device ops computing the
    reference's float64 formula, so that results equal the host's exactly); embedding="kernel"
    takes the kernel's too, as the real cuda backend does."""
    ops = {name: _not_provided for name in TWINS}
    if kernels_simulated():
        from refdiff import backend as refdiff_backend

        ops = {name: _on_device(op) for name, op in refdiff_backend._simulated_cuda_backend().ops.items()}
    if embedding != "kernel":
        ops["timestep_embedding"] = timestep_embedding
    return Backend(name="fake-device", xp=xp, ops=ops)
