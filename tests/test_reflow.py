"""Rectified flow with reflow (Liu et al. 2022): on a 2-D toy, reflow straightens the flow (the
straightness S of Definition 3.5 falls), does not increase the transport cost of the coupling
(Theorem 3.5) and improves one-step sampling. Measured, not assumed: the numbers seen are stated."""
import numpy as np
import pytest

import refdiff as rd
from refdiff.training import reflow as rf
from refdiff.training.data import load_dataset
from refdiff.training.metrics import energy_distance
from refdiff.training.trainer import Trainer


def test_a_coupled_dataset_hands_the_trainer_its_paired_noise():
    x = np.random.default_rng(0).standard_normal((8, 2)).astype(np.float32)
    pairs = rf.CoupledDataset(x=x, noise=x + 1)
    flow = rd.FlowMatching(rd.MLPDenoiser(dim=2, hidden=8, num_blocks=1, seed=0))
    trainer = Trainer(flow, pairs, batch_size=4, progress=False)
    seen = []
    loss = flow.loss

    def recording_loss(x0, y=None, noise=None, **kwargs):
        seen.append((np.array(x0), np.array(noise)))
        return loss(x0, y, noise=noise, **kwargs)

    flow.loss = recording_loss
    trainer.train(2)
    for x0, noise in seen:  # each batch's noise is the noise paired with its samples
        np.testing.assert_array_equal(noise, x0 + 1)
    with pytest.raises(ValueError, match="shape"):
        rf.CoupledDataset(x=x, noise=x[:3])


def test_straightness_of_an_exactly_straight_flow_is_zero():
    # a flow whose velocity is constant along each path: x_0 = x_1 - c, u = c (a translation)
    shift = np.array([0.5, -1.0], np.float32)

    def model(x, t, y=None):
        return rd.Tensor(np.broadcast_to(shift, np.shape(x)).copy())

    flow = rd.FlowMatching(model)
    flow.model.sample_shape = (2,)
    noise = np.random.default_rng(0).standard_normal((64, 2)).astype(np.float32)
    s, x0 = rf.straightness(flow, noise, steps=10)
    assert s < 1e-10
    np.testing.assert_allclose(x0, noise - shift, atol=1e-5)


def _reflow_run(steps, n_pairs, hidden):
    data = load_dataset("gaussians8", n=4000, seed=0)
    held_out = load_dataset("gaussians8", n=1000, seed=5).x
    flow = rd.FlowMatching(rd.MLPDenoiser(dim=2, hidden=hidden, num_blocks=2, seed=0))
    trainer = Trainer(flow, data, batch_size=256, lr=2e-3, warmup_steps=50, ema_decay=0.99, progress=False)
    trainer.train(steps)
    trainer.ema.copy_to(trainer.params)
    noise = rf.draw_noise(flow, 1000, seed=9)
    pairs = rf.reflow_pairs(flow, n_pairs, steps=30, seed=1)
    flow2, _ = rf.reflow(flow, pairs, steps, batch_size=256, lr=1e-3, warmup_steps=50, ema_decay=0.99)
    result = {}
    for name, f in (("1-RF", flow), ("2-RF", flow2)):
        s, _ = rf.straightness(f, noise, steps=30)
        one_step = energy_distance(f.sample(1000, steps=1, seed=3, progress=False), held_out)
        cost = rf.transport_cost(rf.reflow_pairs(f, n_pairs, steps=30, seed=1))
        result[name] = (s, one_step, cost)
    return result


def _check(result, s_ratio):
    (s1, q1, c1), (s2, q2, c2) = result["1-RF"], result["2-RF"]
    assert s2 < s1 / s_ratio, result
    assert q2 < q1 / 2, result
    assert c2 < c1 * 1.02, result  # Theorem 3.5: not increased (a 2% margin for the ODE solves' error)


def test_reflow_straightens_the_flow_and_improves_one_step_sampling():
    # seen (2-core CPU, ~6 s): 1-RF S 0.31, one-step energy distance 0.65, cost 0.578;
    #                          2-RF S 0.0009, one-step 0.20, cost 0.569
    _check(_reflow_run(steps=400, n_pairs=2000, hidden=32), s_ratio=10)


@pytest.mark.slow
def test_reflow_straightens_the_flow_longer_run():
    # seen: 1-RF S 0.47, one-step 0.73, cost 0.556; 2-RF S 0.0007, one-step 0.068, cost 0.554
    _check(_reflow_run(steps=1500, n_pairs=5000, hidden=64), s_ratio=100)
