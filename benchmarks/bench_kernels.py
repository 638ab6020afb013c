"""Fused kernels on a GPU: achieved bandwidth against the device's copy bandwidth, and fusion's gain.

For each kernel of refdiff.kernels and each size:
  fused      the kernel: median time (CUDA events, after warm-up), bytes it must read + write
             (the napkin math in its file header), achieved GB/s, and that over the
             device-to-device copy bandwidth measured in this run (target >= 0.85 at >= 64 MB);
  composed   the same math as plain CuPy array ops (per-sample coefficients precomputed on the
             device, outside the timing: a generous baseline), and the speed-up of fused over it;
  torch      the same composed math in PyTorch eager on the same memory (optional: needs torch);
  host       the host time of one fused launch (no GPU wait): launch-bound while it exceeds the
             fused GPU time.
Before timing, the fused result is checked against the composed one.

Sizes: small 16x3x32x32 (launch-bound), large 256x4x64x64 (16 MiB per array), xlarge
1024x4x64x64 (64 MiB per array).

    python benchmarks/bench_kernels.py             # measure, print, append to benchmarks/RESULTS.md
    python benchmarks/bench_kernels.py --smoke     # no GPU: CPU-side logic under the simulator, tiny sizes
    REFDIFF_KERNEL_ARG_MODE=direct python benchmarks/bench_kernels.py   # CuPy arrays passed to numba as they are
Exits with code 2 and a message where no GPU is visible (unless --smoke).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_bench_common as common  # noqa: E402

common.enable_simulator_for_smoke(sys.argv)

import numpy as np  # noqa: E402

SIZES = {"small": (16, 3, 32, 32), "large": (256, 4, 64, 64), "xlarge": (1024, 4, 64, 64)}
SMOKE_SIZES = {"tiny": (3, 2, 5, 7)}
T = 1000
EMBEDDING_DIM = 256


class Inputs:
    """Arrays of one size on the device (or NumPy in a smoke run), and their per-sample coefficients."""

    def __init__(self, xp, shape, seed=0):
        import refdiff as rd

        rng = np.random.default_rng(seed)
        B = shape[0]
        self.xp, self.shape, self.n = xp, shape, int(np.prod(shape))
        self.schedule = s = rd.NoiseSchedule.linear(T=T)
        draw = lambda: xp.asarray(rng.standard_normal(shape).astype(np.float32))  # noqa: E731
        self.x0, self.noise, self.x_t, self.out, self.uncond = draw(), draw(), draw(), draw(), draw()
        t = rng.integers(1, T, B)
        self.t_host = t
        self.t = xp.asarray(t)
        self.t_prev = xp.asarray(t - 20)  # a DDIM stride of 20 (50 steps of 1000); may be < 0
        abar = s.alphas_cumprod[t]
        abar_prev = np.where(t - 20 >= 0, s.alphas_cumprod[np.maximum(t - 20, 0)], 1.0)
        abar_prev1 = s.alphas_cumprod_prev[t]
        beta = 1 - abar / abar_prev1

        def coef(v):  # (B, 1, 1, 1) float32 on the device
            return xp.asarray(np.asarray(v, dtype=np.float32).reshape((B,) + (1,) * (len(shape) - 1)))

        self.alpha, self.sigma = coef(np.sqrt(abar)), coef(np.sqrt(1 - abar))
        self.ddpm_c0 = coef(np.sqrt(abar_prev1) * beta / (1 - abar))
        self.ddpm_c1 = coef(np.sqrt(1 - beta) * (1 - abar_prev1) / (1 - abar))
        self.ddpm_std = coef(np.sqrt(np.maximum((1 - abar_prev1) / (1 - abar) * beta, 1e-20)))
        sig_eta = np.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))  # eta = 1
        self.ddim_c0 = coef(np.sqrt(abar_prev))
        self.ddim_dir = coef(np.sqrt(np.maximum(1 - abar_prev - sig_eta**2, 0)))
        self.ddim_dir0 = coef(np.sqrt(1 - abar_prev))  # eta = 0
        self.ddim_noise = coef(sig_eta)
        from refdiff.gaussian.embedding import timestep_frequencies

        self.freqs = xp.asarray(timestep_frequencies(EMBEDDING_DIM // 2, 10000, 1))
        self.t_float = xp.asarray(t.astype(np.float64))


# ---- the cases: (name, bytes moved, fused call, composed call on (xp-like module, inputs)) ----
# The composed versions are the same formulas as plain array ops; `m` is cupy, numpy or a torch
# shim with clip / sin / cos / cat. `a` holds the arrays (CuPy, or torch views of them).


def _x0_eps(m, a):
    return m.clip((a.x_t - a.sigma * a.out) / a.alpha, -1.0, 1.0)


def _guided(a, s=3.0):
    return a.uncond + s * (a.out - a.uncond)


def cases(K):
    """K: refdiff.kernels. Each case: name, bytes per call as f(inputs), fused(a), composed(m, a)."""
    return [
        ("q_sample", lambda a: 12 * a.n,
         lambda a: K.q_sample(a.x0, a.t, a.noise, a.schedule),
         lambda m, a: a.alpha * a.x0 + a.sigma * a.noise),
        ("q_sample_with_target v", lambda a: 16 * a.n,
         lambda a: K.q_sample_with_target(a.x0, a.t, a.noise, a.schedule, "v_prediction"),
         lambda m, a: (a.alpha * a.x0 + a.sigma * a.noise, a.alpha * a.noise - a.sigma * a.x0)),
        ("ddpm_step eps clip", lambda a: 16 * a.n,
         lambda a: K.ddpm_step(a.x_t, a.out, a.t, a.schedule, a.noise),
         lambda m, a: a.ddpm_c0 * _x0_eps(m, a) + a.ddpm_c1 * a.x_t + a.ddpm_std * a.noise),
        ("ddpm_step guided s=3", lambda a: 20 * a.n,
         lambda a: K.ddpm_step(a.x_t, a.out, a.t, a.schedule, a.noise, model_output_uncond=a.uncond, guidance_scale=3.0),
         lambda m, a: _ddpm_guided(m, a)),
        ("ddim_step eta=0", lambda a: 12 * a.n,
         lambda a: K.ddim_step(a.x_t, a.out, a.t, a.t_prev, a.schedule),
         lambda m, a: a.ddim_c0 * _x0_eps(m, a) + a.ddim_dir0 * a.out),
        ("ddim_step eta=1 guided", lambda a: 20 * a.n,
         lambda a: K.ddim_step(a.x_t, a.out, a.t, a.t_prev, a.schedule, eta=1.0, noise=a.noise,
                               model_output_uncond=a.uncond, guidance_scale=3.0),
         lambda m, a: _ddim_guided(m, a)),
        ("timestep_embedding d=256", lambda a: a.shape[0] * (EMBEDDING_DIM * 4 + 8),
         lambda a: K.timestep_embedding(a.t, EMBEDDING_DIM),
         lambda m, a: _embedding(m, a)),
    ]


def _ddpm_guided(m, a):
    g = _guided(a)
    x0 = m.clip((a.x_t - a.sigma * g) / a.alpha, -1.0, 1.0)
    return a.ddpm_c0 * x0 + a.ddpm_c1 * a.x_t + a.ddpm_std * a.noise


def _ddim_guided(m, a):
    g = _guided(a)
    x0 = m.clip((a.x_t - a.sigma * g) / a.alpha, -1.0, 1.0)
    return a.ddim_c0 * x0 + a.ddim_dir * g + a.ddim_noise * a.noise


def _embedding(m, a):
    angles = a.t_float[:, None] * a.freqs[None, :]
    return m.concatenate([m.sin(angles), m.cos(angles)], axis=1).astype(m.float32)


class _TorchModule:
    """The few array functions the composed cases use, in PyTorch."""

    def __init__(self, torch):
        self.torch, self.float32 = torch, torch.float32

    def clip(self, x, lo, hi):
        return self.torch.clamp(x, lo, hi)

    def sin(self, x):
        return self.torch.sin(x)

    def cos(self, x):
        return self.torch.cos(x)

    def concatenate(self, xs, axis):
        return _TorchCast(self.torch.cat(xs, dim=axis))


class _TorchCast:
    def __init__(self, x):
        self.x = x

    def astype(self, dtype):
        return self.x.to(dtype)


class _TorchInputs:
    """Torch views (DLPack, no copy) of an Inputs' device arrays."""

    def __init__(self, inputs, torch):
        for name, value in vars(inputs).items():
            if hasattr(value, "__dlpack__"):  # CuPy on a GPU, NumPy in a smoke run (torch on the CPU)
                value = torch.from_dlpack(value)
            setattr(self, name, value)


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _host(a):
    a = _first(a)
    return a.get() if hasattr(a, "get") else (a.cpu().numpy() if hasattr(a, "cpu") else np.asarray(a))


def run(smoke=False, sizes=None, torch_baseline=True, results=common.RESULTS, command=None):
    import refdiff.kernels as K

    if smoke:
        xp, timer = np, common.HostTimer(warmup=0, reps=1, calls=1)
        sizes = sizes or SMOKE_SIZES
        copy_bw = None
        launch_cost = None
    else:
        import cupy as xp

        timer = common.GpuTimer()
        sizes = sizes or SIZES
        copy_bw = common.copy_bandwidth(256 * 2**20, timer)  # 256 MiB: the device's copy bandwidth
        launch_cost = common.host_launch_seconds
    torch = None
    if torch_baseline:
        try:
            import torch

            if not (smoke or torch.cuda.is_available()):  # a smoke run checks the torch code on the CPU
                torch = None
        except ImportError:
            torch = None
    m_torch = _TorchModule(torch) if torch is not None else None

    rows = []
    for size_name, shape in sizes.items():
        a = Inputs(xp, shape)
        ta = _TorchInputs(a, torch) if torch is not None else None
        for name, nbytes, fused, composed in cases(K):
            ref = _host(composed(xp, a))
            got = _host(fused(a))
            err = float(np.abs(got.astype(np.float64) - ref).max())
            scale = 1.0 + float(np.abs(ref).max())
            check = "ok" if err <= 1e-5 * scale else f"FAIL {err:.2g}"  # float32 rounding of a few ops, << 1e-5
            t_fused = timer(lambda: fused(a))
            t_comp = timer(lambda: composed(xp, a))
            t_torch = timer(lambda: composed(m_torch, ta)) if torch is not None else None
            t_host = launch_cost(lambda: fused(a)) if launch_cost else None
            bw = nbytes(a) / t_fused
            rows.append([name, f"{size_name} {'x'.join(map(str, shape))}", f"{nbytes(a) / 2**20:.2f}", check,
                         common.fmt_us(t_fused), f"{bw / 1e9:.0f}", "-" if copy_bw is None else f"{bw / copy_bw:.2f}",
                         common.fmt_us(t_comp), common.fmt_ratio(t_comp, t_fused),
                         common.fmt_us(t_torch), common.fmt_ratio(t_torch, t_fused), common.fmt_us(t_host)])
    header = ["kernel", "size", "MiB moved", "check", "fused us", "GB/s", "of copy BW",
              "CuPy composed us", "fused speed-up", "torch eager us", "vs torch", "host us/launch"]
    notes = []
    notes.append(f"kernel argument mode REFDIFF_KERNEL_ARG_MODE={K._launch.ARG_MODE} (numba: as_cuda_array; direct: CuPy arrays as they are)")
    if copy_bw is not None:
        notes.append(f"device-to-device copy bandwidth (256 MiB, read + write): {copy_bw / 1e9:.0f} GB/s")
    if smoke:
        notes.append("smoke run: simulator on the CPU, host timer; the times mean nothing")
    if torch is None:
        notes.append("PyTorch baseline skipped (torch with CUDA not importable)")
    common.record("Fused kernels: bandwidth and fusion gain", common.markdown_table(header, rows),
                  command or "python benchmarks/bench_kernels.py", notes, path=results)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="no GPU: run the CPU-side logic under the simulator")
    parser.add_argument("--sizes", nargs="*", choices=sorted(SIZES), help="subset of the sizes")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch eager baseline")
    parser.add_argument("--results", default=None, help="append to this file instead of benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    if not args.smoke:
        common.exit_without_gpu("bench_kernels.py")
    sizes = {k: SIZES[k] for k in args.sizes} if args.sizes else None
    results = args.results if args.results else (None if args.smoke else common.RESULTS)
    command = "python benchmarks/bench_kernels.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = run(smoke=args.smoke, sizes=sizes, torch_baseline=not args.no_torch, results=results, command=command.strip())
    return 1 if any(r[3] != "ok" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
