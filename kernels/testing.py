"""The kernel author's harness: property-test a fused kernel against its float64 NumPy twin.

A fused kernel is correct when, on every input, it computes what its reference twin computes
up to float32 rounding. The harness runs both on the same drawn inputs: the kernel on float32
arrays (CuPy on a GPU, NumPy under Numba's CUDA simulator), the twin on float64 copies of the
same values (ground truth for the float32 computation), and compares element by element with a
tolerance the test states and justifies from float32 rounding.

    from hypothesis import strategies as st
    from refdiff.kernels.testing import U, Call, arrays, batch_shapes, kernel_agreement_test, schedules, timesteps

    @st.composite
    def my_inputs(draw):
        schedule = draw(schedules())
        x = draw(arrays(draw(batch_shapes())))
        return Call(args=(x, draw(timesteps(schedule.T, x.shape[0])), schedule))

    # |kernel - twin| <= 4 u |x|: at most four roundings of a term bounded by |x| (u = 2^-24)
    test_my_kernel_matches_its_twin = kernel_agreement_test(
        "my_kernel", my_inputs(), tolerance=lambda call, ref: 4 * U * abs(call.args[0].astype("float64")))

The kernel and its twin are looked up by name in refdiff.kernels.TWINS, the one registry (a new
kernel is one line there, its file and its test); so are the launch signatures that
launch_signatures() collects from the kernel files and compile_ptx compiles.
assert_kernel_matches_twin does a single comparison, for hand-picked cases.
Tests run under the simulator in CI (keep arrays small there: SIMULATED tells) and on real
CuPy arrays where a GPU is visible.
"""
import functools
import importlib
from dataclasses import dataclass, field

import numpy as np

try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp
except ImportError as e:  # pragma: no cover - the harness is a test tool
    raise ImportError("refdiff.kernels.testing needs hypothesis: pip install 'refdiff[test]'") from e

from refdiff.backend import to_numpy

from . import TWINS, kernel_files, reference_twin
from ._launch import SIMULATED

U = 2.0**-24  # float32 unit roundoff: one correctly rounded operation errs by at most U |result|

# examples per property: the loaded hypothesis profile's (tests/conftest.py: "ci" 40, "dev" 60),
# at most 40 in the simulator, which runs every GPU thread as a Python thread. (It was 300 on a
# GPU, overriding the profile: too long for a device check of a few minutes.)
MAX_EXAMPLES_SIMULATED = 40
# elements per sample and batch sizes drawn: small in the simulator, past one block on a GPU
MAX_SAMPLE_SIZE = 70 if SIMULATED else 5000
MAX_BATCH = 5 if SIMULATED else 64


@dataclass
class Call:
    """Arguments of one call: the same for the kernel (float32) and its twin (float64 copies)."""

    args: tuple = ()
    kwargs: dict = field(default_factory=dict)

    def __repr__(self):  # short, for hypothesis' falsifying-example report
        def short(a):
            if isinstance(a, np.ndarray):
                return f"array(shape={a.shape}, dtype={a.dtype}, {np.array2string(a.ravel()[:6], precision=3)}...)"
            return repr(a)

        inner = [short(a) for a in self.args] + [f"{k}={short(v)}" for k, v in self.kwargs.items()]
        return f"Call({', '.join(inner)})"


def twin_of(kernel_name):
    """(kernel, twin) functions registered under `kernel_name` in refdiff.kernels.TWINS."""
    if kernel_name not in TWINS:
        raise KeyError(f"{kernel_name!r} is not registered in refdiff.kernels.TWINS: add 'name': 'module:function'")
    return getattr(importlib.import_module(__package__), kernel_name), reference_twin(kernel_name)


# ---- moving arguments to each side ---------------------------------------------------------


def _to_kernel_side(a):
    """NumPy arrays as the kernel takes them: CuPy on a GPU, unchanged in the simulator."""
    if SIMULATED or not isinstance(a, np.ndarray):
        return a
    import cupy

    return cupy.asarray(a)


def _to_float64(a):
    """float32 arrays as float64 copies of the same values (the twin's ground truth)."""
    if isinstance(a, np.ndarray) and a.dtype == np.float32:
        return a.astype(np.float64)
    return a


def _to_host(a):
    return to_numpy(a)


def _as_tuple(out):
    return tuple(out) if isinstance(out, tuple) else (out,)


# ---- the comparison -----------------------------------------------------------------------


def assert_kernel_matches_twin(kernel, twin, call, tolerance):
    """Assert kernel(*call) (float32) == twin(*float64 copies) within `tolerance`, element by element.

    kernel, twin: functions with one signature (or a kernel name registered in TWINS, with twin=None).
    call: a Call with NumPy arguments (float32 arrays, ints, schedules, ...).
    tolerance: (rtol, atol), meaning atol + rtol |ref|; or a function (call, ref_outputs) -> one
      array (or number) per output, broadcastable to it. Non-finite references must be matched
      exactly (same inf, NaN where NaN).
    Returns the kernel's outputs as NumPy arrays.
    """
    if isinstance(kernel, str):
        kernel, twin = twin_of(kernel)
    ref = _as_tuple(twin(*map(_to_float64, call.args), **{k: _to_float64(v) for k, v in call.kwargs.items()}))
    out = _as_tuple(kernel(*map(_to_kernel_side, call.args), **{k: _to_kernel_side(v) for k, v in call.kwargs.items()}))
    out = tuple(_to_host(o) for o in out)
    ref = tuple(np.asarray(r) for r in ref)
    assert len(out) == len(ref), f"kernel returned {len(out)} outputs, its twin {len(ref)}"

    with np.errstate(invalid="ignore", over="ignore"):  # non-finite references are compared apart
        _compare(out, ref, _tolerances(tolerance, call, ref))
    return out


def _tolerances(tolerance, call, ref):
    if callable(tolerance):
        tols = _as_tuple(tolerance(call, ref))
        if len(tols) == 1 and len(ref) > 1:
            tols = tols * len(ref)
    else:
        rtol, atol = tolerance
        tols = tuple(atol + rtol * np.abs(r) for r in ref)
    return tols


def _compare(out, ref, tols):
    for k, (o, r, tol) in enumerate(zip(out, ref, tols)):
        assert o.shape == r.shape, f"output {k}: kernel shape {o.shape}, twin shape {r.shape}"
        assert o.dtype == np.float32, f"output {k}: kernel dtype {o.dtype}, expected float32"
        finite = np.isfinite(r)
        same_nonfinite = np.array_equal(o[~finite], r[~finite], equal_nan=True)
        assert same_nonfinite, f"output {k}: non-finite values differ: kernel {o[~finite][:5]}, twin {r[~finite][:5]}"
        err = np.abs(o.astype(np.float64) - r)
        tol = np.broadcast_to(np.asarray(tol, dtype=np.float64), r.shape)
        bad = finite & ~(err <= tol)
        if bad.any():
            i = tuple(int(v) for v in np.unravel_index(np.argmax(np.where(bad, err - tol, -np.inf)), r.shape))
            raise AssertionError(
                f"output {k}: {int(bad.sum())} of {r.size} elements outside the tolerance; worst at {i}: "
                f"kernel {float(o[i])!r}, twin {float(r[i])!r}, |error| {err[i]:.3g} > tolerance {tol[i]:.3g}"
            )


def _profile_examples():
    """max_examples of the loaded hypothesis profile, capped at MAX_EXAMPLES_SIMULATED in the simulator."""
    n = settings().max_examples
    return min(n, MAX_EXAMPLES_SIMULATED) if SIMULATED else n


def kernel_agreement_test(kernel_name, calls, tolerance, max_examples=None):
    """A pytest test function: for every Call drawn from the strategy `calls`, the kernel
    registered as `kernel_name` agrees with its twin within `tolerance` (see
    assert_kernel_matches_twin). Assign it to a module-level name starting with test_."""
    kernel, twin = twin_of(kernel_name)

    @settings(max_examples=max_examples or _profile_examples(), deadline=None)
    @given(call=calls)
    def test(call):
        assert_kernel_matches_twin(kernel, twin, call, tolerance)

    test.__name__ = f"test_{kernel_name}_matches_its_twin"
    test.__doc__ = f"refdiff.kernels.{kernel_name} agrees with {TWINS[kernel_name]} (float64) within float32 rounding."
    return test


# ---- strategies for the usual inputs --------------------------------------------------------


def batch_shapes(max_batch=None, max_sample_size=None, min_dims=0, max_dims=3):
    """Shapes (B, ...) with B >= 1 and at most max_sample_size elements per sample: odd sizes,
    B = 1, sizes that are not multiples of the block size all come up."""
    max_batch = max_batch or MAX_BATCH
    max_sample_size = max_sample_size or MAX_SAMPLE_SIZE

    @st.composite
    def draw_shape(draw):
        batch = draw(st.integers(1, max_batch))
        sample = draw(hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=1, max_side=max_sample_size))
        sample = _fit(sample, max_sample_size)
        return (batch,) + sample

    return draw_shape()


def _fit(shape, max_size):
    """Shrink the last axes until the shape holds at most max_size elements."""
    shape = list(shape)
    while int(np.prod(shape, dtype=np.int64)) > max_size:
        i = int(np.argmax(shape))
        shape[i] = max(1, shape[i] // 2)
    return tuple(shape)


# arrays up to this many elements are drawn element by element by hypothesis (so it can shrink
# them); larger ones (GPU-sized) from a drawn seed, which costs no more for a million elements
ELEMENTWISE_DRAW_LIMIT = 1024


def arrays(shape, bound=4.0):
    """float32 arrays of `shape`, finite, |x| <= bound, no subnormals (hypothesis' float32 habits).

    Small arrays: every element drawn by hypothesis. Large ones: uniform in [-bound, bound] from a
    drawn seed, with a drawn fraction of the elements set to 0, +-bound or +-tiny (1e-30) values.
    """
    size = int(np.prod(shape, dtype=np.int64))
    if size <= ELEMENTWISE_DRAW_LIMIT:
        elements = st.floats(-bound, bound, width=32, allow_subnormal=False, allow_nan=False)
        return hnp.arrays(np.float32, shape, elements=elements)
    return st.builds(_seeded_array, st.just(tuple(shape)), st.just(bound), st.integers(0, 2**32 - 1),
                     st.sampled_from([0.0, 0.01, 0.2]))


def _seeded_array(shape, bound, seed, special_fraction):
    rng = np.random.default_rng(seed)
    a = rng.uniform(-bound, bound, shape).astype(np.float32)
    special = rng.random(shape) < special_fraction
    a[special] = rng.choice(np.array([0.0, bound, -bound, 1e-30, -1e-30], dtype=np.float32), int(special.sum()))
    return a


@functools.lru_cache(maxsize=None)
def _schedule(kind, T):
    from refdiff.gaussian.schedule import NoiseSchedule

    if kind == "linear":
        return NoiseSchedule.linear(T=T)
    if kind == "cosine":
        return NoiseSchedule.cosine(T=T)
    if kind == "zero_terminal_snr":
        return NoiseSchedule.linear(T=T).rescale_zero_terminal_snr()
    raise ValueError(kind)


def schedules(kinds=("linear", "cosine", "zero_terminal_snr"), lengths=(2, 10, 1000)):
    """NoiseSchedule objects: linear, cosine (improved DDPM) and linear rescaled to zero terminal SNR."""
    return st.builds(_schedule, st.sampled_from(kinds), st.sampled_from(lengths))


# ---- launch signatures: one per kernel, compiled once ------------------------------------------


def launch_signatures():
    """@cuda.jit kernel name -> the numba argument types its launcher passes (one tuple per
    compilation), from the LAUNCH_SIGNATURES of every kernel file. See record_launch_signatures."""
    return {kernel: [signature_types(signature) for signature in signatures]
            for module in kernel_files() for kernel, signatures in module.LAUNCH_SIGNATURES.items()}


def signature_types(signature):
    """One signature of a LAUNCH_SIGNATURES table ("float32[::1], int64, ...") as a tuple of numba types."""
    from numba.core.sigutils import normalize_signature  # numba's own reading of signature strings

    return normalize_signature(signature)[0]


class record_launch_signatures:
    """Context manager: records the numba argument types of every kernel launch.

        with record_launch_signatures() as seen:
            refdiff.kernels.q_sample(...)
        seen  # {"_q_sample_kernel": {(types...), ...}}
    """

    def __enter__(self):
        from numba import typeof

        from . import _launch

        self.seen, self._launch_module, self._original = {}, _launch, _launch.launch

        def recording(kernel, B, N, *args):
            values = [getattr(a, "value", a) for a in args]  # unwrap the simulator's cuda.In / cuda.Out
            name = getattr(kernel, "py_func", getattr(kernel, "fn", kernel)).__name__
            self.seen.setdefault(name, set()).add(tuple(typeof(v) for v in values))
            return self._original(kernel, B, N, *args)

        _launch.launch = recording
        return self.seen

    def __exit__(self, *exc):
        self._launch_module.launch = self._original
        return False


def compile_ptx(kernel_name, signature, cc=(9, 0)):
    """PTX of the kernel `kernel_name` (e.g. "_ddpm_step_kernel") for `signature`.

    Needs numba-cuda in GPU mode (NUMBA_ENABLE_CUDASIM unset) and NVVM/NVRTC (the CUDA toolkit,
    or pip install 'numba-cuda[cu12]'); no GPU is needed.
    """
    from numba import cuda

    for module in kernel_files():
        if kernel_name in module.LAUNCH_SIGNATURES:
            ptx, _ = cuda.compile_ptx(getattr(module, kernel_name).py_func, signature, cc=cc)
            return ptx
    raise KeyError(f"{kernel_name!r} is in no kernel file's LAUNCH_SIGNATURES")


def float32_promotions(ptx):
    """Number of float32 -> float64 conversions in the PTX: 0 for a kernel whose float32 math
    never meets a float64 literal by accident."""
    return ptx.count("cvt.f64.f32")


def main():
    """python -m refdiff.kernels.testing: compile every kernel for its launch signatures (no GPU needed)."""
    for name, signatures in launch_signatures().items():
        for signature in signatures:
            ptx = compile_ptx(name, signature)
            print(f"{name}: {len(ptx)} chars of PTX for sm_90, {ptx.count('fma.rn.f32')} fused multiply-adds (f32), "
                  f"{float32_promotions(ptx)} float32 -> float64 promotions")


def timesteps(T, batch, low=0):
    """A python int or an int64 array (batch,) of timesteps in low..T-1; 0 and T-1 come up often."""
    one = st.one_of(st.just(low), st.just(T - 1), st.integers(low, T - 1))
    return st.one_of(one, st.lists(one, min_size=batch, max_size=batch).map(lambda v: np.array(v, dtype=np.int64)))


if __name__ == "__main__":
    main()
