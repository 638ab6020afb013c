"""refdiff.nn.functional: each op's gradient against central finite differences (float64,
hypothesis-drawn shapes with size-1 and odd sides), forwards against naive loops or closed forms
on tiny inputs, dtype preservation and input errors.

Gradient tolerance (refdiff.nn.testing.check_gradients: eps = 1e-6, atol = 1e-6, rtol = 1e-5):
in float64 the central difference error is ~eps^2 |f'''| + 1e-16 |L| / eps ~ 1e-10 here.
Forward-vs-loop tolerance: both sides are float64 with the same terms summed in a different
order, so they agree to a few ulps of the largest partial sum: atol 1e-12 for O(1)-O(10) values.
"""
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import refdiff.nn.functional as F
from refdiff.nn.autograd import Tensor, no_grad
from refdiff.nn.testing import check_gradients

FORWARD_ATOL = 1e-12  # float64 vs float64 loop, different summation order (module doc)


def f64(shape, lo=-2.0, hi=2.0):
    return hnp.arrays(np.float64, shape, elements=st.floats(lo, hi, allow_nan=False, allow_subnormal=False, width=64))


def small_shape(min_dims=1, max_dims=3, max_side=4):
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=1, max_side=max_side)


# ---- linear and embedding ----------------------------------------------------------------------


@st.composite
def linear_operands(draw):
    lead = draw(hnp.array_shapes(min_dims=0, max_dims=2, min_side=1, max_side=3))
    n_in, n_out = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    x, w = draw(f64(lead + (n_in,))), draw(f64((n_out, n_in)))
    b = draw(st.none() | f64((n_out,)))
    return x, w, b


@given(linear_operands())
def test_linear_gradient_matches_finite_differences(args):
    x, w, b = args
    if b is None:
        check_gradients(lambda x, w: F.linear(x, w), [x, w])
    else:
        check_gradients(lambda x, w, b: F.linear(x, w, b), [x, w, b])


@given(linear_operands())
def test_linear_forward_matches_x_wT_plus_b(args):
    x, w, b = args
    expected = x @ w.T + (0 if b is None else b)
    np.testing.assert_allclose(F.linear(x, w, b).data, expected, atol=FORWARD_ATOL)


def test_linear_shape_mismatch_names_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 5\)"):
        F.linear(np.zeros((2, 3)), np.zeros((4, 5)))


@given(st.integers(1, 5), st.integers(1, 4), st.data())
def test_embedding_gradient_matches_finite_differences(num, dim, data):
    w = data.draw(f64((num, dim)))
    idx = data.draw(hnp.arrays(np.int64, small_shape(max_dims=2), elements=st.integers(0, num - 1)))
    check_gradients(lambda w: F.embedding(idx, w), [w])


def test_embedding_forward_picks_rows():
    w = np.arange(12.0).reshape(4, 3)
    idx = np.array([[3, 0], [3, 3]])
    assert np.array_equal(F.embedding(idx, w).data, w[idx])


def test_embedding_rejects_float_indices():
    with pytest.raises(TypeError, match="integers"):
        F.embedding(np.array([0.0]), np.zeros((2, 2)))


# ---- activations ---------------------------------------------------------------------------


@given(small_shape().flatmap(lambda s: f64(s, -6, 6)))
def test_silu_gradient_matches_finite_differences(x):
    check_gradients(F.silu, [x])


@given(small_shape().flatmap(lambda s: f64(s, -30, 30)))
def test_silu_forward_matches_x_sigmoid(x):
    # x / (1 + e^-x) is accurate to a few ulps in float64. The tanh form (1 + tanh(x/2)) / 2
    # cancels for x << 0: its absolute error is ~ulp(1) |x| / 2 <= 4e-15 for |x| <= 30, hence atol 1e-14
    np.testing.assert_allclose(F.silu(x).data, x / (1 + np.exp(-x)), rtol=1e-14, atol=1e-14)


def silu_plain(x):
    """SiLU by its tanh form, x (1 + tanh(x/2)) / 2, and its derivative s (1 + x (1 - s)):
    the definition F.silu's faster x / (1 + e^-x) is checked against (issue 13)."""
    s = (1 + np.tanh(x / 2)) / 2
    return x * s, s * (1 + x * (1 - s))


@given(small_shape().flatmap(lambda s: f64(s, -30, 30)), st.integers(0, 2**32 - 1))
def test_silu_matches_plain_definition(x, seed):
    # outputs and gradients in float64; the tanh form loses ~ulp(1) |x| / 2 for x << 0 (see above)
    xt = Tensor(x, requires_grad=True)
    y = F.silu(xt)
    g = np.random.default_rng(seed).standard_normal(x.shape)
    y.backward(g)
    y_ref, dy_dx = silu_plain(x)
    np.testing.assert_allclose(y.data, y_ref, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(xt.grad, g * dy_dx, rtol=1e-13, atol=1e-14)


@given(small_shape().flatmap(lambda s: f64(s, -30, 30)), st.booleans())
def test_silu_without_gradient_matches_plain_definition(x, under_no_grad):
    """The no-backward fast path (y written over the 1 + e^-x buffer) against the tanh form.

    Catches: the output aliasing the input or a scratch buffer (x is compared after the call),
    the fast path taken or skipped on the wrong condition (both ways of having no graph: a plain
    array, and a Tensor that wants a gradient under no_grad). Tolerance as in the test above."""
    x_before = x.copy()
    if under_no_grad:
        with no_grad():
            y = F.silu(Tensor(x, requires_grad=True))
    else:
        y = F.silu(x)
    assert not y.requires_grad
    np.testing.assert_allclose(y.data, silu_plain(x)[0], rtol=1e-14, atol=1e-14)
    np.testing.assert_array_equal(x, x_before)


def test_silu_without_gradient_in_several_blocks_matches_plain_definition():
    """An array of 2.5 blocks (and a non-contiguous view of it) through the blocked no-backward path.

    Catches: a last partial block dropped or written to the wrong place, a block's 1 + e^-x
    reused from the previous block, the output not in the input's shape or order."""
    x = np.random.default_rng(3).uniform(-30, 30, (5, F._SILU_BLOCK // 2)).T  # float64, transposed view
    y = F.silu(x)
    assert y.shape == x.shape
    np.testing.assert_allclose(y.data, silu_plain(x)[0], rtol=1e-14, atol=1e-14)  # as the tests above


def test_silu_is_finite_and_warning_free_at_extremes():
    x = np.array([-1e4, -100.0, 100.0, 1e4], dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow in exp would warn
        y = F.silu(Tensor(x, requires_grad=True))
        y.sum().backward()
    assert np.all(np.isfinite(y.data))
    np.testing.assert_array_equal(y.data, [0.0, 0.0, 100.0, 1e4])


@given(small_shape().flatmap(lambda s: f64(s, -4, 4)))
def test_gelu_gradient_matches_finite_differences(x):
    check_gradients(F.gelu, [x])


@given(small_shape().flatmap(lambda s: f64(s, -6, 6)))
def test_gelu_tanh_approximation_is_close_to_exact_erf_gelu(x):
    exact = np.vectorize(lambda v: 0.5 * v * (1 + math.erf(v / math.sqrt(2))))(x)
    # the tanh approximation's largest deviation from x Phi(x) is ~4.7e-4 (near |x| ~ 2.2)
    np.testing.assert_allclose(F.gelu(x).data, exact, atol=5e-4)


@st.composite
def array_and_axis(draw, lo=-3.0, hi=3.0):
    x = draw(small_shape().flatmap(lambda s: f64(s, lo, hi)))
    return x, draw(st.integers(-x.ndim, x.ndim - 1))


@given(array_and_axis())
def test_softmax_gradient_matches_finite_differences(args):
    x, axis = args
    check_gradients(lambda x: F.softmax(x, axis=axis), [x])


@given(array_and_axis())
def test_softmax_forward_matches_naive_formula(args):
    x, axis = args
    e = np.exp(x)
    np.testing.assert_allclose(F.softmax(x, axis=axis).data, e / e.sum(axis=axis, keepdims=True), atol=FORWARD_ATOL)


def test_softmax_is_stable_for_large_logits():
    y = F.softmax(np.array([1000.0, 1000.0, -1000.0])).data
    np.testing.assert_allclose(y, [0.5, 0.5, 0.0], atol=1e-300)


# ---- pad2d ---------------------------------------------------------------------------------


@st.composite
def pad_operands(draw):
    x = draw(hnp.array_shapes(min_dims=2, max_dims=4, min_side=1, max_side=3).flatmap(f64))
    padding = draw(st.integers(0, 2) | st.tuples(*(st.integers(0, 2) for _ in range(4))))
    return x, padding


def np_pad_widths(ndim, padding):
    """np.pad's ((before, after), ...) for torch-order padding (left, right, top, bottom) of the last two axes."""
    left, right, top, bottom = (padding,) * 4 if isinstance(padding, int) else padding
    return [(0, 0)] * (ndim - 2) + [(top, bottom), (left, right)]


@given(pad_operands())
def test_pad2d_gradient_matches_finite_differences(args):
    x, padding = args
    check_gradients(lambda x: F.pad2d(x, padding), [x])


@given(pad_operands())
def test_pad2d_forward_matches_np_pad(args):
    x, padding = args
    expected = np.pad(x, np_pad_widths(x.ndim, padding))  # constant mode, zeros
    np.testing.assert_array_equal(F.pad2d(x, padding).data, expected)


def test_pad2d_right_bottom_is_diffusers_downsample_padding():
    x = np.arange(6.0).reshape(1, 1, 2, 3)
    y = F.pad2d(x, (0, 1, 0, 1)).data  # torch F.pad(x, (0, 1, 0, 1)): one column right, one row below
    np.testing.assert_array_equal(y[0, 0], [[0, 1, 2, 0], [3, 4, 5, 0], [0, 0, 0, 0]])


def test_pad2d_rejects_negative_or_malformed_padding():
    with pytest.raises(ValueError, match=">= 0"):
        F.pad2d(np.zeros((2, 2)), (0, -1, 0, 0))
    with pytest.raises(ValueError, match="left, right, top, bottom"):
        F.pad2d(np.zeros((2, 2)), (1, 1))


# ---- conv2d ----------------------------------------------------------------------------------


@st.composite
def conv_operands(draw):
    N, C, O = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = draw(st.integers(1, 2) | st.tuples(st.integers(1, 3), st.integers(1, 3)))
    padding = draw(st.integers(0, 1) | st.tuples(st.integers(0, 2), st.integers(0, 2)))
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    H = draw(st.integers(max(1, kh - 2 * ph), 5))
    W = draw(st.integers(max(1, kw - 2 * pw), 5))
    x, w = draw(f64((N, C, H, W))), draw(f64((O, C, kh, kw)))
    b = draw(st.none() | f64((O,)))
    return x, w, b, stride, padding


def conv2d_loops(x, w, b, stride, padding):
    """y[n,o,h,w] = b[o] + sum_{c,i,j} W[o,c,i,j] x_pad[n, c, s h + i, s w + j], by loops."""
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    N, C, H, W = x.shape
    O, _, kh, kw = w.shape
    xp = np.zeros((N, C, H + 2 * ph, W + 2 * pw))
    xp[:, :, ph : ph + H, pw : pw + W] = x
    Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    y = np.zeros((N, O, Ho, Wo))
    for n in range(N):
        for o in range(O):
            for h in range(Ho):
                for v in range(Wo):
                    total = 0.0 if b is None else b[o]
                    for c in range(C):
                        for i in range(kh):
                            for j in range(kw):
                                total += w[o, c, i, j] * xp[n, c, sh * h + i, sw * v + j]
                    y[n, o, h, v] = total
    return y


@settings(max_examples=30)
@given(conv_operands())
def test_conv2d_gradient_matches_finite_differences(args):
    x, w, b, stride, padding = args
    if b is None:
        check_gradients(lambda x, w: F.conv2d(x, w, stride=stride, padding=padding), [x, w])
    else:
        check_gradients(lambda x, w, b: F.conv2d(x, w, b, stride=stride, padding=padding), [x, w, b])


@settings(max_examples=30)
@given(conv_operands())
def test_conv2d_forward_matches_naive_loops(args):
    x, w, b, stride, padding = args
    y = F.conv2d(x, w, b, stride=stride, padding=padding).data
    np.testing.assert_allclose(y, conv2d_loops(x, w, b, stride, padding), atol=FORWARD_ATOL)


def conv2d_plain(x, w, b, stride, padding, g):
    """conv2d by its definition, in float64: y = b + sum_{c,i,j} W x_pad over the windows, and
    the gradients of sum(g * y) with respect to x, W and b. No scratch buffers, no 1x1 path:
    the definition that F.conv2d's fast paths are checked against (issue 13)."""
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    N, C, H, W = x.shape
    O, _, kh, kw = w.shape
    x_pad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    windows = np.lib.stride_tricks.sliding_window_view(x_pad, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw][:, :, :Ho, :Wo]
    y = np.einsum("nchwij,ocij->nohw", windows, w) + (0 if b is None else b[None, :, None, None])
    dw = np.einsum("nchwij,nohw->ocij", windows, g)
    db = g.sum(axis=(0, 2, 3))
    dwindows = np.einsum("ocij,nohw->nchwij", w, g)  # each window's share of the gradient
    dx_pad = np.zeros_like(x_pad)
    for i in range(kh):
        for j in range(kw):
            dx_pad[:, :, i : i + sh * Ho : sh, j : j + sw * Wo : sw] += dwindows[..., i, j]
    return y, dx_pad[:, :, ph : ph + H, pw : pw + W], dw, db


@st.composite
def pointwise_conv_operands(draw):  # the 1x1 fast path: kernel 1x1, stride 1, no padding
    N, C, O = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    H, W = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    x, w = draw(f64((N, C, H, W))), draw(f64((O, C, 1, 1)))
    b = draw(st.none() | f64((O,)))
    return x, w, b, draw(st.sampled_from([1, (1, 1)])), draw(st.sampled_from([0, (0, 0)]))


@settings(max_examples=60)
@given(conv_operands() | pointwise_conv_operands(), st.integers(0, 2**32 - 1))
def test_conv2d_fast_paths_match_plain_definition(args, seed):
    """Every path of conv2d against the einsum definition: channel-major im2col + one GEMM per
    image, dW from the rebuilt columns, dx at stride 1 as the padded correlation and at stride > 1
    (or padding >= kernel) on the spread grid, and the 1x1 GEMM.

    Catches: columns in an order other than the weight's (c, i, j), a wrong dx padding
    (k - 1 - p), a window stride or offset error, a gradient summed over the wrong axes."""
    # outputs and all three gradients, float64: the same sums in another order (atol as FORWARD_ATOL)
    x, w, b, stride, padding = args
    xt, wt = Tensor(x, requires_grad=True), Tensor(w, requires_grad=True)
    bt = None if b is None else Tensor(b, requires_grad=True)
    y = F.conv2d(xt, wt, bt, stride=stride, padding=padding)
    g = np.random.default_rng(seed).standard_normal(y.shape)
    y.backward(g)
    y_ref, dx_ref, dw_ref, db_ref = conv2d_plain(x, w, b, stride, padding, g)
    np.testing.assert_allclose(y.data, y_ref, atol=FORWARD_ATOL)
    np.testing.assert_allclose(xt.grad, dx_ref, atol=FORWARD_ATOL)
    np.testing.assert_allclose(wt.grad, dw_ref, atol=FORWARD_ATOL)
    if b is not None:
        np.testing.assert_allclose(bt.grad, db_ref, atol=FORWARD_ATOL)


@pytest.mark.parametrize("stride", [1, 2])
def test_conv2d_in_chunks_of_images_matches_plain_definition(stride):
    """With the columns' budget cut to two images' worth, a batch of 5 runs in chunks of 2, 2, 1:
    outputs and all three gradients still match the definition.

    Catches: a chunk written to the wrong images of y, a last partial chunk dropped, dW summed
    over one chunk only (or a chunk counted twice), dx at stride 2 (spread grid) chunked wrong."""
    from unittest import mock

    r = np.random.default_rng(7)
    x, w, b = r.standard_normal((5, 3, 6, 5)), r.standard_normal((4, 3, 3, 3)), r.standard_normal(4)
    g = r.standard_normal((5, 4, (6 - 1) // stride + 1, (5 - 1) // stride + 1))
    xt, wt, bt = (Tensor(a, requires_grad=True) for a in (x, w, b))
    with mock.patch.object(F, "_COLS_BYTES", 2 * 3 * 9 * g.shape[2] * g.shape[3] * 8):  # 2 images per forward chunk
        assert len(F._image_chunks(5, 3 * 9 * g.shape[2] * g.shape[3] * 8)) == 3
        y = F.conv2d(xt, wt, bt, stride=stride, padding=1)
        y.backward(g)
    y_ref, dx_ref, dw_ref, db_ref = conv2d_plain(x, w, b, stride, 1, g)
    np.testing.assert_allclose(y.data, y_ref, atol=FORWARD_ATOL)  # float64, as the test above
    np.testing.assert_allclose(xt.grad, dx_ref, atol=FORWARD_ATOL)
    np.testing.assert_allclose(wt.grad, dw_ref, atol=FORWARD_ATOL)
    np.testing.assert_allclose(bt.grad, db_ref, atol=FORWARD_ATOL)


def test_conv2d_outputs_and_gradients_do_not_share_the_scratch_buffers():
    # conv2d reuses buffers for its temporaries: an output or a gradient it returned must not
    # change when later calls (same or other shapes, forward or backward) reuse them
    r = np.random.default_rng(4)
    x1, x2, w = r.standard_normal((2, 3, 6, 6)), r.standard_normal((2, 3, 6, 6)), r.standard_normal((4, 3, 3, 3))
    xt = Tensor(x1, requires_grad=True)
    y1 = F.conv2d(xt, w, padding=1)
    y1_copy = y1.data.copy()
    F.conv2d(x2, w, padding=1)
    F.conv2d(r.standard_normal((1, 5, 9, 7)), r.standard_normal((2, 5, 3, 3)), stride=2)
    np.testing.assert_array_equal(y1.data, y1_copy)
    g = r.standard_normal(y1.shape)
    y1.backward(g)
    dx = xt.grad.copy()
    yt = F.conv2d(Tensor(x2, requires_grad=True), Tensor(w, requires_grad=True), padding=1)
    yt.backward(g)
    np.testing.assert_array_equal(xt.grad, dx)
    np.testing.assert_allclose(y1_copy, conv2d_plain(x1, w, None, 1, 1, g)[0], atol=FORWARD_ATOL)
    np.testing.assert_allclose(dx, conv2d_plain(x1, w, None, 1, 1, g)[1], atol=FORWARD_ATOL)


# Fixed stride / padding combinations next to the drawn ones: non-square inputs and kernels,
# stride 2 on odd sides (the last row or column of the padded input is never read), padding
# wider than the kernel (kh - 1 < padding), stride larger than the kernel.
CONV_CASES = [  # x shape, weight shape, stride, padding
    ((2, 3, 7, 5), (2, 3, 3, 2), (2, 1), (1, 0)),
    ((1, 2, 9, 9), (3, 2, 3, 3), 2, 1),
    ((2, 2, 7, 6), (2, 2, 3, 3), 2, 0),
    ((1, 2, 5, 7), (2, 2, 1, 1), 1, 2),
    ((1, 1, 8, 7), (2, 1, 2, 2), 3, (0, 1)),
    ((2, 1, 6, 4), (1, 1, 3, 1), (1, 2), (2, 0)),
]


@pytest.mark.parametrize("x_shape, w_shape, stride, padding", CONV_CASES)
def test_conv2d_stride_padding_cases_gradient_matches_finite_differences(x_shape, w_shape, stride, padding):
    r = np.random.default_rng(1)
    x, w, b = r.standard_normal(x_shape), r.standard_normal(w_shape), r.standard_normal(w_shape[0])
    check_gradients(lambda x, w, b: F.conv2d(x, w, b, stride=stride, padding=padding), [x, w, b])


@pytest.mark.parametrize("x_shape, w_shape, stride, padding", CONV_CASES)
def test_conv2d_stride_padding_cases_forward_matches_naive_loops(x_shape, w_shape, stride, padding):
    r = np.random.default_rng(2)
    x, w, b = r.standard_normal(x_shape), r.standard_normal(w_shape), r.standard_normal(w_shape[0])
    y = F.conv2d(x, w, b, stride=stride, padding=padding).data
    np.testing.assert_allclose(y, conv2d_loops(x, w, b, stride, padding), atol=FORWARD_ATOL)


def test_conv2d_float32_matches_float64_loops_at_layer_size():
    # a U-Net-like layer (8 channels, 3x3, padding 1) in float32 against float64 loops: each output
    # sums 72 products of O(1) terms, float32 rounding of each partial sum ~6e-8 |sum| gives at most
    # ~72 * 6e-8 * 10 ~ 4e-5; atol 1e-4
    r = np.random.default_rng(3)
    x, w = r.standard_normal((2, 8, 9, 11)), r.standard_normal((4, 8, 3, 3))
    y = F.conv2d(x.astype(np.float32), w.astype(np.float32), stride=2, padding=1).data
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, conv2d_loops(x, w, None, 2, 1), atol=1e-4)


def test_conv2d_channel_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"x of shape \(1, 3, 4, 4\).*weight of shape \(2, 5, 3, 3\)"):
        F.conv2d(np.zeros((1, 3, 4, 4)), np.zeros((2, 5, 3, 3)))


def test_conv2d_rejects_kernel_larger_than_padded_input():
    with pytest.raises(ValueError, match="larger than the padded input"):
        F.conv2d(np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 3, 3)))


def test_conv2d_accepts_non_contiguous_input():
    x = np.arange(2 * 3 * 5 * 4, dtype=np.float64).reshape(2, 5, 4, 3).transpose(0, 3, 1, 2)  # (2, 3, 5, 4) view
    w = np.linspace(-1, 1, 2 * 3 * 2 * 2).reshape(2, 3, 2, 2)
    np.testing.assert_allclose(F.conv2d(x, w, stride=1).data, conv2d_loops(x, w, None, 1, 0), atol=1e-10)


# ---- group norm ------------------------------------------------------------------------------


@st.composite
def group_norm_operands(draw):
    N, G, per_group = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    C = G * per_group
    spatial = draw(hnp.array_shapes(min_dims=0, max_dims=2, min_side=1, max_side=3))
    if per_group * math.prod(spatial) < 2:
        spatial = (2,) + spatial  # a group of one value has zero variance: xhat = 0, gradient degenerate
    x = draw(f64((N, C) + spatial))
    w = draw(st.none() | f64((C,)))
    b = draw(st.none() | f64((C,)))
    return x, G, w, b


def group_norm_loops(x, G, w, b, eps):
    N, C = x.shape[:2]
    y = np.empty_like(x)
    per = C // G
    for n in range(N):
        for g in range(G):
            block = x[n, g * per : (g + 1) * per]
            mu = sum(block.ravel()) / block.size
            var = sum((v - mu) ** 2 for v in block.ravel()) / block.size
            y[n, g * per : (g + 1) * per] = (block - mu) / math.sqrt(var + eps)
    shape = (1, C) + (1,) * (x.ndim - 2)
    if w is not None:
        y = y * w.reshape(shape)
    if b is not None:
        y = y + b.reshape(shape)
    return y


@settings(max_examples=30)
@given(group_norm_operands())
def test_group_norm_gradient_matches_finite_differences(args):
    x, G, w, b = args
    # eps = 1e-2 keeps 1/sqrt(var + eps) <= 10, so f''' stays small enough for eps_fd = 1e-6
    arrays = [a for a in (x, w, b) if a is not None]

    def fn(x, *affine):
        it = iter(affine)
        return F.group_norm(x, G, None if w is None else next(it), None if b is None else next(it), eps=1e-2)

    check_gradients(fn, arrays)


@settings(max_examples=30)
@given(group_norm_operands())
def test_group_norm_forward_matches_naive_loops(args):
    x, G, w, b = args
    # 1/sqrt(var + 1e-5) can reach ~300 for near-constant groups: errors scale with it, hence 1e-10
    np.testing.assert_allclose(F.group_norm(x, G, w, b).data, group_norm_loops(x, G, w, b, 1e-5), atol=1e-10)


@settings(max_examples=30)
@given(group_norm_operands())
def test_group_norm_with_and_without_gradient_match_naive_loops(args):
    """The recording path (xhat kept for the backward) and the no-backward fast path (affine
    folded into one per-channel scale on the centred buffer) give the loops' output.

    Catches: a wrong folded scale (rstd of the wrong group, gamma missing), beta added twice or
    not at all, the input overwritten in place. Tolerance as in the test above."""
    x, G, w, b = args
    ref = group_norm_loops(x, G, w, b, 1e-5)
    x_before = x.copy()
    y_grad = F.group_norm(Tensor(x, requires_grad=True), G, w, b)
    with no_grad():
        y_fast = F.group_norm(Tensor(x, requires_grad=True), G, w, b)
    assert y_grad.requires_grad and not y_fast.requires_grad
    np.testing.assert_allclose(y_grad.data, ref, atol=1e-10)
    np.testing.assert_allclose(y_fast.data, ref, atol=1e-10)
    np.testing.assert_array_equal(x, x_before)


def test_group_norm_dtype_is_the_same_with_and_without_gradient():
    """float32 x with float64 gamma and beta gives float64 on both paths (NumPy's promotion), and
    float32 parameters keep float32. Catches: the no-backward path writing a promoted result into
    x's float32 buffer (a silent loss of precision that only the no_grad path would show)."""
    x = np.random.default_rng(2).standard_normal((2, 4, 3)).astype(np.float32)
    for w in (np.ones(4), np.ones(4, dtype=np.float32)):
        recorded = F.group_norm(Tensor(x, requires_grad=True), 2, w, w)
        with no_grad():
            fast = F.group_norm(x, 2, w, w)
        assert fast.dtype == recorded.dtype == np.result_type(x, w)


def test_group_norm_rejects_indivisible_channels():
    with pytest.raises(ValueError, match="6 channels.*4 groups"):
        F.group_norm(np.zeros((1, 6, 2, 2)), 4)


def test_group_norm_rejects_mis_shaped_weight():
    with pytest.raises(ValueError, match=r"weight of shape \(3,\)"):
        F.group_norm(np.zeros((1, 6, 2, 2)), 2, weight=np.ones(3), bias=np.zeros(6))


# ---- resampling ------------------------------------------------------------------------------


@given(small_shape(min_dims=4, max_dims=4, max_side=3).flatmap(f64))
def test_upsample_nearest2x_gradient_matches_finite_differences(x):
    check_gradients(F.upsample_nearest2x, [x])


@given(small_shape(min_dims=4, max_dims=4, max_side=3).flatmap(f64))
def test_upsample_nearest2x_forward_repeats_pixels(x):
    assert np.array_equal(F.upsample_nearest2x(x).data, x.repeat(2, axis=2).repeat(2, axis=3))


@st.composite
def pool_operands(draw):
    k = draw(st.integers(1, 3))
    N, C = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    H, W = draw(st.integers(k, 7)), draw(st.integers(k, 7))  # not always divisible by k
    return draw(f64((N, C, H, W))), k


@given(pool_operands())
def test_avg_pool2d_gradient_matches_finite_differences(args):
    x, k = args
    check_gradients(lambda x: F.avg_pool2d(x, k), [x])


@given(pool_operands())
def test_avg_pool2d_forward_matches_naive_loops(args):
    x, k = args
    N, C, H, W = x.shape
    expected = np.array(
        [[[[x[n, c, k * h : k * h + k, k * w : k * w + k].mean() for w in range(W // k)] for h in range(H // k)]
          for c in range(C)] for n in range(N)]
    )
    np.testing.assert_allclose(F.avg_pool2d(x, k).data, expected, atol=FORWARD_ATOL)


# ---- dropout ---------------------------------------------------------------------------------


@given(small_shape().flatmap(f64), st.floats(0.0, 0.9), st.integers(0, 2**32 - 1))
def test_dropout_gradient_matches_finite_differences(x, p, seed):
    # a fresh generator with the same seed per call: the same mask at every evaluation
    check_gradients(lambda x: F.dropout(x, p, rng=np.random.default_rng(seed)), [x])


@given(small_shape().flatmap(f64), st.floats(0.01, 0.9), st.integers(0, 2**32 - 1))
def test_dropout_keeps_or_zeroes_and_scales_by_inverse_keep_probability(x, p, seed):
    y = F.dropout(x, p, rng=np.random.default_rng(seed)).data
    kept = y != 0
    np.testing.assert_allclose(y[kept], x[kept] / (1 - p), rtol=1e-15)


def test_dropout_drops_about_a_fraction_p():
    x = np.ones(100_000, dtype=np.float32)
    y = F.dropout(x, 0.3, rng=np.random.default_rng(0)).data
    # binomial(1e5, 0.3): std of the dropped fraction is sqrt(0.3 * 0.7 / 1e5) ~ 1.4e-3; 5 sigma
    assert abs(np.mean(y == 0) - 0.3) < 7.5e-3


def test_dropout_is_identity_in_eval_and_for_p_zero():
    x = Tensor(np.arange(5.0))
    assert F.dropout(x, 0.5, training=False) is x
    assert F.dropout(x, 0.0, rng=None) is x


def test_dropout_same_seed_same_mask():
    x = np.ones(64)
    a = F.dropout(x, 0.5, rng=np.random.default_rng(7)).data
    b = F.dropout(x, 0.5, rng=np.random.default_rng(7)).data
    assert np.array_equal(a, b)


def test_dropout_in_training_requires_rng():
    with pytest.raises(ValueError, match="explicit rng"):
        F.dropout(np.ones(3), 0.5)


def test_dropout_rejects_p_out_of_range():
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        F.dropout(np.ones(3), 1.0, rng=np.random.default_rng(0))


# ---- mse loss ----------------------------------------------------------------------------------


@given(small_shape(min_dims=1, max_dims=4).flatmap(lambda s: st.tuples(f64(s), f64(s))), st.data())
def test_mse_loss_gradient_matches_finite_differences(pair, data):
    pred, target = pair
    weights = data.draw(st.none() | f64((pred.shape[0],), 0.0, 3.0))
    check_gradients(lambda p, t: F.mse_loss(p, t, weights), [pred, target])


@given(small_shape(min_dims=1, max_dims=4).flatmap(lambda s: st.tuples(f64(s), f64(s))), st.data())
def test_mse_loss_forward_matches_weighted_mean_formula(pair, data):
    pred, target = pair
    weights = data.draw(f64((pred.shape[0],), 0.0, 3.0))
    per_sample = ((pred - target) ** 2).reshape(pred.shape[0], -1).mean(axis=1)
    np.testing.assert_allclose(F.mse_loss(pred, target).data, per_sample.mean(), atol=FORWARD_ATOL)
    np.testing.assert_allclose(F.mse_loss(pred, target, weights).data, (weights * per_sample).mean(), atol=FORWARD_ATOL)


def test_mse_loss_float64_weights_keep_float32_loss():
    pred = Tensor(np.ones((2, 3), dtype=np.float32), requires_grad=True)
    loss = F.mse_loss(pred, np.zeros((2, 3), dtype=np.float32), weights=np.array([1.0, 2.0]))
    assert loss.dtype == np.float32 and loss.shape == ()
    loss.backward()
    assert pred.grad.dtype == np.float32


def test_mse_loss_shape_mismatch_names_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        F.mse_loss(np.zeros((2, 3)), np.zeros((3, 2)))


# ---- l1 loss and clamp (the autoencoder's) ---------------------------------------------------


def away_from_kinks(a, kinks, margin=1e-3):
    """`a` with every entry within `margin` of a kink moved 2 margins off it: central differences
    (eps = 1e-6) must not straddle the point where the derivative jumps."""
    a = a.copy()
    for k in kinks:
        near = np.abs(a - k) < margin
        a[near] = k + 2 * margin
    return a


@given(small_shape(min_dims=1, max_dims=4).flatmap(lambda s: st.tuples(f64(s), f64(s))))
def test_l1_loss_gradient_matches_finite_differences(pair):
    pred, target = pair
    pred = target + away_from_kinks(pred - target, [0.0])
    check_gradients(F.l1_loss, [pred, target])


@given(small_shape(min_dims=1, max_dims=4).flatmap(lambda s: st.tuples(f64(s), f64(s))))
def test_l1_loss_forward_is_the_mean_absolute_difference(pair):
    pred, target = pair
    np.testing.assert_allclose(F.l1_loss(pred, target).data, np.abs(pred - target).mean(), atol=FORWARD_ATOL)


def test_l1_loss_gradient_at_zero_difference_is_zero_and_shapes_must_match():
    pred = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    F.l1_loss(pred, np.array([1.0, 0.0])).backward()
    np.testing.assert_array_equal(pred.grad, [0.0, 0.5])  # sign(0) = 0, as PyTorch
    with pytest.raises(ValueError, match="l1_loss: pred of shape"):
        F.l1_loss(np.ones(2), np.ones(3))


@given(small_shape().flatmap(lambda s: f64(s, -3, 3)))
def test_clamp_gradient_matches_finite_differences(x):
    check_gradients(lambda x: F.clamp(x, -1.0, 1.5), [away_from_kinks(x, [-1.0, 1.5])])


@given(small_shape().flatmap(lambda s: f64(s, -3, 3)))
def test_clamp_forward_is_np_clip_and_keeps_dtype(x):
    assert np.array_equal(F.clamp(x, -1.0, 1.5).data, np.clip(x, -1.0, 1.5))
    assert F.clamp(x.astype(np.float32), -1.0, 1.5).dtype == np.float32


def test_clamp_passes_the_gradient_at_the_bounds_as_pytorch():
    x = Tensor(np.array([-2.0, -1.0, 0.0, 1.5, 2.0]), requires_grad=True)
    F.clamp(x, -1.0, 1.5).sum().backward()
    np.testing.assert_array_equal(x.grad, [0.0, 1.0, 1.0, 1.0, 0.0])


# ---- attention -------------------------------------------------------------------------------


@st.composite
def attention_operands(draw):
    batch = draw(hnp.array_shapes(min_dims=0, max_dims=2, min_side=1, max_side=2))
    L, S, d, dv = (draw(st.integers(1, 4)) for _ in range(4))
    return draw(f64(batch + (L, d))), draw(f64(batch + (S, d))), draw(f64(batch + (S, dv)))


@settings(max_examples=30)
@given(attention_operands())
def test_attention_gradient_matches_finite_differences(qkv):
    check_gradients(F.scaled_dot_product_attention, list(qkv))


def attention_loops(q, k, v):
    expected = np.zeros(q.shape[:-1] + (v.shape[-1],))
    for idx in np.ndindex(q.shape[:-2]):
        for i in range(q.shape[-2]):
            scores = [sum(q[idx][i] * k[idx][j]) / math.sqrt(q.shape[-1]) for j in range(k.shape[-2])]
            weights = [math.exp(s) for s in scores]
            total = sum(weights)
            expected[idx][i] = sum(wt / total * v[idx][j] for j, wt in enumerate(weights))
    return expected


@given(attention_operands())
def test_attention_forward_matches_naive_loops(qkv):
    q, k, v = qkv
    np.testing.assert_allclose(F.scaled_dot_product_attention(q, k, v).data, attention_loops(q, k, v), atol=FORWARD_ATOL)


@settings(max_examples=30)
@given(attention_operands())
def test_attention_with_and_without_gradient_match_naive_loops(qkv):
    """The recording path (P normalised and kept) and the no-backward fast path (exp(S) V divided
    by the row sums afterwards) both give the loops' output.

    Catches: the denominators applied on the wrong axis or twice, the fast path taken while a
    gradient is wanted (the output would not record it). Tolerance as in the test above."""
    q, k, v = qkv
    expected = attention_loops(q, k, v)
    recorded = F.scaled_dot_product_attention(*(Tensor(a, requires_grad=True) for a in (q, k, v)))
    with no_grad():
        fast = F.scaled_dot_product_attention(*(Tensor(a, requires_grad=True) for a in (q, k, v)))
    assert recorded.requires_grad and not fast.requires_grad
    np.testing.assert_allclose(recorded.data, expected, atol=FORWARD_ATOL)
    np.testing.assert_allclose(fast.data, expected, atol=FORWARD_ATOL)


def test_attention_shape_mismatch_names_shapes():
    with pytest.raises(ValueError, match=r"q \(2, 3\), k \(2, 4\)"):
        F.scaled_dot_product_attention(np.zeros((2, 3)), np.zeros((2, 4)), np.zeros((2, 4)))


# ---- graph rules across ops --------------------------------------------------------------------

rng = np.random.default_rng(0)
OPS_FLOAT32 = {
    "linear": (lambda x, w, b: F.linear(x, w, b), [(2, 4), (3, 4), (3,)]),
    "conv2d": (lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1), [(2, 3, 5, 5), (4, 3, 3, 3), (4,)]),
    "group_norm": (lambda x, w, b: F.group_norm(x, 2, w, b), [(2, 4, 3, 3), (4,), (4,)]),
    "silu": (F.silu, [(2, 3)]),
    "gelu": (F.gelu, [(2, 3)]),
    "softmax": (F.softmax, [(2, 3)]),
    "pad2d": (lambda x: F.pad2d(x, (0, 1, 2, 0)), [(1, 2, 3, 3)]),
    "upsample": (F.upsample_nearest2x, [(1, 2, 3, 3)]),
    "avg_pool2d": (F.avg_pool2d, [(1, 2, 4, 5)]),
    "dropout": (lambda x: F.dropout(x, 0.5, rng=np.random.default_rng(0)), [(4, 4)]),
    "embedding": (lambda w: F.embedding(np.array([0, 2, 2]), w), [(3, 4)]),
    "mse_loss": (lambda p, t: F.mse_loss(p, t, np.array([0.5, 2.0])), [(2, 3), (2, 3)]),
    "attention": (F.scaled_dot_product_attention, [(2, 3, 4), (2, 5, 4), (2, 5, 3)]),
}


@pytest.mark.parametrize("name", sorted(OPS_FLOAT32))
def test_float32_in_gives_float32_out_and_grads(name):
    fn, shapes = OPS_FLOAT32[name]
    inputs = [Tensor(rng.standard_normal(s).astype(np.float32), requires_grad=True) for s in shapes]
    out = fn(*inputs)
    assert out.dtype == np.float32
    out.sum().backward()
    assert all(t.grad.dtype == np.float32 for t in inputs)


@pytest.mark.parametrize("name", sorted(OPS_FLOAT32))
def test_functional_op_under_no_grad_records_no_graph(name):
    fn, shapes = OPS_FLOAT32[name]
    inputs = [Tensor(rng.standard_normal(s), requires_grad=True) for s in shapes]
    with no_grad():
        out = fn(*inputs)
    assert not out.requires_grad and out._parents == () and out._backward is None


def test_conv2d_gradient_only_for_inputs_that_require_it():
    x = Tensor(rng.standard_normal((1, 2, 4, 4)))  # data, no gradient wanted
    w = Tensor(rng.standard_normal((3, 2, 3, 3)), requires_grad=True)
    F.conv2d(x, w, padding=1).sum().backward()
    assert x.grad is None and w.grad.shape == (3, 2, 3, 3)
