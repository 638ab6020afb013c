"""The launchers' plumbing: launch shape, grid-stride loops, caches, device-side guards, streams."""
import gc

import numpy as np
import pytest
from _gpu import requires_gpu

from refdiff import kernels
from refdiff.kernels import _launch
from refdiff.kernels.testing import _schedule, _to_host, _to_kernel_side

S = _schedule("linear", 10)


def f32(shape, seed=0):
    return _to_kernel_side(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


@pytest.mark.parametrize("B, N", [(1, 1), (1, 31), (3, 33), (7, 1000), (70000, 5), (2, 10**7)])
def test_launch_config_covers_the_problem_within_hardware_limits(B, N):
    (grid_x, grid_y), block = _launch.launch_config(B, N)
    assert block & (block - 1) == 0 and 32 <= block <= _launch.MAX_BLOCK  # whole warps, a power of two
    assert 1 <= grid_x <= _launch.MAX_GRID_X and 1 <= grid_y <= min(B, _launch.MAX_GRID_Y)
    # the loops stride, so any grid is correct; no more blocks than there is work for
    assert (grid_x - 1) * block < N


def test_a_tiny_grid_gives_the_same_result_as_the_default_grid(monkeypatch):
    """Both loops wrap around (samples over grid y, elements over grid x): one block of 32 threads
    covering 5 samples of 75 elements must give what the default launch shape gives, exactly."""
    x_t, out, noise = f32((5, 3, 25), 1), f32((5, 3, 25), 2), f32((5, 3, 25), 3)
    t = np.array([9, 0, 4, 7, 1])
    default = _to_host(kernels.ddpm_step(x_t, out, t, S, noise, clip_sample=False))
    monkeypatch.setattr(_launch, "launch_config", lambda B, N: ((1, 1), 32))
    tiny = _to_host(kernels.ddpm_step(x_t, out, t, S, noise, clip_sample=False))
    np.testing.assert_array_equal(tiny, default)


def test_schedule_tables_are_cached_per_schedule_and_dropped_with_it():
    from refdiff.gaussian.schedule import NoiseSchedule

    s = NoiseSchedule.linear(T=7)
    first = _launch.schedule_tables(s)
    assert _launch.schedule_tables(s) is first
    assert _launch.schedule_tables(NoiseSchedule.linear(T=7)) is not first
    key = (id(s), _launch._device_id())
    assert key in _launch._SCHEDULE_TABLES
    del s, first
    gc.collect()
    assert key not in _launch._SCHEDULE_TABLES


def test_schedule_tables_hold_the_reference_coefficients_rounded_once():
    tables = _launch.schedule_tables(S)
    np.testing.assert_array_equal(_to_host(tables.sqrt_alphas_cumprod), S.sqrt_alphas_cumprod.astype(np.float32))
    np.testing.assert_array_equal(_to_host(tables.sqrt_one_minus_alphas_cumprod), S.sqrt_one_minus_alphas_cumprod.astype(np.float32))
    np.testing.assert_array_equal(_to_host(tables.alphas_cumprod), S.alphas_cumprod)


def _raw_launch(kernel, B, N, *args):
    _launch.launch(kernel, B, N, *[_launch.device_view(_to_kernel_side(a)) if isinstance(a, np.ndarray) else a for a in args])


def test_q_sample_kernel_writes_nan_for_a_device_timestep_outside_the_schedule():
    """A t array on the device is not range-checked on the host: the kernel must not read out of
    bounds, and marks the bad sample with NaN (the good sample is computed as usual)."""
    from refdiff.kernels.q_sample import _q_sample_kernel

    tables = _launch.schedule_tables(S)
    x0, noise = np.ones(6, np.float32), np.zeros(6, np.float32)
    x_t = _to_kernel_side(np.zeros(6, np.float32))
    target = _to_kernel_side(np.zeros(6, np.float32))
    _raw_launch(_q_sample_kernel, 2, 3, x0, noise, np.array([0, 10]), 0, True, tables.sqrt_alphas_cumprod,
                tables.sqrt_one_minus_alphas_cumprod, tables.T, 2, 2, 3, _launch.output_view(x_t), _launch.output_view(target))
    x_t = _to_host(x_t)
    assert np.isnan(x_t[3:]).all() and np.isfinite(x_t[:3]).all()


@pytest.mark.parametrize("t, t_prev", [([3, 12], [2, 2]), ([3, 3], [2, 3]), ([3, -1], [2, -2])])
def test_ddpm_kernel_writes_nan_for_invalid_device_timesteps(t, t_prev):
    """Out-of-range t, or t_prev >= t, in device-side arrays: NaN for that sample only."""
    from refdiff.kernels.ddpm_step import _ddpm_step_kernel

    tables = _launch.schedule_tables(S)
    ones = np.ones(6, np.float32)
    out = _to_kernel_side(np.zeros(6, np.float32))
    _raw_launch(_ddpm_step_kernel, 2, 3, ones, ones, ones, False, np.float32(1), ones, True,
                np.array(t), 0, True, np.array(t_prev), 0, 2, tables.alphas_cumprod, tables.T, 0, 0, True,
                np.float32(1), 2, 3, _launch.output_view(out))
    out = _to_host(out)
    assert np.isfinite(out[:3]).all() and np.isnan(out[3:]).all()


def test_ddpm_kernel_writes_nan_where_noise_is_missing_for_t_above_0():
    """noise=None is only valid where t == 0; with device-side t the kernel marks the violation."""
    from refdiff.kernels.ddpm_step import _ddpm_step_kernel

    tables = _launch.schedule_tables(S)
    ones = np.ones(6, np.float32)
    out = _to_kernel_side(np.zeros(6, np.float32))
    _raw_launch(_ddpm_step_kernel, 2, 3, ones, ones, ones, False, np.float32(1), ones, False,
                np.array([0, 5]), 0, True, np.zeros(1, np.int64), 0, 0, tables.alphas_cumprod, tables.T, 0, 0, True,
                np.float32(1), 2, 3, _launch.output_view(out))
    out = _to_host(out)
    assert np.isfinite(out[:3]).all() and np.isnan(out[3:]).all()


def test_read_only_inputs_are_accepted():
    x = np.ones((2, 3), np.float32)
    x.setflags(write=False)
    np.testing.assert_allclose(_to_host(kernels.q_sample(_to_kernel_side(x), 0, _to_kernel_side(x), S)),
                               S.sqrt_alphas_cumprod[0] + S.sqrt_one_minus_alphas_cumprod[0], rtol=4e-7)


@pytest.mark.parametrize("shape", [(0, 3), (2, 0)])
def test_empty_arrays_give_empty_results(shape):
    x = f32(shape)
    assert _to_host(kernels.q_sample(x, 0, x, S)).shape == shape
    assert _to_host(kernels.ddim_step(x, x, 3, 1, S)).shape == shape


def test_inputs_are_not_modified():
    x_t, out, noise = f32((2, 5), 1), f32((2, 5), 2), f32((2, 5), 3)
    before = [_to_host(a).copy() for a in (x_t, out, noise)]
    kernels.ddpm_step(x_t, out, 4, S, noise, model_output_uncond=out, guidance_scale=2.0)
    for a, b in zip((x_t, out, noise), before):
        np.testing.assert_array_equal(_to_host(a), b)


def test_every_launch_uses_its_kernels_one_signature():
    """Compile once: whatever the arguments (int or array t and t_prev, guidance or not, noise or
    not, any shape), a kernel is launched with one set of argument types, so numba compiles it
    once (twice for the embedding: integer and real t). The recorded types are exactly the table
    refdiff.kernels.testing.launch_signatures(), which `python -m refdiff.kernels.testing`
    compiles to PTX."""
    from refdiff.kernels.testing import launch_signatures, record_launch_signatures

    with record_launch_signatures() as seen:
        for shape in [(2, 3), (5, 7, 3)]:
            x = f32(shape)
            t = _to_kernel_side(np.arange(shape[0]) % 9 + 1)
            kernels.q_sample(x, 3, x, S)
            kernels.q_sample_with_target(x, t, x, S, "v_prediction")
            kernels.ddpm_step(x, x, 3, S, x)
            kernels.ddpm_step(x, x, 0, S, None, variance_type="fixed_large", clip_sample=False)
            kernels.ddpm_step(x, x, t, S, x, t_prev=t - 1, model_output_uncond=x, guidance_scale=2.0)
            kernels.ddpm_step(x, x, t, S, x, t_prev=-1, prediction_type="v_prediction")
            kernels.ddim_step(x, x, 3, -1, S)
            kernels.ddim_step(x, x, t, t - 1, S, eta=0.5, noise=x, model_output_uncond=x, guidance_scale=0.0)
            kernels.timestep_embedding(t, 8)
            kernels.timestep_embedding(_to_kernel_side(np.array([0.5, 2.0])), 9, flip_sin_to_cos=True)
            kernels.dpmpp_2m_step(x, x, x, 2.0, 1.0, 4.0)
            kernels.dpmpp_2m_step(x, x, None, 2.0, 0.0, None, solver_type="heun")
            kernels.euler_step(x, x, 2.0, 1.0)
            kernels.euler_step(x, x, 3, 0)
            kernels.heun_step(x, x, x, x, 2.0, 1.0)
            kernels.heun_step(x, x, x, x, 3, 1)
    assert {name: sorted(map(str, sigs)) for name, sigs in seen.items()} == \
        {name: sorted(map(str, sigs)) for name, sigs in launch_signatures().items()}


@requires_gpu
def test_launch_signatures_compile_to_ptx_without_float32_promotions():
    """No float64 literal meets the float32 per-element math (it would promote it to float64)."""
    from refdiff.kernels.testing import compile_ptx, float32_promotions, launch_signatures

    for name, signatures in launch_signatures().items():
        for signature in signatures:
            assert float32_promotions(compile_ptx(name, signature)) == 0, name


@requires_gpu
def test_each_kernel_is_compiled_once():
    """Ints and arrays for t, any shape, guidance on or off: one specialization per kernel."""
    from refdiff.kernels.ddpm_step import _ddpm_step_kernel
    from refdiff.kernels.q_sample import _q_sample_kernel

    for shape in [(2, 3), (5, 7, 11)]:
        x = f32(shape)
        t = _to_kernel_side(np.arange(shape[0]) % 10)
        kernels.q_sample(x, 3, x, S)
        kernels.q_sample_with_target(x, t, x, S, "v_prediction")
        kernels.ddpm_step(x, x, 3, S, x)
        kernels.ddpm_step(x, x, t, S, x, t_prev=t - 1, model_output_uncond=x, guidance_scale=2.0)
    assert len(_q_sample_kernel.overloads) == 1
    assert len(_ddpm_step_kernel.overloads) == 1


@requires_gpu
def test_kernels_run_on_cupys_current_stream():
    import cupy

    with cupy.cuda.Stream(non_blocking=True) as stream:
        assert int(_launch.current_stream().handle) == stream.ptr
        x = f32((4, 1000))
        x_t = kernels.q_sample(x, 5, x, S)
        stream.synchronize()
    expected = (S.sqrt_alphas_cumprod[5] + S.sqrt_one_minus_alphas_cumprod[5]) * _to_host(x).astype(np.float64)
    np.testing.assert_allclose(_to_host(x_t), expected, rtol=4 * 2**-24, atol=1e-7)
