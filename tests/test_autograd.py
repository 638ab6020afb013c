"""Tensor core (refdiff.nn.autograd): every primitive's gradient against central finite differences
in float64 on hypothesis-drawn shapes (size-1 and odd dims, broadcasting), plus the graph rules:
no_grad, accumulation, dtype preservation, errors.

Finite differences (refdiff.nn.testing.check_gradients): eps = 1e-6 in float64, so truncation
(~eps^2 |f'''|) and rounding (~1e-16 |L| / eps) errors are ~1e-10 for the bounded inputs drawn
here, four orders below the atol = 1e-6, rtol = 1e-5 used for the comparison.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refdiff.nn.autograd import Tensor, concat, is_grad_enabled, no_grad, unbroadcast
from refdiff.nn.testing import check_gradients

SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=4)


def f64(shape, lo=-2.0, hi=2.0):
    """float64 arrays with bounded elements (finite differences stay accurate, see module doc)."""
    return hnp.arrays(np.float64, shape, elements=st.floats(lo, hi, allow_nan=False, allow_subnormal=False, width=64))


@st.composite
def broadcast_pair(draw, lo=-2.0, hi=2.0):
    shapes = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=4))
    a_shape, b_shape = shapes.input_shapes
    return draw(f64(a_shape, lo, hi)), draw(f64(b_shape, lo, hi))


# ---- elementwise binary ops, with broadcasting ---------------------------------------------


@given(broadcast_pair())
def test_add_gradient_matches_finite_differences(pair):
    check_gradients(lambda a, b: a + b, list(pair))


@given(broadcast_pair())
def test_sub_gradient_matches_finite_differences(pair):
    check_gradients(lambda a, b: a - b, list(pair))


@given(broadcast_pair())
def test_mul_gradient_matches_finite_differences(pair):
    check_gradients(lambda a, b: a * b, list(pair))


@given(broadcast_pair(lo=0.5, hi=2.0))  # divisor kept away from 0
def test_div_gradient_matches_finite_differences(pair):
    check_gradients(lambda a, b: a / b, list(pair))


@given(SHAPES.flatmap(f64), st.floats(-3, 3))
def test_scalar_operands_gradient_matches_finite_differences(a, c):
    check_gradients(lambda a: (c + a) * c - c / (a * a + 1) + (c - a), [a])


# ---- elementwise unary ops -------------------------------------------------------------------


@given(SHAPES.flatmap(f64))
def test_neg_gradient_matches_finite_differences(a):
    check_gradients(lambda a: -a, [a])


@given(SHAPES.flatmap(lambda s: f64(s, 0.5, 2.0)), st.sampled_from([-1.5, -1, 0.5, 2, 3]))
def test_pow_gradient_matches_finite_differences(a, p):
    check_gradients(lambda a: a**p, [a])


@given(SHAPES.flatmap(f64))
def test_exp_gradient_matches_finite_differences(a):
    check_gradients(lambda a: a.exp(), [a])


@given(SHAPES.flatmap(lambda s: f64(s, 0.5, 2.0)))
def test_log_gradient_matches_finite_differences(a):
    check_gradients(lambda a: a.log(), [a])


@given(SHAPES.flatmap(lambda s: f64(s, 0.5, 2.0)))
def test_sqrt_gradient_matches_finite_differences(a):
    check_gradients(lambda a: a.sqrt(), [a])


# ---- matmul ----------------------------------------------------------------------------------


@st.composite
def matmul_operands(draw):
    """a (..., n, k) @ b (..., k, m) with mutually broadcastable batch shapes; 1-D operands too."""
    n, k, m = (draw(st.integers(1, 4)) for _ in range(3))
    batch = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=2, max_side=3)).input_shapes
    a_shape = (k,) if draw(st.booleans()) and not batch[0] else batch[0] + (n, k)
    b_shape = (k,) if draw(st.booleans()) and not batch[1] else batch[1] + (k, m)
    return draw(f64(a_shape)), draw(f64(b_shape))


@given(matmul_operands())
def test_matmul_gradient_matches_finite_differences(ab):
    check_gradients(lambda a, b: a @ b, list(ab))


def test_matmul_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\) @ \(4, 5\)"):
        Tensor(np.zeros((2, 3))) @ Tensor(np.zeros((4, 5)))


# ---- reductions ------------------------------------------------------------------------------


@st.composite
def array_and_axes(draw):
    a = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=4).flatmap(f64))
    axes = draw(st.none() | st.lists(st.integers(-a.ndim, a.ndim - 1), unique_by=lambda i: i % a.ndim, max_size=a.ndim))
    return a, None if axes is None else tuple(axes), draw(st.booleans())


@given(array_and_axes())
def test_sum_gradient_matches_finite_differences(args):
    a, axes, keepdims = args
    check_gradients(lambda a: a.sum(axis=axes, keepdims=keepdims), [a])


@given(array_and_axes())
def test_mean_gradient_matches_finite_differences(args):
    a, axes, keepdims = args
    check_gradients(lambda a: a.mean(axis=axes, keepdims=keepdims), [a])


@given(array_and_axes())
def test_mean_forward_matches_numpy(args):
    a, axes, keepdims = args
    # same float64 summation up to order: 1e-12 covers a few ulps of sums of <= 256 terms of size <= 2
    np.testing.assert_allclose(Tensor(a).mean(axis=axes, keepdims=keepdims).data, a.mean(axis=axes, keepdims=keepdims), atol=1e-12)


# ---- shape ops -------------------------------------------------------------------------------


@given(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=3).flatmap(f64), st.randoms())
def test_reshape_gradient_matches_finite_differences(a, random):
    flat = [a.size] if random.random() < 0.5 else [1, a.size, 1]
    check_gradients(lambda a: a.reshape(*flat) * a.reshape(flat).exp(), [a])


@given(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=3).flatmap(f64), st.randoms())
def test_transpose_gradient_matches_finite_differences(a, random):
    axes = list(range(a.ndim))
    random.shuffle(axes)
    check_gradients(lambda a: a.transpose(*axes), [a])


@given(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=3).flatmap(f64), st.randoms())
def test_permute_and_T_match_numpy_transpose(a, random):
    axes = list(range(a.ndim))
    random.shuffle(axes)
    assert np.array_equal(Tensor(a).permute(axes).data, a.transpose(axes))
    assert np.array_equal(Tensor(a).T.data, a.T)


@st.composite
def concat_operands(draw):
    shape = list(draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=3)))
    axis = draw(st.integers(0, len(shape) - 1))
    arrays = []
    for _ in range(draw(st.integers(1, 3))):
        shape[axis] = draw(st.integers(1, 3))
        arrays.append(draw(f64(tuple(shape))))
    return arrays, axis


@given(concat_operands())
def test_concat_gradient_matches_finite_differences(args):
    arrays, axis = args
    check_gradients(lambda *ts: concat(ts, axis=axis), arrays)


def test_concat_shape_mismatch_names_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 3\)"):
        concat([Tensor(np.zeros((2, 3))), Tensor(np.zeros((3, 3)))], axis=1)


@st.composite
def basic_index(draw):
    a = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5).flatmap(f64))
    return a, draw(hnp.basic_indices(a.shape, allow_newaxis=True, allow_ellipsis=True))


@given(basic_index())
def test_basic_slicing_gradient_matches_finite_differences(args):
    a, index = args
    check_gradients(lambda a: a[index], [a])


@given(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4).flatmap(f64), st.data())
def test_integer_array_indexing_gradient_accumulates_repeats(a, data):
    # repeated indices pick an element several times: its gradient is the sum over the picks
    idx = data.draw(hnp.arrays(np.int64, st.integers(1, 6), elements=st.integers(-a.shape[0], a.shape[0] - 1)))
    check_gradients(lambda a: a[idx], [a])
    check_gradients(lambda a: a[idx, ...][:, None] * 2.0, [a])


def test_indexing_with_mixed_slice_and_array_matches_numpy():
    a = np.arange(24.0).reshape(2, 3, 4)
    idx = (slice(None), np.array([2, 0, 2]), 1)
    x = Tensor(a, requires_grad=True)
    x[idx].sum().backward()
    expected = np.zeros_like(a)
    np.add.at(expected, idx, 1.0)
    assert np.array_equal(x[idx].data, a[idx])
    assert np.array_equal(x.grad, expected)


# ---- graph rules ------------------------------------------------------------------------------


def test_unbroadcast_sums_to_the_input_shape():
    g = np.arange(24.0).reshape(2, 3, 4)
    assert np.array_equal(unbroadcast(g, (3, 1)), g.sum(axis=(0, 2))[:, None])
    assert np.array_equal(unbroadcast(g, ()), g.sum())
    assert unbroadcast(g, (2, 3, 4)) is g


def test_reused_node_accumulates_gradient_in_product():
    x = Tensor(np.array([1.0, -2.0, 3.0]), requires_grad=True)
    (x * x).sum().backward()  # d(x^2)/dx = 2x: both operand slots contribute x
    assert np.array_equal(x.grad, 2 * x.data)


def test_reused_node_accumulates_gradient_in_sum():
    x = Tensor(np.array([1.0, -2.0, 3.0]), requires_grad=True)
    (x + x).sum().backward()
    assert np.array_equal(x.grad, np.full(3, 2.0))


def test_reused_intermediate_accumulates_gradient():
    x = Tensor(np.array([0.5, 2.0]), requires_grad=True)
    y = x.exp()
    (y * y + y).sum().backward()  # d/dx (e^2x + e^x) = 2 e^2x + e^x
    np.testing.assert_allclose(x.grad, 2 * np.exp(2 * x.data) + np.exp(x.data), rtol=1e-15)


def test_leaf_gradient_accumulates_across_backward_calls():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    (x * 3.0).sum().backward()
    (x * x).sum().backward()
    assert np.array_equal(x.grad, 3.0 + 2 * x.data)


def test_backward_twice_with_retained_graph_does_not_double_count_intermediates():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    loss = ((x * 2.0) * (x * 2.0)).sum()  # 4 x^2, gradient 8 x per call
    loss.backward(retain_graph=True)
    loss.backward()
    assert np.array_equal(x.grad, 2 * 8 * x.data)


def test_backward_frees_the_graph_by_default():
    x = Tensor(np.ones(3), requires_grad=True)
    y = x.exp()
    loss = y.sum()
    loss.backward()
    assert loss._parents == () and y._parents == () and y.grad is None


def test_second_backward_through_freed_graph_raises():
    x = Tensor(np.ones(3), requires_grad=True)
    h = x.exp()
    h.sum().backward()  # frees h's graph
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        (h * 2.0).sum().backward()


def test_no_grad_records_no_graph():
    x = Tensor(np.ones(3), requires_grad=True)
    with no_grad():
        assert not is_grad_enabled()
        y = (x * 2.0 + x).exp().sum()
    assert is_grad_enabled()
    assert not y.requires_grad and y._parents == () and y._backward is None


def test_no_grad_restores_state_after_exception():
    with pytest.raises(ZeroDivisionError):
        with no_grad():
            1 / 0
    assert is_grad_enabled()


def test_no_requires_grad_inputs_record_no_graph():
    y = Tensor(np.ones(3)) * 2.0 + 1.0
    assert not y.requires_grad and y._parents == ()


def test_backward_on_non_scalar_without_grad_raises():
    x = Tensor(np.ones((2, 2)), requires_grad=True)
    with pytest.raises(RuntimeError, match=r"one-element Tensor, got shape \(2, 2\)"):
        (x * 2.0).backward()


def test_backward_on_non_scalar_with_explicit_grad_is_vector_jacobian_product():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    (x * x).backward(np.array([3.0, 5.0]))
    assert np.array_equal(x.grad, np.array([6.0, 20.0]))


def test_backward_without_graph_raises():
    with pytest.raises(RuntimeError, match="does not require grad"):
        Tensor(np.ones(1)).backward()


def test_integer_tensor_cannot_require_grad():
    with pytest.raises(TypeError, match="int"):
        Tensor(np.arange(3), requires_grad=True)


def test_pow_rejects_tensor_exponent():
    with pytest.raises(TypeError, match="scalar exponent"):
        Tensor(np.ones(2)) ** Tensor(np.ones(2))


def test_deep_graph_backward_has_no_recursion_limit():
    x = Tensor(np.ones(2), requires_grad=True)
    y = x
    for _ in range(5000):  # deeper than Python's default recursion limit of 1000
        y = y + 1.0
    y.sum().backward()
    assert np.array_equal(x.grad, np.ones(2))


def test_detach_cuts_the_graph():
    x = Tensor(np.ones(2), requires_grad=True)
    y = x.detach() * x
    y.sum().backward()
    assert np.array_equal(x.grad, np.ones(2))  # only the non-detached factor contributes


def test_numpy_array_on_the_left_defers_to_tensor():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = np.array([3.0, 4.0]) * x + np.array([1.0, 1.0])
    assert isinstance(y, Tensor)
    y.sum().backward()
    assert np.array_equal(x.grad, np.array([3.0, 4.0]))


# ---- dtype preservation ------------------------------------------------------------------------

UNARY_AND_SCALAR_OPS = {
    "add_scalar": lambda a: a + 1.5,
    "radd_scalar": lambda a: 1.5 + a,
    "rsub_scalar": lambda a: 1.5 - a,
    "mul_scalar": lambda a: a * 0.1,
    "div_scalar": lambda a: a / 3.0,
    "rdiv_scalar": lambda a: 3.0 / a,
    "int_scalar": lambda a: a * 2 + 1,
    "pow": lambda a: a**2.5,
    "neg": lambda a: -a,
    "exp": lambda a: a.exp(),
    "log": lambda a: a.log(),
    "sqrt": lambda a: a.sqrt(),
    "sum": lambda a: a.sum(axis=1),
    "mean": lambda a: a.mean(axis=(0, 1), keepdims=True),
    "reshape": lambda a: a.reshape(6),
    "transpose": lambda a: a.transpose(1, 0),
    "getitem": lambda a: a[np.array([1, 1]), 1:],
    "matmul": lambda a: a @ a.T,
    "concat": lambda a: concat([a, a], axis=1),
}


@pytest.mark.parametrize("name", sorted(UNARY_AND_SCALAR_OPS))
def test_float32_in_gives_float32_out_and_grad(name):
    x = Tensor(np.linspace(0.5, 2.0, 6, dtype=np.float32).reshape(2, 3), requires_grad=True)
    y = UNARY_AND_SCALAR_OPS[name](x)
    assert y.dtype == np.float32
    y.sum().backward()
    assert x.grad.dtype == np.float32


def test_float32_grad_stays_float32_when_downstream_is_float64():
    x = Tensor(np.ones(3, dtype=np.float32), requires_grad=True)
    (x * Tensor(np.ones(3))).sum().backward()  # the product is float64 (NumPy promotion)
    assert x.grad.dtype == np.float32


def test_python_scalar_wraps_to_array():
    assert Tensor(2.5).data.shape == () and Tensor([1.0, 2.0]).shape == (2,)
    assert Tensor(np.float32(1.0)).dtype == np.float32
