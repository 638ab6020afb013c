"""A 2-D toy trained and sampled, with the learned score field drawn as arrows.

The MLP denoiser learns eps_theta(x_t, t); the score of the noised data follows from it:

    grad_x log p_t(x) ~= -eps_theta(x, t) / sqrt(1 - abar_t)      (Song et al. 2021; Dhariwal & Nichol 2021 sec. 4.2)

The arrows show that field at a few timesteps: at large t it points to the data's centre, at small
t onto the data's shape. The samples (DDPM ancestral sampling, all T steps) are compared with the
data by the energy distance and the sliced Wasserstein distance, next to the same distances
between two independent draws of the data (the baseline a perfect model would reach).

    python examples/toy_2d.py --data moons            # ~2-5 min on a CPU
    python examples/toy_2d.py --data checkerboard --steps 8000
    python examples/toy_2d.py --quick                 # seconds: a smoke test

Writes OUT/toy_{data}.png (samples and score fields; needs matplotlib) and OUT/toy_{data}.json.
"""
import os

import numpy as np

from common import parser, plt, run, save_json, train

import refdiff as rd
from refdiff.nn.autograd import no_grad
from refdiff.training.data import load_dataset
from refdiff.training.metrics import compare_point_clouds
from refdiff.gaussian.parameterization import score_from_eps


def main(argv=None):
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--data", default="moons", choices=("moons", "swissroll", "gaussians8", "checkerboard"))
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--n", type=int, default=2000, help="samples for the metrics")
    p.add_argument("--T", type=int, default=1000)
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.n = 50, 200
    os.makedirs(args.out, exist_ok=True)

    data = load_dataset(args.data, n=20000, seed=args.seed)
    model = rd.MLPDenoiser(dim=2, hidden=32 if args.quick else 128, num_blocks=1 if args.quick else 3,
                           backend=args.backend, seed=args.seed)
    diffusion = rd.GaussianDiffusion(model, rd.NoiseSchedule.linear(T=args.T))
    trainer = train(diffusion, data, args.steps, batch_size=256, lr=2e-3, warmup_steps=100, ema_decay=0.995,
                    seed=args.seed, progress=not args.quick)
    with trainer.ema_weights():
        samples = diffusion.sample(args.n, sampler="ddpm", seed=args.seed + 1, progress=not args.quick)
        fields = [(t, *_score_field(diffusion, t)) for t in (args.T // 2, args.T // 10, args.T // 50)]
    reference = load_dataset(args.data, n=2 * args.n, seed=args.seed + 7).x  # data never trained on
    metrics = compare_point_clouds(samples, reference, seed=args.seed)
    print(f"{args.data}: {args.steps} steps in {trainer.seconds:.0f} s; energy distance {metrics['energy_distance']:.4f} "
          f"(data vs data {metrics['energy_distance_baseline']:.4f}, ratio {metrics['energy_distance_ratio']:.2f}); "
          f"sliced Wasserstein {metrics['sliced_wasserstein']:.4f} (baseline {metrics['sliced_wasserstein_baseline']:.4f}, "
          f"ratio {metrics['sliced_wasserstein_ratio']:.2f})")

    pyplot = plt()
    fig, axes = pyplot.subplots(1, 1 + len(fields), figsize=(4.2 * (1 + len(fields)), 4.2))
    axes[0].scatter(*reference[: args.n].T, s=2, c="0.7", label="data")
    axes[0].scatter(*samples.T, s=2, c="tab:red", label="samples")
    axes[0].set_title(f"{args.data}: DDPM samples ({args.T} steps)")
    axes[0].legend(loc="lower left", fontsize=8, markerscale=4)
    for ax, (t, grid, score) in zip(axes[1:], fields):
        ax.scatter(*reference[:1000].T, s=1, c="0.8")
        norm = np.linalg.norm(score, axis=1, keepdims=True)
        ax.quiver(*grid.T, *(score / np.maximum(norm, 1e-12)).T, np.log(norm[:, 0] + 1e-12), cmap="viridis",
                  scale=28, width=0.004)
        ax.set_title(f"learned score direction at t = {t}")
    for ax in axes:
        ax.set(xlim=(-1.3, 1.3), ylim=(-1.3, 1.3), aspect="equal")
    fig.tight_layout()
    path = os.path.join(args.out, f"toy_{args.data}.png")
    fig.savefig(path, dpi=110)
    save_json(os.path.join(args.out, f"toy_{args.data}.json"),
              {"data": args.data, "steps": args.steps, "T": args.T, "n": args.n, "train_seconds": trainer.seconds, **metrics})
    print(f"wrote {path}")
    return metrics


def _score_field(diffusion, t, size=21):
    """The model's score -eps_theta(x, t) / sqrt(1 - abar_t) on a size x size grid over [-1.2, 1.2]^2."""
    u = np.linspace(-1.2, 1.2, size, dtype=np.float32)
    grid = np.stack(np.meshgrid(u, u), axis=-1).reshape(-1, 2)  # (size^2, 2)
    with no_grad():
        eps_pred = diffusion.model(grid, np.full(len(grid), t)).numpy()
    return grid, score_from_eps(eps_pred, np.full(len(grid), t), diffusion.schedule)


if __name__ == "__main__":
    run(main)
