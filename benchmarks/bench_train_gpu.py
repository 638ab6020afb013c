"""Training-step time on a GPU: the same U-Net, refdiff's cuda backend against PyTorch eager.

A step = fused q_sample_with_target (eps target) + U-Net forward + MSE loss + backward + AdamW,
on a batch of 64 (issue 6; --batch to change) of 32x32x3 images through the U-Net of
bench_sampling_gpu.py (base 64, mults (1, 2, 2, 2), attention at 16). Both frameworks start from
identical weights (a diffusers folder written by refdiff) and see the same x_0, t and noise.
Median step time by CUDA events after warm-up; the first losses of both are printed as a check.

    python benchmarks/bench_train_gpu.py                # appends to benchmarks/RESULTS.md
    python benchmarks/bench_train_gpu.py --smoke        # no GPU: tiny U-Net, simulator kernels, nothing recorded
Exits with code 2 and a message where no GPU is visible (unless --smoke). PyTorch + diffusers
are optional (pin: torch==2.13.0).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_bench_common as common  # noqa: E402

common.enable_simulator_for_smoke(sys.argv)

import numpy as np  # noqa: E402
from bench_sampling_gpu import unet_pair  # noqa: E402

T, LR = 1000, 1e-4


def refdiff_train_step(model, be, opt, schedule, x0, t_host, t_dev, noise):
    from refdiff.nn import functional as F

    x_t, target = be.q_sample_with_target(x0, t_dev, noise, schedule)  # fused on cuda
    loss = F.mse_loss(model(x_t, t_dev), target)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss


def torch_train_step(model, opt, sqrt_abar, sqrt_one_minus_abar, x0, t, noise):
    """The same step in PyTorch eager; sqrt_abar, sqrt_one_minus_abar: (B, 1, 1, 1) float32 tensors."""
    import torch

    from refdiff.gaussian.parameterization import x_t_formula

    x_t = x_t_formula(x0, noise, sqrt_abar, sqrt_one_minus_abar)  # DDPM eq. 4, as tensor ops
    loss = torch.nn.functional.mse_loss(model(x_t, t).sample, noise)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def run(smoke=False, batch=64, torch_baseline=True, results=common.RESULTS, command=None):
    import refdiff as rd
    from refdiff.backend import per_sample
    from refdiff.training.optim import AdamW

    schedule = rd.NoiseSchedule.linear(T=T)
    config, model, (be, xp, timer), (torch, tmodel, device) = unet_pair(smoke, torch_baseline, training=True)
    opt = AdamW(model.parameters(), lr=LR, weight_decay=1e-2)

    side = config["sample_size"]
    rng = np.random.default_rng(0)
    x0_host = rng.uniform(-1, 1, (batch, 3, side, side)).astype(np.float32)
    noise_host = rng.standard_normal(x0_host.shape).astype(np.float32)
    t_host = rng.integers(0, T, batch)
    x0, noise, t_dev = xp.asarray(x0_host), xp.asarray(noise_host), xp.asarray(t_host)

    first = refdiff_train_step(model, be, opt, schedule, x0, t_host, t_dev, noise)
    notes = [f"U-Net {config}; batch {batch}; AdamW lr {LR}", f"refdiff first loss {float(first.item()):.6f}"]
    t_refdiff = timer(lambda: refdiff_train_step(model, be, opt, schedule, x0, t_host, t_dev, noise))

    t_torch = None
    if tmodel is not None:
        topt = torch.optim.AdamW(tmodel.parameters(), lr=LR, weight_decay=1e-2)
        # (B, 1, 1, 1) float32 from the float64 tables, as the fused kernel reads them
        sqrt_abar = torch.from_dlpack(per_sample(schedule.sqrt_alphas_cumprod[t_host], x0))
        sqrt_one_minus_abar = torch.from_dlpack(per_sample(schedule.sqrt_one_minus_alphas_cumprod[t_host], x0))
        tx0, tnoise = torch.from_dlpack(xp.asarray(x0_host)), torch.from_dlpack(xp.asarray(noise_host))
        tt = torch.as_tensor(t_host, device=device)
        tfirst = torch_train_step(tmodel, topt, sqrt_abar, sqrt_one_minus_abar, tx0, tt, tnoise)
        notes.append(f"torch first loss {float(tfirst.item()):.6f} (same weights and inputs: should match refdiff's)")
        t_torch = timer(lambda: torch_train_step(tmodel, topt, sqrt_abar, sqrt_one_minus_abar, tx0, tt, tnoise))
    elif not smoke:
        notes.append("PyTorch baseline skipped (torch with CUDA and diffusers not importable)")
    if smoke:
        notes.append("smoke run: NumPy + simulator kernels on the CPU, host timer; the times mean nothing")

    header = ["batch", "refdiff cuda ms/step", "torch eager ms/step", "refdiff / torch time"]
    ms = lambda s: "-" if s is None else f"{s * 1e3:.2f}"  # noqa: E731
    rows = [[batch, ms(t_refdiff), ms(t_torch), common.fmt_ratio(t_refdiff, t_torch)]]
    common.record("Training step: refdiff cuda vs PyTorch eager", common.markdown_table(header, rows),
                  command or "python benchmarks/bench_train_gpu.py", notes, path=results)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=None)
    args, results, command = common.parse_arguments(parser, "bench_train_gpu.py", argv,
                                                    "no GPU: tiny U-Net on NumPy with simulator kernels")
    batch = args.batch or (2 if args.smoke else 64)
    run(smoke=args.smoke, batch=batch, torch_baseline=not args.no_torch, results=results, command=command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
