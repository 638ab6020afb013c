"""Consistency models' parameterization (Song et al. 2023 eq. 5, appendix C): the boundary condition
f(x, sigma_min) = x holds for any network output, and away from sigma_min, c_skip and c_out are EDM's
(Table 1) at sigma - sigma_min in c_skip."""
import numpy as np

import refdiff as rd
from refdiff.gaussian.consistency import consistency_c_out, consistency_c_skip, consistency_function_formula


def test_the_boundary_condition_holds_whatever_the_network_says():
    rng = np.random.default_rng(0)
    x, F = rng.standard_normal((16, 2)), 1e6 * rng.standard_normal((16, 2))
    for sigma_min, sigma_data in ((0.002, 0.5), (0.01, 1.0)):
        f = consistency_function_formula(x, F, consistency_c_skip(sigma_min, sigma_min, sigma_data),
                                         consistency_c_out(sigma_min, sigma_min, sigma_data))
        np.testing.assert_array_equal(f, x)


def test_the_coefficients_are_edms_with_sigma_shifted():
    edm = rd.EDMProcess(sigma_data=0.5)
    sigma = np.array([0.1, 1.0, 10.0, 80.0])
    np.testing.assert_allclose(consistency_c_skip(sigma, 0.0), edm.c_skip(sigma), rtol=1e-12)
    np.testing.assert_allclose(consistency_c_out(sigma, 0.0), edm.c_out(sigma), rtol=1e-12)
    # with sigma_min > 0 the skip still falls and the output scale still grows with sigma
    assert np.all(np.diff(consistency_c_skip(sigma)) < 0) and np.all(np.diff(consistency_c_out(sigma)) > 0)
