"""Where refdiff's CPU convolution stands against its floor: conv2d vs its bare GEMM vs PyTorch's conv.

For each 3x3 convolution shape (C -> O channels, H x H input, stride) of bench_forward_cpu.py's
small64 case (the benchmark U-Net, batch 64, no gradient), three timings of the same work, one
thread, process CPU time, the three interleaved and the median of --reps taken:

    refdiff    refdiff.nn.functional.conv2d (padding, channel-major im2col, one GEMM per image)
    gemm       the bare np.matmul of the same shape, W (O, C*9) @ cols (N, C*9, Ho*Wo), on
               ready-made columns: what OpenBLAS gives on these shapes, with no copies around it
    torch      torch.nn.functional.conv2d on the same input and weight (oneDNN's direct conv)

and each as GFLOP/s (2 N O C 9 Ho Wo flops). gemm / torch is the floor of a NumPy conv built on
a GEMM; refdiff / gemm is what the padding and the im2col copy cost on top. The outputs of
refdiff and torch are checked equal first (relative max error < 1e-4).

    python benchmarks/bench_conv_gemm_cpu.py --reps 5
Needs torch==2.13.0 (benchmarks only).
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train_step_cpu import median, thread_env  # noqa: E402

# (C, O, H, stride): the 3x3 convolutions (padding 1) of the small U-Net, batch 64, and how many
# times each runs in one forward (counted by wrapping F.conv2d during a forward)
SHAPES = [
    ((3, 32, 32, 1), 1), ((32, 32, 32, 1), 7), ((32, 32, 32, 2), 1), ((32, 64, 16, 1), 1),
    ((64, 64, 16, 1), 7), ((64, 64, 16, 2), 1), ((64, 64, 8, 1), 11), ((128, 64, 8, 1), 3),
    ((128, 64, 16, 1), 2), ((96, 64, 16, 1), 1), ((64, 32, 32, 1), 2), ((64, 64, 32, 1), 1),
    ((96, 32, 32, 1), 1), ((32, 3, 32, 1), 1),
]
N = 64


def run(args):
    import numpy as np
    import torch

    from refdiff.nn import functional as F
    from refdiff.nn.autograd import no_grad
    from refdiff.nn.functional import _im2col

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    print(f"{'C, O, H, stride':>18s} {'count':>5s} {'refdiff ms':>10s} {'gemm ms':>8s} {'torch ms':>8s} "
          f"{'GF/s r/g/t':>16s} {'refdiff/torch':>13s} {'gemm/torch':>10s}")
    totals = dict(refdiff=0.0, gemm=0.0, torch=0.0)
    for (C, O, H, stride), count in SHAPES:
        Ho = (H - 1) // stride + 1
        x = rng.standard_normal((N, C, H, H)).astype(np.float32)
        w = (rng.standard_normal((O, C, 3, 3)) / np.sqrt(9 * C)).astype(np.float32)
        x_t, w_t = torch.from_numpy(x), torch.from_numpy(w)
        cols = _im2col(x, 3, 3, stride, stride, 1, 1).copy()  # (N, C*9, Ho*Wo)
        w2 = w.reshape(O, C * 9)

        def ours():
            with no_grad():
                return F.conv2d(x, w, stride=stride, padding=1).data

        def gemm():
            return np.matmul(w2, cols)

        def theirs():
            with torch.no_grad():
                return torch.nn.functional.conv2d(x_t, w_t, stride=stride, padding=1).numpy()

        a, b = ours(), theirs()
        err = np.abs(a - b).max() / np.abs(b).max()
        if not err < 1e-4:
            sys.exit(f"{(C, O, H, stride)}: refdiff and torch disagree: relative error {err:.3g}")
        times = dict(refdiff=[], gemm=[], torch=[])
        for _ in range(args.reps):
            for name, fn in (("refdiff", ours), ("gemm", gemm), ("torch", theirs)):
                t0 = time.process_time()
                fn()
                times[name].append(time.process_time() - t0)
        med = {k: median(v) for k, v in times.items()}
        for k in totals:
            totals[k] += count * med[k]
        gflop = 2 * N * O * C * 9 * Ho * Ho / 1e9
        rates = "/".join(f"{gflop / med[k]:.0f}" for k in ("refdiff", "gemm", "torch"))
        print(f"{str((C, O, H, stride)):>18s} {count:5d} {med['refdiff'] * 1e3:10.1f} {med['gemm'] * 1e3:8.1f} "
              f"{med['torch'] * 1e3:8.1f} {rates:>16s} {med['refdiff'] / med['torch']:12.2f}x "
              f"{med['gemm'] / med['torch']:9.2f}x", flush=True)
    print(f"weighted by count (one forward's 3x3 convs): refdiff {totals['refdiff']:.3f} s, bare GEMM "
          f"{totals['gemm']:.3f} s, torch {totals['torch']:.3f} s; refdiff/torch {totals['refdiff'] / totals['torch']:.2f}x, "
          f"GEMM/torch {totals['gemm'] / totals['torch']:.2f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5, help="timed triples per shape")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.child:  # the thread counts are read when NumPy and torch load: restart with them set
        env = dict(os.environ, **thread_env(1))
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), "--child"] + sys.argv[1:], env)
    run(args)


if __name__ == "__main__":
    main()
