"""refdiff.kernels.dpmpp_2m_step, euler_step and heun_step agree with their float64 NumPy twins
(refdiff.samplers.dpm_solver.dpmpp_2m_step, refdiff.samplers.k_diffusion.euler_step, .heun_step).

Drawn: shapes (B = 1, odd sizes, sizes past the block), noise levels over six decades, steps to
sigma_next = 0, first-order steps (denoised_prev None), both solver types.

Error model (u = 2^-24; the twin runs in float64 on the same float32 inputs, so every difference is
the kernel's rounding). M bounds |x|, |denoised|, |denoised_prev| of the call.
- dpmpp_2m: the launcher rounds the twin's float64 coefficients once each (noise_ratio, data_coef,
  d1_coef, inv_r: u relative each). D_1 = inv_r (D - D_prev): |D_1| <= 2 M inv_r, three roundings.
  x_next = noise_ratio x + data_coef D + d1_coef D_1: each of the three terms carries at most four
  roundings of its own size (coefficient, product, two sums), so
      |kernel - twin| <= 8 u (noise_ratio M + data_coef M + |d1_coef| 2 M inv_r).
- euler: k = (sigma_next - sigma) / sigma in [-1, 0] from float32 sigmas (sigma, sigma_next, their
  difference, the division: 4 u relative to 1 + sigma_next / sigma <= 2), x - D (u 2M), the
  product and the sum: |kernel - twin| <= 16 u M.
- heun: x_next = x + h (d + d'), h = (sigma_next - sigma) / 2, d = (x - D) / sigma,
  d' = (x_euler - D') / sigma_next. The float32 sigmas and h (three roundings: h relative 3 u,
  each sigma u), x - D (|.| <= 2M, one rounding: u 2M) and the division (u |d|): |d| <= 2M / sigma
  carries (2 + 1 + 1) u |d|, i.e. 4u 2M / sigma; d' likewise 4u 2M / sigma_next. Their sum adds
  u (|d| + |d'|); the product with h adds 3 + 1 roundings of |h| (|d| + |d'|); the final sum u (M +
  |h| (|d| + |d'|)). With |h| (|d| + |d'|) <= |h| 2M (1 / sigma + 1 / sigma_next) =: K:
      |kernel - twin| <= 4u K + u K + 4u K + u (M + K) = u (10 K + M), stated with margin as 16 u (K + M).
  K is up to (1 / r - 1) 2M for r = sigma_next / sigma (r >= 0.05 here: K <= 38 M): the term d'
  is divided by the smaller sigma, so the step's rounding grows with the step's ratio.
"""
import numpy as np
from hypothesis import strategies as st

from refdiff.kernels.testing import U, Call, arrays, batch_shapes, kernel_agreement_test
from refdiff.samplers.dpm_solver import dpmpp_2m_coefficients

LOG_SIGMA = st.floats(-3.0, 3.0)  # log10 sigma: 1e-3 .. 1e3
RATIO = st.floats(0.05, 0.95)      # sigma_next / sigma, and sigma / sigma_prev


def _bound(*arrays_):
    return max(float(np.abs(a.astype(np.float64)).max()) for a in arrays_ if a is not None)


@st.composite
def dpmpp_2m_calls(draw):
    shape = draw(batch_shapes())
    x, d, d_prev = (draw(arrays(shape)) for _ in range(3))
    sigma = 10.0 ** draw(LOG_SIGMA)
    sigma_next = 0.0 if draw(st.booleans()) and draw(st.booleans()) else sigma * draw(RATIO)
    first_order = draw(st.booleans()) and draw(st.booleans())
    sigma_prev = None if first_order else sigma / draw(RATIO)
    return Call(args=(x, d, None if first_order else d_prev, sigma, sigma_next, sigma_prev),
                kwargs={"solver_type": draw(st.sampled_from(["midpoint", "heun"]))})


def dpmpp_2m_tolerance(call, ref):
    x, d, d_prev, sigma, sigma_next, sigma_prev = call.args
    M = _bound(x, d, d_prev)
    noise_ratio, data_coef, d1_coef, inv_r = dpmpp_2m_coefficients(
        sigma, sigma_next, sigma_prev if d_prev is not None else None, call.kwargs["solver_type"])
    return 8 * U * (noise_ratio * M + data_coef * M + abs(d1_coef) * 2 * M * inv_r)


@st.composite
def euler_calls(draw):
    shape = draw(batch_shapes())
    x, d = draw(arrays(shape)), draw(arrays(shape))
    sigma = 10.0 ** draw(LOG_SIGMA)
    sigma_next = 0.0 if draw(st.booleans()) and draw(st.booleans()) else sigma * draw(RATIO)
    return Call(args=(x, d, sigma, sigma_next))


test_dpmpp_2m_step_matches_its_twin = kernel_agreement_test("dpmpp_2m_step", dpmpp_2m_calls(), dpmpp_2m_tolerance)
test_euler_step_matches_its_twin = kernel_agreement_test(
    "euler_step", euler_calls(), lambda call, ref: 16 * U * _bound(call.args[0], call.args[1]))


@st.composite
def heun_calls(draw):
    shape = draw(batch_shapes())
    x, d, x_euler, d_next = (draw(arrays(shape)) for _ in range(4))
    sigma = 10.0 ** draw(LOG_SIGMA)
    return Call(args=(x, d, x_euler, d_next, sigma, sigma * draw(RATIO)))


def heun_tolerance(call, ref):
    x, d, x_euler, d_next, sigma, sigma_next = call.args
    M = _bound(x, d, x_euler, d_next)
    K = abs(sigma_next - sigma) / 2 * 2 * M * (1 / sigma + 1 / sigma_next)
    return 16 * U * (K + M)


test_heun_step_matches_its_twin = kernel_agreement_test("heun_step", heun_calls(), heun_tolerance)


def test_heun_kernel_with_a_constant_derivative_equals_the_euler_step():
    """Closed form: when d' = d (D' = D, x_euler = D + (sigma_next / sigma) (x - D), the exact ODE
    solution for a constant denoiser), Heun's correction is the Euler step x + (sigma_next - sigma) d."""
    from refdiff.kernels import euler_step, heun_step
    from refdiff.kernels.testing import _to_host, _to_kernel_side

    rng = np.random.default_rng(0)
    x, d = (rng.standard_normal((3, 5, 7)).astype(np.float32) for _ in range(2))
    sigma, sigma_next = 2.0, 0.5
    x_euler = _to_host(euler_step(_to_kernel_side(x), _to_kernel_side(d), sigma, sigma_next))
    out = _to_host(heun_step(*map(_to_kernel_side, (x, d, x_euler, d)), sigma, sigma_next))
    np.testing.assert_allclose(out, x_euler, rtol=0, atol=16 * U * 4 * np.abs(np.stack([x, d])).max())


def test_dpmpp_2m_kernel_to_sigma_zero_returns_the_prediction():
    """Closed form: a first-order step to sigma_next = 0 is D itself (noise_ratio 0, data_coef 1), exactly."""
    from refdiff.kernels import dpmpp_2m_step
    from refdiff.kernels.testing import _to_host, _to_kernel_side

    rng = np.random.default_rng(0)
    x, d = (rng.standard_normal((3, 5, 7)).astype(np.float32) for _ in range(2))
    out = _to_host(dpmpp_2m_step(_to_kernel_side(x), _to_kernel_side(d), None, 2.5, 0.0, None))
    np.testing.assert_array_equal(out, d)
