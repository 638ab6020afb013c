"""Sampling speed on a GPU: one DDIM step (U-Net forward + fused update) of the same U-Net,
refdiff's cuda backend (eager, and CUDA-graph captured) against PyTorch eager (diffusers UNet2DModel).

The U-Net: 32x32x3, base 64, channel_mults (1, 2, 2, 2), attention at 16x16, 2 residual blocks
per level (issue 6). Both frameworks get identical weights: refdiff writes a diffusers folder
(refdiff.models.diffusers_io.save_unet2d) and diffusers loads it; the first forward of both, and
one whole step, are compared before timing. A step = forward at timestep t + DDIM update (eta = 0)
to t - 20 (in PyTorch: tensor ops running the library's formula functions); images per second =
batch / median step time (CUDA events, after warm-up).

The graphed variant captures one whole refdiff step on a non-blocking CuPy stream
(Stream.begin_capture / end_capture, then graph.launch). The CapturedSampler columns time what a
user gets from GaussianDiffusion.capture_sampler (refdiff/capture.py: timesteps in device
buffers, the U-Net's products as cuTENSOR contractions during the capture, its own stream and
memory pool), one replay per step, and compare its 10-step samples with the eager loop's. Where the step cannot be captured
(a host synchronisation, a host-to-device copy of t, an allocation outside the pool), the
capture's error is printed and recorded instead of a time: that is the to-do list for issue 6.

    python benchmarks/bench_sampling_gpu.py                 # batches 1, 16, 128; appends to RESULTS.md
    python benchmarks/bench_sampling_gpu.py --batches 16 --no-torch
    python benchmarks/bench_sampling_gpu.py --smoke         # no GPU: tiny U-Net, simulator kernels, nothing recorded
Exits with code 2 and a message where no GPU is visible (unless --smoke). PyTorch + diffusers
are optional (pin: torch==2.13.0).
"""
import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_bench_common as common  # noqa: E402

common.enable_simulator_for_smoke(sys.argv)

import numpy as np  # noqa: E402

CONFIG = dict(in_channels=3, base_channels=64, channel_mults=(1, 2, 2, 2), num_res_blocks=2,
              attention_resolutions=(16,), sample_size=32, seed=0)
SMOKE_CONFIG = dict(in_channels=3, base_channels=16, channel_mults=(1, 2), num_res_blocks=1,
                    attention_resolutions=(8,), sample_size=16, norm_groups=8, seed=0)
BATCHES = (1, 16, 128)
T, STRIDE, T_STEP = 1000, 20, 500


def randomized(model, seed=0, scale=0.05):
    """`model` with N(0, scale^2) noise added to every weight (in place), so that the zero-initialised
    output convolution does not make both frameworks output 0 and the agreement check meaningful."""
    rng = np.random.default_rng(seed)
    state = {k: (v + scale * rng.standard_normal(v.shape)).astype(v.dtype) if np.issubdtype(v.dtype, np.floating) else v
             for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    return model


def smoke_backend(model):
    """Point every module's backend at the simulated cuda backend (NumPy arrays, simulator kernels)."""
    from refdiff.backend import _simulated_cuda_backend

    be = _simulated_cuda_backend()
    for _, module in model.named_modules():
        if "backend" in module.__dict__:
            object.__setattr__(module, "backend", be)
    return be


def torch_twin(model, smoke, wanted=True):
    """(torch, the same U-Net as a diffusers UNet2DModel with refdiff's weights, device), or
    (None, None, device) where torch with CUDA or diffusers is missing. A smoke run checks the
    PyTorch code on the CPU."""
    device = "cpu" if smoke else "cuda"
    if not wanted:
        return None, None, device
    try:
        import torch
        from diffusers import UNet2DModel

        from refdiff.models.diffusers_io import save_unet2d
    except ImportError:
        return None, None, device
    if not (smoke or torch.cuda.is_available()):
        return None, None, device
    folder = tempfile.mkdtemp(prefix="refdiff_bench_unet_")
    save_unet2d(model, folder)
    return torch, UNet2DModel.from_pretrained(folder).to(device), device


def refdiff_side(model, smoke):
    """(backend, array module, timer) with `model` moved to the GPU, or to the simulated
    kernels for a smoke run."""
    if smoke:
        return smoke_backend(model), np, common.HostTimer(warmup=0, reps=1, calls=1)
    import cupy

    import refdiff as rd

    model.to("cuda")
    return rd.get_backend("cuda"), cupy, common.GpuTimer(warmup=3, reps=10)


def unet_pair(smoke, torch_baseline, training):
    """The benchmarks' U-Net with randomized weights, on refdiff's side and as its diffusers twin,
    both in training or eval mode. Returns (config, model, (backend, array module, timer),
    (torch, twin, device)); torch and twin are None where the PyTorch baseline cannot run."""
    from refdiff.models.unet import UNet

    config = SMOKE_CONFIG if smoke else CONFIG
    model = randomized(UNet(**config))
    torch, tmodel, device = torch_twin(model, smoke, torch_baseline)
    if tmodel is not None:
        tmodel.train(training)
    refdiff = refdiff_side(model, smoke)
    model.train(training)
    return config, model, refdiff, (torch, tmodel, device)


def refdiff_step(model, be, schedule, x, t):
    """One DDIM step (eta = 0) from t to t - STRIDE; returns x_prev."""
    import refdiff as rd

    with rd.no_grad():
        out = model(x, t).data  # a Python int t is filled in on the device: no copy, capturable
    return be.ddim_step(x, out, t, t - STRIDE, schedule, eta=0.0)


def torch_step(model, coefs, x, t_tensor):
    """The same step in PyTorch eager: diffusers forward + the DDIM update as tensor ops, by the
    library's arithmetic-only formula functions (the lines refdiff's fused kernel compiles)."""
    import torch

    from refdiff.gaussian.parameterization import PREDICTION_CODES, x0_eps_from_output_formula

    sqrt_abar, sqrt_one_minus_abar, sqrt_abar_prev, direction_coef = coefs
    with torch.no_grad():
        model_output = model(x, t_tensor).sample
        x0_pred, eps_pred = x0_eps_from_output_formula(x, model_output, sqrt_abar, sqrt_one_minus_abar,
                                                       PREDICTION_CODES["epsilon"])  # DDPM eq. 15
        x0_pred = torch.clamp(x0_pred, -1.0, 1.0)
        return sqrt_abar_prev * x0_pred + direction_coef * eps_pred  # DDIM eq. 12, eta = 0


def ddim_step_coefficients(schedule, t, t_prev):
    """(sqrt_abar, sqrt_one_minus_abar, sqrt_abar_prev, direction_coef) of a DDIM step t -> t_prev
    with eta = 0, as Python floats (computed in float64 from the library's tables and functions)."""
    abar_t, abar_prev = schedule.alphas_cumprod_at(np.array([t, t_prev]))
    sqrt_abar_prev, direction_coef, _ = common.ddim_coefficients(abar_t, abar_prev, eta=0.0)
    return (float(schedule.sqrt_alphas_cumprod[t]), float(schedule.sqrt_one_minus_alphas_cumprod[t]),
            float(sqrt_abar_prev), float(direction_coef))


def try_graph(step, timer):
    """(seconds per graph launch, None) or (None, the error that made the capture fail)."""
    import cupy

    stream = cupy.cuda.Stream(non_blocking=True)
    try:
        graph = common.capture(step, stream)  # raises the step's own error, not end_capture's
    except Exception as e:  # report, do not hide: capture failures are issue 15's to-do list
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    with stream:
        return timer(lambda: graph.launch(stream)), None


def captured_sampler_step(model, schedule, batch, timer, steps=10):
    """(seconds per replay of refdiff's CapturedSampler step, None, agreement) or (None, why, "-").

    The object a user gets from GaussianDiffusion.capture_sampler: warm-up, capture of the whole
    DDIM step (U-Net with cuTENSOR products, fused step kernel) on its own stream and pool, replays.
    agreement: max |captured - eager| / max |eager| of `steps`-step samples with the same seed
    (cuTENSOR against cuBLAS products: float32 rounding only)."""
    import refdiff as rd
    from refdiff.capture import CapturedSampler

    diffusion = rd.GaussianDiffusion(model, schedule)
    try:
        captured = CapturedSampler(diffusion, batch, sampler="ddim", steps=steps)
        samples = captured.sample(seed=0)
    except Exception as e:  # report, do not hide: the capture's own error is the to-do list
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}", "-"
    eager = diffusion.sample(batch, sampler="ddim", steps=steps, seed=0, progress=False)
    agree = f"{float(np.abs(samples - eager).max() / max(np.abs(eager).max(), 1e-30)):.1e}"
    with captured.step.stream:  # the timer's events on the stream the graph replays on
        return timer(captured.step.replay), None, agree


def run(smoke=False, batches=BATCHES, torch_baseline=True, results=common.RESULTS, command=None):
    import refdiff as rd
    from refdiff.backend import to_numpy

    schedule = rd.NoiseSchedule.linear(T=T)
    config, model, (be, xp, timer), (torch, tmodel, device) = unet_pair(smoke, torch_baseline, training=False)
    coefs = ddim_step_coefficients(schedule, T_STEP, T_STEP - STRIDE)
    relative = lambda mine, ref: f"{float(np.abs(mine - ref).max() / np.abs(ref).max()):.1e}"  # noqa: E731

    rows, notes = [], []
    side = config["sample_size"]
    for batch in batches:
        x_host = np.random.default_rng(batch).standard_normal((batch, 3, side, side)).astype(np.float32)
        x = xp.asarray(x_host)
        step = lambda: refdiff_step(model, be, schedule, x, T_STEP)  # noqa: E731
        t_eager = timer(step)
        t_graph, why = (None, "smoke run") if smoke else try_graph(step, timer)
        if why and why != "smoke run":
            notes.append(f"batch {batch}: graph capture failed: {why}")
        t_captured, why, agree_captured = (None, None, "-") if smoke else captured_sampler_step(model, schedule, batch,
                                                                                               timer)
        if why:
            notes.append(f"batch {batch}: CapturedSampler failed: {why}")
        t_torch, agree = None, "-"
        if tmodel is not None:
            tx = torch.from_dlpack(x)
            tt = torch.full((batch,), T_STEP, device=device, dtype=torch.long)
            with torch.no_grad():
                ref = tmodel(tx, tt).sample.cpu().numpy()
            with rd.no_grad():
                mine = to_numpy(model(x, np.full(batch, T_STEP)).data)
            step_ref = torch_step(tmodel, coefs, tx, tt).cpu().numpy()
            agree = f"{relative(mine, ref)}, {relative(to_numpy(step()), step_ref)}"
            t_torch = timer(lambda: torch_step(tmodel, coefs, tx, tt))
        ips = lambda s: "-" if s is None else f"{batch / s:.0f}"  # noqa: E731
        rows.append([batch, common.fmt_us(t_eager), ips(t_eager), common.fmt_us(t_graph), ips(t_graph),
                     common.fmt_us(t_captured), ips(t_captured), common.fmt_ratio(t_captured, t_eager), agree_captured,
                     common.fmt_us(t_torch), ips(t_torch), common.fmt_ratio(t_eager, t_torch),
                     common.fmt_ratio(t_graph, t_torch), agree])
    header = ["batch", "refdiff eager us/step", "img/s", "refdiff graphed us/step", "img/s",
              "CapturedSampler us/step", "img/s", "captured / eager time", "captured vs eager samples",
              "torch eager us/step", "img/s", "eager / torch time", "graphed / torch time",
              "vs torch, max abs diff / max abs: U-Net output, step"]
    notes.insert(0, f"U-Net {config}; DDIM step t={T_STEP} -> {T_STEP - STRIDE}, eta=0")
    if smoke:
        notes.append("smoke run: NumPy + simulator kernels on the CPU, host timer; the times mean nothing")
    elif tmodel is None:
        notes.append("PyTorch baseline skipped (torch with CUDA and diffusers not importable)")
    common.record("Sampling step: refdiff cuda vs PyTorch eager", common.markdown_table(header, rows),
                  command or "python benchmarks/bench_sampling_gpu.py", notes, path=results)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", nargs="*", type=int, default=None)
    args, results, command = common.parse_arguments(parser, "bench_sampling_gpu.py", argv,
                                                    "no GPU: tiny U-Net on NumPy with simulator kernels")
    batches = tuple(args.batches) if args.batches else ((2,) if args.smoke else BATCHES)
    run(smoke=args.smoke, batches=batches, torch_baseline=not args.no_torch, results=results, command=command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
