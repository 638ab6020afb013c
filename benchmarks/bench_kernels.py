"""Fused kernels on a GPU: achieved bandwidth against the device's copy bandwidth, and fusion's gain.

For each kernel of refdiff.kernels and each size:
  fused      the kernel: median time (CUDA events, after warm-up), bytes it must read + write
             (the napkin math in its file header), achieved GB/s, and that over the
             device-to-device copy bandwidth measured in this run (target >= 0.85 at >= 64 MB);
  composed   the same math as unfused CuPy array ops: the library's arithmetic-only formula
             functions called on whole arrays, with the per-sample coefficients computed by the
             library's functions in float64 on the host and put on the device outside the timing
             (a generous baseline), and the speed-up of fused over it;
  torch      the same composed lines in PyTorch eager on the same memory (optional: needs torch);
  host       the host time of one fused launch (no GPU wait): launch-bound while it exceeds the
             fused GPU time.
Before timing, the fused result is checked against the composed ones (CuPy, and torch where run).

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
from refdiff.backend import to_numpy  # noqa: E402
from refdiff.gaussian.guidance import guided_output  # noqa: E402
from refdiff.gaussian.parameterization import (  # noqa: E402
    PREDICTION_CODES,
    v_from_x0_eps_formula,
    x0_eps_from_output_formula,
    x_t_formula,
)

EPSILON = PREDICTION_CODES["epsilon"]

SIZES = {"small": (16, 3, 32, 32), "large": (256, 4, 64, 64), "xlarge": (1024, 4, 64, 64)}
SMOKE_SIZES = {"tiny": (3, 2, 5, 7)}
T = 1000
STRIDE = 20  # the DDIM cases step from t to t - STRIDE (50 steps of 1000); t_prev may be < 0
GUIDANCE_SCALE = 3.0
EMBEDDING_DIM = 256


class Inputs:
    """Arrays of one size on the device (or NumPy in a smoke run), and their per-sample coefficients.

    The coefficients are computed by the library's functions in float64 on the host, once per
    sample, and rounded once to float32 (refdiff.backend.per_sample, shape (B, 1, 1, 1)), outside
    the timing: a generous baseline. The fused kernels compute the same functions per sample.
    """

    def __init__(self, xp, shape, seed=0):
        import refdiff as rd
        from refdiff.backend import per_sample
        from refdiff.gaussian.embedding import timestep_frequencies
        from refdiff.gaussian.posterior import posterior_mean_coefficients
        from refdiff.samplers.ddpm import ddpm_variance

        rng = np.random.default_rng(seed)
        self.xp, self.shape, self.n = xp, shape, int(np.prod(shape))
        self.schedule = schedule = rd.NoiseSchedule.linear(T=T)
        draw = lambda: xp.asarray(rng.standard_normal(shape).astype(np.float32))  # noqa: E731
        self.x0, self.noise, self.x_t = draw(), draw(), draw()
        self.model_output, self.model_output_uncond = draw(), draw()
        t = rng.integers(1, T, shape[0])  # (B,)
        self.t = xp.asarray(t)
        self.t_prev = xp.asarray(t - STRIDE)
        on_device = lambda values: per_sample(values, self.x_t)  # noqa: E731  (B,) float64 -> (B, 1, 1, 1) float32

        # q(x_t | x_0) and x_0 from eps: sqrt(abar_t), sqrt(1 - abar_t)   (DDPM eqs. 4, 15)
        self.sqrt_abar = on_device(schedule.sqrt_alphas_cumprod[t])
        self.sqrt_one_minus_abar = on_device(schedule.sqrt_one_minus_alphas_cumprod[t])
        abar_t = schedule.alphas_cumprod[t]

        # DDPM step t -> t - 1: posterior mean coefficients and "fixed_small" std   (DDPM eq. 7)
        abar_prev = schedule.alphas_cumprod_at(t - 1)
        coef_x0, coef_xt = posterior_mean_coefficients(abar_t, abar_prev)
        self.ddpm_coef_x0, self.ddpm_coef_xt = on_device(coef_x0), on_device(coef_xt)
        self.ddpm_std = on_device(ddpm_variance(abar_t, abar_prev, "fixed_small") ** 0.5)

        # DDIM step t -> t - STRIDE, eta = 0 and eta = 1   (DDIM eqs. 12, 16)
        abar_prev = schedule.alphas_cumprod_at(t - STRIDE)
        sqrt_abar_prev, direction_coef, _ = common.ddim_coefficients(abar_t, abar_prev, eta=0.0)
        self.ddim_sqrt_abar_prev, self.ddim_direction_coef_eta0 = on_device(sqrt_abar_prev), on_device(direction_coef)
        _, direction_coef, sigma_eta = common.ddim_coefficients(abar_t, abar_prev, eta=1.0)
        self.ddim_direction_coef_eta1, self.ddim_sigma_eta1 = on_device(direction_coef), on_device(sigma_eta)

        self.freqs = xp.asarray(timestep_frequencies(EMBEDDING_DIM // 2, 10000, 1))
        self.t_float = xp.asarray(t.astype(np.float64))


# ---- the cases: (name, bytes moved, fused call, composed call on (xp-like module, inputs)) ----
# The composed versions are unfused compositions of array ops: the library's arithmetic-only
# formula functions (refdiff.gaussian.parameterization, refdiff.gaussian.guidance) called on
# whole arrays, so CuPy and PyTorch run the very lines the kernels compile. `m` is cupy, numpy or
# a torch shim with clip / sin / cos / concatenate; `a` holds the arrays (CuPy, or torch views).


def _x_t(a):
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise   (DDPM eq. 4)."""
    return x_t_formula(a.x0, a.noise, a.sqrt_abar, a.sqrt_one_minus_abar)


def _x0_eps(m, a, model_output):
    """(x_0 clipped to [-1, 1], eps) from an eps prediction   (DDPM eq. 15; diffusers' clip_sample)."""
    x0_pred, eps_pred = x0_eps_from_output_formula(a.x_t, model_output, a.sqrt_abar, a.sqrt_one_minus_abar, EPSILON)
    return m.clip(x0_pred, -1.0, 1.0), eps_pred


def _guided(a):
    return guided_output(a.model_output, a.model_output_uncond, GUIDANCE_SCALE)  # Ho & Salimans 2022, eq. 6


def _ddpm(m, a, model_output):
    """mean + std noise, mean = coef_x0 x_0 + coef_xt x_t   (DDPM eq. 7, Algorithm 2)."""
    x0_pred, _ = _x0_eps(m, a, model_output)
    return a.ddpm_coef_x0 * x0_pred + a.ddpm_coef_xt * a.x_t + a.ddpm_std * a.noise


def _ddim(m, a, model_output, direction_coef, sigma_eta=None):
    """sqrt(abar_prev) x_0 + direction_coef eps (+ sigma_eta noise)   (DDIM eq. 12)."""
    x0_pred, eps_pred = _x0_eps(m, a, model_output)
    x_prev = a.ddim_sqrt_abar_prev * x0_pred + direction_coef * eps_pred
    return x_prev if sigma_eta is None else x_prev + sigma_eta * a.noise


def _embedding(m, a):
    angles = a.t_float[:, None] * a.freqs[None, :]
    return m.concatenate([m.sin(angles), m.cos(angles)], axis=1).astype(m.float32)


def cases(K):
    """K: refdiff.kernels. Each case: name, bytes per call as f(inputs), fused(a), composed(m, a)."""
    return [
        ("q_sample", lambda a: 12 * a.n,
         lambda a: K.q_sample(a.x0, a.t, a.noise, a.schedule),
         lambda m, a: _x_t(a)),
        ("q_sample_with_target v", lambda a: 16 * a.n,
         lambda a: K.q_sample_with_target(a.x0, a.t, a.noise, a.schedule, "v_prediction"),
         lambda m, a: (_x_t(a), v_from_x0_eps_formula(a.x0, a.noise, a.sqrt_abar, a.sqrt_one_minus_abar))),
        ("ddpm_step eps clip", lambda a: 16 * a.n,
         lambda a: K.ddpm_step(a.x_t, a.model_output, a.t, a.schedule, a.noise),
         lambda m, a: _ddpm(m, a, a.model_output)),
        ("ddpm_step guided s=3", lambda a: 20 * a.n,
         lambda a: K.ddpm_step(a.x_t, a.model_output, a.t, a.schedule, a.noise,
                               model_output_uncond=a.model_output_uncond, guidance_scale=GUIDANCE_SCALE),
         lambda m, a: _ddpm(m, a, _guided(a))),
        ("ddim_step eta=0", lambda a: 12 * a.n,
         lambda a: K.ddim_step(a.x_t, a.model_output, a.t, a.t_prev, a.schedule),
         lambda m, a: _ddim(m, a, a.model_output, a.ddim_direction_coef_eta0)),
        ("ddim_step eta=1 guided", lambda a: 20 * a.n,
         lambda a: K.ddim_step(a.x_t, a.model_output, a.t, a.t_prev, a.schedule, eta=1.0, noise=a.noise,
                               model_output_uncond=a.model_output_uncond, guidance_scale=GUIDANCE_SCALE),
         lambda m, a: _ddim(m, a, _guided(a), a.ddim_direction_coef_eta1, a.ddim_sigma_eta1)),
        ("timestep_embedding d=256", lambda a: a.shape[0] * (EMBEDDING_DIM * 4 + 8),
         lambda a: K.timestep_embedding(a.t, EMBEDDING_DIM),
         lambda m, a: _embedding(m, a)),
    ]


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


def _max_error(got, ref):
    """max |got - ref| / (1 + max |ref|): float32 rounding of a few ops stays well below 1e-5."""
    ref = ref.astype(np.float64)
    return float(np.abs(got.astype(np.float64) - ref).max()) / (1.0 + float(np.abs(ref).max()))


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

    rows, graph_failures = [], []
    for size_name, shape in sizes.items():
        a = Inputs(xp, shape)
        ta = _TorchInputs(a, torch) if torch is not None else None
        for name, nbytes, fused, composed in cases(K):
            got = to_numpy(_first(fused(a)))
            err = _max_error(got, to_numpy(_first(composed(xp, a))))
            if torch is not None:  # the torch baseline runs the same lines: it must agree as well
                err = max(err, _max_error(got, _first(composed(m_torch, ta)).cpu().numpy()))
            check = "ok" if err <= 1e-5 else f"FAIL {err:.2g}"
            t_fused = timer(lambda: fused(a))
            t_graph, why = (None, None) if smoke else timer.graphed(lambda: fused(a))
            if why:
                graph_failures.append(f"{name} {size_name}: graph capture failed: {why}")
            t_comp = timer(lambda: composed(xp, a))
            t_torch = timer(lambda: composed(m_torch, ta)) if torch is not None else None
            t_host = launch_cost(lambda: fused(a)) if launch_cost else None
            t_gpu = t_graph if t_graph is not None else t_fused  # the kernel's own time where known
            bw = nbytes(a) / t_gpu
            rows.append([name, f"{size_name} {'x'.join(map(str, shape))}", f"{nbytes(a) / 2**20:.2f}", check,
                         common.fmt_us(t_fused), common.fmt_us(t_graph), f"{bw / 1e9:.0f}",
                         "-" if copy_bw is None else f"{bw / copy_bw:.2f}",
                         common.fmt_us(t_comp), common.fmt_ratio(t_comp, t_fused),
                         common.fmt_us(t_torch), common.fmt_ratio(t_torch, t_fused), common.fmt_us(t_host)])
    header = ["kernel", "size", "MiB moved", "check", "fused us (eager)", "fused us (graph)", "GB/s", "of copy BW",
              "CuPy composed us", "fused speed-up", "torch eager us", "vs torch", "host us/launch"]
    notes = ["check: fused against the composed CuPy result (and the torch one where run), "
             "max abs diff <= 1e-5 (1 + max abs)",
             "eager: calls back to back, bounded by the host's launch cost for small kernels; graph: one CUDA "
             "graph of 100 calls replayed, the GPU's time per call; GB/s from the graph time where captured"]
    notes += graph_failures
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
    parser.add_argument("--sizes", nargs="*", choices=sorted(SIZES), help="subset of the sizes")
    args, results, command = common.parse_arguments(parser, "bench_kernels.py", argv,
                                                    "no GPU: run the CPU-side logic under the simulator")
    sizes = {k: SIZES[k] for k in args.sizes} if args.sizes else None
    rows = run(smoke=args.smoke, sizes=sizes, torch_baseline=not args.no_torch, results=results, command=command)
    return 1 if any(r[3] != "ok" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
