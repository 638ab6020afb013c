"""Shared plumbing of the GPU benchmarks: command line, GPU check, CUDA-event timing, copy
bandwidth, RESULTS.md, and the DDIM coefficients their composed baselines use.

Used by bench_kernels.py, bench_sampling_gpu.py and bench_train_gpu.py (run as scripts from the
repository root: `python benchmarks/bench_kernels.py`). Timing is CUDA events on CuPy's current
stream after a warm-up, the median of many repetitions; each repetition times a run of calls
long enough (>= 1 ms) that event resolution does not matter. Where no GPU is visible, the scripts
print why and exit with code 2 (nothing measured); `--smoke` runs their CPU-side logic instead
(under Numba's CUDA simulator for the kernels, tiny sizes, host timers, nothing recorded).
"""
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time

from refdiff.backend import cuda_problem as gpu_problem  # None if CuPy sees a GPU, else why not

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "RESULTS.md")
NO_GPU_EXIT = 2


def exit_without_gpu(script, smoke=True):
    """Print why the benchmark cannot run here and exit with code 2."""
    problem = gpu_problem()
    if problem is not None:
        print(f"{script}: no GPU visible, nothing measured: {problem}.")
        if smoke:
            print(f"  (run `python benchmarks/{script} --smoke` to check its CPU-side logic)")
        sys.exit(NO_GPU_EXIT)


def enable_simulator_for_smoke(argv):
    """--smoke runs the kernels under Numba's CUDA simulator: switch it on before numba is imported."""
    if "--smoke" in argv:
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"


def parse_arguments(parser, script, argv, smoke_help):
    """Add --smoke, --no-torch and --results to `parser` and parse argv; exit with code 2 where no
    GPU is visible (unless --smoke). Returns (args, the RESULTS.md to append to or None, the command)."""
    parser.add_argument("--smoke", action="store_true", help=smoke_help)
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch eager baseline")
    parser.add_argument("--results", default=None, help="append to this file instead of benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    if not args.smoke:
        exit_without_gpu(script)
    results = args.results if args.results else (None if args.smoke else RESULTS)
    command = f"python benchmarks/{script} " + " ".join(argv if argv is not None else sys.argv[1:])
    return args, results, command.strip()


# ---- coefficients of the composed baselines --------------------------------------------------


def ddim_coefficients(abar_t, abar_prev, eta):
    """(sqrt_abar_prev, direction_coef, sigma_eta) of the DDIM update, float64 on the host:

        x_prev = sqrt_abar_prev x_0 + direction_coef eps + sigma_eta noise          DDIM eq. 12
        sigma_eta = ddim_sigma(abar_t, abar_prev, eta)                               DDIM eq. 16
        direction_coef = sqrt(ddim_direction_variance(abar_prev, sigma_eta))

    from the library's functions, as refdiff.samplers.ddim.ddim_step computes them.
    """
    from refdiff.samplers.ddim import ddim_direction_variance, ddim_sigma

    sigma_eta = ddim_sigma(abar_t, abar_prev, eta)
    direction_coef = ddim_direction_variance(abar_prev, sigma_eta) ** 0.5
    return abar_prev**0.5, direction_coef, sigma_eta


# ---- timing --------------------------------------------------------------------------------


def capture(fn, stream, calls=1):
    """A CUDA graph of `calls` calls of fn() captured on `stream` (a non-default CuPy stream),
    after one warm-up call on it (caches filled, memory pool grown, kernels compiled).

    If a call fails during the capture, that error is raised: ending the broken capture raises an
    error of its own ("capture invalidated"), which is swallowed rather than raised in its place.
    """
    with stream:
        fn()
        stream.synchronize()
        stream.begin_capture()
        try:
            for _ in range(calls):
                fn()
        except BaseException:
            try:
                stream.end_capture()
            except Exception:  # the capture is already broken by the error being raised
                pass
            raise
        return stream.end_capture()


class GpuTimer:
    """Median seconds per call of fn() on the GPU, by CUDA events on CuPy's current stream.

    Calling the timer times calls issued back to back (eager): where a call's GPU work is shorter
    than the host's cost of launching it (kernels of a few microseconds), that measures the launch
    rate, not the GPU. `graphed(fn)` replays one CUDA graph of many calls: GPU time only.
    """

    def __init__(self, warmup=10, reps=30, min_rep_seconds=1e-3):
        self.warmup, self.reps, self.min_rep_seconds = warmup, reps, min_rep_seconds

    def __call__(self, fn):
        import cupy

        for _ in range(self.warmup):
            fn()
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        # calls per repetition: enough for min_rep_seconds, estimated from one timed call
        start.record()
        fn()
        end.record()
        end.synchronize()
        one = max(cupy.cuda.get_elapsed_time(start, end) / 1e3, 1e-7)
        inner = max(1, min(1000, int(self.min_rep_seconds / one)))
        times = []
        for _ in range(self.reps):
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            times.append(cupy.cuda.get_elapsed_time(start, end) / 1e3 / inner)
        return statistics.median(times)

    def graphed(self, fn, calls=100):
        """(GPU seconds per call of fn(), None) from replays of one CUDA graph of `calls` calls, or
        (None, the capture's own error in one line) where fn cannot be captured."""
        import cupy

        stream = cupy.cuda.Stream(non_blocking=True)
        try:
            graph = capture(fn, stream, calls)
        except Exception as e:
            return None, f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
        with stream:  # the events of __call__ are recorded on the current stream: this one
            return self(lambda: graph.launch(stream)) / calls, None


class HostTimer:
    """Median seconds per call by the host clock (smoke runs, and launch costs on the host)."""

    def __init__(self, warmup=2, reps=5, calls=3, sync=None):
        self.warmup, self.reps, self.calls, self.sync = warmup, reps, calls, sync

    def __call__(self, fn):
        for _ in range(self.warmup):
            fn()
        if self.sync:
            self.sync()
        times = []
        for _ in range(self.reps):
            t0 = time.perf_counter()
            for _ in range(self.calls):
                fn()
            times.append((time.perf_counter() - t0) / self.calls)
        if self.sync:
            self.sync()
        return statistics.median(times)


def host_launch_seconds(fn, calls=200):
    """Host time per call of fn() without waiting for the GPU: the CPU cost of a launch.

    The GPU queue is drained first; the calls are issued back to back. While this time exceeds
    the kernel's GPU time, the kernel is launch-bound.
    """
    import cupy

    fn()
    cupy.cuda.get_current_stream().synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = (time.perf_counter() - t0) / calls
    cupy.cuda.get_current_stream().synchronize()
    return elapsed


def copy_bandwidth(nbytes, timer):
    """Device-to-device copy bandwidth in bytes/s (read + write: 2 nbytes per copy)."""
    import cupy

    src = cupy.ones(nbytes // 4, dtype=cupy.float32)
    dst = cupy.empty_like(src)
    stream = cupy.cuda.get_current_stream()
    seconds = timer(lambda: dst.data.copy_from_device_async(src.data, src.nbytes, stream))
    return 2 * src.nbytes / seconds


# ---- recording -----------------------------------------------------------------------------


def device_name():
    try:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.runtime.getDevice())
        name = props["name"]
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        return f"CPU ({platform.processor() or platform.machine()}), simulator"


def git_commit():
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                               text=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except Exception:
        return "unknown"


def versions():
    parts = [f"python {platform.python_version()}"]
    for name in ("numpy", "cupy", "numba", "numba_cuda", "torch"):
        module = sys.modules.get(name)
        if module is not None:
            parts.append(f"{name} {getattr(module, '__version__', '?')}")
    return ", ".join(parts)


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def record(title, table, command, notes=(), path=RESULTS):
    """Print the table and append it to RESULTS.md with date, device, commit and command."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    block = [f"## {title}", "", f"- date: {stamp}", f"- device: {device_name()}", f"- commit: {git_commit()}",
             f"- command: `{command}`", f"- versions: {versions()}"]
    block += [f"- {n}" for n in notes]
    block += ["", table, ""]
    text = "\n".join(block)
    print(text)
    if path:
        new = not os.path.exists(path)
        with open(path, "a") as f:
            if new:
                f.write("# Benchmark results\n\nEvery recorded figure, appended by the scripts in benchmarks/.\n\n")
            f.write(text + "\n")
        print(f"(appended to {os.path.relpath(path, ROOT)})")


def fmt_us(seconds):
    return "-" if seconds is None else f"{seconds * 1e6:.1f}"


def fmt_ratio(a, b):
    return "-" if a is None or b is None else f"{a / b:.2f}x"
