"""Launch cost (issue 15, item 5): kernel arguments converted once per buffer, launch configurations
made once, in kernels/_launch.py. Run on Numba's CUDA simulator, where the cache runs with the
identity as its conversion (on a GPU: cuda.as_cuda_array of a CuPy array), so hits, misses and
eviction are the same logic. What it saves in host time per launch is a GPU figure
(benchmarks/bench_kernels.py --launch-cost); the simulator's is not one.
"""
import numpy as np
import pytest

from refdiff.kernels import _launch

pytestmark = pytest.mark.skipif(not _launch.SIMULATED, reason="runs the kernels in Numba's CUDA simulator, which is "
                                                              "off where a GPU is visible")


@pytest.fixture
def cache(monkeypatch):
    fresh = _launch.ArgumentCache(capacity=16)
    monkeypatch.setattr(_launch, "ARG_CACHE", fresh)
    return fresh


def normal(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_the_second_launch_with_the_same_buffers_hits_the_cache_and_gives_identical_results(cache):
    """Catches: a cache that never hits (the key changes between two launches on the same buffers),
    one that returns a stale conversion (a value written into the buffer in between not seen), or
    a hit that changes the result."""
    from refdiff import kernels

    x, denoised = normal((3, 37)), normal((3, 37), seed=1)
    first = kernels.euler_step(x, denoised, 2.0, 1.5)
    misses = cache.misses
    assert misses == 2 and cache.hits == 0  # x and denoised converted once each
    second = kernels.euler_step(x, denoised, 2.0, 1.5)
    assert cache.misses == misses and cache.hits == 2
    np.testing.assert_array_equal(first, second)
    x[...] = normal((3, 37), seed=2)  # new values in the same buffer: a hit, and the new values read
    third = kernels.euler_step(x, denoised, 2.0, 1.5)
    assert cache.hits == 4
    cache.clear()
    np.testing.assert_array_equal(third, kernels.euler_step(x, denoised, 2.0, 1.5))  # = a cold conversion


def test_the_key_is_the_memory_shape_strides_dtype_and_stream_and_the_oldest_entry_goes_first():
    """Catches: a key on the pointer alone (a reshaped view of the same memory would get the other
    shape's conversion), and a cache that grows without bound."""
    cache = _launch.ArgumentCache(capacity=2)
    converted = []

    def convert(a):
        converted.append(a.shape)
        return a

    a = np.zeros(12, np.float32)
    cache.get(a, convert)
    cache.get(a.reshape(3, 4), convert)  # same memory, another shape: its own entry
    cache.get(a, convert, stream=7)      # same array, another stream: its own entry (evicts `a` on 0)
    assert converted == [(12,), (3, 4), (12,)] and len(cache.entries) == 2
    cache.get(a, convert)                # evicted: converted again
    assert converted[-1] == (12,) and cache.misses == 4 and cache.hits == 0
    cache.get(a, convert)
    assert cache.hits == 1


def test_a_launch_configuration_is_made_once_per_kernel_grid_block_and_stream():
    from refdiff import kernels

    x = normal((2, 40))
    kernels.euler_step(x, x, 2.0, 1.0)
    before = dict(_launch._CONFIGURED)
    kernels.euler_step(x, x, 2.0, 1.0)
    assert _launch._CONFIGURED.keys() == before.keys()
    assert all(_launch._CONFIGURED[k][1] is before[k][1] for k in before)  # the same configured objects
