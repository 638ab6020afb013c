"""Few-step generation side by side: quality against the number of steps on a 2-D toy (issue 12's figure).

One toy, one network size, one quality measure (energy distance to held-out data,
refdiff.training.metrics.energy_distance; fresh data gives the floor), for every route from 1000
steps to one that refdiff has:

    DDPM          ancestral sampling of the diffusion teacher (DDPM Algorithm 2), 1000 steps
    DDIM          the same teacher, DDIM (eta = 0, trailing spacing) at 1, 2, 4, 8 and 1000 steps
    DPM-Solver++  the same teacher, dpmpp_2m (Karras sigmas) at 1, 2, 4, 8 steps
    1-RF          flow matching (Lipman et al. 2023), flow_euler at 1, 2, 4, 8 and 1000 steps
    2-RF          reflow of 1-RF (Liu et al. 2022), flow_euler
    PD            progressive distillation of the teacher's DDIM-8 (Salimans & Ho 2022): students at 4, 2, 1
    CD            consistency distillation of the teacher (Song et al. 2023 Algorithm 2, Heun, N = 18),
                  consistency sampling (Algorithm 1) at 1, 2, 4, 8 steps

The teacher predicts v (progressive distillation's students do, and start from its weights).

    python examples/few_step.py                 # gaussians8; ~10-20 min on a shared 2-core CPU
    python examples/few_step.py --quick         # seconds: a smoke test

Writes OUT/few_step.png (quality against steps, one line per method; needs matplotlib) and
OUT/few_step.json, and prints the table recorded in benchmarks/RESULTS.md.
"""
import os
import time

import numpy as np
from common import parser, plt, run, save_json, train

import refdiff as rd
from refdiff.training import reflow as rf
from refdiff.training.data import load_dataset
from refdiff.training.distill import consistency_distillation, progressive_distillation
from refdiff.training.metrics import energy_distance

STEPS = [1, 2, 4, 8, 1000]


def main(argv=None):
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--data", default="gaussians8", help="2-D toy")
    p.add_argument("--train-steps", type=int, default=2000, help="steps of the teacher and of 1-RF")
    p.add_argument("--distill-steps", type=int, default=1500, help="steps of 2-RF, of CD, and of each PD stage / 3")
    p.add_argument("--n", type=int, default=1000, help="samples per quality measurement")
    args = p.parse_args(argv)
    hidden, blocks, pairs, steps = 64, 2, 5000, list(STEPS)
    if args.quick:
        args.train_steps, args.distill_steps, args.n, hidden, pairs, steps = 40, 30, 100, 16, 200, [1, 2, 8]
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    data = load_dataset(args.data, n=20000, seed=args.seed)
    held_out = load_dataset(args.data, n=args.n, seed=args.seed + 1).x
    baseline = energy_distance(load_dataset(args.data, n=args.n, seed=args.seed + 2).x, held_out)
    options = dict(batch_size=256, warmup_steps=100, ema_decay=0.995, seed=args.seed, progress=False)
    seconds = {}

    def net():
        return rd.MLPDenoiser(dim=2, hidden=hidden, num_blocks=blocks, seed=args.seed, backend=args.backend)

    def quality(model, k, **kw):
        return energy_distance(model.sample(args.n, steps=k, seed=args.seed + 5, progress=False, **kw), held_out)

    def timed(name, fn):
        start = time.perf_counter()
        out = fn()
        seconds[name] = round(time.perf_counter() - start, 1)
        print(f"  trained {name} in {seconds[name]:.0f} s", flush=True)
        return out

    # the diffusion teacher (v-prediction) and flow matching, the same network size
    teacher = rd.GaussianDiffusion(net(), rd.NoiseSchedule.linear(), prediction_type="v_prediction")
    trainer = timed("teacher", lambda: train(teacher, data, args.train_steps, lr=2e-3, **options))
    trainer.ema.copy_to(trainer.params)
    flow1 = rd.FlowMatching(net())
    trainer = timed("1-RF", lambda: train(flow1, data, args.train_steps, lr=2e-3, **options))
    trainer.ema.copy_to(trainer.params)
    flow_pairs = rf.reflow_pairs(flow1, pairs, steps=100, seed=args.seed + 3)
    flow2, _ = timed("2-RF", lambda: rf.reflow(flow1, flow_pairs, args.distill_steps, lr=1e-3, **options))
    pd_start = 8
    pd_options = dict(options, ema_decay=0.99)
    students = timed("PD", lambda: progressive_distillation(teacher, data, pd_start, 1, max(args.distill_steps // 3, 1),
                                                            lr=5e-4, **pd_options))
    cd, _ = timed("CD", lambda: consistency_distillation(teacher, data, args.distill_steps, lr=5e-4, mu=0.95,
                                                         **dict(options, ema_decay=0.99)))

    table = {}
    table["DDPM"] = {1000: quality(teacher, 1000, sampler="ddpm")} if 1000 in steps else {}
    table["DDIM"] = {k: quality(teacher, k, sampler="ddim", spacing="trailing") for k in steps}
    table["DPM-Solver++ (2M)"] = {k: quality(teacher, k, sampler="dpmpp_2m", sigmas="karras") for k in steps if k < 1000}
    table["1-RF (flow matching)"] = {k: quality(flow1, k) for k in steps}
    table["2-RF (reflow)"] = {k: quality(flow2, k) for k in steps if k < 1000}
    table[f"PD (from DDIM-{pd_start})"] = {s.student_steps: quality(s, s.student_steps) for s in students}
    table["CD (Heun, N = 18)"] = {k: quality(cd, k) for k in steps if k < 1000}
    total = time.perf_counter() - t0

    print(f"few-step generation on {args.data!r}: teacher and 1-RF {args.train_steps} steps, 2-RF and CD "
          f"{args.distill_steps}, PD {max(args.distill_steps // 3, 1)} per stage; MLP hidden {hidden} x {blocks} blocks")
    print(f"energy distance to {args.n} held-out points (fresh data scores {baseline:.4f}); lower is better")
    print("| method | " + " | ".join(f"{k} steps" for k in steps) + " |")
    print("| --- |" + " --- |" * len(steps))
    for name, row in table.items():
        print(f"| {name} | " + " | ".join(f"{row[k]:.4f}" if k in row else "" for k in steps) + " |")
    print(f"training seconds {seconds}; {total:.0f} s in all")
    save_json(os.path.join(args.out, "few_step.json"),
              {"data": args.data, "train_steps": args.train_steps, "distill_steps": args.distill_steps, "n": args.n,
               "baseline": baseline, "energy_distance": {m: {str(k): v for k, v in r.items()} for m, r in table.items()},
               "training_seconds": seconds, "seconds": total})

    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(7, 4.5))
    for name, row in table.items():
        ks = sorted(row)
        ax.plot(ks, [row[k] for k in ks], "o-" if len(ks) > 1 else "s", label=name)
    ax.axhline(baseline, color="grey", ls="--", label="fresh data")
    ax.set(xscale="log", yscale="log", xlabel="sampling steps", ylabel="energy distance to held-out data",
           title=f"few-step generation on {args.data}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    picture = os.path.join(args.out, "few_step.png")
    fig.savefig(picture, dpi=100)
    print(f"wrote {picture}")
    return table


if __name__ == "__main__":
    run(main)
