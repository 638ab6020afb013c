"""Test helpers other modules' tests can import: a finite-difference gradient checker.

    from refdiff.nn.testing import check_gradients
    check_gradients(lambda x, w: refdiff.nn.functional.linear(x, w), [x, w])

NumPy only (no pytest), so it can be imported anywhere.
"""
import numpy as np

from .autograd import Tensor


def numerical_gradient(f, arrays, index, eps=1e-6):
    """Central differences: dL/da ~ (L(a + eps e_i) - L(a - eps e_i)) / (2 eps) for each element i.

    `f(arrays) -> float` is evaluated 2 * arrays[index].size times; arrays[index] is perturbed
    in place and restored. Truncation error is O(eps^2 f'''), rounding error O(u |L| / eps).
    """
    a = arrays[index]
    grad = np.zeros_like(a)
    flat, gflat = a.reshape(-1), grad.reshape(-1)  # views (a is contiguous float64)
    for i in range(flat.size):
        original = flat[i]
        flat[i] = original + eps
        plus = f(arrays)
        flat[i] = original - eps
        minus = f(arrays)
        flat[i] = original
        gflat[i] = (plus - minus) / (2 * eps)
    return grad


def check_gradients(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5, seed=0, wrt=None):
    """Assert that autograd's gradients of `fn` match central finite differences, in float64.

    fn(*tensors) -> Tensor of any shape; it is reduced to the scalar L = sum(fn(...) * r) with a
    fixed random r, so every output element's gradient is checked. `inputs` are arrays (or
    Tensors); floating ones are converted to float64 and differentiated (all of them, or the
    positions listed in `wrt`), others (integer indices) are passed through unchanged.
    Raises AssertionError naming the input and the worst element; returns the analytic gradients.

    Tolerance: with eps = 1e-6 in float64 the central difference is accurate to about
    eps^2 |f'''| + 1e-16 |L| / eps ~ 1e-10 for O(1) inputs, far below atol = 1e-6.
    """
    arrays = []
    for a in inputs:
        a = a.data if isinstance(a, Tensor) else a
        a = np.asarray(a)
        arrays.append(np.array(a, dtype=np.float64) if np.issubdtype(a.dtype, np.floating) else a)
    if wrt is None:
        wrt = [i for i, a in enumerate(arrays) if np.issubdtype(a.dtype, np.floating)]

    out_shape = fn(*[Tensor(a) for a in arrays]).shape
    r = np.random.default_rng(seed).standard_normal(out_shape)

    def loss(arrs):
        return float((fn(*[Tensor(a) for a in arrs]).data * r).sum())

    tensors = [Tensor(a, requires_grad=(i in wrt)) for i, a in enumerate(arrays)]
    out = fn(*tensors)
    (out * Tensor(r)).sum().backward()

    analytic = []
    for i in wrt:
        expected = numerical_gradient(loss, arrays, i, eps)
        got = tensors[i].grad
        if got is None:
            got = np.zeros_like(expected)  # no path from the output to this input
        if got.shape != expected.shape:
            raise AssertionError(f"input {i}: gradient shape {got.shape}, expected {expected.shape}")
        err = np.abs(got - expected) - (atol + rtol * np.abs(expected))
        if np.any(err > 0) or not np.all(np.isfinite(got)):
            worst = np.unravel_index(np.argmax(err), err.shape) if err.size else ()
            raise AssertionError(
                f"input {i} (shape {expected.shape}): autograd gradient {got[worst]!r} vs finite "
                f"differences {expected[worst]!r} at index {worst} (max abs error {np.max(np.abs(got - expected)):.3g})"
            )
        analytic.append(got)
    return analytic
