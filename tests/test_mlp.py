"""MLPDenoiser: the small time-embedded residual MLP for 2-D toy data."""
import json

import numpy as np
import pytest

import refdiff as rd
from refdiff.nn import functional as F


def points(n=8, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 2)).astype(np.float32)


def test_output_has_input_shape_and_is_zero_at_initialisation():
    with rd.no_grad():
        out = rd.MLPDenoiser()(points(), np.arange(8))
    assert out.shape == (8, 2) and out.dtype == np.float32
    np.testing.assert_array_equal(out.numpy(), 0.0)  # out_proj starts at zero


def test_config_is_json_and_rebuilds_the_same_model():
    model = rd.MLPDenoiser(dim=3, hidden=16, num_blocks=2, time_dim=8, num_classes=4, seed=5)
    rebuilt = rd.MLPDenoiser(**json.loads(json.dumps(model.config)))
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(rebuilt.state_dict()[key], value)


def test_parameter_names_are_readable_paths():
    names = {n for n, _ in rd.MLPDenoiser(hidden=8, num_blocks=1, num_classes=2).named_parameters()}
    assert {"in_proj.weight", "time_embedding.linear_1.weight", "class_embedding.weight",
            "blocks.0.time_emb_proj.weight", "out_proj.bias"} <= names


def test_class_labels_change_the_output_and_none_is_the_null_label():
    model = rd.MLPDenoiser(hidden=16, num_classes=2)
    model.out_proj.weight.data[...] = np.random.default_rng(0).standard_normal(model.out_proj.weight.shape)
    x, t = points(4), np.full(4, 10)
    with rd.no_grad():
        a, b = model(x, t, np.zeros(4, np.int64)).numpy(), model(x, t, np.ones(4, np.int64)).numpy()
        np.testing.assert_array_equal(model(x, t).numpy(), model(x, t, np.full(4, 2)).numpy())
    assert not np.allclose(a, b)


def test_bad_inputs_are_refused_with_the_reason():
    model = rd.MLPDenoiser(num_classes=2)
    with pytest.raises(ValueError, match=r"expects x of shape \(B, 2\)"):
        model(np.zeros((4, 3), np.float32), 0)
    with pytest.raises(ValueError, match=r"labels y must be in \[0, 2\]"):
        model(points(2), 0, np.array([0, 3]))
    with pytest.raises(ValueError, match="unconditional"):
        rd.MLPDenoiser()(points(2), 0, np.array([0, 1]))
    with pytest.raises(ValueError, match="hidden must be an int >= 1"):
        rd.MLPDenoiser(hidden=0)


def test_fits_a_fixed_batch_of_the_ddpm_loss():
    """eps-MSE on 64 fixed points, t and eps with Adam: measured 1.24 at step 1, 5e-3 at 50, 8e-5 at 100."""
    model = rd.MLPDenoiser(hidden=64, num_blocks=2)
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, (64, 2)).astype(np.float32)
    t = rng.integers(0, 1000, 64)
    eps = rng.standard_normal(x0.shape).astype(np.float32)
    x_t = rd.q_sample(x0, t, eps, rd.NoiseSchedule.linear(T=1000)).astype(np.float32)
    params = model.parameters()
    m, v = [np.zeros_like(p.data) for p in params], [np.zeros_like(p.data) for p in params]
    losses = []
    for step in range(1, 101):  # Adam (Kingma & Ba 2015, algorithm 1), lr 1e-2
        loss = F.mse_loss(model(x_t, t), eps)
        losses.append(loss.item())
        model.zero_grad()
        loss.backward()
        for p, m_p, v_p in zip(params, m, v):
            m_p[...] = 0.9 * m_p + 0.1 * p.grad
            v_p[...] = 0.999 * v_p + 0.001 * p.grad**2
            p.data -= 1e-2 * (m_p / (1 - 0.9**step)) / (np.sqrt(v_p / (1 - 0.999**step)) + 1e-8)
    assert losses[0] > 0.5 and min(losses[-5:]) < 0.1 * losses[0], (losses[0], losses[-5:])


@pytest.mark.parametrize("num_classes", [None, 3])
def test_one_timestep_for_the_batch_matches_the_per_row_path(num_classes):
    # With one timestep for the whole batch the timestep path runs on one row and broadcasts;
    # the per-row path (the definition) runs when the timesteps differ: here, an extra last row
    # with another t. Both in float64: outputs and parameter gradients agree to rounding.
    model = rd.MLPDenoiser(hidden=16, num_blocks=2, time_dim=8, num_classes=num_classes, seed=3)
    model.to(dtype=np.float64)
    for p in model.parameters():  # out_proj starts at zero: give the gradients something to carry
        p.data[...] += np.random.default_rng(1).uniform(-0.1, 0.1, p.shape)
    x = np.random.default_rng(2).standard_normal((6, 2))
    y = None if num_classes is None else np.array([0, 1, 2, 0, 1, 3])
    g = np.random.default_rng(4).standard_normal((6, 2))

    def output_and_grads(x, t, y, rows):
        model.zero_grad()
        out = model(x, t, y)
        out.backward(np.concatenate([g, np.zeros((len(x) - rows, 2))]))
        return out.data[:rows], {n: p.grad.copy() for n, p in model.named_parameters()}

    for t in (417, np.full(6, 417)):
        fast, fast_grads = output_and_grads(x, t, y, 6)
        x7, t7 = np.concatenate([x, x[:1]]), np.append(np.full(6, 417), 5)
        y7 = None if y is None else np.append(y, 0)
        plain, plain_grads = output_and_grads(x7, t7, y7, 6)
        np.testing.assert_allclose(fast, plain, rtol=1e-12, atol=1e-14)
        for name in plain_grads:
            np.testing.assert_allclose(fast_grads[name], plain_grads[name], rtol=1e-12, atol=1e-14, err_msg=name)
