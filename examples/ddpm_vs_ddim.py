"""DDPM vs DDIM at 10, 20, 50, 100 and 1000 steps: sample quality against the number of steps.

The DDIM paper's quality-vs-steps table (Song et al. 2021, Table 1) on our data: one trained
model, sampled by strided DDPM ancestral sampling and by deterministic DDIM (eta = 0), plain and
with the eps of the clipped x0 (diffusers' use_clipped_model_output), with the same number of
model evaluations, each scored against held-out data:
  2-D toys: energy distance (refdiff.training.metrics), next to the data-vs-data baseline;
  images:   Frechet distance on the features of a small classifier (an FID in miniature).

    python examples/ddpm_vs_ddim.py                         # trains an MLP on moons first (~3 min)
    python examples/ddpm_vs_ddim.py --run runs/digits_mlp   # a trained refdiff run (e.g. from
                                                            # examples/guidance_digits.py --run)
    python examples/ddpm_vs_ddim.py --quick                 # seconds: a smoke test

Writes OUT/ddpm_vs_ddim.png (metric vs steps; needs matplotlib) and OUT/ddpm_vs_ddim.json.
"""
import os
import time

import numpy as np

from common import parser, plt, run, save_json, train

import refdiff as rd
from refdiff.training.data import load_dataset
from refdiff.training.metrics import compare_point_clouds, image_metrics, train_classifier
from refdiff.training.trainer import load_diffusion


def main(argv=None):
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--run", default=None, help="a refdiff run directory to evaluate (default: train moons here)")
    p.add_argument("--data", default="moons", help="2-D toy to train on when no --run is given")
    p.add_argument("--steps", default="10,20,50,100,1000", help="sampling step counts")
    p.add_argument("--train-steps", type=int, default=4000)
    p.add_argument("--n", type=int, default=1000, help="samples per setting")
    p.add_argument("--variants", default="ddpm,ddim,ddim-clipped-eps", help="which samplers to compare")
    args = p.parse_args(argv)
    step_counts = [int(s) for s in args.steps.split(",")]
    if args.quick:
        step_counts, args.n, args.train_steps = [5, 10], 100, 40
    os.makedirs(args.out, exist_ok=True)

    if args.run:
        diffusion, meta = load_diffusion(args.run, backend=args.backend)
        info = meta.get("data") or {}
        data = load_dataset(info["spec"], image_size=info.get("image_size"))
        name = info["spec"]
    else:
        data = load_dataset(args.data, n=20000, seed=args.seed)
        model = rd.MLPDenoiser(dim=2, hidden=32 if args.quick else 128, num_blocks=1 if args.quick else 3,
                               backend=args.backend, seed=args.seed)
        diffusion = rd.GaussianDiffusion(model, rd.NoiseSchedule.linear(T=1000))
        trainer = train(diffusion, data, args.train_steps, batch_size=256, lr=2e-3, warmup_steps=100, ema_decay=0.995,
                        seed=args.seed, progress=not args.quick)
        trainer.ema.copy_to(trainer.params)  # sample with the EMA weights from here on
        name = args.data

    score, baseline, metric_name = _scorer(data, diffusion, args)
    y = None if diffusion.num_classes is None else np.arange(args.n) % diffusion.num_classes
    results = []
    variants = {"ddpm": ("ddpm", {}), "ddim": ("ddim", {}),
                "ddim-clipped-eps": ("ddim", {"use_clipped_model_output": True})}
    chosen = args.variants.split(",")
    unknown = set(chosen) - set(variants)
    if unknown:
        p.error(f"--variants: unknown {sorted(unknown)}; choose from {sorted(variants)}")
    variants = {k: v for k, v in variants.items() if k in chosen}
    for variant, (sampler, options) in variants.items():
        for steps in step_counts:
            t0 = time.perf_counter()
            try:
                x = diffusion.sample(args.n, sampler=sampler, steps=min(steps, diffusion.T), y=y,
                                     seed=args.seed + 1, progress=False, **options)
                value = score(x, y)
            except (ValueError, FloatingPointError) as e:  # the sampler ran away to inf / NaN
                print(f"{variant:16s} {steps:5d} steps: diverged ({e})")
                value = float("inf")
            results.append({"sampler": variant, "steps": steps, metric_name: value, "seconds": time.perf_counter() - t0})
            if np.isfinite(value):
                print(f"{variant:16s} {steps:5d} steps: {metric_name} {value:.4f}   ({results[-1]['seconds']:.1f} s)")
    print(f"baseline (real data vs held-out data): {metric_name} {baseline:.4f}")
    ref = {r["steps"]: r[metric_name] for r in results if r["sampler"] == "ddpm"}
    ddim = {r["steps"]: r[metric_name] for r in results if r["sampler"] == "ddim"}
    ddim_c = {r["steps"]: r[metric_name] for r in results if r["sampler"] == "ddim-clipped-eps"}
    summary = {}
    for key, values in (("ddim50_over_ddpm1000", ddim), ("ddim_clipped_eps50_over_ddpm1000", ddim_c)):
        if 1000 in ref and 50 in values:
            summary[key] = values[50] / ref[1000]
            print(f"{key}: {summary[key]:.2f}")

    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(5.5, 4))
    for sampler, values in (("DDPM (strided ancestral)", ref), ("DDIM (eta = 0)", ddim),
                            ("DDIM, eps of clipped x0", ddim_c)):
        finite = {k: v for k, v in values.items() if np.isfinite(v)}  # diverged runs are left out
        ax.plot(list(finite), list(finite.values()), "o-", label=sampler)
    ax.axhline(baseline, color="0.5", ls="--", label="real data (baseline)")
    ax.set(xscale="log", xlabel="sampling steps (model evaluations)", ylabel=metric_name,
           title=f"{name}: quality vs steps")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = os.path.join(args.out, "ddpm_vs_ddim.png")
    fig.savefig(path, dpi=120)
    save_json(os.path.join(args.out, "ddpm_vs_ddim.json"),
              {"data": name, "n": args.n, "metric": metric_name, "baseline": baseline, "results": results, **summary})
    print(f"wrote {path}")
    return results, summary


def _scorer(data, diffusion, args):
    """(score(samples, labels) -> float, baseline, metric name) for the kind of data."""
    if data.kind == "points":
        reference = load_dataset(data.name, n=2 * args.n, seed=args.seed + 7).x
        # two disjoint draws of n points of the reference: what a perfect sampler would score
        base = compare_point_clouds(reference[: args.n], reference, seed=args.seed)["energy_distance_baseline"]

        def score(x, y):
            return compare_point_clouds(x, reference, seed=args.seed)["energy_distance"]

        return score, base, "energy_distance"
    classifier = train_classifier(data, steps=60 if args.quick else 400, seed=args.seed)

    def score(x, y):
        return image_metrics(classifier, x.reshape((len(x),) + data.shape), y, seed=args.seed)["frechet_distance"]

    base = image_metrics(classifier, classifier.train_set.x[: args.n], seed=args.seed)["frechet_distance_baseline"]
    return score, base, "frechet_distance"


if __name__ == "__main__":
    run(main)
