"""Sampler error against the number of model evaluations, on a model whose answer is known exactly.

The model is refdiff.GaussianMixture's exact eps (no training, no network error): every sampler
integrates the same probability-flow ODE, dx/dsigma = (x - D(x; sigma)) / sigma (EDM eq. 4), and
its error is measured against an accurate solution of that ODE from the same starting points
(GaussianMixture.probability_flow: RK4 in log sigma, within ~1e-9). On a log-log plot a
sampler of order p is a line of slope -p against NFE: Euler 1, Heun 2, ... Grids: N steps
uniform in log sigma from sigma_max = 20 to sigma_min = 0.05 on the linear DDPM schedule, taken
literally (the model is called at the exact float t of each sigma).

    python examples/samplers_mixture.py            # every deterministic sampler registered, ~1 min
    python examples/samplers_mixture.py --quick    # seconds: a smoke test

Writes OUT/samplers_mixture.png (error vs NFE, log-log; needs matplotlib) and OUT/samplers_mixture.json.
"""
import os

import numpy as np

from common import parser, plt, run, save_json

import refdiff as rd
from refdiff.gaussian.process import as_process
from refdiff.samplers import SAMPLERS
from refdiff.samplers.registry import sampler_spec

SIGMA_MAX, SIGMA_MIN = 20.0, 0.05
# the deterministic samplers on sigmas that are plotted where registered
CANDIDATES = ("euler", "heun", "lms", "dpmpp_2m", "dpmpp_3m", "dpmpp_2s", "dpmpp_3s", "unipc")


def mixture():
    """The 2-D, three-component mixture of the tests (unequal weights, correlated covariances)."""
    return rd.GaussianMixture(
        weights=[0.2, 0.5, 0.3],
        means=[[-2.0, 0.0], [1.5, 1.0], [0.5, -1.5]],
        covariances=[[[0.30, 0.12], [0.12, 0.20]], [[0.25, -0.10], [-0.10, 0.40]], [[0.10, 0.0], [0.0, 0.50]]],
    )


def error_and_nfe(mix, schedule, sampler, steps, x_ve, reference):
    """(RMS distance to the ODE solution at sigma_min, model evaluations) of `sampler` with `steps` steps."""
    sigmas = np.exp(np.linspace(np.log(SIGMA_MAX), np.log(SIGMA_MIN), steps + 1))
    process = as_process(schedule)
    first, last = process.scales_from_sigma(sigmas[0])[0], process.scales_from_sigma(sigmas[-1])[0]
    eps_model, calls = mix.model(schedule), [0]

    def model(x, t):  # the exact eps, counting the evaluations
        calls[0] += 1
        return eps_model(x, t)

    x = rd.sample_loop(model, x_ve * first, schedule, sampler=sampler, steps=None, sigmas=sigmas) / last
    return float(np.sqrt(np.mean(np.sum((x - reference) ** 2, axis=1)))), calls[0]


def main(argv=None):
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=64, help="starting points")
    args = p.parse_args(argv)
    steps = (4, 8, 16) if args.quick else (5, 10, 20, 50, 100)
    n = 8 if args.quick else args.n
    os.makedirs(args.out, exist_ok=True)

    mix, schedule = mixture(), rd.NoiseSchedule.linear()
    x_ve = mix.noised(1.0, SIGMA_MAX).sample(n, np.random.default_rng(args.seed))
    reference = mix.probability_flow(x_ve, [SIGMA_MAX, SIGMA_MIN], steps_per_unit=20 if args.quick else 100)[-1]
    samplers = [s for s in CANDIDATES if s in SAMPLERS and sampler_spec(s).works_on == "denoised"]
    if args.quick:
        samplers = samplers[:2]

    results = {}
    for sampler in samplers:
        rows = [error_and_nfe(mix, schedule, sampler, k, x_ve, reference) for k in steps]
        errors, nfe = np.array([r[0] for r in rows]), np.array([r[1] for r in rows])
        slope = -np.polyfit(np.log(nfe), np.log(errors), 1)[0]
        results[sampler] = {"steps": list(steps), "nfe": nfe.tolist(), "error": errors.tolist(), "order": slope}
        print(f"{sampler:10s} NFE {nfe.tolist()}  error {' '.join(f'{e:.2e}' for e in errors)}  slope {slope:.2f}")

    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(6, 4.5))
    for sampler, r in results.items():
        ax.loglog(r["nfe"], r["error"], "o-", label=f"{sampler} (slope {r['order']:.2f})")
    ax.set_xlabel("model evaluations (NFE)")
    ax.set_ylabel("RMS error vs the probability-flow ODE")
    ax.set_title("samplers on the exact Gaussian-mixture denoiser")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "samplers_mixture.png"), dpi=110)
    save_json(os.path.join(args.out, "samplers_mixture.json"), results)
    return results


if __name__ == "__main__":
    run(main)
