"""DPM-Solver++ and UniPC: closed forms, the order schedules, dtypes, and bad input (options, grids)."""
import numpy as np
import pytest

import refdiff as rd
from refdiff.samplers.dpm_solver import dpmpp_2m_step, singlestep_orders
from refdiff.samplers.k_diffusion import euler_step

DPM = ("dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "dpmpp_3m_sde", "dpmpp_2s", "dpmpp_3s", "unipc")


def model(x, t):
    return 0.5 * np.tanh(x) * (1 + t / 1000.0)


def x_T(dtype=np.float64):
    return np.random.default_rng(0).standard_normal((2, 3, 4)).astype(dtype)


def test_first_order_step_is_eulers_step():
    """DPM-Solver++'s first-order step in the variance-exploding scale, (sigma_next / sigma) x +
    (1 - sigma_next / sigma) D, is Euler's step x + (sigma_next - sigma)(x - D) / sigma (and DDIM)."""
    rng = np.random.default_rng(1)
    x, d = rng.standard_normal((2, 5)), rng.standard_normal((2, 5))
    np.testing.assert_allclose(dpmpp_2m_step(x, d, None, 3.0, 1.2, None), euler_step(x, d, 3.0, 1.2), rtol=1e-14)
    np.testing.assert_array_equal(dpmpp_2m_step(x, d, None, 3.0, 0.0, None), d)  # to sigma = 0: D itself


def test_2m_step_with_equal_predictions_is_first_order():
    rng = np.random.default_rng(2)
    x, d = rng.standard_normal(7), rng.standard_normal(7)
    for solver_type in ("midpoint", "heun"):
        np.testing.assert_allclose(dpmpp_2m_step(x, d, d, 2.0, 1.0, 4.0, solver_type),
                                   dpmpp_2m_step(x, d, None, 2.0, 1.0, None), rtol=1e-14)


@pytest.mark.parametrize("steps, order, lower_order_final, final_zero, expected", [
    (6, 3, True, True, [1, 2, 3, 1, 2, 1]),
    (7, 3, True, True, [1, 2, 3, 1, 2, 3, 1]),
    (8, 3, True, True, [1, 2, 3, 1, 2, 3, 1, 1]),
    (6, 2, True, True, [1, 2, 1, 2, 1, 1]),
    (5, 2, True, False, [1, 2, 1, 2, 1]),
    (6, 3, False, False, [1, 2, 3, 1, 2, 3]),
    (1, 3, True, True, [1]),
])
def test_singlestep_orders_are_diffusers(steps, order, lower_order_final, final_zero, expected):
    """diffusers DPMSolverSinglestepScheduler.get_order_list for the same settings."""
    assert singlestep_orders(steps, order, lower_order_final, final_zero) == expected


@pytest.mark.parametrize("sampler", DPM)
def test_float32_in_float32_out_and_nfe(sampler):
    seen = []
    out = rd.sample_loop(model, x_T(np.float32), rd.NoiseSchedule.linear(), sampler=sampler, steps=9,
                         rng=np.random.default_rng(0), callback=lambda i, s, x, d: seen.append(i))
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert seen == list(range(9))  # one model evaluation per step


@pytest.mark.parametrize("sampler", DPM)
def test_continuous_processes_and_sigma_min(sampler):
    for process in (rd.VPLinearProcess(), rd.EDMProcess()):
        for final in ("zero", "sigma_min"):
            options = {"lower_order_final": True} if sampler in ("dpmpp_2s", "dpmpp_3s") else {}
            out = rd.sample_loop(model, x_T() * process.sigma_max * process.signal_scale(process.t_max), process,
                                 sampler=sampler, steps=8, rng=np.random.default_rng(0), final_sigmas_type=final,
                                 **options)
            assert np.isfinite(out).all()


# ---- bad input -------------------------------------------------------------------------------------


def run(sampler, steps=6, **options):
    return rd.sample_loop(model, x_T(), rd.NoiseSchedule.linear(), sampler=sampler, steps=steps,
                          rng=np.random.default_rng(0), **options)


@pytest.mark.parametrize("sampler, option, value, error, match", [
    ("dpmpp_2m", "solver_type", "bh2", ValueError, "solver_type"),
    ("dpmpp_3m_sde", "solver_type", None, ValueError, "solver_type"),
    ("dpmpp_2m", "lower_order_final", "yes", TypeError, "lower_order_final"),
    ("dpmpp_2m_sde", "euler_at_final", 1, TypeError, "euler_at_final"),
    ("dpmpp_2m", "final_sigmas_type", "sigma_max", ValueError, "final_sigmas_type"),
    ("dpmpp_2s", "final_sigmas_type", "", ValueError, "final_sigmas_type"),
    ("unipc", "final_sigmas_type", "min", ValueError, "final_sigmas_type"),
    ("unipc", "solver_order", 4, ValueError, "solver_order"),
    ("unipc", "solver_order", 2.0, TypeError, "solver_order"),
    ("unipc", "solver_order", True, TypeError, "solver_order"),
    ("dpmpp_3s", "solver_type", "bh1", ValueError, "solver_type"),
])
def test_bad_option_values(sampler, option, value, error, match):
    with pytest.raises(error, match=match):
        run(sampler, **{option: value})


@pytest.mark.parametrize("sampler, option", [
    ("dpmpp_2m", "solver_order"),          # unipc's: dpmpp_2m / _3m name their order
    ("dpmpp_2s", "euler_at_final"),        # the multistep samplers'
    ("unipc", "solver_type"),              # UniPC here is bh2 only
    ("dpmpp_2m", "use_karras_sigmas"),     # diffusers' name for sigmas="karras"
    ("unipc", "s_churn"),                  # euler's
])
def test_options_of_other_samplers_are_refused(sampler, option):
    with pytest.raises(TypeError, match=option):
        run(sampler, **{option: 1})


def test_final_sigmas_type_with_an_explicit_grid_is_refused():
    with pytest.raises(ValueError, match="final_sigmas_type"):
        rd.sample_loop(model, x_T(), rd.NoiseSchedule.linear(), sampler="dpmpp_2m", steps=None,
                       sigmas=np.array([10.0, 1.0, 0.1, 0.0]), final_sigmas_type="sigma_min")


def test_singlestep_lower_order_final_false_where_it_cannot_apply():
    with pytest.raises(ValueError, match="lower_order_final"):
        run("dpmpp_3s", steps=7, lower_order_final=False, final_sigmas_type="sigma_min")
    with pytest.raises(ValueError, match="lower_order_final"):
        run("dpmpp_2s", steps=6, lower_order_final=False)  # a grid ending at sigma = 0
    assert np.isfinite(run("dpmpp_2s", steps=6, lower_order_final=False, final_sigmas_type="sigma_min")).all()


def test_singlestep_grid_has_linspace_spacing_only():
    with pytest.raises(ValueError, match="spacing"):
        run("dpmpp_2s", spacing="leading")


def test_unipc_lower_order_final_false_to_sigma_zero_is_refused():
    with pytest.raises(ValueError, match="lower_order_final"):
        run("unipc", lower_order_final=False)
    assert np.isfinite(run("unipc", lower_order_final=False, final_sigmas_type="sigma_min")).all()


@pytest.mark.parametrize("sampler", DPM)
def test_nan_model_output_is_an_error(sampler):
    with pytest.raises(FloatingPointError, match="NaN"):
        rd.sample_loop(lambda x, t: np.full_like(x, np.nan), x_T(), rd.NoiseSchedule.linear(), sampler=sampler,
                       steps=5, rng=np.random.default_rng(0))


@pytest.mark.parametrize("sigmas", [np.array([1.0, 2.0, 0.0]), np.array([5.0, 1.0, 1.0, 0.0])])
def test_grids_that_do_not_decrease_are_refused(sigmas):
    with pytest.raises(ValueError):
        rd.sample_loop(model, x_T(), rd.NoiseSchedule.linear(), sampler="dpmpp_2m", steps=None, sigmas=sigmas)


@pytest.mark.parametrize("steps", [0, 1001])
def test_steps_out_of_range_are_refused(steps):
    with pytest.raises(ValueError):
        run("unipc", steps=steps)
