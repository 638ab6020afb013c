"""Forward passes, training steps and sampling on the CPU: refdiff (NumPy) against PyTorch 2.13.

The cases of issue 13's table, each a pair of callables, one refdiff and one PyTorch, with the
same weights and inputs:

    cifar16     DDPM's CIFAR-10 U-Net (35.7M parameters) forward, batch 16 (no gradient)
    cifar1      the same, batch 1
    small64     bench_train_step_cpu.py's U-Net forward, batch 64
    unet_train  bench_train_step_cpu.py's training step (forward, eps-MSE, backward, AdamW), batch 16
    mlp_train   2-D MLPDenoiser training step (forward, eps-MSE, backward, AdamW), batch 256
    mlp_sample  2-D MLPDenoiser, DDPM ancestral sampling of 2000 points over all T = 1000 steps

The U-Nets are diffusers' UNet2DModel on the PyTorch side, loaded from the folder refdiff
writes. The MLP has no diffusers twin: the PyTorch side is the same network written with
torch.nn (its timestep path runs on every row, as diffusers' models do), and its DDPM loop is
DDPMScheduler's step written out with the noise drawn from the same NumPy generator as refdiff's,
so both loops draw the same noise.

Timing: both models live in one process and their calls alternate (refdiff, torch, refdiff, ...),
so that load from other processes on a shared machine hits both alike; each call is timed with
the process CPU clock (all threads) and with the wall clock. Printed per case: the median of each
framework and the median of the per-pair ratios. Before timing, each case checks that the two
outputs agree (a fast wrong path must not look like a gain) and stops if they do not.

    python benchmarks/bench_forward_cpu.py --threads 1                  # every case
    python benchmarks/bench_forward_cpu.py --threads 2 --cases cifar16 mlp_sample --reps 5
Needs refdiff, torch==2.13.0 and diffusers (0.42.1 measured). With two threads the CPU time of
a call includes the other library's idle pool threads spinning, if they do (see RESULTS.md).
"""
import argparse
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train_step_cpu import CONFIG as SMALL_CONFIG, T, inputs, median, thread_env  # noqa: E402

# DDPM's CIFAR-10 U-Net (google/ddpm-cifar10-32): 128 channels, mults 1, 2, 2, 2, attention at 16x16
CIFAR_CONFIG = dict(in_channels=3, base_channels=128, channel_mults=(1, 2, 2, 2), num_res_blocks=2,
                    attention_resolutions=(16,), sample_size=32, norm_groups=32, seed=0)
MLP_CONFIG = dict(dim=2, hidden=128, num_blocks=3, time_dim=64, seed=0)
CASES = ("cifar16", "cifar1", "small64", "unet_train", "mlp_train", "mlp_sample")


def _randomize_zero_init(model, seed=1):
    """Give the zero-initialised output layer random weights, so that the outputs compared are not 0 = 0."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        if not p.data.any():
            p.data[...] = rng.uniform(-0.05, 0.05, p.shape).astype(p.dtype)
    return model


def unet_pair(config, folder):
    """A refdiff UNet and diffusers' UNet2DModel with the same weights (through a diffusers folder)."""
    import refdiff as rd
    from diffusers import UNet2DModel
    from refdiff.models.diffusers_io import save_unet2d

    save_unet2d(_randomize_zero_init(rd.UNet(**config)), folder)
    return rd.UNet.from_diffusers(folder), UNet2DModel.from_pretrained(folder, low_cpu_mem_usage=False)


def forward_case(config, batch, folder):
    import torch

    from refdiff.nn.autograd import no_grad

    ours, theirs = unet_pair(config, folder)
    ours.eval(), theirs.eval()
    x_t, t, _ = inputs(batch, config["sample_size"], config["in_channels"])
    x_torch, t_torch = torch.from_numpy(x_t), torch.from_numpy(t)

    def run_ours():
        with no_grad():
            return ours(x_t, t).data

    def run_theirs():
        with torch.no_grad():
            return theirs(x_torch, t_torch).sample.numpy()

    return run_ours, run_theirs, lambda a, b: _relative_error(a, b)


def unet_train_case(folder):
    from refdiff.nn import functional as F
    from refdiff.training.optim import AdamW

    ours, theirs = unet_pair(SMALL_CONFIG, folder)
    return _train_pair(ours, theirs, inputs(), lambda m, x, t: m(x, t).sample, AdamW, F.mse_loss)


def _train_pair(ours, theirs, batch, torch_forward, AdamW, mse_loss):
    """One training step each: forward, eps-MSE, backward, AdamW (same hyper-parameters)."""
    import torch

    x_t, t, noise = batch
    opt_ours = AdamW(ours.parameters(), lr=1e-4, weight_decay=1e-2)
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=1e-4, weight_decay=1e-2)
    xt_torch, t_torch, noise_torch = (torch.from_numpy(a) for a in (x_t, t, noise))
    ours.train(), theirs.train()

    def run_ours():
        loss = mse_loss(ours(x_t, t), noise)
        opt_ours.zero_grad()
        loss.backward()
        opt_ours.step()
        return loss.item()

    def run_theirs():
        loss = torch.nn.functional.mse_loss(torch_forward(theirs, xt_torch, t_torch), noise_torch)
        opt_theirs.zero_grad(set_to_none=True)
        loss.backward()
        opt_theirs.step()
        return loss.item()

    return run_ours, run_theirs, lambda a, b: abs(a - b) / max(abs(b), 1e-12)


def torch_mlp(ours):
    """refdiff's MLPDenoiser written with torch.nn, with its weights."""
    import torch
    from diffusers.models.embeddings import get_timestep_embedding

    c = ours.config
    silu = torch.nn.functional.silu

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear_1 = torch.nn.Linear(c["hidden"], c["hidden"])
            self.time_emb_proj = torch.nn.Linear(c["hidden"], c["hidden"])
            self.linear_2 = torch.nn.Linear(c["hidden"], c["hidden"])

        def forward(self, h, emb):
            return h + self.linear_2(silu(self.linear_1(silu(h)) + self.time_emb_proj(silu(emb))))

    class MLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.in_proj = torch.nn.Linear(c["dim"], c["hidden"])
            self.time_embedding = torch.nn.Module()
            self.time_embedding.linear_1 = torch.nn.Linear(c["time_dim"], c["hidden"])
            self.time_embedding.linear_2 = torch.nn.Linear(c["hidden"], c["hidden"])
            self.blocks = torch.nn.ModuleList([Block() for _ in range(c["num_blocks"])])
            self.out_proj = torch.nn.Linear(c["hidden"], c["dim"])

        def forward(self, x, t):  # t: (B,) as diffusers' models take it
            features = get_timestep_embedding(t, c["time_dim"])  # refdiff's defaults are diffusers'
            emb = self.time_embedding.linear_2(silu(self.time_embedding.linear_1(features)))
            h = self.in_proj(x)
            for block in self.blocks:
                h = block(h, emb)
            return self.out_proj(silu(h))

    theirs = MLP()
    theirs.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in ours.state_dict().items()})
    return theirs


def mlp_train_case():
    import numpy as np

    import refdiff as rd
    from refdiff.nn import functional as F
    from refdiff.training.optim import AdamW

    ours = _randomize_zero_init(rd.MLPDenoiser(**MLP_CONFIG))
    theirs = torch_mlp(ours)
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((256, 2)).astype(np.float32)
    t = rng.integers(0, T, 256)
    noise = rng.standard_normal(x0.shape).astype(np.float32)
    x_t = rd.q_sample(x0, t, noise, rd.NoiseSchedule.linear(T=T)).astype(np.float32)
    return _train_pair(ours, theirs, (x_t, t, noise), lambda m, x, t: m(x, t), AdamW, F.mse_loss)


def mlp_sample_case(n=2000, seed=0):
    """DDPM over all T steps: refdiff's GaussianDiffusion.sample against the same loop in torch."""
    import math

    import numpy as np
    import torch

    import refdiff as rd

    schedule = rd.NoiseSchedule.linear(T=T)
    ours = _randomize_zero_init(rd.MLPDenoiser(**MLP_CONFIG))
    theirs = torch_mlp(ours).eval()
    diffusion = rd.GaussianDiffusion(ours, schedule, prediction_type="epsilon")
    abar = schedule.alphas_cumprod  # float64 (T,)

    def run_ours():
        return diffusion.sample(n, sampler="ddpm", seed=seed, progress=False)

    @torch.no_grad()
    def run_theirs():  # DDPMScheduler.step (epsilon, fixed_small, clip_sample) written out, DDPM eqs. 6-7, 15
        rng = np.random.default_rng(seed)
        x = torch.from_numpy(rng.standard_normal((n, 2), dtype=np.float32))
        for t in range(T - 1, -1, -1):
            eps = theirs(x, torch.full((n,), t, dtype=torch.int64))
            noise = torch.from_numpy(rng.standard_normal((n, 2), dtype=np.float32))
            abar_t, abar_prev = abar[t], (abar[t - 1] if t > 0 else 1.0)
            beta_t = 1 - abar_t / abar_prev
            x0 = ((x - math.sqrt(1 - abar_t) * eps) / math.sqrt(abar_t)).clamp_(-1, 1)
            x = (math.sqrt(abar_prev) * beta_t / (1 - abar_t)) * x0 \
                + (math.sqrt(1 - beta_t) * (1 - abar_prev) / (1 - abar_t)) * x
            if t > 0:
                x = x + math.sqrt(max((1 - abar_prev) / (1 - abar_t) * beta_t, 1e-20)) * noise
        return x.numpy()

    return run_ours, run_theirs, _max_abs_error


def _relative_error(a, b):
    import numpy as np

    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def _max_abs_error(a, b):
    import numpy as np

    return float(np.abs(a - b).max())


TOLERANCE = dict(cifar16=1e-3, cifar1=1e-3, small64=1e-3, unet_train=1e-4, mlp_train=1e-4,
                 mlp_sample=1e-2)  # relative (max-norm) for outputs and losses; absolute for samples in [-1, 1]


def make_case(name, folder):
    if name == "cifar16":
        return forward_case(CIFAR_CONFIG, 16, folder)
    if name == "cifar1":
        return forward_case(CIFAR_CONFIG, 1, folder)
    if name == "small64":
        return forward_case(SMALL_CONFIG, 64, folder)
    if name == "unet_train":
        return unet_train_case(folder)
    if name == "mlp_train":
        return mlp_train_case()
    if name == "mlp_sample":
        return mlp_sample_case()
    raise ValueError(name)


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.process_time() - cpu, time.perf_counter() - wall


def run(args):
    import torch

    torch.set_num_threads(args.threads)
    print(f"{platform.processor() or platform.machine()}, python {platform.python_version()}, torch {torch.__version__}, "
          f"{args.threads} thread(s), {args.reps} interleaved pairs per case after one warm-up pair")
    print(f"{'case':11s} {'refdiff CPU s':>13s} {'torch CPU s':>11s} {'ratio CPU':>9s} {'ratio wall':>10s}   agreement")
    for name in args.cases:
        with tempfile.TemporaryDirectory() as folder:
            run_ours, run_theirs, error = make_case(name, folder)
            err = error(run_ours(), run_theirs())  # the warm-up pair, and the check that the two agree
            if not err <= TOLERANCE[name]:
                sys.exit(f"{name}: refdiff and torch disagree: error {err:.3g} > {TOLERANCE[name]:g}")
            ours_cpu, theirs_cpu, ratios_cpu, ratios_wall = [], [], [], []
            for _ in range(args.reps):
                _, cpu_a, wall_a = timed(run_ours)
                _, cpu_b, wall_b = timed(run_theirs)
                ours_cpu.append(cpu_a), theirs_cpu.append(cpu_b)
                ratios_cpu.append(cpu_a / cpu_b), ratios_wall.append(wall_a / wall_b)
        print(f"{name:11s} {median(ours_cpu):13.4f} {median(theirs_cpu):11.4f} {median(ratios_cpu):8.2f}x "
              f"{median(ratios_wall):9.2f}x   error {err:.2g} (tol {TOLERANCE[name]:g})  "
              f"CPU ratios {' '.join(f'{r:.2f}' for r in ratios_cpu)}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="BLAS / torch threads")
    parser.add_argument("--reps", type=int, default=5, help="timed pairs per case")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.child:  # the thread counts are read when NumPy and torch load: restart with them set
        env = dict(os.environ, **thread_env(args.threads))
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), "--child"] + sys.argv[1:], env)
    run(args)


if __name__ == "__main__":
    main()
