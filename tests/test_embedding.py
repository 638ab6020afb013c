"""timestep_embedding: the sinusoidal embedding of diffusers' get_timestep_embedding."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import refdiff as rd
from refdiff.gaussian.embedding import timestep_embedding

EPS32 = 2.0**-24
timesteps = hnp.arrays(np.int64, st.integers(1, 8), elements=st.integers(0, 999))
dims = st.integers(1, 96)
shifts = st.sampled_from([0, 1])


def valid(dim, shift):
    return not (dim // 2 > 0 and dim // 2 == shift)


@given(timesteps, dims, st.booleans(), shifts)
def test_embedding_is_float32_of_shape_B_by_dim(t, dim, flip, shift):
    if not valid(dim, shift):
        return
    emb = timestep_embedding(t, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift)
    assert emb.dtype == np.float32 and emb.shape == (len(t), dim)


@given(timesteps, dims, st.booleans(), shifts, st.floats(0.5, 4), st.sampled_from([100, 10000]))
def test_embedding_equals_the_sinusoid_formula_written_with_powers(t, dim, flip, shift, scale, max_period):
    # freq_i = max_period^(-i / (half - shift)) (the transformer's 1 / 10000^(2i/d) with d = 2 (half - shift))
    if not valid(dim, shift):
        return
    half = dim // 2
    expected = np.zeros((len(t), dim))
    for b, tb in enumerate(t):
        for i in range(half):
            angle = scale * tb * float(max_period) ** (-i / (half - shift))
            sin_col, cos_col = (half + i, i) if flip else (i, half + i)
            expected[b, sin_col], expected[b, cos_col] = np.sin(angle), np.cos(angle)
    emb = timestep_embedding(
        t, dim, max_period=max_period, flip_sin_to_cos=flip, downscale_freq_shift=shift, scale=scale
    )
    # float64 exp(log) vs power differ by ~|angle| * 1e-15 <= 4e-12; then one float32 rounding
    np.testing.assert_allclose(emb, expected, rtol=0, atol=EPS32 + 1e-11)


@given(timesteps, st.integers(1, 48).map(lambda h: 2 * h + 1), st.booleans())
def test_odd_dim_gets_a_last_column_of_zeros(t, dim, flip):
    emb = timestep_embedding(t, dim, flip_sin_to_cos=flip, downscale_freq_shift=0)
    assert np.all(emb[:, -1] == 0)
    even = timestep_embedding(t, dim - 1, flip_sin_to_cos=flip, downscale_freq_shift=0)
    np.testing.assert_array_equal(emb[:, :-1], even)


@given(timesteps, st.integers(2, 48).map(lambda h: 2 * h))
def test_flip_sin_to_cos_swaps_the_two_halves(t, dim):
    half = dim // 2
    plain = timestep_embedding(t, dim)
    flipped = timestep_embedding(t, dim, flip_sin_to_cos=True)
    np.testing.assert_array_equal(flipped, np.concatenate([plain[:, half:], plain[:, :half]], axis=1))


@given(timesteps, st.integers(2, 48).map(lambda h: 2 * h))
def test_sin_and_cos_columns_of_one_frequency_lie_on_the_unit_circle(t, dim):
    half = dim // 2
    emb = timestep_embedding(t, dim).astype(np.float64)
    # two float32 roundings of values <= 1, squared: <= 4 EPS32
    np.testing.assert_allclose(emb[:, :half] ** 2 + emb[:, half:] ** 2, 1.0, rtol=0, atol=4 * EPS32)


def test_timestep_zero_embeds_as_sin_0_and_cos_1():
    emb = timestep_embedding(np.array([0]), 8)
    np.testing.assert_array_equal(emb, [[0, 0, 0, 0, 1, 1, 1, 1]])


def test_frequencies_run_from_1_to_1_over_max_period_with_shift_1():
    # downscale_freq_shift = 1 (the DDPM code): freq_i = max_period^(-i / (half - 1)), the last
    # one exactly 1 / max_period. Read them back from the sin columns at a small angle.
    t = np.array([1])
    emb = timestep_embedding(t, 10, downscale_freq_shift=1, scale=1e-3)
    freqs = np.arcsin(emb[0, :5].astype(np.float64)) / 1e-3
    # one float32 rounding of sin(1e-3 f) (relative EPS32), arcsin undoes it
    np.testing.assert_allclose(freqs, 10000.0 ** (-np.arange(5) / 4), rtol=4 * EPS32)


def test_float_timesteps_are_accepted_like_diffusers():
    a = timestep_embedding(np.array([3.0, 10.5]), 16)
    b = timestep_embedding(np.array([3]), 16)
    np.testing.assert_array_equal(a[0], b[0])


def test_public_name_is_timestep_embedding():
    assert rd.timestep_embedding is timestep_embedding


@pytest.mark.parametrize(
    "t, dim, kwargs, error, match",
    [
        (np.array([[1, 2]]), 8, {}, ValueError, r"shape \(B,\)"),
        (np.array(3), 8, {}, ValueError, r"shape \(B,\)"),
        ([1, 2], 8, {}, TypeError, "1-D array"),
        (np.array([1, 2]), 0, {}, ValueError, "dim must be >= 1"),
        (np.array([1, 2]), 8.0, {}, TypeError, "dim must be an integer"),
        (np.array([1, 2]), 2, {}, ValueError, "divides by zero"),  # half = 1 = downscale_freq_shift
        (np.array([1.0, np.nan]), 8, {}, ValueError, "NaN"),
        (np.array([True]), 8, {}, TypeError, "integer or real"),
        (np.array([1]), 8, dict(max_period=0), ValueError, "max_period"),
    ],
)
def test_bad_inputs_raise_naming_the_problem(t, dim, kwargs, error, match):
    with pytest.raises(error, match=match):
        timestep_embedding(t, dim, **kwargs)
