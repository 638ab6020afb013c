#!/usr/bin/env bash
# The whole GPU check of refdiff in one command, for a GPU session of a quarter of an hour:
#
#     benchmarks/device_check.sh [FOLDER]       (default: device-check-<UTC time>)
#
# On a machine with CUDA 13, CuPy, numba-cuda, PyTorch, pytest and hypothesis installed and no
# package registry (nothing is installed or downloaded; refdiff is imported from this checkout),
# it runs, each step under its own time limit and all of them within BUDGET_S (default 450 s):
#   env            nvidia-smi, versions, refdiff.backend.cuda_problem()
#   gpu-tests      python -m pytest -m gpu -rs: the GPU suite (test_gpu_unet.py, ...)
#   kernel-tests   the kernels' agreement tests with their twins, on CuPy arrays
#   capture-probe  benchmarks/capture_probe.py: what can be captured into a CUDA graph
#   bench-kernels  benchmarks/bench_kernels.py: GB/s, eager and graphed, vs CuPy and PyTorch
#   bench-sampling benchmarks/bench_sampling_gpu.py: a DDIM step, eager, graphed and as CapturedSampler
#   bench-launch   benchmarks/bench_launch_cost.py: host us per launch, argument cache on and off
#   bench-train    benchmarks/bench_train_gpu.py: a training step
# and writes into FOLDER: one log per step, RESULTS.md (the benchmarks' tables), summary.md (a
# table of the steps: status, seconds, the last line of each log) and logs.tar.gz (all of it, for
# a transfer that takes few files). Where no GPU is usable, the GPU steps are skipped with
# cuda_problem()'s reason and the script still ends with its summary (exit code 0). Exit code 1
# if a step failed or ran out of time.
#
# On the device machine of these sessions (files come back from $OUT, 8 at most):
#     benchmarks/device_check.sh /tmp/dc; cp /tmp/dc/summary.md /tmp/dc/RESULTS.md /tmp/dc/logs.tar.gz "$OUT"/
set -u -o pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT_DIR=${1:-device-check-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-450}
START=$(date +%s)
export PYTHONUNBUFFERED=1 CI=${CI:-true} HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-ci}
unset NUMBA_ENABLE_CUDASIM

# refdiff from this checkout, installed or not: refdiff/ with kernels/ as refdiff.kernels
if ! "$PY" -c "import refdiff.kernels" >/dev/null 2>&1; then
    PKG=$(mktemp -d)
    mkdir "$PKG/refdiff"
    for entry in "$ROOT"/refdiff/*; do ln -s "$entry" "$PKG/refdiff/"; done
    ln -s "$ROOT/kernels" "$PKG/refdiff/kernels"
    export PYTHONPATH="$PKG${PYTHONPATH:+:$PYTHONPATH}"
    export PYTHONSAFEPATH=1  # Python 3.11+: the checkout's refdiff/ (without kernels) must not come first
    "$PY" -c "import refdiff.kernels" || { echo "refdiff does not import from $ROOT" >&2; exit 1; }
fi

SUMMARY="$OUT_DIR/summary.md"
{
    echo "# refdiff device check"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "- folder: $OUT_DIR; budget: ${BUDGET_S} s"
    echo
    echo "| step | status | seconds | last line of the log |"
    echo "|---|---|---|---|"
} > "$SUMMARY"
FAILED=0

row() {  # step status seconds last-line
    local last=${4//|/\\|}
    echo "| $1 | $2 | $3 | ${last:0:200} |" >> "$SUMMARY"
    echo "[device_check] $1: $2 (${3} s)"
}

step() {  # step NAME LIMIT_S COMMAND...: run with the smaller of LIMIT_S and the budget left
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET_S - ($(date +%s) - START)))
    if ((left < 10)); then
        row "$name" "SKIP: the ${BUDGET_S} s budget is spent" 0 ""
        return
    fi
    ((limit > left)) && limit=$left
    local log="$OUT_DIR/$name.log" t0 rc status
    t0=$(date +%s)
    echo "\$ $*" > "$log"
    timeout --kill-after=10 "$limit" "$@" >> "$log" 2>&1
    rc=$?
    case $rc in
        0) status=pass ;;
        124 | 137) status="TIMEOUT after ${limit} s"; FAILED=1 ;;
        *) status="FAIL (exit $rc)"; FAILED=1 ;;
    esac
    row "$name" "$status" $(($(date +%s) - t0)) "$(grep -v '^\s*$' "$log" | tail -n 1)"
}

# env: always runs
{
    echo "## nvidia-smi"
    (nvidia-smi || echo "nvidia-smi: not found or failed") 2>&1
    echo "## python and packages"
    "$PY" - <<'EOF'
import importlib, platform
print("python", platform.python_version())
for name in ("numpy", "cupy", "numba", "numba_cuda", "torch", "hypothesis", "pytest"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "?"))
    except Exception as e:
        print(name, "not importable:", type(e).__name__, e)
EOF
} > "$OUT_DIR/env.log" 2>&1
PROBLEM=$("$PY" -c "from refdiff.backend import cuda_problem; print(cuda_problem() or '')" 2>&1 | tail -n 1)
echo "## refdiff.backend.cuda_problem(): ${PROBLEM:-None (the cuda backend can run)}" >> "$OUT_DIR/env.log"
if [[ -n "$PROBLEM" ]]; then ENV_STATUS="pass: no GPU usable"; else ENV_STATUS="pass: GPU usable"; fi
row env "$ENV_STATUS" $(($(date +%s) - START)) "cuda_problem(): ${PROBLEM:-None}"

if [[ -n "$PROBLEM" ]]; then
    for name in gpu-tests kernel-tests capture-probe bench-kernels bench-sampling bench-launch bench-train; do
        row "$name" "SKIP: no GPU: $PROBLEM" 0 ""
    done
else
    RESULTS="$OUT_DIR/RESULTS.md"
    step gpu-tests 120 "$PY" -m pytest -q -p no:cacheprovider -m gpu -rs tests
    step kernel-tests 120 "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_kernels_forward.py \
        tests/test_kernels_reverse.py tests/test_kernels_embedding.py tests/test_kernels_harness.py \
        tests/test_kernels_errors.py tests/test_kernels_launch.py tests/test_backend.py \
        tests/test_kernels_samplers.py
    step capture-probe 60 "$PY" benchmarks/capture_probe.py --results "$RESULTS"
    step bench-kernels 90 "$PY" benchmarks/bench_kernels.py --results "$RESULTS"
    step bench-sampling 90 "$PY" benchmarks/bench_sampling_gpu.py --batches 1 16 --results "$RESULTS"
    step bench-launch 30 "$PY" benchmarks/bench_launch_cost.py --results "$RESULTS"
    step bench-train 60 "$PY" benchmarks/bench_train_gpu.py --results "$RESULTS"
fi

echo >> "$SUMMARY"
echo "- total: $(($(date +%s) - START)) s" >> "$SUMMARY"
[[ -f "$OUT_DIR/RESULTS.md" ]] && { echo; echo "## Benchmark tables"; echo; cat "$OUT_DIR/RESULTS.md"; } >> "$SUMMARY"
TARBALL=$(mktemp)
tar -czf "$TARBALL" -C "$OUT_DIR" --exclude logs.tar.gz . && mv "$TARBALL" "$OUT_DIR/logs.tar.gz"
cat "$SUMMARY"
exit $FAILED
