"""Sample quality against the number of model evaluations (NFE): the samplers practitioners use at
5, 10, 20 and 50 NFE, next to DDPM with all 1000 steps (issue 18's figures).

Samplers, each as `rd.sample_loop` / `GaussianDiffusion.sample` run it with its default options:
ddim (leading spacing, eta 0), euler, heun (2 NFE per step but the last: steps = (NFE + 1) // 2),
dpmpp_2m on the Karras grid, dpmpp_3m, unipc (solver_order 2), dpmpp_2m_sde; the others on the
grid diffusers' scheduler of their family builds by default. NFE is counted, not assumed.

(a) 2-D toy: an MLPDenoiser trained here with the Trainer (as `refdiff demo`: hidden 128, 3 blocks,
    linear schedule T = 1000, batch 256, lr 2e-3, EMA 0.995), samples scored by the energy distance
    to held-out data (refdiff.training.metrics.energy_distance), next to fresh data (the floor).
    ddpm and ddim keep their default clip_sample=True (the data lie in [-1, 1]); the samplers on
    sigmas do not clip.
(b) The exact denoiser of a 2-D Gaussian mixture (refdiff.GaussianMixture, the mixture of
    tests/test_sampler_convergence.py) on the same schedule, clip_sample=False: no network error,
    only the sampler's. "ODE error": the RMS distance at sigma = 0 to the exact probability-flow
    solution from the same start (one RK4 trajectory in log sigma from sigma(999) to 1e-6, each
    sampler started where the trajectory crosses its first grid time; deterministic samplers
    only). "energy distance": n samples started from the exact q at the sampler's first time,
    against n fresh mixture samples (every sampler), next to mixture vs mixture.
(c) Digits (--digits): the class-conditional MLPDenoiser of benchmarks/RESULTS.md's "Digits,
    class-conditional" section (scikit-learn's 8x8 digits flattened to 64-d, hidden 256 x 3 blocks,
    linear schedule T = 1000, AdamW lr 1e-3, 200 warmup, EMA 0.999, label dropout 0.1), trained
    here for --digits-train-steps (8000: ~3.5 CPU min); every sampler draws --digits-per-class samples of each digit
    (no guidance, s = 1), scored by the project's judge (refdiff.training.metrics.train_classifier,
    image_metrics): the Frechet distance on its features to its held-out real digits and the
    fraction classified as the requested digit. ddim also runs with use_clipped_model_output=True
    ("ddim (clipped eps)"), the DDIM the project's digits figures use (the raw-eps DDIM runs away
    with this MLP, RESULTS.md "DDIM at 50 steps"). Why not the 8x8 U-Net: it trains at ~2 steps/s
    on this CPU (2000 steps: 15 min) and samples at ~1 s per NFE for 300 images, and the table
    needs ~600 NFE of the samplers plus 1000 of DDPM (~25 min more): beyond ~10 CPU minutes.

    python benchmarks/bench_samplers_quality.py            # ~3-6 min on a 2-core CPU
    python benchmarks/bench_samplers_quality.py --quick    # seconds: a smoke test (tests/test_bench_samplers_quality.py)
    python benchmarks/bench_samplers_quality.py --digits --skip-2d   # (c) only, ~10 min on a 2-core CPU

Prints the tables (Markdown, for benchmarks/RESULTS.md) and writes OUT/samplers_quality.json.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

import refdiff as rd
from refdiff.gaussian.process import DiscreteProcess
from refdiff.training.data import Dataset, load_dataset
from refdiff.training.metrics import energy_distance
from refdiff.training.trainer import Trainer

NFE_BUDGETS = (5, 10, 20, 50)
# (label, sampler, options, steps for an NFE budget, stochastic)
SAMPLERS = [
    ("ddim", "ddim", {}, lambda nfe: nfe, False),
    ("euler", "euler", {}, lambda nfe: nfe, False),
    ("heun", "heun", {}, lambda nfe: (nfe + 1) // 2, False),
    ("dpmpp_2m (karras)", "dpmpp_2m", {"sigmas": "karras"}, lambda nfe: nfe, False),
    ("dpmpp_3m", "dpmpp_3m", {}, lambda nfe: nfe, False),
    ("unipc", "unipc", {}, lambda nfe: nfe, False),
    ("dpmpp_2m_sde", "dpmpp_2m_sde", {}, lambda nfe: nfe, True),
]
DDPM = ("ddpm (1000 steps)", "ddpm", {}, None, True)
TIMESTEP_SAMPLERS = ("ddpm", "ddim")


def mixture():
    """The 2-D, three-component mixture of tests/test_sampler_convergence.py."""
    return rd.GaussianMixture(
        weights=[0.2, 0.5, 0.3],
        means=[[-2.0, 0.0], [1.5, 1.0], [0.5, -1.5]],
        covariances=[[[0.30, 0.12], [0.12, 0.20]], [[0.25, -0.10], [-0.10, 0.40]], [[0.10, 0.0], [0.0, 0.50]]],
    )


class _Probe(Exception):
    pass


def first_time_and_nfe(schedule, sampler, steps, options, mix):
    """(the model's t at the first evaluation, NFE of a whole run) of a sampler configuration."""
    model, seen = mix.model(schedule), []

    def probe(x, t):
        seen.append(t)
        if len(seen) == 1 and probe.stop:
            raise _Probe
        return model(x, t)

    x = np.zeros((1, 2))
    probe.stop = True
    try:
        rd.sample_loop(probe, x, schedule, sampler=sampler, steps=steps, rng=np.random.default_rng(0), **options)
    except _Probe:
        pass
    t_first = seen[0]
    probe.stop, seen[:] = False, []
    rd.sample_loop(probe, x, schedule, sampler=sampler, steps=steps, rng=np.random.default_rng(0), **options)
    return float(t_first), len(seen)


def configurations(budgets, ddpm_steps):
    """(label, sampler, options, steps, stochastic, budget) of every run, DDPM last."""
    runs = [(label, s, o, steps_of(b), stoch, b) for label, s, o, steps_of, stoch in SAMPLERS for b in budgets]
    label, s, o, _, stoch = DDPM
    return runs + [(label, s, o, ddpm_steps, stoch, ddpm_steps)]


def on_the_mixture(budgets, ddpm_steps, n_ode, n_dist, steps_per_unit, seed):
    """(b): {(label, budget): {"nfe", "ode_error", "energy"}} and the mixture-vs-mixture floor."""
    mix, schedule = mixture(), rd.NoiseSchedule.linear(T=1000)
    process = DiscreteProcess(schedule)
    runs = configurations(budgets, ddpm_steps)
    extra = {"clip_sample": False}
    starts = {}
    for label, sampler, options, steps, stoch, budget in runs:
        opts = {**options, **(extra if sampler in TIMESTEP_SAMPLERS else {})}
        starts[(label, budget)] = first_time_and_nfe(schedule, sampler, steps, opts, mix)

    rng = np.random.default_rng(seed)
    sigma_top = float(process.sigma(float(schedule.T - 1)))
    firsts = sorted({float(process.sigma(t)) for t, _ in starts.values()} | {sigma_top}, reverse=True)
    x_top = mix.noised(1.0, sigma_top).sample(n_ode, rng)
    path = mix.probability_flow(x_top, firsts + [1e-6], steps_per_unit=steps_per_unit)
    on_path = dict(zip(firsts, path[:-1]))
    reference = path[-1]

    data = mix.sample(n_dist, rng)
    floor = energy_distance(mix.sample(n_dist, rng), data)
    results = {}
    for label, sampler, options, steps, stoch, budget in runs:
        opts = {**options, **(extra if sampler in TIMESTEP_SAMPLERS else {})}
        t_first, nfe = starts[(label, budget)]
        signal_scale, noise_std = float(process.signal_scale(t_first)), float(process.noise_std(t_first))
        sigma_first = float(process.sigma(t_first))
        row = {"nfe": nfe, "steps": steps, "t_first": t_first}
        if not stoch:
            x0 = rd.sample_loop(mix.model(schedule), on_path[sigma_first] * signal_scale, schedule, sampler=sampler,
                                steps=steps, **opts)
            row["ode_error"] = float(np.sqrt(np.mean(np.sum((x0 - reference) ** 2, axis=1))))
        x_T = mix.noised(signal_scale, noise_std).sample(n_dist, rng)
        x0 = rd.sample_loop(mix.model(schedule), x_T, schedule, sampler=sampler, steps=steps,
                            rng=np.random.default_rng(seed + 1), **opts)
        row["energy"] = energy_distance(x0, data)
        results[(label, budget)] = row
    return results, floor


def on_the_toy(data_name, budgets, ddpm_steps, train_steps, hidden, num_blocks, n, seed):
    """(a): {(label, budget): energy distance}, the fresh-data floor, the training seconds."""
    train = load_dataset(data_name, n=10000, seed=seed)
    held_out = load_dataset(data_name, n=n, seed=seed + 1).x
    fresh = load_dataset(data_name, n=n, seed=seed + 2).x
    model = rd.MLPDenoiser(dim=2, hidden=hidden, num_blocks=num_blocks, seed=seed)
    diffusion = rd.GaussianDiffusion(model, rd.NoiseSchedule.linear(T=1000))
    trainer = Trainer(diffusion, train, progress=False, batch_size=256, lr=2e-3, warmup_steps=min(100, train_steps),
                      ema_decay=0.995, seed=seed)
    t0 = time.process_time()
    trainer.train(train_steps)
    train_cpu = time.process_time() - t0
    results = {}
    with trainer.ema_weights():
        for label, sampler, options, steps, stoch, budget in configurations(budgets, ddpm_steps):
            try:
                x = diffusion.sample(n, sampler=sampler, steps=steps, seed=seed + 4, progress=False, **options)
                results[(label, budget)] = energy_distance(x, held_out)
            except (ValueError, FloatingPointError) as e:  # a sampler that ran away to inf / NaN
                print(f"{label} at {budget} NFE: diverged ({e})", file=sys.stderr)
                results[(label, budget)] = float("inf")
    return results, energy_distance(fresh, held_out), train_cpu


DIGITS_EXTRA = [("ddim (clipped eps)", "ddim", {"use_clipped_model_output": True}, lambda nfe: nfe, False)]


def on_the_digits(budgets, ddpm_steps, train_steps, hidden, num_blocks, per_class, judge_steps, seed):
    """(c): {(label, budget): image_metrics (+ "nfe", "seconds")}, the judge's held-out accuracy, training CPU s.

    The class-conditional MLP of RESULTS.md's digits section; samples conditional without guidance.
    """
    from refdiff.training.metrics import image_metrics, train_classifier

    images = load_dataset("digits", image_size=8)  # (1797, 1, 8, 8) in [-1, 1], labels 0..9
    points = images.x.reshape(len(images.x), -1)  # (1797, 64)
    data = Dataset(points, images.y, images.num_classes, "points", "digits-flat", images.class_names)
    model = rd.MLPDenoiser(dim=64, hidden=hidden, num_blocks=num_blocks, num_classes=10, seed=seed)
    diffusion = rd.GaussianDiffusion(model, rd.NoiseSchedule.linear(T=1000))
    trainer = Trainer(diffusion, data, progress=False, batch_size=128, lr=1e-3, warmup_steps=min(200, train_steps),
                      ema_decay=0.999, cond_drop_prob=0.1, seed=seed)
    t0 = time.process_time()
    trainer.train(train_steps)
    train_cpu = time.process_time() - t0
    judge = train_classifier(images, steps=judge_steps, seed=seed)
    labels = np.repeat(np.arange(10), per_class)  # (10 * per_class,)
    runs = [(label, s, o, steps_of(b), stoch, b) for label, s, o, steps_of, stoch in SAMPLERS + DIGITS_EXTRA
            for b in budgets] + configurations(budgets, ddpm_steps)[-1:]
    results = {}
    with trainer.ema_weights():
        for label, sampler, options, steps, stoch, budget in runs:
            t1 = time.perf_counter()
            try:
                x = diffusion.sample(len(labels), sampler=sampler, steps=steps, y=labels, seed=seed + 4,
                                     progress=False, **options)
            except (ValueError, FloatingPointError) as e:  # a sampler that ran away to inf / NaN
                print(f"digits, {label} at {budget} NFE: diverged ({e})", file=sys.stderr)
                results[(label, budget)] = {"frechet_distance": float("inf"), "accuracy": float("nan")}
                continue
            row = image_metrics(judge, x.reshape(len(labels), 1, 8, 8), labels, seed=seed)
            row["seconds"] = time.perf_counter() - t1
            row["nfe"] = first_time_and_nfe(diffusion.schedule, sampler, steps, options, mixture())[1]  # counted
            results[(label, budget)] = row
    return results, judge.heldout_accuracy, train_cpu


def markdown_table(title, budgets, ddpm_steps, cell, nfe_of, labels=None):
    """One row per sampler (labels: SAMPLERS' by default), one column per NFE budget, DDPM last; each cell
    `cell(label, budget)`, its NFE if it differs."""
    lines = [title, "", "| sampler | " + " | ".join(f"{b} NFE" for b in budgets) + f" | DDPM {ddpm_steps} steps |",
             "| --- |" + " --- |" * (len(budgets) + 1)]
    for label in labels or [label for label, *_ in SAMPLERS]:
        cells = []
        for b in budgets:
            text = cell(label, b)
            nfe = nfe_of(label, b)
            cells.append(text if nfe == b or text == "-" else f"{text} ({nfe})")
        lines.append(f"| {label} | " + " | ".join(cells) + " | |")
    lines.append(f"| {DDPM[0]} |" + " |" * len(budgets) + f" {cell(DDPM[0], ddpm_steps)} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny settings that run in seconds (a smoke test)")
    p.add_argument("--data", default="moons", help="2-D toy of part (a)")
    p.add_argument("--train-steps", type=int, default=3000)
    p.add_argument("--n", type=int, default=2000, help="samples per setting (energy distances)")
    p.add_argument("--digits", action="store_true", help="also run (c), the class-conditional digits MLP")
    p.add_argument("--skip-2d", action="store_true", help="skip (a) and (b)")
    p.add_argument("--digits-train-steps", type=int, default=8000)
    p.add_argument("--digits-per-class", type=int, default=100, help="samples of each digit per setting")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench_out")
    args = p.parse_args(argv)
    budgets, ddpm_steps = NFE_BUDGETS, 1000
    hidden, num_blocks, n_ode, steps_per_unit = 128, 3, 500, 100
    digits_hidden, digits_blocks, judge_steps = 256, 3, 400
    if args.quick:
        budgets, args.train_steps, args.n, hidden, num_blocks, n_ode, steps_per_unit = (5, 10), 30, 200, 32, 1, 50, 10
        args.digits_train_steps, args.digits_per_class, digits_hidden, digits_blocks, judge_steps = 30, 3, 32, 1, 40
    t0 = time.perf_counter()
    record = {"budgets": list(budgets), "rows": []}
    if not args.skip_2d:
        record.update(two_d(args, budgets, ddpm_steps, hidden, num_blocks, n_ode, steps_per_unit))
    if args.digits:
        results, judge_accuracy, train_cpu = on_the_digits(budgets, ddpm_steps, args.digits_train_steps, digits_hidden,
                                                           digits_blocks, args.digits_per_class, judge_steps, args.seed)
        n = 10 * args.digits_per_class
        baseline = next(r["frechet_distance_baseline"] for r in results.values() if "frechet_distance_baseline" in r)
        labels = [label for label, *_ in SAMPLERS + DIGITS_EXTRA]

        def nfe_of(label, b):
            return results[(label, b)].get("nfe", b)

        def fd_cell(label, b):
            return f"{results[(label, b)]['frechet_distance']:.2f}"

        def acc_cell(label, b):
            return f"{results[(label, b)]['accuracy']:.1%}"

        about = (f"MLPDenoiser hidden {digits_hidden} x {digits_blocks} blocks, class-conditional, "
                 f"{args.digits_train_steps} training steps ({train_cpu:.0f} s CPU); {n} samples "
                 f"({args.digits_per_class} per digit, no guidance); judge held-out accuracy {judge_accuracy:.1%}")
        print(markdown_table(f"(c) digits: Frechet distance on the judge's features to its held-out digits "
                             f"(real digits at n = {n}: {baseline:.2f}); {about}", budgets, ddpm_steps, fd_cell,
                             nfe_of, labels))
        print()
        print(markdown_table("(c) digits: fraction classified as the requested digit", budgets, ddpm_steps, acc_cell,
                             nfe_of, labels))
        record.update(digits_train_cpu_seconds=train_cpu, digits_judge_accuracy=judge_accuracy,
                      digits_frechet_baseline=baseline, digits_train_steps=args.digits_train_steps,
                      digits_rows=[{"sampler": label, "budget": b, **row} for (label, b), row in results.items()])
    print(f"\n(in brackets: the NFE where it differs from the budget)  {time.perf_counter() - t0:.0f} s wall")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "samplers_quality.json"), "w") as f:
        json.dump(record, f, indent=1)
    return record


def two_d(args, budgets, ddpm_steps, hidden, num_blocks, n_ode, steps_per_unit):
    """(a) and (b): print their tables; the record's fields."""
    mix_results, mix_floor = on_the_mixture(budgets, ddpm_steps, n_ode, args.n, steps_per_unit, args.seed)
    toy_results, toy_floor, train_cpu = on_the_toy(args.data, budgets, ddpm_steps, args.train_steps, hidden,
                                                    num_blocks, args.n, args.seed)
    nfe_of = lambda label, b: mix_results[(label, b)]["nfe"]  # noqa: E731

    def toy_cell(label, b):
        return f"{toy_results[(label, b)]:.4f}"

    def ode_cell(label, b):
        row = mix_results[(label, b)]
        return f"{row['ode_error']:.2e}" if "ode_error" in row else "-"

    def energy_cell(label, b):
        return f"{mix_results[(label, b)]['energy']:.4f}"

    print(markdown_table(f"(a) {args.data}: energy distance to {args.n} held-out points (fresh data: "
                         f"{toy_floor:.4f}); MLP hidden {hidden} x {num_blocks} blocks, {args.train_steps} "
                         f"training steps ({train_cpu:.0f} s CPU)", budgets, ddpm_steps, toy_cell, nfe_of))
    print()
    print(markdown_table("(b) Gaussian mixture, exact denoiser: RMS error at sigma = 0 against the exact "
                         f"probability-flow solution ({n_ode} starts; '-': stochastic)", budgets, ddpm_steps,
                         ode_cell, nfe_of))
    print()
    print(markdown_table(f"(b) Gaussian mixture, exact denoiser: energy distance of {args.n} samples to "
                         f"{args.n} mixture samples (mixture vs mixture: {mix_floor:.4f})", budgets, ddpm_steps,
                         energy_cell, nfe_of))
    print()
    return {"data": args.data, "toy_floor": toy_floor, "mixture_floor": mix_floor, "train_cpu_seconds": train_cpu,
            "rows": [{"sampler": label, "budget": b, "toy_energy": toy_results[(label, b)], **mix_results[(label, b)]}
                     for (label, b) in mix_results]}


if __name__ == "__main__":
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        main()
    else:
        with threadpool_limits(limits=int(os.environ.get("REFDIFF_BLAS_THREADS", "1"))):
            main()
