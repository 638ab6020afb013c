"""Every launcher rejects bad input with a clear error before launching.

Each test names the problem it feeds in and checks the exception type and that the message
names the offending argument. Inputs are otherwise valid, so the check under test is the one
that fires.
"""
import numpy as np
import pytest
from _gpu import requires_gpu

from refdiff import kernels
from refdiff.kernels.testing import SIMULATED, _schedule, _to_kernel_side

S = _schedule("linear", 10)
SHAPE = (2, 3, 4)


def f32(shape=SHAPE, seed=0):
    return _to_kernel_side(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


def calls(x=None, other=None, which="model_output"):
    """One call of each launcher taking arrays like x, with `other` in place of argument `which`."""
    x = f32() if x is None else x
    args = {"x0": x, "noise": x, "x_t": x, "model_output": x, "model_output_uncond": None}
    if other is not None:
        args[which] = other
    return {
        "q_sample": lambda: kernels.q_sample(args["x0"], 1, args["noise"], S),
        "q_sample_with_target": lambda: kernels.q_sample_with_target(args["x0"], 1, args["noise"], S),
        "ddpm_step": lambda: kernels.ddpm_step(args["x_t"], args["model_output"], 1, S, args["noise"],
                                               model_output_uncond=args["model_output_uncond"]),
        "ddim_step": lambda: kernels.ddim_step(args["x_t"], args["model_output"], 1, 0, S, eta=0.5, noise=args["noise"],
                                               model_output_uncond=args["model_output_uncond"]),
    }


ARRAY_KERNELS = ["q_sample", "q_sample_with_target", "ddpm_step", "ddim_step"]
FIRST_ARG = {"q_sample": "x0", "q_sample_with_target": "x0", "ddpm_step": "x_t", "ddim_step": "x_t"}


@pytest.mark.parametrize("name", ARRAY_KERNELS)
def test_float64_input_is_rejected_with_its_dtype(name):
    x = _to_kernel_side(np.zeros(SHAPE))
    with pytest.raises(TypeError, match=rf"{FIRST_ARG[name]} must have dtype float32.*float64"):
        calls(x)[name]()


@pytest.mark.parametrize("name", ARRAY_KERNELS)
def test_non_contiguous_input_is_rejected(name):
    x = f32((2, 4, 6))[:, ::2, ::2]
    with pytest.raises(ValueError, match=rf"{FIRST_ARG[name]} must be C-contiguous"):
        calls(x)[name]()


@pytest.mark.parametrize("name", ARRAY_KERNELS)
def test_shape_mismatch_is_rejected_with_both_shapes(name):
    with pytest.raises(ValueError, match=r"noise must have the shape of .*\(2, 3, 4\), got \(2, 3, 5\)"):
        calls(other=f32((2, 3, 5)), which="noise")[name]()


@pytest.mark.parametrize("name", ["ddpm_step", "ddim_step"])
def test_uncond_of_another_shape_is_rejected(name):
    with pytest.raises(ValueError, match=r"model_output_uncond must have the shape"):
        calls(other=f32((1, 3, 4)), which="model_output_uncond")[name]()


@pytest.mark.parametrize("name", ["ddpm_step", "ddim_step"])
def test_model_output_of_another_dtype_is_rejected(name):
    with pytest.raises(TypeError, match=r"model_output must have dtype float32"):
        calls(other=_to_kernel_side(np.zeros(SHAPE, dtype=np.float16)))[name]()


@pytest.mark.parametrize("name", ARRAY_KERNELS)
def test_zero_dim_input_is_rejected(name):
    x = _to_kernel_side(np.zeros((), dtype=np.float32))
    with pytest.raises(ValueError, match=r"batch axis"):
        calls(x)[name]()


@pytest.mark.parametrize("name", ARRAY_KERNELS)
def test_a_list_is_rejected(name):
    with pytest.raises(TypeError, match=FIRST_ARG[name]):
        calls([[1.0]])[name]()


@requires_gpu
def test_numpy_array_is_rejected_on_a_gpu():
    """On a GPU the kernels take CuPy arrays; a NumPy array gets a message saying how to move it."""
    with pytest.raises(TypeError, match=r"x0 must be a CuPy array.*get_backend\('cuda'\).asarray"):
        kernels.q_sample(np.zeros(SHAPE, np.float32), 1, np.zeros(SHAPE, np.float32), S)


class _FakeDeviceArray:
    """Looks like a CuPy array to the launchers' module check (its type lives in 'cupy')."""

    __module__ = "cupy._core.core"
    dtype = np.dtype(np.float32)
    shape = SHAPE
    ndim = 3


def test_device_array_is_rejected_under_the_simulator():
    if not SIMULATED:
        with pytest.raises(TypeError, match=r"x0 must be a CuPy array"):
            kernels.q_sample(np.zeros(SHAPE, np.float32), 1, np.zeros(SHAPE, np.float32), S)
        return
    with pytest.raises(TypeError, match=r"x0 must be a NumPy array under the CUDA simulator"):
        kernels.q_sample(_FakeDeviceArray(), 1, f32(), S)


@pytest.mark.parametrize("t, error, message", [
    (10, ValueError, r"t must be in 0..9 \(the schedule has T=10 steps\), got 10"),
    (-1, ValueError, r"t must be in 0..9"),
    (np.array([0, 10]), ValueError, r"t must be in 0..9"),
    (np.array([0, 1, 2]), ValueError, r"t must be an integer or have shape \(2,\)"),
    (np.array([0.0, 1.0]), TypeError, r"t must be an integer or an integer array, got dtype float64"),
    (True, TypeError, r"got a bool"),
    (1.0, TypeError, r"t must be an integer"),
])
def test_bad_timesteps_are_rejected(t, error, message):
    x = f32()
    for call in (lambda: kernels.q_sample(x, t, x, S), lambda: kernels.ddpm_step(x, x, t, S, x)):
        with pytest.raises(error, match=message):
            call()


def test_t_prev_not_below_t_is_rejected():
    x = f32()
    with pytest.raises(ValueError, match=r"t_prev must be smaller than t.*t=3, t_prev=3 at sample 0"):
        kernels.ddim_step(x, x, 3, 3, S)
    with pytest.raises(ValueError, match=r"t_prev must be smaller than t.*at sample 1"):
        kernels.ddpm_step(x, x, np.array([3, 3]), S, x, t_prev=np.array([1, 5]))


def test_t_prev_beyond_the_schedule_is_rejected():
    x = f32()
    with pytest.raises(ValueError, match=r"t_prev must be < 10"):
        kernels.ddim_step(x, x, 3, 10, S)


@pytest.mark.parametrize("kwargs, message", [
    ({"prediction_type": "eps"}, r"prediction_type must be one of 'epsilon', 'sample', 'v_prediction'"),
    ({"variance_type": "learned"}, r"variance_type='learned' is not supported by the fused ddpm_step kernel"),
    ({"clip_sample": 1}, r"clip_sample must be True or False"),
    ({"clip_sample_range": 0.0}, r"clip_sample_range must be > 0"),
    ({"clip_sample_range": float("nan")}, r"clip_sample_range must be a finite real number"),
    ({"guidance_scale": 3.0}, r"guidance_scale=3.0 needs model_output_uncond"),
])
def test_bad_ddpm_options_are_rejected(kwargs, message):
    x = f32()
    with pytest.raises((ValueError, TypeError), match=message):
        kernels.ddpm_step(x, x, 1, S, x, **kwargs)


def test_ddpm_without_noise_where_t_is_positive_is_rejected():
    x = f32()
    with pytest.raises(ValueError, match=r"noise is needed where t > 0"):
        kernels.ddpm_step(x, x, np.array([0, 1]), S, None)


@pytest.mark.parametrize("kwargs, message", [
    ({"eta": 1.5, "noise": "x"}, r"eta must lie in \[0, 1\]"),
    ({"eta": 0.5}, r"noise is needed when eta > 0"),
    ({"prediction_type": "x0"}, r"prediction_type must be one of"),
])
def test_bad_ddim_options_are_rejected(kwargs, message):
    x = f32()
    kwargs = {k: (x if v == "x" else v) for k, v in kwargs.items()}
    with pytest.raises(ValueError, match=message):
        kernels.ddim_step(x, x, 3, 1, S, **kwargs)


def test_ddim_without_t_prev_is_rejected():
    x = f32()
    with pytest.raises(ValueError, match=r"ddim_step needs t_prev"):
        kernels.ddim_step(x, x, 3, None, S)


def test_bad_q_sample_with_target_prediction_type_is_rejected():
    x = f32()
    with pytest.raises(ValueError, match=r"prediction_type must be one of"):
        kernels.q_sample_with_target(x, 1, x, S, prediction_type="score")


def test_a_non_schedule_is_rejected():
    x = f32()
    with pytest.raises(TypeError, match=r"schedule must be a refdiff.NoiseSchedule"):
        kernels.q_sample(x, 1, x, object())


@pytest.mark.parametrize("call, error, message", [
    (lambda t: kernels.timestep_embedding(t, 0), ValueError, r"dim must be >= 1"),
    (lambda t: kernels.timestep_embedding(t, 2.5), TypeError, r"dim must be an integer"),
    (lambda t: kernels.timestep_embedding(t.reshape(1, 2), 8), ValueError, r"t must be a 1-D array"),
    (lambda t: kernels.timestep_embedding([0, 1], 8), TypeError, r"t must be a 1-D array"),
    (lambda t: kernels.timestep_embedding(t.astype(bool), 8), TypeError, r"integer or real timesteps"),
    (lambda t: kernels.timestep_embedding(t, 8, max_period=0), ValueError, r"max_period must be a finite number > 0"),
    (lambda t: kernels.timestep_embedding(t, 2, downscale_freq_shift=1), ValueError, r"divides by zero"),
    (lambda t: kernels.timestep_embedding(np.array([0.0, np.nan]), 8), ValueError, r"t contains NaN or inf"),
])
def test_bad_embedding_arguments_are_rejected(call, error, message):
    with pytest.raises(error, match=message):
        call(np.array([0, 1]))
