"""Few-step generation side by side: quality against the number of steps on a 2-D toy or the digits (issue 12's figure).

One data set, one network size, one quality measure, for every route from 1000 steps to one that
refdiff has. The measure: on a 2-D toy the energy distance to held-out data
(refdiff.training.metrics.energy_distance; fresh data gives the floor); on the digits (--data digits:
8x8 digits flattened to 64-d vectors, the MLP denoiser as in the other digits figures) the Frechet
distance on the features of a small classifier trained on the digits (metrics.image_metrics, an FID
in miniature) against its held-out digits, which no model trains on; real training digits give the floor.

    DDPM          ancestral sampling of the diffusion teacher (DDPM Algorithm 2), 1000 steps
    DDIM          the same teacher, DDIM (eta = 0, trailing spacing) at 1, 2, 4, 8 and 1000 steps
                  (on the digits with eps recomputed from the clipped x_0: the raw eps runs away there)
    DPM-Solver++  the same teacher, dpmpp_2m (Karras sigmas) at 1, 2, 4, 8 steps
    1-RF          flow matching (Lipman et al. 2023), flow_euler at 1, 2, 4, 8 and 1000 steps
    2-RF          reflow of 1-RF (Liu et al. 2022), flow_euler
    PD            progressive distillation of the teacher's DDIM-8 (Salimans & Ho 2022): students at 4, 2, 1;
                  --pd-from 64 starts from DDIM-64 (64 -> 32 -> 16 -> 8 -> 4 -> 2 -> 1, six stages)
    CD            consistency distillation of the teacher (Song et al. 2023 Algorithm 2, Heun, N = 18),
                  consistency sampling (Algorithm 1) at 1, 2, 4, 8 steps

The teacher predicts v (progressive distillation's students do, and start from its weights).

    python examples/few_step.py                 # gaussians8; ~10-20 min on a shared 2-core CPU
    python examples/few_step.py --quick         # seconds: a smoke test
    python examples/few_step.py --data digits --pd-from 64 --train-steps 3000 --distill-steps 2000 \
        --pd-stage-steps 600                    # the digits figure: ~6 min on a shared 2-core CPU

Writes OUT/few_step.png (quality against steps, one line per method; needs matplotlib) and
OUT/few_step.json, and prints the table recorded in benchmarks/RESULTS.md.
"""
import os
import time

import numpy as np
from common import flat, parser, plt, run, save_json, train

import refdiff as rd
from refdiff.training import reflow as rf
from refdiff.training.data import load_dataset
from refdiff.training.distill import consistency_distillation, progressive_distillation
from refdiff.training.metrics import energy_distance, image_metrics, train_classifier

STEPS = [1, 2, 4, 8, 1000]


def main(argv=None):
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--data", default="gaussians8", help="a 2-D toy, or digits (8x8, flattened to 64-d)")
    p.add_argument("--train-steps", type=int, default=2000, help="steps of the teacher and of 1-RF")
    p.add_argument("--distill-steps", type=int, default=1500, help="steps of 2-RF and of CD")
    p.add_argument("--pd-from", type=int, default=8, help="teacher DDIM steps progressive distillation starts from "
                                                          "(a power of two; halved down to 1)")
    p.add_argument("--pd-stage-steps", type=int, default=None, help="training steps per PD stage "
                                                                    "(default distill-steps / 3)")
    p.add_argument("--n", type=int, default=1000, help="samples per quality measurement")
    p.add_argument("--hidden", type=int, default=None, help="MLP width (default 64 on a toy, 256 on the digits)")
    p.add_argument("--pairs", type=int, default=5000, help="reflow pairs drawn from 1-RF")
    args = p.parse_args(argv)
    images = args.data == "digits"
    hidden, blocks, pairs, steps = args.hidden or (256 if images else 64), 2, args.pairs, list(STEPS)
    if args.quick:
        args.train_steps, args.distill_steps, args.n, hidden, pairs, steps = 40, 30, 100, 16, 200, [1, 2, 8]
    pd_stage = max(args.pd_stage_steps or args.distill_steps // 3, 1)
    if args.pd_from < 2 or args.pd_from & (args.pd_from - 1):
        p.error(f"--pd-from must be a power of two >= 2, got {args.pd_from}")
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    if images:
        # the judge trains on 80% of the digits; its other 20% are the reference, never trained on
        classifier = train_classifier(load_dataset("digits", image_size=8), steps=60 if args.quick else 400,
                                      seed=args.seed)
        data, dim = flat(classifier.train_set), 64
        if args.n > len(data):
            p.error(f"--n must be at most {len(data)} (the training digits of the baseline), got {args.n}")
        baseline = image_metrics(classifier, classifier.train_set.x[: args.n], seed=args.seed)["frechet_distance_baseline"]
        metric = "frechet_distance"
        print(f"judge: held-out accuracy {classifier.heldout_accuracy:.3f} on {len(classifier.heldout)} digits", flush=True)

        def score(x):
            return image_metrics(classifier, x.reshape((len(x),) + classifier.train_set.shape), seed=args.seed)[metric]
        lr, options = 1e-3, dict(batch_size=128, warmup_steps=200, ema_decay=0.999, seed=args.seed, progress=False)
    else:
        data, dim = load_dataset(args.data, n=20000, seed=args.seed), 2
        held_out = load_dataset(args.data, n=args.n, seed=args.seed + 1).x
        baseline = energy_distance(load_dataset(args.data, n=args.n, seed=args.seed + 2).x, held_out)
        metric = "energy_distance"

        def score(x):
            return energy_distance(x, held_out)
        lr, options = 2e-3, dict(batch_size=256, warmup_steps=100, ema_decay=0.995, seed=args.seed, progress=False)
    seconds = {}

    def net():
        return rd.MLPDenoiser(dim=dim, hidden=hidden, num_blocks=blocks, seed=args.seed, backend=args.backend)

    def quality(model, k, **kw):
        try:
            return score(model.sample(args.n, steps=k, seed=args.seed + 5, progress=False, **kw))
        except FloatingPointError as e:  # a sampler that runs away is a result: recorded as NaN ("diverged")
            print(f"  {type(model).__name__} at {k} steps {kw}: {e}", flush=True)
            return float("nan")

    def timed(name, fn):
        start = time.perf_counter()
        out = fn()
        seconds[name] = round(time.perf_counter() - start, 1)
        print(f"  trained {name} in {seconds[name]:.0f} s", flush=True)
        return out

    # the diffusion teacher (v-prediction) and flow matching, the same network size
    teacher = rd.GaussianDiffusion(net(), rd.NoiseSchedule.linear(), prediction_type="v_prediction")
    trainer = timed("teacher", lambda: train(teacher, data, args.train_steps, lr=lr, **options))
    trainer.ema.copy_to(trainer.params)
    flow1 = rd.FlowMatching(net())
    trainer = timed("1-RF", lambda: train(flow1, data, args.train_steps, lr=lr, **options))
    trainer.ema.copy_to(trainer.params)
    flow_pairs = rf.reflow_pairs(flow1, pairs, steps=100, seed=args.seed + 3)
    flow2, _ = timed("2-RF", lambda: rf.reflow(flow1, flow_pairs, args.distill_steps, lr=1e-3, **options))
    pd_start = args.pd_from
    pd_options = dict(options, ema_decay=0.99)
    students = timed("PD", lambda: progressive_distillation(teacher, data, pd_start, 1, pd_stage,
                                                            lr=5e-4, **pd_options))
    cd, _ = timed("CD", lambda: consistency_distillation(teacher, data, args.distill_steps, lr=5e-4, mu=0.95,
                                                         **dict(options, ema_decay=0.99)))

    table = {}
    table["DDPM"] = {1000: quality(teacher, 1000, sampler="ddpm")} if 1000 in steps else {}
    # on the digits DDIM's raw eps runs away at small t (x_0 clipped, eps not): recompute eps from the clipped
    # x_0 (diffusers' use_clipped_model_output), as the other digits figures' "ddim-clipped-eps"
    ddim = dict(sampler="ddim", spacing="trailing", **(dict(use_clipped_model_output=True) if images else {}))
    table["DDIM"] = {k: quality(teacher, k, **ddim) for k in steps}
    table["DPM-Solver++ (2M)"] = {k: quality(teacher, k, sampler="dpmpp_2m", sigmas="karras") for k in steps if k < 1000}
    table["1-RF (flow matching)"] = {k: quality(flow1, k) for k in steps}
    table["2-RF (reflow)"] = {k: quality(flow2, k) for k in steps if k < 1000}
    table[f"PD (from DDIM-{pd_start})"] = {s.student_steps: quality(s, s.student_steps) for s in students
                                           if s.student_steps in steps}
    pd_teacher = quality(teacher, pd_start, **ddim)  # what the first PD stage distils: the teacher's DDIM-pd_start
    table["CD (Heun, N = 18)"] = {k: quality(cd, k) for k in steps if k < 1000}
    total = time.perf_counter() - t0

    print(f"few-step generation on {args.data!r}: teacher and 1-RF {args.train_steps} steps, 2-RF and CD "
          f"{args.distill_steps}, PD {pd_stage} per stage from DDIM-{pd_start}; MLP hidden {hidden} x {blocks} blocks")
    if images:
        print(f"Frechet distance of {args.n} samples to the judge's {len(classifier.heldout)} held-out digits on its "
              f"features (real training digits score {baseline:.2f}); lower is better")
    else:
        print(f"energy distance to {args.n} held-out points (fresh data scores {baseline:.4f}); lower is better")
    print("| method | " + " | ".join(f"{k} steps" for k in steps) + " |")
    print("| --- |" + " --- |" * len(steps))
    for name, row in table.items():
        print(f"| {name} | " + " | ".join(_cell(row, k) for k in steps) + " |")
    print(f"PD's first teacher, the teacher's DDIM-{pd_start}, scores {pd_teacher:.4f}")
    print(f"training seconds {seconds}; {total:.0f} s in all")
    save_json(os.path.join(args.out, "few_step.json"),
              {"data": args.data, "train_steps": args.train_steps, "distill_steps": args.distill_steps, "n": args.n,
               "pd_from": pd_start, "pd_teacher_ddim": pd_teacher, "pd_stage_steps": pd_stage, "hidden": hidden,
               "baseline": baseline, metric: {m: {str(k): v for k, v in r.items()} for m, r in table.items()},
               "training_seconds": seconds, "seconds": total})

    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(7, 4.5))
    for name, row in table.items():
        ks = sorted(row)
        ax.plot(ks, [row[k] for k in ks], "o-" if len(ks) > 1 else "s", label=name)
    ax.axhline(baseline, color="grey", ls="--", label="real training digits" if images else "fresh data")
    ylabel = "Frechet distance (classifier features)" if images else "energy distance to held-out data"
    ax.set(xscale="log", yscale="log", xlabel="sampling steps", ylabel=ylabel,
           title=f"few-step generation on {args.data}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    picture = os.path.join(args.out, "few_step.png")
    fig.savefig(picture, dpi=100)
    print(f"wrote {picture}")
    return table


def _cell(row, k):
    return "" if k not in row else "diverged" if np.isnan(row[k]) else f"{row[k]:.4f}"


if __name__ == "__main__":
    run(main)
