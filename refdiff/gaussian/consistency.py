"""Consistency models: the parameterization that meets the boundary condition f(x, eps) = x by construction.

Song, Dhariwal, Chen, Sutskever 2023, Consistency Models (arXiv:2303.01469), sec. 3 eq. 5 and
appendix C, on EDM's variance-exploding scale x = x_0 + sigma eps (refdiff.gaussian.process.EDMProcess),
with sigma_min = eps the smallest noise level:

    f_theta(x, sigma) = c_skip(sigma) x + c_out(sigma) F_theta(x, sigma)                     eq. 5
    c_skip(sigma) = sigma_data^2 / ((sigma - sigma_min)^2 + sigma_data^2)                    appendix C
    c_out(sigma)  = sigma_data (sigma - sigma_min) / sqrt(sigma_data^2 + sigma^2)            appendix C

c_skip(sigma_min) = 1 and c_out(sigma_min) = 0, so f_theta(x, sigma_min) = x whatever F_theta gives:
the boundary condition f(x, eps) = x (sec. 3) holds exactly. They are EDM's c_skip / c_out (Table 1)
with sigma shifted by sigma_min.
Not yet here: consistency distillation itself (Algorithm 2) and sampling (Algorithm 1), issue 12 part 4.
"""
import numpy as np


def consistency_c_skip(sigma, sigma_min=0.002, sigma_data=0.5):
    """c_skip(sigma) = sigma_data^2 / ((sigma - sigma_min)^2 + sigma_data^2)   (Song et al. 2023 appendix C)."""
    d = np.asarray(sigma, dtype=np.float64) - sigma_min
    return sigma_data**2 / (d * d + sigma_data**2)


def consistency_c_out(sigma, sigma_min=0.002, sigma_data=0.5):
    """c_out(sigma) = sigma_data (sigma - sigma_min) / sqrt(sigma_data^2 + sigma^2)   (Song et al. 2023 appendix C)."""
    sigma = np.asarray(sigma, dtype=np.float64)
    return sigma_data * (sigma - sigma_min) / np.sqrt(sigma_data**2 + sigma * sigma)


def consistency_function_formula(x, network_output, c_skip, c_out):
    """f(x, sigma) = c_skip(sigma) x + c_out(sigma) F(x, sigma)   (Song et al. 2023 eq. 5)."""
    return c_skip * x + c_out * network_output
