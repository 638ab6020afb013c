"""The GPU benchmark scripts are ready to run: they exit cleanly without a GPU, and their
CPU-side logic (inputs, the composed baselines, the fused-vs-composed check, the table and the
RESULTS.md record) runs under the simulator with --smoke."""
import os
import subprocess
import sys

import pytest

from refdiff.kernels.testing import SIMULATED

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))


@pytest.mark.parametrize("script", ["bench_kernels.py", "bench_sampling_gpu.py", "bench_train_gpu.py",
                                    "bench_launch_cost.py"])
def test_benchmark_without_a_gpu_exits_with_code_2_and_says_why(script):
    import gpu_bench_common

    if gpu_bench_common.gpu_problem() is None:  # on a GPU the script would measure: nothing to check here
        assert not SIMULATED
        return
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script)], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "no GPU visible, nothing measured" in r.stdout and "--smoke" in r.stdout


def test_bench_kernels_runs_checks_and_records_a_table(tmp_path):
    """Smoke run (simulator) or, on a GPU, the small size for real; every fused result must match
    its composed twin (the script's own 'check' column) and the record must land in the file."""
    import bench_kernels

    results = tmp_path / "RESULTS.md"
    argv = ["--smoke"] if SIMULATED else ["--sizes", "small", "--no-torch"]
    assert bench_kernels.main(argv + ["--results", str(results)]) == 0
    text = results.read_text()
    assert "| kernel | size |" in text and "- device:" in text and "- commit:" in text
    assert text.count("| ok |") == len(bench_kernels.cases(__import__("refdiff.kernels").kernels))


@pytest.mark.parametrize("script", ["bench_sampling_gpu", "bench_train_gpu"])
def test_model_benchmark_runs_and_records_a_table(script, tmp_path):
    """Smoke run (tiny U-Net, NumPy + simulator kernels; PyTorch on the CPU where installed) or,
    on a GPU, batch 1 for real without the PyTorch baseline."""
    import importlib

    bench = importlib.import_module(script)
    results = tmp_path / "RESULTS.md"
    extra = ["--batches", "1"] if script == "bench_sampling_gpu" else ["--batch", "1"]
    argv = ["--smoke"] if SIMULATED else extra + ["--no-torch"]
    assert bench.main(argv + ["--results", str(results)]) == 0
    text = results.read_text()
    assert "| batch |" in text and "- device:" in text and "- command:" in text


def test_bench_launch_cost_measures_both_cache_settings_and_records_a_table(tmp_path):
    """Smoke run (simulator: not a GPU figure) or, on a GPU, the real thing: a row per cache
    setting, the cache's hits counted (the second and later launches on the same inputs hit)."""
    import bench_launch_cost

    results = tmp_path / "RESULTS.md"
    rows = bench_launch_cost.run(smoke=SIMULATED, calls=2 if SIMULATED else 50, results=str(results))
    assert [r[0] for r in rows] == ["off", "on"]
    hits, misses = (int(w) for w in rows[1][2].split()[::3])
    assert misses == 2 and hits > 0  # x and denoised converted once, then reused
    assert "argument cache on and off" in results.read_text()


class _Stream:
    """A stand-in for a CuPy stream during a capture that a failing call breaks."""

    def __init__(self):
        self.calls = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def synchronize(self):
        self.calls.append("synchronize")

    def begin_capture(self):
        self.calls.append("begin_capture")

    def end_capture(self):
        self.calls.append("end_capture")
        if "failed" in self.calls:
            raise RuntimeError("cudaErrorStreamCaptureInvalidated: operation failed due to a previous error during capture")
        return "graph"


def test_a_failed_capture_raises_the_error_that_broke_it_not_end_captures():
    """issue 15: end_capture() in a `finally` replaced the real error by 'capture invalidated'."""
    import gpu_bench_common as common

    stream, calls = _Stream(), []

    def step():
        calls.append(1)
        if len(calls) == 2:  # the warm-up passes; the first call inside the capture fails
            stream.calls.append("failed")
            raise NotImplementedError("cuBLAS is not supported during stream capture")

    with pytest.raises(NotImplementedError, match="cuBLAS is not supported during stream capture"):
        common.capture(step, stream, calls=3)
    assert stream.calls == ["synchronize", "begin_capture", "failed", "end_capture"]  # the capture was ended
    ok = _Stream()
    assert common.capture(lambda: None, ok, calls=3) == "graph"


def test_the_kernel_agreement_tests_take_the_hypothesis_profiles_number_of_examples():
    from hypothesis import settings

    from refdiff.kernels import testing

    expected = min(settings().max_examples, 40) if SIMULATED else settings().max_examples
    assert testing._profile_examples() == expected


def test_the_device_check_runs_end_to_end_without_a_gpu_skipping_each_gpu_step_with_the_reason(tmp_path):
    """benchmarks/device_check.sh where no GPU is usable: the environment step runs, every GPU step
    is listed as skipped with cuda_problem()'s reason, and the folder holds the summary and the
    tarball of the logs (the script's GPU branch is exercised on a GPU session)."""
    import gpu_bench_common

    problem = gpu_bench_common.gpu_problem()
    if problem is None:  # on a GPU the script measures for minutes: run it by hand there
        return
    out = tmp_path / "check"
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["PYTHON"] = sys.executable
    r = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "device_check.sh"), str(out)], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    summary = (out / "summary.md").read_text()
    assert "| env | pass: no GPU usable |" in summary
    for step in ("gpu-tests", "kernel-tests", "capture-probe", "bench-kernels", "bench-sampling", "bench-launch",
                 "bench-train"):
        assert f"| {step} | SKIP: no GPU: {problem[:40]}" in summary, step
    assert (out / "env.log").exists() and (out / "logs.tar.gz").stat().st_size > 0
