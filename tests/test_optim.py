"""refdiff.training.optim: every update rule against its formula (hand-computed or an independent float64
re-implementation), state-dict round trips, gradient clipping, warmup and the EMA decay schedule."""
import math

import numpy as np
import pytest
from hypothesis import given
from _gpu import requires_gpu
from hypothesis import strategies as st

from refdiff.training import optim


class P:
    """A minimal parameter: .data, .grad, .requires_grad (what optim needs from a Tensor)."""

    def __init__(self, data, grad=None, requires_grad=True):
        self.data = np.array(data, dtype=np.float64)
        self.grad = None if grad is None else np.array(grad, dtype=np.float64)
        self.requires_grad = requires_grad


def params_with_grads(seed, shapes=((3, 2), (4,), (1,)), dtype=np.float64):
    rng = np.random.default_rng(seed)
    ps = []
    for shape in shapes:
        p = P(rng.standard_normal(shape))
        p.data = p.data.astype(dtype)
        ps.append(p)
    return ps


def set_grads(ps, rng):
    for p in ps:
        p.grad = rng.standard_normal(p.data.shape).astype(p.data.dtype)


# --- independent float64 re-implementations (written from the papers, not from optim.py) -----


def adam_reference(p0, grads, lr, b1, b2, eps, l2=0.0, decoupled=0.0):
    """Kingma & Ba Algorithm 1 (with L2 `l2` in the gradient, or AdamW's decoupled decay)."""
    p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    for t, g in enumerate(grads, start=1):
        p = p - lr * decoupled * p
        g = g + l2 * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        mhat, vhat = m / (1 - b1**t), v / (1 - b2**t)
        p = p - lr * mhat / (np.sqrt(vhat) + eps)
    return p


def sgd_reference(p0, grads, lr, momentum, wd):
    p, b = p0.copy(), np.zeros_like(p0)
    for g in grads:
        g = g + wd * p
        b = momentum * b + g
        p = p - lr * b
    return p


# --- hand-computed single steps ----------------------------------------------------------------


def test_sgd_plain_step_is_p_minus_lr_grad():
    p = P([1.0, -2.0], grad=[0.5, 4.0])
    optim.SGD([p], lr=0.1).step()
    # 1 - 0.1*0.5 = 0.95 ; -2 - 0.1*4 = -2.4
    np.testing.assert_allclose(p.data, [0.95, -2.4], rtol=1e-15)  # float64, one rounding


def test_sgd_momentum_and_weight_decay_two_steps_by_hand():
    p = P([1.0], grad=[0.5])
    opt = optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.1)
    opt.step()
    # g1 = 0.5 + 0.1*1 = 0.6 ; b1 = 0.6 ; p = 1 - 0.1*0.6 = 0.94
    np.testing.assert_allclose(p.data, [0.94], rtol=1e-15)
    p.grad = np.array([-1.0])
    opt.step()
    # g2 = -1 + 0.1*0.94 = -0.906 ; b2 = 0.9*0.6 + -0.906 = -0.366 ; p = 0.94 + 0.0366 = 0.9766
    np.testing.assert_allclose(p.data, [0.9766], rtol=1e-14)  # a few float64 roundings


def test_adam_first_step_moves_each_coordinate_by_lr_times_sign():
    p = P([1.0, 1.0], grad=[0.5, -3.0])
    optim.Adam([p], lr=0.1, eps=1e-8).step()
    # t=1: mhat = g, vhat = g^2 -> update = lr * g / (|g| + eps)
    expected = [1 - 0.1 * 0.5 / (0.5 + 1e-8), 1 - 0.1 * (-3.0) / (3.0 + 1e-8)]
    np.testing.assert_allclose(p.data, expected, rtol=1e-15)


def test_adam_second_step_by_hand():
    p = P([1.0], grad=[0.5])
    opt = optim.Adam([p], lr=0.1, betas=(0.9, 0.999), eps=1e-8)
    opt.step()
    p1 = 1 - 0.1 * 0.5 / (0.5 + 1e-8)
    p.grad = np.array([-1.0])
    opt.step()
    m = 0.9 * (0.1 * 0.5) + 0.1 * (-1.0)  # = -0.055
    v = 0.999 * (0.001 * 0.25) + 0.001 * 1.0  # = 0.00124975
    mhat = m / (1 - 0.9**2)  # / 0.19
    vhat = v / (1 - 0.999**2)  # / 0.001999
    expected = p1 - 0.1 * mhat / (math.sqrt(vhat) + 1e-8)
    assert abs(m - -0.055) < 1e-15 and abs(v - 0.00124975) < 1e-15
    np.testing.assert_allclose(p.data, [expected], rtol=1e-14)  # float64, a few roundings
    np.testing.assert_allclose(opt.state["exp_avg"][0], [m], rtol=1e-14)
    np.testing.assert_allclose(opt.state["exp_avg_sq"][0], [v], rtol=1e-14)


def test_adamw_decays_before_the_adam_update():
    p = P([2.0], grad=[0.5])
    optim.AdamW([p], lr=0.1, eps=1e-8, weight_decay=0.5).step()
    # p <- 2 - 0.1*0.5*2 = 1.9 ; then Adam first step: 1.9 - 0.1 * 0.5/(0.5 + 1e-8)
    np.testing.assert_allclose(p.data, [1.9 - 0.1 * 0.5 / (0.5 + 1e-8)], rtol=1e-15)


def test_adam_weight_decay_is_l2_in_the_gradient():
    p = P([2.0], grad=[0.5])
    opt = optim.Adam([p], lr=0.1, eps=1e-8, weight_decay=0.5)
    opt.step()
    # g = 0.5 + 0.5*2 = 1.5 ; first step: 2 - 0.1 * 1.5/(1.5 + 1e-8)
    np.testing.assert_allclose(p.data, [2 - 0.1 * 1.5 / (1.5 + 1e-8)], rtol=1e-15)
    np.testing.assert_allclose(opt.state["exp_avg"][0], [0.1 * 1.5], rtol=1e-15)


# --- many steps against the float64 re-implementations -----------------------------------------


@pytest.mark.parametrize(
    "make, ref",
    [
        (lambda ps: optim.Adam(ps, lr=0.01, betas=(0.8, 0.99), eps=1e-6),
         lambda p0, gs: adam_reference(p0, gs, 0.01, 0.8, 0.99, 1e-6)),
        (lambda ps: optim.Adam(ps, lr=0.01, weight_decay=0.1),
         lambda p0, gs: adam_reference(p0, gs, 0.01, 0.9, 0.999, 1e-8, l2=0.1)),
        (lambda ps: optim.AdamW(ps, lr=0.01, weight_decay=0.1),
         lambda p0, gs: adam_reference(p0, gs, 0.01, 0.9, 0.999, 1e-8, decoupled=0.1)),
        (lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=0.01),
         lambda p0, gs: sgd_reference(p0, gs, 0.05, 0.9, 0.01)),
    ],
    ids=["adam", "adam_l2", "adamw", "sgd_momentum"],
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_optimizer_matches_float64_reference_over_ten_steps(make, ref, dtype):
    ps = params_with_grads(0, dtype=dtype)
    p0 = [p.data.astype(np.float64) for p in ps]
    opt = make(ps)
    rng = np.random.default_rng(1)
    history = [[] for _ in ps]
    for _ in range(10):
        set_grads(ps, rng)
        for h, p in zip(history, ps):
            h.append(p.grad.astype(np.float64))
        opt.step()
    # float64: only rounding order differs (~1e-16 per op, 10 steps); float32: the updates of
    # size <= lr*10 carry ~1e-7 relative error each, so 1e-5 absolute covers 10 steps.
    atol = 1e-12 if dtype == np.float64 else 1e-5
    for p, start, h in zip(ps, p0, history):
        assert p.data.dtype == dtype
        np.testing.assert_allclose(p.data, ref(start, h), rtol=0, atol=atol)


def test_parameters_without_grad_are_skipped():
    a, b = P([1.0], grad=[1.0]), P([5.0])
    opt = optim.Adam([a, b], lr=0.1)
    opt.step()
    assert b.data[0] == 5.0 and opt.state["exp_avg"][1] is None
    assert "exp_avg.1" not in opt.state_dict()


def test_step_updates_data_in_place():
    p = P([1.0, 2.0], grad=[1.0, 1.0])
    data = p.data
    optim.AdamW([p], lr=0.1).step()
    assert p.data is data and data[0] != 1.0


def test_step_does_not_write_into_grad():
    p = P([1.0, 2.0], grad=[1.0, 1.0])
    optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.1).step()
    np.testing.assert_array_equal(p.grad, [1.0, 1.0])


def test_read_only_data_is_replaced_by_a_writable_copy():
    p = P([1.0], grad=[1.0])
    p.data.flags.writeable = False
    optim.SGD([p], lr=0.5).step()
    np.testing.assert_array_equal(p.data, [0.5])


def test_zero_grad_sets_grads_to_none():
    ps = params_with_grads(0)
    set_grads(ps, np.random.default_rng(0))
    optim.SGD(ps, lr=0.1).zero_grad()
    assert all(p.grad is None for p in ps)


def test_lr_setter_changes_the_step_size():
    p = P([1.0], grad=[1.0])
    opt = optim.SGD([p], lr=0.1)
    opt.lr = 0.25
    opt.step()
    np.testing.assert_allclose(p.data, [0.75], rtol=1e-15)


def test_lr_setter_accepts_zero_but_not_negative():
    opt = optim.SGD([P([1.0])], lr=0.1)
    opt.lr = 0.0
    with pytest.raises(ValueError, match="lr"):
        opt.lr = -1e-3


def test_accepts_an_object_with_parameters_method():
    class M:
        def parameters(self):
            return iter([P([1.0], grad=[1.0])])

    assert len(optim.AdamW(M()).params) == 1


# --- state dicts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [lambda ps: optim.Adam(ps, lr=0.01), lambda ps: optim.AdamW(ps, lr=0.01),
     lambda ps: optim.SGD(ps, lr=0.01, momentum=0.9)],
    ids=["adam", "adamw", "sgd"],
)
def test_state_dict_round_trip_resumes_identically(make):
    ps = params_with_grads(0, dtype=np.float32)
    opt = make(ps)
    rng = np.random.default_rng(2)
    for _ in range(3):
        set_grads(ps, rng)
        opt.step()
    sd = opt.state_dict()
    saved_data = [p.data.copy() for p in ps]
    grads = [[rng.standard_normal(p.data.shape).astype(np.float32) for p in ps] for _ in range(3)]
    for gs in grads:  # the uninterrupted run
        for p, g in zip(ps, gs):
            p.grad = g
        opt.step()
    uninterrupted = [p.data.copy() for p in ps]

    resumed = [P(d) for d in saved_data]
    for p, d in zip(resumed, saved_data):
        p.data = d.copy()
    opt2 = make(resumed)
    opt2.load_state_dict({k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in sd.items()})
    for gs in grads:
        for p, g in zip(resumed, gs):
            p.grad = g
        opt2.step()
    for a, b in zip(resumed, uninterrupted):
        np.testing.assert_array_equal(a.data, b)  # same arithmetic in the same order: bit-identical


def test_state_dict_keys_are_step_and_indexed_moments():
    ps = params_with_grads(0)
    set_grads(ps, np.random.default_rng(0))
    opt = optim.Adam(ps)
    opt.step()
    sd = opt.state_dict()
    assert sd["step"] == 1 and isinstance(sd["step"], int)
    assert set(sd) == {"step"} | {f"{n}.{i}" for n in ("exp_avg", "exp_avg_sq") for i in range(3)}
    assert all(isinstance(sd[k], np.ndarray) for k in sd if k != "step")


def test_state_dict_arrays_are_copies():
    p = P([1.0], grad=[1.0])
    opt = optim.Adam([p])
    opt.step()
    opt.state_dict()["exp_avg.0"][...] = 123.0
    assert opt.state["exp_avg"][0][0] != 123.0


def test_load_state_dict_accepts_a_zero_dim_step_array():
    opt = optim.Adam([P([1.0])])
    opt.load_state_dict({"step": np.array(7)})
    assert opt.step_count == 7


@pytest.mark.parametrize(
    "sd, error, match",
    [
        ({}, KeyError, "step"),
        ({"step": 1, "bogus.0": np.zeros(1)}, KeyError, "bogus"),
        ({"step": 1, "exp_avg.5": np.zeros(1)}, ValueError, "out of range"),
        ({"step": 1, "exp_avg.0": np.zeros(3)}, ValueError, "shape"),
    ],
    ids=["no_step", "unknown_key", "index_out_of_range", "wrong_shape"],
)
def test_load_state_dict_rejects_bad_dicts(sd, error, match):
    with pytest.raises(error, match=match):
        optim.Adam([P([1.0])]).load_state_dict(sd)


# --- hyper-parameter validation ----------------------------------------------------------------


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda ps: optim.SGD(ps, lr=0.0), "lr"),
        (lambda ps: optim.SGD(ps, lr=-1.0), "lr"),
        (lambda ps: optim.SGD(ps, lr=float("nan")), "lr"),
        (lambda ps: optim.SGD(ps, lr=0.1, momentum=1.0), "momentum"),
        (lambda ps: optim.SGD(ps, lr=0.1, weight_decay=-1.0), "weight_decay"),
        (lambda ps: optim.Adam(ps, lr=0.0), "lr"),
        (lambda ps: optim.Adam(ps, betas=(1.0, 0.999)), "beta1"),
        (lambda ps: optim.Adam(ps, betas=(0.9, -0.1)), "beta2"),
        (lambda ps: optim.AdamW(ps, betas=(0.9, 1.5)), "beta2"),
        (lambda ps: optim.AdamW(ps, eps=0.0), "eps"),
        (lambda ps: optim.AdamW(ps, weight_decay=-0.1), "weight_decay"),
        (lambda ps: optim.Adam(ps, betas=(0.9,)), "pair"),
    ],
)
def test_bad_hyper_parameters_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make([P([1.0])])


def test_empty_parameter_list_raises():
    with pytest.raises(ValueError, match="empty"):
        optim.Adam([])


def test_object_without_data_raises():
    with pytest.raises(TypeError, match="data"):
        optim.Adam([np.zeros(3)])


def test_grad_of_wrong_shape_raises():
    p = P([1.0, 2.0], grad=[1.0])
    with pytest.raises(ValueError, match="grad shape"):
        optim.Adam([p]).step()


# --- gradient clipping -------------------------------------------------------------------------


def test_clip_grad_norm_returns_global_norm_and_scales_to_max_norm():
    a, b = P([0.0, 0.0], grad=[3.0, 0.0]), P([0.0], grad=[4.0])
    total = optim.clip_grad_norm([a, b], max_norm=1.0)
    assert total == 5.0  # sqrt(3^2 + 4^2), exact in float64
    coef = 1.0 / (5.0 + 1e-6)
    np.testing.assert_allclose(a.grad, [3.0 * coef, 0.0], rtol=1e-15)
    np.testing.assert_allclose(b.grad, [4.0 * coef], rtol=1e-15)


def test_clip_grad_norm_leaves_small_gradients_alone():
    a = P([0.0, 0.0], grad=[0.3, 0.4])
    total = optim.clip_grad_norm([a], max_norm=1.0)
    np.testing.assert_allclose(total, 0.5, rtol=1e-15)
    np.testing.assert_array_equal(a.grad, [0.3, 0.4])


def test_clip_grad_norm_skips_missing_grads_and_does_not_scale_shared_arrays_twice():
    g = np.array([6.0, 8.0])
    a, b, c = P([0.0, 0.0]), P([0.0, 0.0]), P([0.0])
    a.grad = b.grad = g  # one array shared by two parameters
    total = optim.clip_grad_norm([a, b, c], max_norm=1.0)
    np.testing.assert_allclose(total, math.sqrt(200.0), rtol=1e-15)
    np.testing.assert_array_equal(g, [6.0, 8.0])
    np.testing.assert_allclose(a.grad, g / (math.sqrt(200.0) + 1e-6), rtol=1e-15)


@given(st.lists(st.floats(-1e3, 1e3, width=32, allow_subnormal=False), min_size=1, max_size=20),
       st.floats(1e-3, 1e3))
def test_clipped_norm_is_at_most_max_norm_and_small_grads_are_unchanged(values, max_norm):
    p = P(np.zeros(len(values)))
    p.grad = np.array(values, dtype=np.float32)
    before = p.grad.copy()
    total = optim.clip_grad_norm([p], max_norm)
    after = float(np.sqrt(np.sum(p.grad.astype(np.float64) ** 2)))
    if total + 1e-6 > max_norm:
        # scaled by max_norm / (total + 1e-6) < 1; float32 rounding adds <= ~1e-7 relative
        assert after <= max_norm * (1 + 1e-6)
    else:
        np.testing.assert_array_equal(p.grad, before)


def test_clip_grad_norm_nonfinite():
    p = P([0.0], grad=[np.inf])
    assert optim.clip_grad_norm([p], 1.0) == math.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        optim.clip_grad_norm([p], 1.0, error_if_nonfinite=True)


def test_clip_grad_norm_rejects_nonpositive_max_norm():
    with pytest.raises(ValueError, match="max_norm"):
        optim.clip_grad_norm([P([0.0], grad=[1.0])], 0.0)


# --- warmup ------------------------------------------------------------------------------------


def test_warmup_lr_is_linear_then_constant():
    assert [optim.warmup_lr(s, 1e-3, 4) for s in range(6)] == pytest.approx(
        [0.0, 0.25e-3, 0.5e-3, 0.75e-3, 1e-3, 1e-3], rel=1e-15)  # step/4 * 1e-3


def test_warmup_lr_without_warmup_is_base_lr():
    assert optim.warmup_lr(0, 2e-4, 0) == 2e-4


def test_warmup_lr_rejects_negative_step():
    with pytest.raises(ValueError):
        optim.warmup_lr(-1, 1e-3, 10)


# --- EMA ---------------------------------------------------------------------------------------


def test_ema_decay_schedule_without_warmup_by_hand():
    ema = optim.EMA([P([0.0])], decay=0.999)
    # step = optimization_step - 1 ; decay = (1 + step)/(10 + step)
    assert ema.get_decay(1) == 0.0
    assert ema.get_decay(2) == pytest.approx(2 / 11, rel=1e-15)
    assert ema.get_decay(11) == pytest.approx(11 / 20, rel=1e-15)
    assert ema.get_decay(100000) == 0.999  # (1 + 99999)/(10 + 99999) > 0.999: clamped


def test_ema_decay_schedule_with_warmup_and_update_after_step_by_hand():
    ema = optim.EMA([P([0.0])], decay=0.9999, min_decay=0.1, update_after_step=5, use_ema_warmup=True,
                    inv_gamma=1.0, power=0.75)
    # step = optimization_step - 5 - 1 ; 0 for optimization_step <= 6
    assert ema.get_decay(6) == 0.0
    # optimization_step 7 -> step 1: 1 - 2^-0.75 = 0.40539644...
    assert ema.get_decay(7) == pytest.approx(1 - 2**-0.75, rel=1e-15)
    # optimization_step 15 -> step 9: 1 - 10^-0.75 = 0.82217206...
    assert ema.get_decay(15) == pytest.approx(1 - 10**-0.75, rel=1e-15)


def test_ema_min_decay_clamps_from_below():
    ema = optim.EMA([P([0.0])], decay=0.99, min_decay=0.5)
    assert ema.get_decay(2) == 0.5  # 2/11 < 0.5


def test_ema_updates_follow_shadow_minus_one_minus_decay_times_difference():
    p = P([0.0])
    ema = optim.EMA([p], decay=0.9)
    p.data[:] = 1.0
    ema.step([p])  # decay 0: shadow = 1
    assert ema.shadow_params[0][0] == 1.0 and ema.cur_decay_value == 0.0
    p.data[:] = 3.0
    ema.step([p])  # decay 2/11: shadow = 1 - (9/11)(1 - 3) = 1 + 18/11
    np.testing.assert_allclose(ema.shadow_params[0], [1 + 18 / 11], rtol=1e-15)
    p.data[:] = 0.0
    ema.step([p])  # decay 3/12 = 0.25: shadow = s - 0.75 s = 0.25 s
    np.testing.assert_allclose(ema.shadow_params[0], [0.25 * (1 + 18 / 11)], rtol=1e-15)


def test_ema_averages_parameters_without_grad_and_copies_frozen_ones():
    # decision: the EMA tracks values, not gradients (diffusers EMAModel): .grad is not consulted;
    # a parameter with requires_grad False is copied, not averaged.
    a, frozen = P([0.0]), P([0.0], requires_grad=False)
    ema = optim.EMA([a, frozen], decay=0.5, min_decay=0.5)
    ema.step([a, frozen])  # optimization_step 1: decay 0 (before any clamping), shadow = 0
    a.data[:] = 2.0
    frozen.data[:] = 2.0
    ema.step([a, frozen])  # decay max(2/11, 0.5) = 0.5
    assert a.grad is None
    np.testing.assert_allclose(ema.shadow_params[0], [1.0], rtol=1e-15)  # 0 - 0.5 (0 - 2)
    np.testing.assert_array_equal(ema.shadow_params[1], [2.0])


def test_ema_never_touches_buffers_of_a_module():
    class Module:
        def __init__(self):
            self.weight = P([1.0])
            self.running_mean = np.array([7.0])  # a buffer: not a parameter

        def parameters(self):
            return iter([self.weight])

    m = Module()
    ema = optim.EMA(m, decay=0.5, min_decay=0.5)
    ema.step(m)  # decay 0: shadow = 1
    m.weight.data[:] = 3.0
    m.running_mean[:] = 9.0
    ema.step(m)  # decay 0.5
    ema.copy_to(m)
    assert len(ema.shadow_params) == 1
    np.testing.assert_array_equal(m.running_mean, [9.0])
    np.testing.assert_allclose(m.weight.data, [2.0], rtol=1e-15)  # 1 - 0.5 (1 - 3)


def test_ema_copy_to_writes_in_place_and_store_restore_round_trips():
    p = P([1.0, 2.0])
    ema = optim.EMA([p])
    p.data[:] = [5.0, 6.0]
    data = p.data
    ema.store([p])
    ema.copy_to([p])
    assert p.data is data
    np.testing.assert_array_equal(p.data, [1.0, 2.0])
    ema.restore([p])
    np.testing.assert_array_equal(p.data, [5.0, 6.0])


def test_ema_restore_without_store_raises():
    with pytest.raises(RuntimeError, match="store"):
        optim.EMA([P([1.0])]).restore([P([1.0])])


def test_ema_state_dict_round_trip_resumes_identically():
    ps = params_with_grads(3, dtype=np.float32)
    ema = optim.EMA(ps, decay=0.99, use_ema_warmup=True, power=0.75, update_after_step=1)
    rng = np.random.default_rng(0)
    for _ in range(4):
        for p in ps:
            p.data += rng.standard_normal(p.data.shape).astype(np.float32)
        ema.step(ps)
    sd = ema.state_dict()
    ema2 = optim.EMA(ps)  # other hyper-parameters: load_state_dict must restore them
    ema2.load_state_dict(sd)
    for _ in range(3):
        for p in ps:
            p.data += rng.standard_normal(p.data.shape).astype(np.float32)
        ema.step(ps)
        ema2.step(ps)
    for s1, s2 in zip(ema.shadow_params, ema2.shadow_params):
        np.testing.assert_array_equal(s1, s2)  # identical arithmetic: bit-identical
    assert ema2.optimization_step == 7 and ema2.power == 0.75


@pytest.mark.parametrize(
    "edit, error, match",
    [
        (lambda sd: sd.pop("shadow.0"), KeyError, "missing"),
        (lambda sd: sd.update({"extra": 1}), KeyError, "unexpected"),
        (lambda sd: sd.update({"shadow.0": np.zeros(5)}), ValueError, "shape"),
    ],
)
def test_ema_load_state_dict_rejects_bad_dicts(edit, error, match):
    ema = optim.EMA([P([1.0, 2.0])])
    sd = ema.state_dict()
    edit(sd)
    with pytest.raises(error, match=match):
        ema.load_state_dict(sd)


def test_ema_step_with_other_parameter_count_raises():
    ema = optim.EMA([P([1.0])])
    with pytest.raises(ValueError, match="holds 1 parameters"):
        ema.step([P([1.0]), P([2.0])])


@pytest.mark.parametrize(
    "kwargs, match",
    [({"decay": 1.5}, "decay"), ({"min_decay": 0.5, "decay": 0.4}, "min_decay"),
     ({"update_after_step": -1}, "update_after_step"), ({"inv_gamma": 0.0}, "inv_gamma"),
     ({"power": -1.0}, "power")],
)
def test_ema_bad_hyper_parameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        optim.EMA([P([1.0])], **kwargs)


# --- the same updates on CuPy arrays (CUDA backend) ----------------------------------------------


@requires_gpu
@pytest.mark.parametrize(
    "make",
    [lambda ps: optim.Adam(ps, lr=0.01, weight_decay=0.1), lambda ps: optim.AdamW(ps, lr=0.01),
     lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=0.01)],
    ids=["adam", "adamw", "sgd"],
)
def test_optimizer_on_cupy_matches_numpy(make):
    import cupy as cp

    host = params_with_grads(0, dtype=np.float32)
    device = [P(p.data) for p in host]
    for p, h in zip(device, host):
        p.data = cp.asarray(h.data)
    opt_host, opt_device = make(host), make(device)
    rng = np.random.default_rng(1)
    for _ in range(5):
        set_grads(host, rng)
        for p, h in zip(device, host):
            p.grad = cp.asarray(h.grad)
        optim.clip_grad_norm(host, 1.0)
        optim.clip_grad_norm(device, 1.0)
        opt_host.step()
        opt_device.step()
    for p, h in zip(device, host):
        assert isinstance(p.data, cp.ndarray) and p.data.dtype == np.float32
        # float32 on both sides, different libm/FMA: a few ulp per step on values of order 1
        np.testing.assert_allclose(p.data.get(), h.data, rtol=0, atol=1e-5)
    sd = opt_device.state_dict()
    assert all(isinstance(v, np.ndarray) for k, v in sd.items() if k != "step")
    opt_device.load_state_dict(sd)
    assert all(a is None or isinstance(a, cp.ndarray) for arrays in opt_device.state.values() for a in arrays)


@requires_gpu
def test_ema_on_cupy_matches_numpy():
    import cupy as cp

    host = params_with_grads(0, dtype=np.float32)
    device = [P(p.data) for p in host]
    for p, h in zip(device, host):
        p.data = cp.asarray(h.data)
    ema_host, ema_device = optim.EMA(host, decay=0.9), optim.EMA(device, decay=0.9)
    rng = np.random.default_rng(0)
    for _ in range(4):
        for p, h in zip(device, host):
            h.data += rng.standard_normal(h.data.shape).astype(np.float32)
            p.data[...] = cp.asarray(h.data)
        ema_host.step(host)
        ema_device.step(device)
    ema_device.copy_to(device)
    ema_host.copy_to(host)
    for p, h in zip(device, host):
        np.testing.assert_allclose(p.data.get(), h.data, rtol=0, atol=1e-6)  # float32 arithmetic, O(1) values


# --- with refdiff's own Tensors --------------------------------------------------------------------


@pytest.mark.parametrize("make", [lambda ps: optim.AdamW(ps, lr=0.05, weight_decay=0.0),
                                  lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9)], ids=["adamw", "sgd"])
def test_optimizer_fits_least_squares_with_autograd_tensors(make):
    from refdiff.nn.autograd import Tensor

    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 3))
    w_true = np.array([[1.5], [-2.0], [0.5]])
    y = x @ w_true
    w = Tensor(np.zeros((3, 1)), requires_grad=True)
    opt = make([w])
    for _ in range(300):
        opt.zero_grad()  # leaf gradients accumulate across backward() calls otherwise
        ((Tensor(x) @ w - y) ** 2).mean().backward()
        opt.step()
    # a well-conditioned 3-parameter quadratic: 300 steps converge far below this bound
    np.testing.assert_allclose(w.data, w_true, atol=1e-3)
