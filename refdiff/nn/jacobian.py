"""The trace of a network's Jacobian through the autograd: exactly, or by Hutchinson's estimator.

For fn: x (B, ...) -> out (B, ...) with samples independent of each other (no batch statistics),
one backward pass with the upstream gradient g gives the vector-Jacobian product g^T J of every
sample at once (reverse mode: x.grad = J^T g). Then

    exact        tr J = sum_i (e_i^T J)_i        d backward passes, g = e_i in every sample
    hutchinson   tr J ~= mean_j v_j^T J v_j      one backward pass per probe, E[v v^T] = I
                 (Hutchinson 1990; FFJORD, Grathwohl et al. 2019 sec. 3.1)

This is the divergence the probability-flow likelihood needs (refdiff.gaussian.ode_likelihood);
the parameters' own gradients are not touched (their requires_grad is off during the passes).
"""
import numpy as np

from .autograd import Tensor


def jacobian_trace(fn, x, parameters=(), probes=None):
    """(out, trace) for fn(Tensor) -> Tensor at the array x (B, ...): out the forward result (an
    array), trace (B,) the exact trace of d out / dx per sample (probes None) or the Hutchinson
    estimate with probes (n, B, ...). parameters: the network's parameter Tensors, frozen during the
    passes so that their .grad is left as it was. float64 if x is float64."""
    frozen = [p for p in parameters if p.requires_grad]
    for p in frozen:
        p.requires_grad = False
    try:
        x_in = Tensor(x, requires_grad=True)
        out = fn(x_in)
        B = x.shape[0]
        d = int(np.prod(x.shape[1:]))
        if probes is None:
            directions = []
            for i in range(d):
                e_i = np.zeros((B, d), dtype=x.dtype)
                e_i[:, i] = 1
                directions.append(e_i.reshape(x.shape))
        else:
            directions = [np.asarray(v, dtype=x.dtype) for v in probes]
        estimates = []
        for j, g in enumerate(directions):
            x_in.grad = None
            out.backward(g, retain_graph=j < len(directions) - 1)   # x.grad = J^T g
            estimates.append((g * x_in.grad).reshape(B, -1).sum(axis=1))  # g^T J g
        trace = np.sum(estimates, axis=0) if probes is None else np.mean(estimates, axis=0)
        return out.data, trace
    finally:
        for p in frozen:
            p.requires_grad = True
