"""Host time per fused-kernel launch, with and without kernels/_launch.py's argument cache (issue 15, item 5).

One launch = refdiff.kernels.euler_step(x, denoised, sigma, sigma_next) on float32 arrays of
(1, 1024): two input arrays (converted once per buffer with the cache, at every launch without),
one new output. Host seconds per launch: the host clock over `calls` launches issued back to back,
then one synchronisation (on a GPU the kernels are tiny, so this is the host's launch rate: what the
cache is meant to lower; issue 15 quotes tens to ~100 us per numba-cuda launch with CuPy arrays).
Also reported: the same launch captured in a CUDA graph (GPU time per replayed launch).

    python benchmarks/bench_launch_cost.py            # GPU: appends its table to benchmarks/RESULTS.md
    python benchmarks/bench_launch_cost.py --smoke    # no GPU: Numba's CUDA simulator, nothing recorded

Under the simulator the "launch" is Python running every thread of the kernel on the CPU and the
conversion the cache skips is the identity: its figures are NOT GPU figures, only a check that
the script runs and a relative number (cache on / off) dominated by the simulator.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_bench_common as common  # noqa: E402

common.enable_simulator_for_smoke(sys.argv)

import numpy as np  # noqa: E402

SHAPE = (1, 1024)


def run(smoke=False, calls=200, results=common.RESULTS, command=None):
    from refdiff import kernels
    from refdiff.kernels import _launch

    if smoke:
        xp, sync, calls = np, None, min(calls, 5)
    else:
        import cupy as xp

        sync = lambda: xp.cuda.get_current_stream().synchronize()  # noqa: E731
    rng = np.random.default_rng(0)
    x, denoised = (xp.asarray(rng.standard_normal(SHAPE).astype(np.float32)) for _ in range(2))
    launch = lambda: kernels.euler_step(x, denoised, 2.0, 1.5)  # noqa: E731
    timer = common.HostTimer(warmup=3, reps=7, calls=calls, sync=sync)
    rows, saved = [], _launch.ARG_CACHE
    try:
        for name, cache in (("off", None), ("on", _launch.ArgumentCache())):
            _launch.ARG_CACHE = cache
            seconds = timer(launch)
            hits = "-" if cache is None else f"{cache.hits} hits / {cache.misses} misses"
            rows.append([name, common.fmt_us(seconds), hits])
    finally:
        _launch.ARG_CACHE = saved
    off, on = (float(r[1]) for r in rows)
    graphed = "-"
    if not smoke:
        seconds, why = common.GpuTimer(warmup=3, reps=10).graphed(launch, calls=100)
        graphed = common.fmt_us(seconds) if why is None else f"capture failed: {why}"
    header = ["argument cache", "host us per launch", "cache hits"]
    notes = [f"euler_step on float32 {SHAPE} (2 inputs, 1 output), {calls} launches per repetition, median of 7",
             f"on / off: {on / off:.2f}", f"graphed (GPU us per replayed launch): {graphed}"]
    if smoke:
        notes.append("Numba CUDA simulator on the CPU: NOT a GPU figure (Python runs every thread; the cached "
                     "conversion is the identity)")
    print(common.markdown_table(header, rows))
    for note in notes:
        print("-", note)
    if results:
        common.record("Kernel launch cost: argument cache on and off", common.markdown_table(header, rows),
                      command or "python benchmarks/bench_launch_cost.py", notes, path=results)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=200, help="launches per timed repetition")
    args, results, command = common.parse_arguments(parser, "bench_launch_cost.py", argv,
                                                    "no GPU: the simulator's launches, nothing recorded")
    run(smoke=args.smoke, calls=args.calls, results=results, command=command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
