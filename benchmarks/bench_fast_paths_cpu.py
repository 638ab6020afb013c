"""A fast path of refdiff.nn.functional against its own plain setting, paired in one process.

Some of the functional ops' fast paths are tuned by a module constant; setting the constant to
"no limit" gives back the plain behaviour (the whole array in one block). This script runs the
small U-Net of bench_train_step_cpu.py (forward at batch 64 without a gradient, or the training
step at batch 16) with the constant at its value and at no limit, alternately (A B B A ...), and
prints each step's process CPU time and the median of the per-pair ratios fast / plain. Pairing
in one process cancels most of the load of a shared machine, which the ratios against PyTorch do
not separate from a change of a few percent.

    silu_blocks   _SILU_BLOCK = 32768 values vs the whole array (silu without a gradient)
    cols_chunks   _COLS_BYTES = 16 MiB vs all images at once (conv2d's im2col columns)

    python benchmarks/bench_fast_paths_cpu.py --path silu_blocks --case small64 --pairs 6
No PyTorch needed.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train_step_cpu import CONFIG, inputs, median, thread_env  # noqa: E402

PATHS = {"silu_blocks": "_SILU_BLOCK", "cols_chunks": "_COLS_BYTES"}
NO_LIMIT = 1 << 62


def step_fn(case):
    import refdiff as rd
    from refdiff.nn import functional as F
    from refdiff.nn.autograd import no_grad
    from refdiff.training.optim import AdamW

    model = rd.UNet(**CONFIG)
    if case == "small64":
        model.eval()
        x, t, _ = inputs(64)

        def step():
            with no_grad():
                model(x, t)
    else:
        model.train()
        x, t, noise = inputs()
        opt = AdamW(model.parameters(), lr=1e-4, weight_decay=1e-2)

        def step():
            loss = F.mse_loss(model(x, t), noise)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return step


def run(args):
    from refdiff.nn import functional as F

    name = PATHS[args.path]
    fast_value = getattr(F, name)
    step = step_fn(args.case)
    for value in (fast_value, NO_LIMIT):  # warm-up of both (buffers grown, caches filled)
        setattr(F, name, value)
        step()
    fast, plain = [], []
    for i in range(args.pairs):
        order = ((fast_value, fast), (NO_LIMIT, plain)) if i % 2 == 0 else ((NO_LIMIT, plain), (fast_value, fast))
        for value, times in order:
            setattr(F, name, value)
            t0 = time.process_time()
            step()
            times.append(time.process_time() - t0)
    setattr(F, name, fast_value)
    ratios = [a / b for a, b in zip(fast, plain)]
    print(f"{args.path} ({name} = {fast_value} vs no limit), {args.case}, {args.pairs} pairs, one thread")
    print(f"fast  CPU s: {' '.join(f'{t:.3f}' for t in fast)}")
    print(f"plain CPU s: {' '.join(f'{t:.3f}' for t in plain)}")
    print(f"fast / plain per pair: {' '.join(f'{r:.3f}' for r in ratios)}; median {median(ratios):.3f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", choices=sorted(PATHS), required=True)
    parser.add_argument("--case", choices=("small64", "unet_train"), default="small64")
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.child:  # the BLAS thread count is read when NumPy loads: restart with it set
        env = dict(os.environ, **thread_env(1))
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), "--child"] + sys.argv[1:], env)
    run(args)


if __name__ == "__main__":
    main()
