"""Bits/dim of L_simple with a fixed variance vs the hybrid loss with a learned variance (improved DDPM).

Trains two identical MLPDenoisers on a 2-D toy (moons by default), on 8-bit data (values k / 127.5 - 1,
the grid both likelihoods count in), the same steps, batch, learning rate and seed:

  simple:  L_simple, variance_type fixed_small (DDPM)                     out_dim = 2
  hybrid:  L_simple + lambda L_vlb, variance_type learned_range (lambda 0.001, improved DDPM eq. 16)  out_dim = 4

then on held-out 8-bit points prints, for each model (EMA weights), with the time each took:
  - the variational bound with all T steps (rd.bits_per_dim; the simple model with fixed_small and fixed_large);
  - the probability-flow ODE likelihood (rd.ode_bits_per_dim, exact divergence; it reads the eps channels).
The improved-DDPM claim to compare: learned variance + hybrid loss lowers the bound markedly
(CIFAR-10 3.70 -> 2.94 bits/dim with their larger changes), the ODE likelihood little.

    python benchmarks/bench_learned_variance_bpd.py                 # the RESULTS.md run
    python benchmarks/bench_learned_variance_bpd.py --steps 300 --n-eval 100 --T 200   # a smoke run
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
    args = p.parse_args()

    train = load_dataset(args.data, n=args.n_train, seed=args.seed)
    train = Dataset(x=eight_bit(train.x), name=args.data)
    held_out = eight_bit(load_dataset(args.data, n=args.n_eval, seed=args.seed + 1).x).astype(np.float64)
    d = held_out.shape[1]
    schedule = rd.NoiseSchedule.linear(T=args.T)
    print(f"{args.data}: {args.n_train} 8-bit training points, {args.n_eval} held out; MLP hidden {args.hidden}, "
          f"T={args.T}, {args.steps} steps of batch 256, lr 2e-3, EMA 0.995, seed {args.seed}")
    for name, variance_type in (("simple", "fixed_small"), ("hybrid", "learned_range")):
        model = rd.MLPDenoiser(dim=d, hidden=args.hidden, num_blocks=3, seed=args.seed,
                               out_dim=2 * d if variance_type == "learned_range" else None)
        diffusion = rd.GaussianDiffusion(model, schedule, variance_type=variance_type)
        trainer = Trainer(diffusion, train, progress=False, batch_size=256, lr=2e-3, warmup_steps=100,
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
            ode = rd.ode_bits_per_dim(diffusion.model_function(variance=False), held_out, schedule, batch_size=500,
                                      rng=np.random.default_rng(args.seed), divergence="exact",
                                      model_trace=diffusion.model_trace)
            s = time.perf_counter() - t0
            print(f"{name:7s} (train {train_s:6.1f} s)  ODE likelihood, exact divergence   : {ode:.4f} bits/dim "
                  f"({ode * d * math.log(2):.4f} nats/sample), {s:.1f} s")


if __name__ == "__main__":
    main()
