"""One U-Net training step on the CPU: refdiff (NumPy) against PyTorch (diffusers UNet2DModel).

A step is forward + eps-MSE loss + backward + AdamW, on a batch of 16 images 32x32x3 through the
U-Net base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=2, attention at 16x16 (DDPM's
CIFAR-10 layout, narrower). Both frameworks get the same weights (refdiff writes a diffusers
folder, diffusers loads it), the same inputs, and the same thread count. Each framework runs in
its own subprocess so that its peak resident memory (ru_maxrss) is its own; for refdiff the
NumPy peak of one step is also measured with tracemalloc. Wall time and process CPU time (all
threads) are both reported: on a shared machine the CPU time is the steadier of the two.

    python benchmarks/bench_train_step_cpu.py                 # both (PyTorch part needs torch + diffusers)
    python benchmarks/bench_train_step_cpu.py --profile       # refdiff only, cProfile of the steps
Needs refdiff importable (pip install -e . or PYTHONPATH=.). PyTorch is optional: without it
only refdiff's numbers are printed. Pin: torch==2.13.0.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

CONFIG = dict(in_channels=3, base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=2, attention_resolutions=(16,),
              sample_size=32, norm_groups=32, seed=0)
BATCH, SIZE, T = 16, 32, 1000


def inputs(batch=BATCH, size=SIZE, channels=3):
    """x_t, t, noise of a (batch, channels, size, size) batch, the same for both frameworks
    (shared with bench_forward_cpu.py)."""
    import numpy as np

    import refdiff as rd

    rng = np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, (batch, channels, size, size)).astype(np.float32)
    t = rng.integers(0, T, batch)
    noise = rng.standard_normal(x0.shape).astype(np.float32)  # the eps of x_t: the eps-prediction target
    x_t = rd.q_sample(x0, t, noise, rd.NoiseSchedule.linear(T=T)).astype(np.float32)
    return x_t, t, noise


def peak_rss_mib():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_refdiff(args, folder):
    import tracemalloc

    import refdiff as rd
    from refdiff.nn import functional as F
    from refdiff.training.optim import AdamW

    model = rd.UNet.from_diffusers(folder)
    opt = AdamW(model.parameters(), lr=1e-4, weight_decay=1e-2)
    x_t, t, noise = inputs()

    def step():
        loss = F.mse_loss(model(x_t, t), noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    rss_before = peak_rss_mib()
    first_loss = step()  # warm-up (allocates the optimizer state)
    times, cpu_times = [], []
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    for _ in range(args.steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    if profiler is not None:
        profiler.disable()
        import pstats

        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    tracemalloc.start()
    step()
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return dict(framework="refdiff", times=times, cpu_times=cpu_times, first_loss=first_loss, peak_rss_mib=peak_rss_mib(),
                rss_before_steps_mib=rss_before, step_numpy_peak_mib=traced_peak / 2**20,
                params=model.num_parameters())


def run_torch(args, folder):
    import torch
    from diffusers import UNet2DModel

    torch.set_num_threads(args.threads)
    model = UNet2DModel.from_pretrained(folder).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-2)
    x_t, t, noise = (torch.from_numpy(a) for a in inputs())

    def step():
        loss = torch.nn.functional.mse_loss(model(x_t, t).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    rss_before = peak_rss_mib()
    first_loss = step()
    times, cpu_times = [], []
    for _ in range(args.steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    return dict(framework="torch", times=times, cpu_times=cpu_times, first_loss=first_loss, peak_rss_mib=peak_rss_mib(),
                rss_before_steps_mib=rss_before, torch=torch.__version__, torch_threads=torch.get_num_threads(),
                params=sum(p.numel() for p in model.parameters()))


def child(args):
    result = run_refdiff(args, args.folder) if args.framework == "refdiff" else run_torch(args, args.folder)
    print("RESULT " + json.dumps(result))


def thread_env(threads):
    """The environment that limits NumPy's BLAS and torch's OpenMP pool to `threads` threads
    (read when the libraries load, so it is set before they are imported)."""
    return dict(OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))


def spawn(framework, args, folder):
    env = dict(os.environ, **thread_env(args.threads))
    cmd = [sys.executable, __file__, "--child", "--framework", framework, "--folder", folder,
           "--steps", str(args.steps), "--threads", str(args.threads)] + (["--profile"] if args.profile else [])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.stderr.strip():
        print(proc.stderr, file=sys.stderr)
    if proc.returncode != 0:
        return None
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def median(values):
    s = sorted(values)
    return s[len(s) // 2]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="BLAS / torch threads")
    parser.add_argument("--profile", action="store_true", help="cProfile refdiff's steps (printed to stderr)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--framework", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    import refdiff as rd
    from refdiff.models.diffusers_io import save_unet2d

    with tempfile.TemporaryDirectory() as folder:
        save_unet2d(rd.UNet(**CONFIG), folder)
        results = [spawn("refdiff", args, folder)]
        if not args.profile:
            results.append(spawn("torch", args, folder))
    print(f"U-Net {CONFIG}, batch {BATCH}x3x{SIZE}x{SIZE}, {args.steps} timed steps, {args.threads} threads, "
          f"{platform.processor() or platform.machine()}, python {platform.python_version()}")
    for r in results:
        if r is None:
            continue
        print(f"{r['framework']:8s} step median {median(r['times']):.3f} s  (min {min(r['times']):.3f}, "
              f"max {max(r['times']):.3f}; CPU time median {median(r['cpu_times']):.3f} s)  "
              f"first loss {r['first_loss']:.4f}  params {r['params']}  "
              f"peak RSS {r['peak_rss_mib']:.0f} MiB (before steps {r['rss_before_steps_mib']:.0f})"
              + (f"  NumPy peak of one step {r['step_numpy_peak_mib']:.0f} MiB" if "step_numpy_peak_mib" in r else ""))
    if len(results) == 2 and results[1] is not None:
        ratio = median(results[0]["times"]) / median(results[1]["times"])
        cpu_ratio = median(results[0]["cpu_times"]) / median(results[1]["cpu_times"])
        print(f"ratio refdiff / torch = {ratio:.2f}x wall, {cpu_ratio:.2f}x CPU time  (target <= 3x)")
    elif not args.profile:
        print("torch / diffusers not importable: PyTorch baseline skipped")


if __name__ == "__main__":
    main()
