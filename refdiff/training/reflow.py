"""Rectified flow with reflow: straighten a trained flow by retraining it on its own (data, noise) pairs.

Liu, Gong, Liu 2022, Flow Straight and Fast (arXiv:2209.03003), sec. 2.2-2.3 and Algorithm 1, in
refdiff's time (t = 0 data, t = 1 noise; Liu et al.'s X_0 is our eps, their X_1 our x_0):

    1-rectified flow   flow matching on independent pairs (x_0 ~ data, eps ~ N(0, I))   (refdiff.FlowMatching)
    reflow             eps ~ N(0, I), x_0 = ODE of the k-rectified flow from eps at t = 1 to t = 0;
                       train the (k+1)-rectified flow on the coupled pairs (x_0, eps):
                       x_t = (1 - t) x_0 + t eps, target eps - x_0        (Liu et al. 2022 eq. 1 on Z^k's coupling)
    straightness       S = int_0^1 E ||(z_1 - z_0) - dz_t/dt||^2 dt along the ODE trajectories z_t
                       (Liu et al. 2022 Definition 3.5): 0 when every path is straight, and then
                       one Euler step is exact
    transport cost     E ||x_0 - eps||^2 of the coupling; reflow does not increase any convex
                       transport cost (Liu et al. 2022 Theorem 3.5)

The pairs reach the Trainer as a CoupledDataset (x the ODE's samples, noise the eps each started
from): the trainer hands diffusion.loss each batch's paired noise instead of a fresh draw. A reflow
run resumes with Trainer.resume(out_dir, dataset=pairs) (keep the pairs: save_pairs / load_pairs).
"""
import dataclasses

import numpy as np

from ..gaussian.flow_matching import straightness_formula
from ..samplers.loop import sample_loop
from .data import Dataset
from .trainer import Trainer


@dataclasses.dataclass
class CoupledDataset(Dataset):
    """Data x with the noise each sample is paired with (noise[i] goes with x[i]): a coupling."""

    noise: np.ndarray = None

    def __post_init__(self):
        super().__post_init__()
        self.noise = np.ascontiguousarray(self.noise, dtype=np.float32)
        if self.noise.shape != self.x.shape:
            raise ValueError(f"noise must have x's shape {self.x.shape}, got {self.noise.shape}")


def _velocity_model(flow, record=None):
    """model(x, t) -> u_theta(x, t) for rd.sample_loop (prediction_type "flow"); record: a list that
    receives (t, u) at every evaluation."""

    def model(x, t):
        u = flow.velocity(x, t).astype(x.dtype, copy=False)
        if record is not None:
            record.append((float(t), u))
        return u

    return model


def solve_flow(flow, noise, steps=100, sampler="flow_heun"):
    """x_0 = the ODE dx/dt = u_theta(x, t) integrated from x = noise at t = 1 to t = 0 (refdiff.samplers.flow)."""
    return sample_loop(_velocity_model(flow), noise, flow.process, sampler=sampler, steps=steps, prediction_type="flow")


def draw_noise(flow, n, seed=0):
    """eps ~ N(0, I), (n, *sample_shape) float32, from default_rng(seed)."""
    from ..diffusion import model_sample_shape

    return np.random.default_rng(seed).standard_normal((n, *model_sample_shape(flow.model))).astype(np.float32)


def reflow_pairs(flow, n, steps=100, sampler="flow_heun", seed=0):
    """The coupling (x_0, eps) of a trained flow: eps ~ N(0, I) and x_0 its ODE solution
    (Liu et al. 2022 Algorithm 1, the "reflow" data). Returns a CoupledDataset."""
    noise = draw_noise(flow, n, seed)
    return CoupledDataset(x=solve_flow(flow, noise, steps, sampler), noise=noise)


def straightness(flow, noise, steps=100):
    """(S, x_0): the straightness of Liu et al. 2022 Definition 3.5 along the Euler trajectories from
    `noise` (steps Euler steps, flow_euler), and where they end.

    S = sum_i |t_{i+1} - t_i| mean_b ||(eps - x_0) - u_theta(x_{t_i}, t_i)||^2 (the integral as the
    Euler solve's Riemann sum; in the limit of many steps Definition 3.5 itself)."""
    record = []
    x0 = sample_loop(_velocity_model(flow, record), noise, flow.process, sampler="flow_euler", steps=steps,
                     prediction_type="flow")
    times = [t for t, _ in record] + [0.0]
    dts = np.abs(np.diff(times))
    return straightness_formula(noise.astype(np.float64) - x0, [u for _, u in record], dts), x0


def transport_cost(pairs):
    """E ||x_0 - eps||^2 of a coupling (the quadratic cost of Liu et al. 2022 Theorem 3.5)."""
    d = (pairs.x - pairs.noise).reshape(len(pairs.x), -1).astype(np.float64)
    return float(np.mean(np.sum(d * d, axis=1)))


def copy_flow(flow):
    """A FlowMatching with a fresh copy of flow's network (same class, config and weights) and options."""
    from ..flow_matching import FlowMatching

    model = flow.model
    clone = type(model)(**model.config, backend=model.backend.name)
    clone.load_state_dict(model.state_dict())
    return FlowMatching(clone, **{k: v for k, v in flow.config().items() if k != "objective"})


def reflow(flow, pairs, steps, out_dir=None, progress=False, **train_options):
    """The next rectified flow: a copy of `flow` (initialised from its weights, as Liu et al. 2022 sec. 5
    fine-tune 2-RF from 1-RF) trained `steps` steps on the coupling `pairs` (reflow_pairs).
    train_options: TrainConfig fields. Returns (new flow with its EMA weights, its Trainer)."""
    student = copy_flow(flow)
    trainer = Trainer(student, pairs, out_dir=out_dir, progress=progress, **train_options)
    trainer.train(steps)
    trainer.ema.copy_to(trainer.params)
    return student, trainer


def save_pairs(path, pairs):
    """Write a coupling to an .npz (x, noise), to resume a reflow run with the same pairs."""
    np.savez(path, x=pairs.x, noise=pairs.noise)


def load_pairs(path):
    """A CoupledDataset from save_pairs' .npz."""
    with np.load(path) as f:
        return CoupledDataset(x=f["x"], noise=f["noise"])
