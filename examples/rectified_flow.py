"""Rectified flow with reflow on a 2-D toy: straightness and few-step quality of 1-RF and 2-RF.

Liu et al. 2022 (Flow Straight and Fast) on our data: train a flow by flow matching (1-rectified
flow, refdiff.FlowMatching), draw (noise, sample) pairs from its ODE, retrain on them (2-rectified
flow, refdiff.training.reflow), and measure for both
  S               the straightness of Definition 3.5 along 100-step Euler trajectories (0: straight)
  transport cost  E ||x_0 - eps||^2 of the flow's coupling (Theorem 3.5: reflow does not raise it)
  quality         energy distance to held-out data of flow_euler samples at 1, 2, 4, 8 and 100 steps,
                  next to the data-vs-data baseline

    python examples/rectified_flow.py                 # gaussians8, ~1-2 min on a laptop CPU
    python examples/rectified_flow.py --data moons
    python examples/rectified_flow.py --quick         # seconds: a smoke test

Writes OUT/rectified_flow.png (quality vs steps, and the trajectories of both flows; needs
matplotlib) and OUT/rectified_flow.json. Note: diffusers' flow grid of N steps ends at
t = 1/1000 before t = 0, so "2 steps" is one full step plus a tiny one.
"""
import os
import time

from common import parser, plt, run, save_json, train

import refdiff as rd
from refdiff.training import reflow as rf
from refdiff.training.data import load_dataset
from refdiff.training.metrics import energy_distance


def evaluate(flow, noise, held_out, step_counts, seed):
    s, _ = rf.straightness(flow, noise, steps=100)
    quality = {k: energy_distance(flow.sample(len(held_out), steps=k, seed=seed, progress=False), held_out)
               for k in step_counts}
    return s, quality


def main(argv=None):
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--data", default="gaussians8", help="2-D toy")
    p.add_argument("--train-steps", type=int, default=3000, help="steps of 1-RF and of 2-RF each")
    p.add_argument("--pairs", type=int, default=10000, help="reflow pairs drawn from 1-RF")
    p.add_argument("--n", type=int, default=2000, help="samples per quality measurement")
    args = p.parse_args(argv)
    step_counts = [1, 2, 4, 8, 100]
    hidden = 128
    if args.quick:
        args.train_steps, args.pairs, args.n, hidden, step_counts = 60, 500, 200, 16, [1, 4]
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    data = load_dataset(args.data, n=20000, seed=args.seed)
    held_out = load_dataset(args.data, n=args.n, seed=args.seed + 1).x
    baseline = energy_distance(load_dataset(args.data, n=args.n, seed=args.seed + 2).x, held_out)
    options = dict(batch_size=256, warmup_steps=100, ema_decay=0.995, seed=args.seed, progress=False)

    flow1 = rd.FlowMatching(rd.MLPDenoiser(dim=2, hidden=hidden, num_blocks=3, seed=args.seed, backend=args.backend))
    trainer = train(flow1, data, args.train_steps, lr=2e-3, **options)
    trainer.ema.copy_to(trainer.params)
    pairs = rf.reflow_pairs(flow1, args.pairs, steps=100, seed=args.seed + 3)
    flow2, _ = rf.reflow(flow1, pairs, args.train_steps, lr=1e-3, **options)

    noise = rf.draw_noise(flow1, args.n, seed=args.seed + 4)
    rows = {}
    for name, flow in (("1-RF", flow1), ("2-RF", flow2)):
        s, quality = evaluate(flow, noise, held_out, step_counts, args.seed + 5)
        cost = rf.transport_cost(rf.reflow_pairs(flow, args.pairs, steps=100, seed=args.seed + 3))
        rows[name] = {"straightness": s, "transport_cost": cost, "energy_distance": quality}
    seconds = time.perf_counter() - t0

    print(f"rectified flow on {args.data!r}: {args.train_steps} training steps each, {args.pairs} reflow pairs")
    print(f"energy distance to held-out data ({args.n} points; fresh data scores {baseline:.4f})")
    print("flow  | straightness S | transport cost | " + " | ".join(f"{k} steps" for k in step_counts))
    for name, r in rows.items():
        print(f"{name:5} | {r['straightness']:14.4f} | {r['transport_cost']:14.4f} | "
              + " | ".join(f"{r['energy_distance'][k]:.4f}" for k in step_counts))
    print(f"({seconds:.0f} s in all)")
    save_json(os.path.join(args.out, "rectified_flow.json"),
              {"data": args.data, "train_steps": args.train_steps, "pairs": args.pairs, "n": args.n,
               "baseline": baseline, "flows": rows, "seconds": seconds})

    pyplot = plt()
    fig, (ax_q, ax_1, ax_2) = pyplot.subplots(1, 3, figsize=(13, 4))
    for name, r in rows.items():
        ax_q.plot(step_counts, [r["energy_distance"][k] for k in step_counts], "o-", label=name)
    ax_q.axhline(baseline, color="grey", ls="--", label="fresh data")
    ax_q.set(xscale="log", yscale="log", xlabel="flow_euler steps", ylabel="energy distance", title="quality vs steps")
    ax_q.legend()
    for ax, (name, flow) in zip((ax_1, ax_2), (("1-RF", flow1), ("2-RF", flow2))):
        _, path = flow.sample(64, steps=20, seed=args.seed + 6, progress=False, return_trajectory=True)
        ax.scatter(*held_out[:1000].T, s=2, c="lightgrey")
        ax.plot(path[:, :, 0], path[:, :, 1], lw=0.6, alpha=0.7)
        ax.set(title=f"{name} trajectories (S = {rows[name]['straightness']:.3f})", aspect="equal")
    fig.tight_layout()
    picture = os.path.join(args.out, "rectified_flow.png")
    fig.savefig(picture, dpi=100)
    print(f"wrote {picture}")
    return rows


if __name__ == "__main__":
    run(main)
