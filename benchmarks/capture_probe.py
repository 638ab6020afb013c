"""What can be captured into a CUDA graph on this GPU, one line per operation (issue 15, item 4).

A captured sampling step needs every operation of the step to be capturable. This script tries
each kind the step uses, alone, on a non-blocking CuPy stream, and prints a table: captured (and
replayed, with the replay checked against an eager run where that is cheap) or refused (with
the error's first line). It settles on hardware what the CPU tests can only assume:

    CuPy elementwise kernel            expected: captured
    cuBLAS matmul (cupy.matmul)        expected: refused (cupy/cupy#6290; CuPy 14: NotImplementedError)
    cuTENSOR contraction               expected: captured where cuTENSOR is installed (the capture-safe matmul route)
    cuRAND draw (Generator)            expected: refused
    fused ddim_step, caches warm       expected: captured (numba-cuda launch, t by value, noise preallocated)
    fused ddim_step, device t arrays   expected: captured; t and t_prev read from device memory at replay
    fused ddim_step, cold caches       expected: refused (the schedule tables' first cuda.to_device)
    MLP denoiser forward               expected: captured where cuTENSOR is installed (refdiff.backend.matmul
                                       takes cuTENSOR while the stream captures); refused without it
    U-Net sampler step (CapturedSampler) expected: captured, replays equal to the eager loop up to rounding

    python benchmarks/capture_probe.py [--results FILE]    # exits 2 where no GPU is visible
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_bench_common as common  # noqa: E402


def probes(cupy):
    """[(name, fn, check)]: fn() is captured; check(), if given, runs after a replay and returns
    None or why the replayed result is wrong."""
    import refdiff as rd
    from refdiff.models.mlp import MLPDenoiser

    be = rd.get_backend("cuda")
    x = cupy.random.default_rng(0).standard_normal((8, 3, 16, 16), dtype=cupy.float32)
    a = cupy.random.default_rng(1).standard_normal((64, 64), dtype=cupy.float32)
    out = cupy.empty_like(x)
    c = cupy.empty_like(a)
    noise = cupy.empty_like(x)
    noise[...] = cupy.random.default_rng(2).standard_normal(x.shape, dtype=cupy.float32)  # drawn outside the graph
    warm = rd.NoiseSchedule.linear(T=1000)
    be.ddim_step(x, x, 500, 480, warm, eta=0.5, noise=noise)  # fills warm's device tables
    t_dev, t_prev_dev = cupy.full(8, 500, dtype=cupy.int64), cupy.full(8, 480, dtype=cupy.int64)
    expected = be.ddim_step(x, x, 500, 480, warm, eta=0.5, noise=noise)

    def step_into_out():
        out[...] = be.ddim_step(x, x, 500, 480, warm, eta=0.5, noise=noise)

    def step_device_t():
        out[...] = be.ddim_step(x, x, t_dev, t_prev_dev, warm, eta=0.5, noise=noise)

    def cold_step():
        be.ddim_step(x, x, 500, 480, rd.NoiseSchedule.cosine(T=1000), eta=0.0)

    def same_as_eager():
        diff = float(cupy.abs(out - expected).max())
        return None if diff == 0 else f"replay differs from the eager step by {diff:.3g}"

    def contraction():
        import cupyx.cutensor

        cupyx.cutensor.contraction(1.0, a, (0, 1), a, (1, 2), 0.0, c, (0, 2))  # c = a a

    mlp = MLPDenoiser(dim=2, hidden=64, num_blocks=2, time_dim=16).to(be)
    x2 = cupy.zeros((8, 2), dtype=cupy.float32)

    def mlp_forward():
        with rd.no_grad():
            mlp(x2, 5)

    from refdiff.capture import CapturedSampler
    from refdiff.models.unet import UNet

    unet = UNet(in_channels=3, base_channels=16, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(8,),
                sample_size=16, norm_groups=8).to(be)
    diffusion = rd.GaussianDiffusion(unet, warm)
    made = {}

    def captured_sampler():  # CapturedStep captures on its own stream: the probe's stream captures nothing
        made["sampler"] = CapturedSampler(diffusion, 2, sampler="ddim", steps=5)

    def sampler_equals_eager():
        got = made["sampler"].sample(seed=0)
        expected = diffusion.sample(2, sampler="ddim", steps=5, seed=0, progress=False)
        diff = float(abs(got - expected).max() / max(abs(expected).max(), 1e-30))
        return None if diff < 1e-3 else f"captured samples differ from the eager loop's by {diff:.3g} (relative)"

    return [
        ("CuPy elementwise kernel", lambda: cupy.multiply(x, 2.0, out=out), None),
        ("cuBLAS matmul (cupy.matmul)", lambda: cupy.matmul(a, a), None),
        ("cuTENSOR contraction (cupyx.cutensor)", contraction, None),
        ("cuRAND draw (Generator.standard_normal)", lambda: cupy.random.default_rng(3).standard_normal(8), None),
        ("fused ddim_step, caches warm, t by value", step_into_out, same_as_eager),
        ("fused ddim_step, t and t_prev device arrays", step_device_t, same_as_eager),
        ("fused ddim_step, cold caches (new schedule)", cold_step, None),
        ("MLP denoiser forward (cuTENSOR route)", mlp_forward, None),
        ("U-Net DDIM step as CapturedSampler", captured_sampler, sampler_equals_eager),
    ]


def run(results=None):
    import cupy

    rows = []
    for name, fn, check in probes(cupy):
        stream = cupy.cuda.Stream(non_blocking=True)
        try:
            if "CapturedSampler" in name:  # captures by itself (refdiff.backend.CapturedStep)
                fn()
                wrong = check()
                rows.append([name, "captured" if wrong is None else "captured, WRONG", wrong or ""])
                print(f"{name}: {rows[-1][1]} {rows[-1][2]}", flush=True)
                continue
            if "cold" in name:  # no warm-up call: the point is what a first call does inside a capture
                with stream:
                    stream.begin_capture()
                    try:
                        fn()
                    except BaseException:
                        try:
                            stream.end_capture()
                        except Exception:
                            pass
                        raise
                    graph = stream.end_capture()
            else:
                graph = common.capture(fn, stream)
            graph.launch(stream)
            stream.synchronize()
            wrong = check() if check else None
            rows.append([name, "captured" if wrong is None else "captured, WRONG", wrong or ""])
        except Exception as e:
            line = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
            rows.append([name, "refused", f"{type(e).__name__}: {line}"])
        print(f"{name}: {rows[-1][1]} {rows[-1][2]}", flush=True)
    table = common.markdown_table(["operation", "under stream capture", "error / note"], rows)
    common.record("CUDA graph capture probe", table, "python benchmarks/capture_probe.py",
                  [f"CUPY_ACCELERATORS={os.environ.get('CUPY_ACCELERATORS', '')!r}"], path=results)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", default=None, help="append the table to this file (default: print only)")
    args = parser.parse_args(argv)
    common.exit_without_gpu("capture_probe.py", smoke=False)  # CPU-side: tests/test_device_path.py
    run(args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
