"""refdiff.kernels.timestep_embedding agrees with its float64 NumPy twin.

Error model: the kernel and the twin both compute the angle scale t freq_i and its sin / cos in
float64 and round once to float32. The float64 parts differ by a few float64 ulps of the angle
(the GPU's sin/cos are within 2 ulp, and the angle itself within 1 ulp): at most 8 * 2^-53
|angle| <= 1e-12 here (|angle| <= 1000 * 4). The one float32 rounding then errs by at most
u |value| (u = 2^-24), and where the float64 values straddle a float32 rounding boundary the two
roundings can pick neighbours: 2u |value| + 1e-12 covers both.
"""
import numpy as np
from hypothesis import strategies as st

from refdiff.kernels.testing import MAX_BATCH, SIMULATED, U, Call, kernel_agreement_test

MAX_DIM = 33 if SIMULATED else 1024


@st.composite
def embedding_calls(draw):
    B = draw(st.integers(1, MAX_BATCH))
    if draw(st.booleans()):
        t = np.array(draw(st.lists(st.sampled_from([0, 999]) | st.integers(0, 999), min_size=B, max_size=B)), dtype=np.int64)
    else:  # real (continuous) timesteps are accepted too
        t = np.array(draw(st.lists(st.floats(0, 1000, allow_nan=False), min_size=B, max_size=B)), dtype=np.float64)
    shift = draw(st.sampled_from([0, 1]))
    dim = draw(st.integers(1, MAX_DIM).filter(lambda d: d // 2 == 0 or d // 2 != shift))
    kwargs = {
        "max_period": draw(st.sampled_from([10000, 100, 7.5])),
        "flip_sin_to_cos": draw(st.booleans()),
        "downscale_freq_shift": shift,
        "scale": draw(st.sampled_from([1.0, 0.5, 4.0])),
    }
    return Call(args=(t, dim), kwargs=kwargs)


test_timestep_embedding_matches_its_twin = kernel_agreement_test(
    "timestep_embedding", embedding_calls(), lambda call, ref: 2 * U * np.abs(ref[0]) + 1e-12
)


def test_timestep_embedding_at_t_0_is_zeros_then_ones():
    """Closed form: at t = 0 every angle is 0: sin = 0, cos = 1 (and an odd dim's pad column 0)."""
    from refdiff.kernels import timestep_embedding
    from refdiff.kernels.testing import _to_host, _to_kernel_side

    emb = _to_host(timestep_embedding(_to_kernel_side(np.zeros(2, dtype=np.int64)), 7))
    np.testing.assert_array_equal(emb, [[0, 0, 0, 1, 1, 1, 0]] * 2)
