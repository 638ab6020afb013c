"""inference_timesteps and previous_timestep: the sub-sequences a sampler visits."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import refdiff as rd
from refdiff.samplers.timesteps import inference_timesteps, previous_timestep

SPACINGS = ["leading", "trailing", "linspace"]


@pytest.mark.parametrize(
    "spacing, steps_offset, expected",
    [
        # Lin et al. 2023, Table 2 (T = 1000, 10 steps), and diffusers' set_timesteps
        ("leading", 0, [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]),
        ("trailing", 0, [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]),
        ("linspace", 0, [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]),
        # Stable Diffusion's scheduler config: leading with steps_offset = 1
        ("leading", 1, [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]),
        # diffusers ignores steps_offset for trailing and linspace
        ("trailing", 1, [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]),
        ("linspace", 1, [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]),
    ],
)
def test_published_spacing_tables_for_1000_steps_and_10_samples(spacing, steps_offset, expected):
    ts = inference_timesteps(10, 1000, spacing, steps_offset)
    assert ts.dtype == np.int64
    np.testing.assert_array_equal(ts, expected)


def test_uneven_ratios_round_like_diffusers():
    # T = 1000, 3 steps: leading uses T // n = 333, trailing T / n = 333.3 rounded, linspace rounds
    np.testing.assert_array_equal(inference_timesteps(3, 1000, "leading"), [666, 333, 0])
    np.testing.assert_array_equal(inference_timesteps(3, 1000, "trailing"), [999, 666, 332])
    np.testing.assert_array_equal(inference_timesteps(3, 1000, "linspace"), [999, 500, 0])


@given(T=st.integers(1, 3000), data=st.data(), spacing=st.sampled_from(SPACINGS), steps_offset=st.integers(0, 1))
def test_timesteps_are_num_steps_distinct_descending_values_in_range(T, data, spacing, steps_offset):
    num_steps = data.draw(st.integers(1, T))
    if spacing == "leading" and (num_steps - 1) * (T // num_steps) + steps_offset > T - 1:
        return  # offset pushes the first step out of range: an error, tested below
    ts = inference_timesteps(num_steps, T, spacing, steps_offset)
    assert ts.shape == (num_steps,) and ts.dtype == np.int64
    assert np.all(np.diff(ts) < 0)
    assert ts.min() >= 0 and ts.max() <= T - 1


@given(T=st.integers(1, 3000), data=st.data())
def test_each_spacing_pins_its_end(T, data):
    num_steps = data.draw(st.integers(1, T))
    assert inference_timesteps(num_steps, T, "leading")[-1] == 0  # leading ends at the data
    assert inference_timesteps(num_steps, T, "trailing")[0] == T - 1  # trailing starts at pure noise
    linspace = inference_timesteps(num_steps, T, "linspace")
    assert linspace[0] == (T - 1 if num_steps > 1 else 0) and linspace[-1] == 0  # both ends


@given(T=st.integers(1, 3000), data=st.data(), steps_offset=st.integers(0, 5))
def test_previous_timestep_steps_through_the_leading_sequence(T, data, steps_offset):
    num_steps = data.draw(st.integers(1, T))
    if (num_steps - 1) * (T // num_steps) + steps_offset > T - 1:
        return
    ts = inference_timesteps(num_steps, T, "leading", steps_offset)
    prev = previous_timestep(ts, num_steps, T)
    np.testing.assert_array_equal(prev[:-1], ts[1:])
    # the last step lands on steps_offset - T // num_steps: before the first training step
    # (abar_prev = 1) unless the offset is at least the stride
    assert prev[-1] == steps_offset - T // num_steps
    assert (prev[-1] < 0) == (steps_offset < T // num_steps)


def test_previous_timestep_keeps_python_ints_and_arrays():
    assert previous_timestep(999, 10, 1000) == 899 and isinstance(previous_timestep(999, 10, 1000), int)
    np.testing.assert_array_equal(previous_timestep(np.array([99, 50]), 10, 1000), [-1, -50])


def test_trailing_keeps_num_steps_where_diffusers_arange_gives_one_more():
    # np.arange(1000, 0, -1000 / 61) has 62 values (the last ~1e-13, then -1 after the shift):
    # diffusers returns that -1 too; refdiff keeps the first 61
    ts = inference_timesteps(61, 1000, "trailing")
    assert len(ts) == 61 and ts.min() >= 0 and ts[0] == 999


def test_public_name_is_inference_timesteps():
    assert rd.inference_timesteps is inference_timesteps


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((11, 10), ValueError, "num_steps=11 exceeds the T=10 steps"),
        ((0, 10), ValueError, "num_steps must be >= 1"),
        ((5, 0), ValueError, "T must be >= 1"),
        ((5.0, 10), TypeError, "num_steps must be an integer"),
        ((5, 10, "uniform"), ValueError, "spacing must be one of 'leading', 'trailing', 'linspace'"),
        ((5, 10, "leading", -1), ValueError, "steps_offset must be >= 0"),
        ((10, 10, "leading", 1), ValueError, "outside 0..9"),  # diffusers returns timestep 10 here
    ],
)
def test_bad_arguments_raise_naming_the_problem(args, error, match):
    with pytest.raises(error, match=match):
        inference_timesteps(*args)


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((5, 11, 10), ValueError, "exceeds"),
        ((5, 0, 10), ValueError, "num_steps must be >= 1"),
        ((5.0, 2, 10), TypeError, "t must be an integer"),
        ((np.array([5.0]), 2, 10), TypeError, "t must be an integer"),
        ((True, 2, 10), TypeError, "bool"),
    ],
)
def test_previous_timestep_bad_arguments_raise(args, error, match):
    with pytest.raises(error, match=match):
        previous_timestep(*args)
