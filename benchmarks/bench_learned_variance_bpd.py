"""Bits/dim of L_simple with a fixed variance vs the hybrid loss with a learned variance (improved DDPM).

Trains two identical networks (an MLPDenoiser on a 2-D toy, moons by default; the smallest U-Net on
--data digits) on 8-bit data (values k / 127.5 - 1, the grid both likelihoods count in), the same
steps, batch, learning rate and seed:

  simple:  L_simple, variance_type fixed_small (DDPM)                     C output channels
  hybrid:  L_simple + lambda L_vlb, variance_type learned_range (lambda 0.001, improved DDPM eq. 16)  2C

then on held-out 8-bit points prints, for each model (EMA weights), with the time each took:
  - the variational bound with all T steps (rd.bits_per_dim; the simple model with fixed_small and fixed_large);
  - the probability-flow ODE likelihood (rd.ode_bits_per_dim; it reads the eps channels): exact
    divergence on the toy, Hutchinson's (one Rademacher probe) on the digits.
The improved-DDPM claim to compare: learned variance + hybrid loss lowers the bound markedly
(CIFAR-10 3.70 -> 2.94 bits/dim with their larger changes), the ODE likelihood little.

    python benchmarks/bench_learned_variance_bpd.py                 # the RESULTS.md run
    python benchmarks/bench_learned_variance_bpd.py --steps 300 --n-eval 100 --T 200   # a smoke run
    python benchmarks/bench_learned_variance_bpd.py --data digits --steps 400 --batch-size 32 --n-eval 32 \
        --base-channels 8 --rtol 1e-3 --atol 1e-3          # the digits at reduced steps (RESULTS.md)
"""
import argparse
import math
import time

import numpy as np

import refdiff as rd
from refdiff.training.data import Dataset, load_dataset
from refdiff.training.trainer import Trainer


def eight_bit(x):
    """x clipped to [-1, 1] and rounded to the 8-bit grid k / 127.5 - 1."""
    return (np.round((np.clip(x, -1, 1) + 1) * 127.5) / 127.5 - 1).astype(np.float32)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="moons")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--T", type=int, default=1000)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--n-train", type=int, default=10000)
    p.add_argument("--n-eval", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--base-channels", type=int, default=8, help="digits: the U-Net's first level")
    p.add_argument("--rtol", type=float, default=1e-5, help="the ODE solver's tolerances")
    p.add_argument("--atol", type=float, default=1e-5)
    args = p.parse_args()

    train = load_dataset(args.data, n=None if args.data == "digits" else args.n_train, seed=args.seed)
    images = train.kind == "images"
    if images:  # a fixed dataset (digits: 1797 images): the last n_eval held out, the rest trained on
        held_out = eight_bit(train.x[-args.n_eval:]).astype(np.float64)
        train = Dataset(x=eight_bit(train.x[:-args.n_eval]), name=args.data, kind=train.kind)
    else:  # a sampled toy: fresh held-out points
        train = Dataset(x=eight_bit(train.x), name=args.data, kind=train.kind)
        held_out = eight_bit(load_dataset(args.data, n=args.n_eval, seed=args.seed + 1).x).astype(np.float64)
    C = held_out.shape[1]
    d = int(np.prod(held_out.shape[1:]))
    schedule = rd.NoiseSchedule.linear(T=args.T)
    net = (f"U-Net base {args.base_channels}, mults 1,2, 1 res block" if images else f"MLP hidden {args.hidden}")
    print(f"{args.data}: {len(train.x)} 8-bit training samples, {args.n_eval} held out; {net}, T={args.T}, "
          f"{args.steps} steps of batch {args.batch_size}, lr {args.lr:g}, EMA 0.995, seed {args.seed}")
    for name, variance_type in (("simple", "fixed_small"), ("hybrid", "learned_range")):
        out = 2 * C if variance_type == "learned_range" else None
        if images:
            model = rd.UNet(in_channels=C, out_channels=out, base_channels=args.base_channels, channel_mults=(1, 2),
                            num_res_blocks=1, attention_resolutions=(), sample_size=held_out.shape[-1],
                            norm_groups=min(8, args.base_channels), seed=args.seed)
        else:
            model = rd.MLPDenoiser(dim=d, hidden=args.hidden, num_blocks=3, seed=args.seed, out_dim=out)
        diffusion = rd.GaussianDiffusion(model, schedule, variance_type=variance_type)
        trainer = Trainer(diffusion, train, progress=False, batch_size=args.batch_size, lr=args.lr, warmup_steps=100,
                          ema_decay=0.995, seed=args.seed)
        t0 = time.perf_counter()
        trainer.train(args.steps)
        train_s = time.perf_counter() - t0
        with trainer.ema_weights():
            model.eval()
            variance_types = ("fixed_small", "fixed_large") if name == "simple" else (variance_type,)
            for vt in variance_types:
                t0 = time.perf_counter()
                bpd = rd.bits_per_dim(diffusion.model_function(), held_out, schedule, batch_size=500,
                                      rng=np.random.default_rng(args.seed), variance_type=vt)
                s = time.perf_counter() - t0
                print(f"{name:7s} (train {train_s:6.1f} s)  bound, {args.T} steps, {vt:13s}: {bpd:.4f} bits/dim "
                      f"({bpd * d * math.log(2):.4f} nats/sample), {s:.1f} s")
            t0 = time.perf_counter()
            divergence = "hutchinson" if images else "exact"
            ode = rd.ode_bits_per_dim(diffusion.model_function(variance=False), held_out, schedule, batch_size=500,
                                      rng=np.random.default_rng(args.seed), divergence=divergence,
                                      model_trace=diffusion.model_trace, rtol=args.rtol, atol=args.atol)
            s = time.perf_counter() - t0
            print(f"{name:7s} (train {train_s:6.1f} s)  ODE likelihood, {divergence:10s} divergence: {ode:.4f} bits/dim "
                  f"({ode * d * math.log(2):.4f} nats/sample), {s:.1f} s")


if __name__ == "__main__":
    main()
