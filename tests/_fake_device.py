"""A fake GPU for tests on machines without one: proves that code makes no host round trip.

`DeviceArray` wraps a NumPy array and stands for an array in GPU memory, `xp` stands for
CuPy. Arithmetic, indexing, methods and `xp.<function>` calls compute with NumPy and return
DeviceArrays again ("device to device"). Everything that would move data between host and
device on a real GPU goes through `_transfer()`:
    reading values on the host   .get() .item() .tolist() bool() int() float() repr()
                                 np.asarray(a) (the __array__ protocol)
    copying host data in         xp.asarray / xp.array of host data (NumPy arrays, lists,
                                 Python numbers), a NumPy array as an operand or index
Inside `capturing()` (a CUDA-graph capture) also a cuBLAS or cuRAND call, a stream
synchronisation or a kernel cache's numba.cuda.to_device raises CaptureError. `xp.cuda` stands for
cupy.cuda: Stream (begin_capture / end_capture record every device op into a Graph, whose launch()
replays them on the same memory; an allocation that grows the current MemoryPool raises during
the recording), MemoryPool, using_allocator, get_current_stream; `cupyx.cutensor.contraction`
(np.einsum on the device memory; allowed during a capture) is installed with the fake.
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
import weakref

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
    """Inside this block, as inside Stream.begin_capture() / end_capture() (the current stream
    reports is_capturing()): a cuBLAS call (a matrix product), a cuRAND call (a random draw, a
    new generator), a host transfer, a stream synchronisation, a numba.cuda.to_device copy of
    the kernels' caches (under the simulator) or an allocation that grows a memory pool raises."""
    previous = _capturing[0]
    _capturing[0] = True
    try:
        with no_host_transfers(), _to_device_refused():
            yield
    finally:
        _capturing[0] = previous


@contextlib.contextmanager
def _to_device_refused():
    """refdiff.kernels._launch.to_device raising CaptureError (where the kernels are importable)."""
    launch = sys.modules.get("refdiff.kernels._launch")
    if launch is None:
        yield
        return
    real = launch.to_device

    def refused(a):
        raise CaptureError(f"numba.cuda.to_device of a {a.shape} cache table during stream capture (a blocking "
                           f"copy; warm the caches before the capture)")

    launch.to_device = refused
    try:
        yield
    finally:
        launch.to_device = real


def _library_call(library, what):
    if _capturing[0]:
        raise CaptureError(f"{library} call during stream capture: {what} (CuPy refuses it: cupy/cupy#6290)")


# ---- the CUDA-graph stand-in: streams, graphs, memory pools, cuTENSOR ---------------------------
# Between Stream.begin_capture() and end_capture() every device op is recorded as (function,
# device-memory arguments, result) and also run (as CuPy runs the kernels of a capture, which is
# how results reach the next op). Graph.launch() replays the record: each function called again on
# the same memory, its result written into the memory of the captured result, as a graph replays
# its kernels on the addresses of the capture. A value the step reads from a Python argument is
# frozen at its captured value; a value in device memory is read anew. (The fused kernels' host
# launchers are re-run as a whole, so what they pass by value is read anew here, not frozen as on a
# GPU: a kernel's timesteps must still be device arrays there, which tests check separately.)
_recording = [None]  # the list a capture appends to


class MemoryPool:
    """A device memory pool: freed blocks are kept by size (bins of 512 bytes, as CuPy's) and
    reused; a request no free block fits grows the pool, which raises during a capture."""

    def __init__(self):
        self.free, self.held, self.grown = {}, 0, 0

    def malloc(self, nbytes):  # what cupy.cuda.using_allocator takes; the fake charges arrays itself
        raise NotImplementedError

    def take(self, nbytes):
        size = -(-max(nbytes, 1) // 512) * 512
        if self.free.get(size):
            self.free[size] -= 1
        else:
            if _recording[0] is not None:  # inside Stream.begin_capture() .. end_capture()
                raise CaptureError(f"a memory pool allocation of {size} bytes that grows the pool during stream "
                                   f"capture (no free block of that size: warm the pool before the capture)")
            self.held += size
            self.grown += 1
        return size

    def give_back(self, size):
        self.free[size] = self.free.get(size, 0) + 1


DEFAULT_POOL = MemoryPool()
_allocator = [DEFAULT_POOL]
_live = {}  # id(root ndarray) -> [pool, block size, number of live DeviceArrays on that memory]


def _charge(array):
    """Charge the memory of a new DeviceArray (the root of a view) to the current pool, until the
    last DeviceArray on that memory dies (CuPy frees memory when its last array goes; the record
    of a capture keeps the NumPy memory alive for the replay, but not the DeviceArrays)."""
    root = array._a
    while isinstance(root.base, np.ndarray):
        root = root.base
    entry = _live.get(id(root))
    if entry is None:
        pool = _allocator[0]
        entry = _live[id(root)] = [pool, pool.take(root.nbytes), 0]
    entry[2] += 1
    weakref.finalize(array, _release, id(root))


def _release(key):
    entry = _live[key]
    entry[2] -= 1
    if entry[2] == 0:
        del _live[key]
        entry[0].give_back(entry[1])


@contextlib.contextmanager
def using_allocator(malloc):
    """cupy.cuda.using_allocator(pool.malloc): new arrays in this block come from that pool."""
    previous = _allocator[0]
    _allocator[0] = malloc.__self__
    try:
        yield
    finally:
        _allocator[0] = previous


class Graph:
    """What Stream.end_capture() returns: the recorded ops, replayed by launch()."""

    def __init__(self, ops):
        self.ops = ops

    def launch(self, stream=None):
        if _capturing[0]:
            raise CaptureError("graph.launch() inside a capture")
        for f, args, kwargs, result in self.ops:
            _write_into(result, f(*args, **kwargs))


def _write_into(result, new):
    if isinstance(result, np.ndarray):
        old, new = result, np.asarray(new)
        if not (old.__array_interface__["data"][0] == new.__array_interface__["data"][0]
                and old.strides == new.strides and old.shape == new.shape):
            old[...] = new
    elif isinstance(result, (tuple, list)):
        for r, n in zip(result, new):
            _write_into(r, n)


class Stream:
    """cupy.cuda.Stream: a context manager making it current; begin/end_capture record a Graph."""

    def __init__(self, non_blocking=False, null=False):
        self.null, self._outer, self._capture = null, [], None
        self.ptr = 0 if null else id(self)

    def __enter__(self):
        self._outer.append(_current_stream[0])
        _current_stream[0] = self
        return self

    def __exit__(self, *exc):
        _current_stream[0] = self._outer.pop()

    def begin_capture(self):
        if self.null:
            raise RuntimeError("cannot capture on the default (legacy) stream")
        self._capture = contextlib.ExitStack()
        self._capture.enter_context(capturing())
        _recording[0] = []

    def end_capture(self):
        ops, _recording[0] = _recording[0], None
        self._capture.close()
        self._capture = None
        return Graph(ops)

    def is_capturing(self):
        return _capturing[0]

    def synchronize(self):
        if _capturing[0]:
            raise CaptureError("stream synchronisation during stream capture")


_current_stream = [Stream(null=True)]


class _FakeCuda(types.SimpleNamespace):
    """cupy.cuda: streams, graphs, memory pools."""


cuda = _FakeCuda(Stream=Stream, MemoryPool=MemoryPool, Graph=Graph, using_allocator=using_allocator,
                 get_current_stream=lambda: _current_stream[0])


def _contraction(alpha, a, modes_a, b, modes_b, beta, c, modes_c):
    """cupyx.cutensor.contraction (allowed during a capture): C = alpha A B + beta C by modes."""
    letters = {}

    def subscript(modes):
        return "".join(letters.setdefault(m, chr(ord("a") + len(letters))) for m in modes)

    spec = f"{subscript(modes_a)},{subscript(modes_b)}->{subscript(modes_c)}"
    CONTRACTIONS.append(spec)

    def contract(a, b, c):
        c[...] = alpha * np.einsum(spec, a, b) + (beta * c if beta else 0)  # beta = 0: C is not read
        return c

    _run(contract, (_device_memory(a), _device_memory(b), _device_memory(c)), {})
    return c


CONTRACTIONS = []  # the specs of the cuTENSOR contractions run, in order
cutensor = types.ModuleType("cupyx.cutensor")
cutensor.contraction = _contraction
cupyx = types.ModuleType("cupyx")
cupyx.cutensor = cutensor


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
        return _run(f, _unwrap(args), _unwrap(kwargs))

    return call


def _run(f, args, kwargs):
    """f on device memory (NumPy arrays), its result as device arrays; recorded during a capture."""
    result = _wrap(f(*args, **kwargs))
    if _recording[0] is not None:
        _recording[0].append((f, args, kwargs, _device_memory(result)))
    return result


# ---- the array ---------------------------------------------------------------------------------


class DeviceArray:
    """A NumPy array standing for an array in device memory (see the module docstring)."""

    __module__ = "cupy"  # what refdiff.backend.array_module looks at

    def __init__(self, a):
        self._a = a
        _charge(self)

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
        return _run(getattr(ufunc, method), _unwrap(inputs), _unwrap(kwargs))

    def __array_function__(self, func, types, args, kwargs):
        if func.__name__ in BLAS_FUNCTIONS:
            _library_call("cuBLAS", f"numpy.{func.__name__}")
        return _run(func, _unwrap(args), _unwrap(kwargs))

    def __getitem__(self, index):
        return _run(self._a.__getitem__, (_unwrap(index, operand=False),), {})

    def __setitem__(self, index, value):
        _run(self._a.__setitem__, (_unwrap(index, operand=False), _unwrap(value, operand=False)), {})


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
        f, args = getattr(self._a, name), _unwrap(other)
        result = f(*args)
        if result is NotImplemented:  # e.g. a refdiff Tensor on the other side: its reflected op runs
            return NotImplemented
        result = self if in_place else _wrap(result)
        if _recording[0] is not None:
            _recording[0].append((f, args, {}, _device_memory(result)))
        return result

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
xp.cuda = cuda


def installed(monkeypatch):
    """Make `import cupy` (and so refdiff.backend.array_module) answer with this fake, and
    `from cupyx import cutensor` with its contraction."""
    monkeypatch.setitem(sys.modules, "cupy", xp)
    monkeypatch.setitem(sys.modules, "cupyx", cupyx)
    monkeypatch.setitem(sys.modules, "cupyx.cutensor", cutensor)
    TRANSFERS.clear()
    CONTRACTIONS.clear()


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
        return _run(kernel, _device_memory(args), _device_memory(kwargs))

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
