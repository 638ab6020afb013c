"""The kernel author's harness (refdiff.kernels.testing) catches what it is meant to catch."""
import inspect
import sys

import numpy as np
import pytest
from hypothesis import given

from refdiff import backend, kernels
from refdiff.backend import get_backend
from refdiff.kernels import testing
from refdiff.kernels.testing import U, Call, assert_kernel_matches_twin, batch_shapes


def twin(x):
    return 3 * x


def kernel_like(f):
    """A fake 'kernel' that computes f on the host and returns float32, like a kernel would."""
    return lambda x: f(testing._to_host(x)).astype(np.float32)


X = np.array([[1.0, -2.0, 0.5]], dtype=np.float32)


def test_a_kernel_within_tolerance_passes():
    out = assert_kernel_matches_twin(kernel_like(lambda x: 3 * x), twin, Call(args=(X,)), (U, 0.0))
    np.testing.assert_array_equal(out[0], 3 * X)


def test_a_kernel_off_by_more_than_the_tolerance_fails_and_says_where():
    wrong = kernel_like(lambda x: 3 * x * np.array([1, 1 + 1e-5, 1]))  # element (0, 1) off by ~170 u
    with pytest.raises(AssertionError, match=r"worst at \(0, 1\).*tolerance"):
        assert_kernel_matches_twin(wrong, twin, Call(args=(X,)), (U, 0.0))


def test_the_twin_gets_float64_copies_of_the_float32_inputs():
    seen = {}

    def spy(x):
        seen["dtype"] = x.dtype
        return x

    assert_kernel_matches_twin(kernel_like(lambda x: x), spy, Call(args=(X,)), (0.0, 0.0))
    assert seen["dtype"] == np.float64


def test_a_float64_kernel_output_fails():
    with pytest.raises(AssertionError, match="dtype float64, expected float32"):
        assert_kernel_matches_twin(lambda x: testing._to_host(x).astype(np.float64), twin, Call(args=(X,)), (1.0, 1.0))


def test_non_finite_reference_values_must_be_matched_exactly():
    def twin_inf(x):
        return np.where(x > 0, np.inf, x)

    ok = kernel_like(lambda x: np.where(x > 0, np.inf, x))
    assert_kernel_matches_twin(ok, twin_inf, Call(args=(X,)), (0.0, 0.0))
    with pytest.raises(AssertionError, match="non-finite values differ"):
        assert_kernel_matches_twin(kernel_like(lambda x: np.where(x > 0, -np.inf, x)), twin_inf, Call(args=(X,)), (1.0, 1.0))


def test_every_registered_kernel_resolves_to_a_function_and_its_twin():
    for name in kernels.TWINS:
        kernel, ref = testing.twin_of(name)
        assert kernel is getattr(kernels, name)
        assert ref.__name__ == name  # each kernel has exactly its twin's name


def test_an_unregistered_kernel_name_says_how_to_register():
    with pytest.raises(KeyError, match="TWINS"):
        testing.twin_of("no_such_kernel")


def _public_functions(module):
    return {name for name, f in vars(module).items()
            if inspect.isfunction(f) and f.__module__ == module.__name__ and not name.startswith("_")}


def test_twins_is_the_one_registry_of_kernels():
    """Every TWINS entry is exported by refdiff.kernels, is a fused op of both backends (its twin
    for numpy, its kernel for cuda) and has launch signatures in its kernel file; nothing is
    exported, registered or defined in a kernel file that TWINS lacks.

    Catches: a kernel file whose launcher was never registered in TWINS (untested against a twin,
    missing from the backends); a TWINS line that no kernel file defines (a typo, a renamed
    launcher) or whose twin path does not import; a kernel file without LAUNCH_SIGNATURES, or
    listing a kernel it does not define (so never compiled by `python -m refdiff.kernels.testing`);
    exports or backend ops that drift from the table.
    """
    registered = set(kernels.TWINS)
    cuda = backend._simulated_cuda_backend() if testing.SIMULATED else get_backend("cuda")
    numpy = get_backend("numpy")
    assert set(kernels.__all__) == registered | {"TWINS"}
    assert set(numpy.ops) == set(cuda.ops) == registered
    for name in registered:
        kernel, ref = testing.twin_of(name)
        assert getattr(numpy, name) is ref and getattr(cuda, name) is kernel is getattr(kernels, name)
        signatures = sys.modules[kernel.__module__].LAUNCH_SIGNATURES
        assert signatures, f"{kernel.__module__} lists no launch signatures"
    defined = set()
    for module in kernels.kernel_files():
        defined |= _public_functions(module)
        for jit_kernel, signatures in module.LAUNCH_SIGNATURES.items():
            assert hasattr(getattr(module, jit_kernel), "py_func") and signatures, (module.__name__, jit_kernel)
    assert defined == registered  # kernel files define the registered kernels and no other public function


@given(batch_shapes(max_batch=3, max_sample_size=10))
def test_batch_shapes_respect_their_bounds(shape):
    assert 1 <= shape[0] <= 3 and int(np.prod(shape[1:], dtype=np.int64)) <= 10


def test_kernel_agreement_test_builds_a_failing_test_for_a_wrong_kernel(monkeypatch):
    """The generated property test runs the registered kernel and fails when it is wrong."""
    from hypothesis import strategies as st

    monkeypatch.setitem(kernels.TWINS, "fake_kernel", "numpy:negative")
    monkeypatch.setattr(kernels, "fake_kernel", kernel_like(lambda x: -x + 1), raising=False)
    generated = testing.kernel_agreement_test("fake_kernel", st.just(Call(args=(X,))), (U, 0.0), max_examples=1)
    assert generated.__name__ == "test_fake_kernel_matches_its_twin"
    with pytest.raises(AssertionError, match="outside the tolerance"):
        generated()


# ---- the README's "adding a kernel" example, end to end (kept in sync with the README text) ----

from numba import cuda  # noqa: E402

from refdiff.kernels import _launch  # noqa: E402


def signal_part(x0, t, schedule):
    """Twin (reference): sqrt(abar_t) x_0, the signal part of q_sample (DDPM eq. 4)."""
    sqrt_abar = schedule.sqrt_alphas_cumprod[np.broadcast_to(t, x0.shape[:1])]
    return sqrt_abar.reshape((-1,) + (1,) * (x0.ndim - 1)).astype(x0.dtype) * x0


@cuda.jit
def _signal_part_kernel(x0, t, t_scalar, t_per_sample, sqrt_alphas_cumprod, B, N, out):
    for b in range(cuda.blockIdx.y, B, cuda.gridDim.y):  # samples over grid y
        sqrt_abar = sqrt_alphas_cumprod[t[b] if t_per_sample else t_scalar]
        for j in range(cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x, N, cuda.gridDim.x * cuda.blockDim.x):
            out[b * N + j] = sqrt_abar * x0[b * N + j]


def signal_part_kernel(x0, t, schedule):
    """The fused kernel: the twin's signature, checks, then one launch."""
    x0 = _launch.check_array(x0, "x0")
    tables = _launch.schedule_tables(schedule)
    B, N = _launch.batch_and_size(x0)
    t = _launch.timestep_arg(t, tables.T, B)
    out = _launch.empty_like(x0)
    _launch.launch(_signal_part_kernel, B, N, _launch.device_view(_launch.flat(x0)), t.array, t.scalar, t.per_sample,
                   tables.sqrt_alphas_cumprod, B, N, _launch.output_view(_launch.flat(out)))
    return out


# the README's end of the example kernel file
LAUNCH_SIGNATURES = {
    "_signal_part_kernel": ["float32[::1], int64[::1], int64, boolean, float32[::1], int64, int64, float32[::1]"],
}


def test_the_readme_example_launches_with_its_launch_signatures():
    schedule = testing._schedule("linear", 10)
    with testing.record_launch_signatures() as seen:
        signal_part_kernel(X, 3, schedule)
        signal_part_kernel(X, np.array([9]), schedule)
    expected = {name: {str(testing.signature_types(s)) for s in sigs} for name, sigs in LAUNCH_SIGNATURES.items()}
    assert {name: set(map(str, sigs)) for name, sigs in seen.items()} == expected


@pytest.fixture
def registered_example(monkeypatch):
    """Registering = one line in refdiff.kernels.TWINS (here done by monkeypatch) + the function in refdiff.kernels."""
    monkeypatch.setitem(kernels.TWINS, "signal_part", f"{__name__}:signal_part")
    monkeypatch.setattr(kernels, "signal_part", signal_part_kernel, raising=False)


def test_the_readme_example_kernel_passes_the_harness(registered_example):
    from hypothesis import strategies as st

    from refdiff.kernels.testing import arrays, schedules, timesteps

    @st.composite
    def calls(draw):
        schedule = draw(schedules())
        x0 = draw(arrays(draw(batch_shapes())))
        return Call(args=(x0, draw(timesteps(schedule.T, x0.shape[0])), schedule))

    # two roundings (sqrt(abar) to float32, the product), each <= u |x0| since sqrt(abar) <= 1
    test = testing.kernel_agreement_test("signal_part", calls(), lambda call, ref: 2 * U * np.abs(call.args[0]),
                                         max_examples=10)
    test()


@given(testing.arrays((3, 1000)))
def test_large_drawn_arrays_are_float32_finite_and_bounded(a):
    """GPU-sized arrays come from a drawn seed: still float32, finite, |x| <= 4, no subnormals."""
    assert a.dtype == np.float32 and a.shape == (3, 1000)
    assert np.isfinite(a).all() and np.abs(a).max() <= 4
    nonzero = np.abs(a[a != 0])
    assert (nonzero >= np.finfo(np.float32).tiny).all()
