"""refdiff.kernels.q_sample / q_sample_with_target agree with their float64 NumPy twins.

Error model (u = 2^-24, the float32 unit roundoff): x_t = a x_0 + s eps with a = sqrt(abar_t),
s = sqrt(1 - abar_t) in [0, 1]. The kernel rounds a and s to float32 (u each), rounds the two
products and the sum (u each); every rounding errs by at most u times a term bounded by |x_0| or
|eps| (a, s <= 1) or their sum. So |kernel - twin| <= 4u (|x_0| + |eps|) per element (an FMA
only removes a rounding). The v target a eps - s x_0 has the same bound; the eps and x_0
targets are copies: exact.
"""
import numpy as np
from hypothesis import strategies as st

from refdiff.kernels.testing import U, Call, arrays, batch_shapes, kernel_agreement_test, schedules, timesteps


@st.composite
def q_sample_calls(draw, with_target):
    schedule = draw(schedules())
    shape = draw(batch_shapes())
    x0 = draw(arrays(shape))
    noise = draw(arrays(shape))
    t = draw(timesteps(schedule.T, shape[0]))
    kwargs = {"prediction_type": draw(st.sampled_from(["epsilon", "sample", "v_prediction"]))} if with_target else {}
    return Call(args=(x0, t, noise, schedule), kwargs=kwargs)


def forward_tolerance(call, ref):
    x0, _, noise, _ = call.args
    bound = 4 * U * (np.abs(x0.astype(np.float64)) + np.abs(noise))  # see the module docstring
    if call.kwargs.get("prediction_type", "v_prediction") == "v_prediction":
        return bound, bound
    return bound, 0.0  # eps / x_0 targets are copies


test_q_sample_matches_its_twin = kernel_agreement_test("q_sample", q_sample_calls(False), lambda c, r: forward_tolerance(c, r)[0])
test_q_sample_with_target_matches_its_twin = kernel_agreement_test(
    "q_sample_with_target", q_sample_calls(True), forward_tolerance
)


def test_q_sample_at_t_0_of_a_long_schedule_is_nearly_x0():
    """Closed form: at t = 0 of the linear schedule abar_0 = 1 - 1e-4, so x_t = 0.99995 x_0 + 0.01 eps."""
    from refdiff.kernels import q_sample
    from refdiff.kernels.testing import _schedule, _to_host, _to_kernel_side

    x0 = np.ones((2, 3), dtype=np.float32)
    noise = np.zeros((2, 3), dtype=np.float32)
    x_t = _to_host(q_sample(_to_kernel_side(x0), 0, _to_kernel_side(noise), _schedule("linear", 1000)))
    np.testing.assert_allclose(x_t, np.sqrt(1 - 1e-4), rtol=2 * U)  # one rounding of sqrt(abar), one of the product
