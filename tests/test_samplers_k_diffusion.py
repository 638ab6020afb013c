"""euler, euler_ancestral, heun, lms and flow_euler / flow_heun: parity with diffusers, and what they must compute.

Independent truths used here:
- diffusers 0.42.1 (EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, HeunDiscreteScheduler,
  LMSDiscreteScheduler, FlowMatchEulerDiscreteScheduler): whole sampling loops on a fixed smooth fake
  model (tests/_sampler_fake_model.py), recorded by tests/data/make_diffusers_sampler_golden.py, with
  the ancestral noise fed. Default, Karras and exponential sigmas; epsilon and v-prediction;
  leading / linspace / trailing spacing; a zero-terminal-SNR schedule; the flow path with shift.
- diffusers keeps its grids in float32 and steps a float32 state; refdiff computes its grid in
  float64. Each case is run twice: on refdiff's own grid (must match the golden grid to float32
  rounding, and the sample to the float32 error of a whole loop), and on diffusers' recorded
  float32 grid (then only diffusers' float32 arithmetic remains: a tighter bound). A plausible
  mistake (wrong sigma in the step, a grid off by one, a missing Heun correction, LMS of another
  order) moves the sample by far more than either bound: checked below.
- For data that is one point x*, the exact denoiser is D = x* at every sigma: Heun and LMS land on
  x* exactly; with ancestral noise too.
"""
import json
import os

import numpy as np
import pytest

import refdiff as rd
from refdiff.samplers import sampler_spec
from refdiff.samplers.grids import Grid, build_grid
from refdiff.samplers.k_diffusion import get_ancestral_step, lms_coefficient
from refdiff.samplers.loop import Denoiser

from _sampler_fake_model import fake_model

GOLDEN = np.load(os.path.join(os.path.dirname(__file__), "data", "diffusers_sampler_golden.npz"))
CASES = sorted({k.split("/")[1] for k in GOLDEN.files if k.startswith("case/")})


class Replay:
    """An rng that hands out recorded noise arrays in order (the ancestral noise fed to diffusers)."""

    def __init__(self, noise=()):
        self.noise, self.k = list(noise), 0

    def standard_normal(self, size, dtype=np.float64):
        z = self.noise[self.k]
        self.k += 1
        assert z.shape == tuple(size)
        return z.astype(dtype)


def load(case):
    g = {k.split("/")[2]: GOLDEN[k] for k in GOLDEN.files if k.startswith(f"case/{case}/")}
    meta = json.loads(str(g.pop("meta")))
    return meta, g


def process_of(meta):
    if meta["schedule"] == "flow":
        return rd.FlowProcess(shift=meta["shift"])
    schedule = getattr(rd.NoiseSchedule, meta["schedule"])(T=1000)
    return rd.as_process(schedule.rescale_zero_terminal_snr() if meta["zero_snr"] else schedule)


def grid_options(meta):
    options = {"sigmas": meta["sigmas"]}
    if meta["spacing"] is not None:
        options["spacing"] = meta["spacing"]
    if meta["steps_offset"]:
        options["steps_offset"] = meta["steps_offset"]
    return options


def golden_grid(meta, g):
    """diffusers' grid as (sigmas, times) of refdiff's Grid: Heun's repeated entries removed, the flow
    scheduler's 'sigmas' (flow times) turned into noise levels."""
    sigmas, times = g["sigmas"].astype(np.float64), g["timesteps"].astype(np.float64)
    if meta["sampler"] == "heun":  # [s0, s1, s1, .., s_{N-1}, s_{N-1}, 0] and [t0, t1, t1, ..]
        sigmas = np.concatenate([sigmas[:1], sigmas[1:-1:2], sigmas[-1:]])
        times = np.concatenate([times[:1], times[1::2]])
    if meta["schedule"] == "flow":
        with np.errstate(divide="ignore"):
            return sigmas / (1 - sigmas), sigmas
    return sigmas, np.append(times, 0.0)


def model_of(meta):
    return lambda x, t: fake_model(x, t, meta["prediction_type"])


def run_on_grid(meta, g, grid, mutate=None):
    """The sampler of the case on a given Grid (the loop's own pieces, so that the grid can be diffusers')."""
    process, spec = process_of(meta), sampler_spec(meta["sampler"])
    model = model_of(meta)
    denoise = Denoiser(lambda x, t: (model(x, t), None), process, grid, meta["prediction_type"])
    x_T = GOLDEN["x_T"].astype(np.float64)
    rng = Replay(g.get("noise", ()))
    fn = mutate or spec.fn
    if spec.works_on == "velocity":
        return fn(denoise.velocity, x_T, denoise.times, rng)
    return fn(denoise, x_T / denoise.scales(0)[0], denoise.sigmas, rng) * denoise.scales(-1)[0]


def bound(meta, g):
    """The float32 error of diffusers' whole loop. A rounding of the state at sigma_i (float32 eps
    1.2e-7 times the state's size sigma_i |x_T|) reaches the sample scaled by about sigma_{i+1} / sigma_i
    (the ODE contracts toward the data), so the first step's rounding arrives as eps sigma_1 |x_T|;
    each later step adds about eps |x_T|. Times 10 for the few roundings of each step."""
    sigmas, _ = golden_grid(meta, g)
    steps = len(sigmas) - 1
    return 10 * 1.2e-7 * float(np.abs(GOLDEN["x_T"]).max()) * (max(1.0, sigmas[1]) + steps)


class Float32TableProcess(rd.DiscreteProcess):
    """A DiscreteProcess on diffusers' float32 tables: abar as recorded, sigma and log sigma computed
    in float32 as diffusers' set_timesteps does."""

    def __init__(self, alphas_cumprod):
        super().__init__(rd.NoiseSchedule.linear(T=len(alphas_cumprod)))
        abar = alphas_cumprod.astype(np.float32)
        self.alphas_cumprod = abar.astype(np.float64)
        self.sigmas = (((1 - abar) / abar) ** 0.5).astype(np.float64)
        self.log_sigmas = np.log(((1 - abar) / abar) ** 0.5).astype(np.float64)


def grid_of(meta, process):
    return build_grid(sampler_spec(meta["sampler"]).grid, process, meta["steps"], **grid_options(meta))


def check_grid(grid, sigmas, times, rtol):
    finite = np.isfinite(sigmas)
    np.testing.assert_array_equal(np.isfinite(grid.sigmas), finite)
    np.testing.assert_allclose(grid.sigmas[finite], sigmas[finite], rtol=rtol, atol=1e-12)
    np.testing.assert_allclose(grid.times[:-1], times[:-1], rtol=rtol, atol=1e-4)


@pytest.mark.parametrize("case", CASES)
def test_the_grid_is_diffusers_grid_and_differs_only_by_its_float32_tables(case):
    meta, g = load(case)
    sigmas, times = golden_grid(meta, g)
    if meta["schedule"] == "flow":
        times = times * 1.0  # flow times: the scheduler's timesteps / 1000
        np.testing.assert_allclose(g["timesteps"], 1000 * times[:-1], rtol=1e-6)
        check_grid(grid_of(meta, process_of(meta)), sigmas, times, rtol=1e-6)  # float32 rounding of t
        return
    # on diffusers' float32 table refdiff's rules give diffusers' grid: float32 rounding only
    check_grid(grid_of(meta, Float32TableProcess(g["alphas_cumprod"])), sigmas, times, rtol=2e-6)
    # on refdiff's float64 table the grid moves by what float32 tables lose: 1 - abar near t = 0 is
    # 1e-4..1e-3, read from a float32 abar with ~6e-8 absolute error: up to ~3e-4 relative in sigma
    check_grid(grid_of(meta, process_of(meta)), sigmas, times, rtol=5e-4)


@pytest.mark.parametrize("case", CASES)
def test_whole_sampling_loops_match_diffusers(case):
    meta, g = load(case)
    # on diffusers' own float32 grid only diffusers' float32 arithmetic separates the two
    sigmas, times = golden_grid(meta, g)
    on_their_grid = run_on_grid(meta, g, Grid(sigmas, times))
    np.testing.assert_allclose(on_their_grid, g["out"], rtol=0, atol=bound(meta, g))
    assert np.abs(g["out"]).max() > 0.1  # not a comparison of two zeros
    # the public entry point on refdiff's float64 grid: the grid's float32 differences (above) add
    # at most ~5e-4 relative per sigma, hence 1e-3 of the sample's size
    out = rd.sample_loop(model_of(meta), GOLDEN["x_T"].astype(np.float64), process_of(meta), sampler=meta["sampler"],
                         steps=meta["steps"], rng=Replay(g.get("noise", ())), prediction_type=meta["prediction_type"],
                         **grid_options(meta))
    np.testing.assert_allclose(out, g["out"], rtol=0, atol=bound(meta, g) + 1e-3 * np.abs(g["out"]).max())


def _misplaced(meta):
    """Plausible mistakes, one per sampler: each must move the sample by more than the parity bound."""
    import refdiff.samplers.flow as F
    import refdiff.samplers.k_diffusion as K

    def euler_without_last_step(denoise, x, sigmas, rng):  # a grid off by one
        return K.sample_euler(denoise, x, sigmas[:-2] + (0.0,), rng)

    def heun_without_correction(denoise, x, sigmas, rng):
        return K.sample_euler(denoise, x, sigmas, rng)

    def lms_of_order_two(denoise, x, sigmas, rng):
        return K.sample_lms(denoise, x, sigmas, rng, order=2)

    def ancestral_with_eta_half(denoise, x, sigmas, rng):
        return K.sample_euler_ancestral(denoise, x, sigmas, rng, eta=0.5)

    def flow_euler_at_next_time(velocity, x, times, rng):
        for i in range(len(times) - 1):
            x = x + (times[i + 1] - times[i]) * velocity(x, min(i + 1, len(times) - 2))
        return x

    return {"euler": euler_without_last_step, "heun": heun_without_correction, "lms": lms_of_order_two,
            "euler_ancestral": ancestral_with_eta_half, "flow_euler": flow_euler_at_next_time}[meta["sampler"]]


@pytest.mark.parametrize("case", CASES)
def test_a_plausible_mistake_breaks_parity(case):
    meta, g = load(case)
    sigmas, times = golden_grid(meta, g)
    wrong = run_on_grid(meta, g, Grid(sigmas, times), mutate=_misplaced(meta))
    assert np.abs(wrong - g["out"]).max() > 10 * bound(meta, g)


def test_the_bound_is_meaningful():
    """The tolerance is float32 error, not 'anything near': below 1e-3 of the samples' size in every case."""
    for case in CASES:
        meta, g = load(case)
        assert bound(meta, g) < 1e-3 * max(1.0, np.abs(g["out"]).max()), (case, bound(meta, g))


class PointMass:
    def __init__(self, x_star, process):
        self.x_star, self.process, self.calls = np.asarray(x_star, dtype=np.float64), process, 0

    def __call__(self, x, t):
        self.calls += 1
        a, s = self.process.signal_scale(t), self.process.noise_std(t)
        return (x - a * self.x_star) / s


@pytest.mark.parametrize("sampler, nfe", [("heun", 2 * 9 - 1), ("lms", 9), ("euler_ancestral", 9), ("euler", 9)])
@pytest.mark.parametrize("grid", [dict(spacing="leading"), dict(sigmas="karras"), dict(sigmas="exponential")])
def test_samplers_land_on_a_point_mass_and_count_their_evaluations(sampler, nfe, grid):
    """Exact where the model's time is the time of the grid's sigma: integer timesteps, or Karras /
    exponential sigmas at t_from_sigma. (diffusers' default "linspace" grid calls the model at a
    fractional t but interpolates sigma linearly, not as the process does: a quirk kept for parity.)"""
    process = rd.as_process(rd.NoiseSchedule.scaled_linear(T=1000))
    model = PointMass([0.4, -0.2, 0.8], process)
    x = np.random.default_rng(0).standard_normal((5, 3))
    out = rd.sample_loop(model, x, process, sampler=sampler, steps=9, rng=np.random.default_rng(1), **grid)
    np.testing.assert_allclose(out, np.broadcast_to(model.x_star, out.shape), atol=1e-8)
    assert model.calls == nfe


def test_flow_samplers_land_on_a_point_mass():
    process = rd.FlowProcess()
    x_star = np.array([0.4, -0.2, 0.8])
    x = np.random.default_rng(0).standard_normal((5, 3))
    calls = []

    def velocity_model(x_t, t):  # the exact velocity of a point mass: u = eps - x* = (x_t - x*) / t
        calls.append(t)
        return (x_t - x_star) / t

    for sampler, nfe in (("flow_euler", 8), ("flow_heun", 2 * 8 - 1)):
        calls.clear()
        out = rd.sample_loop(velocity_model, x, process, sampler=sampler, steps=8, prediction_type="flow")
        np.testing.assert_allclose(out, np.broadcast_to(x_star, out.shape), atol=1e-12)
        assert len(calls) == nfe and calls[0] == 1.0


def test_heun_is_second_order_and_euler_first_on_a_linear_ode():
    """D(x; sigma) = c x (Gaussian data N(0, c / (1 - c)... ) of one fixed ratio): the ODE dx/dsigma =
    (1 - c) x / sigma has the solution x (sigma'/sigma)^(1 - c); halving the steps divides the error
    by 2 (Euler) and 4 (Heun)."""
    c = 0.3
    process = rd.EDMProcess()

    def x0_model(x, t):
        return c * x

    x = np.ones((1, 1)) * 80.0
    exact = 80.0 * (0.5 / 80.0) ** (1 - c)
    errors = {}
    for sampler in ("euler", "heun"):
        errors[sampler] = []
        for steps in (16, 32, 64):
            sigmas = np.geomspace(80.0, 0.5, steps + 1)
            out = rd.sample_loop(x0_model, x, process, sampler=sampler, steps=None, sigmas=sigmas,
                                 prediction_type="sample")
            errors[sampler].append(abs(float(out[0, 0]) - exact))
    for sampler, order in (("euler", 1), ("heun", 2)):
        ratios = np.array(errors[sampler][:-1]) / np.array(errors[sampler][1:])
        np.testing.assert_allclose(np.log2(ratios), order, atol=0.15)


def test_lms_coefficients_integrate_polynomials_exactly():
    sigmas = (10.0, 6.0, 3.5, 1.7, 0.6, 0.0)
    i, order = 3, 4
    # sum_j c_ij p(sigma_{i-j}) = int p over [sigma_i, sigma_{i+1}] for a cubic p (the rule is exact there)
    p = np.poly1d([0.3, -1.0, 2.0, 0.5])
    approx = sum(lms_coefficient(sigmas, i, j, order) * p(sigmas[i - j]) for j in range(order))
    assert approx == pytest.approx(p.integ()(sigmas[i + 1]) - p.integ()(sigmas[i]), rel=1e-12)


def test_ancestral_step_splits_the_variance():
    for eta in (0.0, 0.5, 1.0):
        down, up = get_ancestral_step(3.0, 1.2, eta)
        assert down**2 + up**2 == pytest.approx(1.2**2) and up <= 1.2
    assert get_ancestral_step(3.0, 0.0, 1.0) == (0.0, 0.0)


def test_heun_with_churn_draws_noise_and_evaluates_at_sigma_hat():
    process = rd.as_process(rd.NoiseSchedule.linear(T=1000))
    seen = []
    x = np.random.default_rng(0).standard_normal((2, 3))
    rd.sample_loop(lambda x, t: fake_model(np.pad(x, ((0, 0), (0, 3))), t, "epsilon")[:, :3], x, process,
                   sampler="heun", steps=4, sigmas="karras", rng=np.random.default_rng(1), s_churn=1.0,
                   callback=lambda i, sigma, x, d: seen.append(sigma))
    grid = build_grid("euler", process, 4, sigmas="karras")
    gamma = min(1.0 / 4, 2**0.5 - 1)
    assert seen[0] == pytest.approx(grid.sigmas[0] * (1 + gamma))  # EDM Algorithm 2, line 5


def test_flow_euler_on_a_schedule_is_refused_and_euler_cannot_start_at_infinite_sigma():
    with pytest.raises(ValueError, match="need a FlowProcess"):
        rd.sample_loop(lambda x, t: x, np.zeros((1, 2)), rd.NoiseSchedule.linear(T=10), sampler="flow_euler", steps=3)
    with pytest.raises(ValueError, match="infinite at the grid's first time"):
        rd.sample_loop(lambda x, t: x, np.zeros((1, 2)), rd.FlowProcess(), sampler="euler", steps=3)
