#!/usr/bin/env bash
# Everything this project checks on a lent GPU machine, in one call of at most 10 minutes, most
# wanted first: the kernel's GPU tests, its tilings and its full kd_loss grid (issue #3's one
# open item), then the other GPU tests, the sweep cost and the step with --compile (the teacher
# pass was measured on the H200 already), each with its own time limit. A call cut off by the
# device's limit keeps what the finished steps wrote to $OUT.
# Where the machine cannot reach PyPI and lacks zarr, numcodecs or medmnist, put their wheels in .whl/
# beforehand (pip download --no-deps --only-binary=:all: -d .whl zarr numcodecs medmnist donfig
# google-crc32c fire termcolor liger_kernel, for the machine's Python); they are installed into /tmp/site.
#
#   bash benchmarks/gpu_session.sh [kernel|rest]   # all steps, or the kernel's (~5 min) or the others (~4 min)
# It writes at most 8 files into $OUT (or ./gpu-out), what the device tool brings back: the logs,
# steps.txt (device and each step's exit status and time) and RESULTS.md.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/steps.txt"
PART=${1:-all}

step() {  # step LIMIT_S LOG COMMAND...
    local limit=$1 log=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" > "$OUT/$log" 2>&1
    echo "== $* : exit $? after $((SECONDS - start)) s" | tee -a "$OUT/steps.txt"
    cp benchmarks/RESULTS.md "$OUT/RESULTS.md" 2>/dev/null
}

if [ "$PART" != rest ]; then
step 120 kd_tests.log python3 -m pytest -q -m gpu tests/test_kd_triton.py tests/test_benchmarks.py -p no:cacheprovider
step 120 kd_tune.log python3 benchmarks/kd_kernel_tune.py --append benchmarks/RESULTS.md
step 220 kd_loss.log python3 benchmarks/kd_loss.py --append benchmarks/RESULTS.md
fi
if [ "$PART" != kernel ]; then
step 90 gpu_tests.log python3 -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider
step 60 sweep_cost.log python3 benchmarks/sweep_cost.py --append benchmarks/RESULTS.md
step 90 train_step.log python3 benchmarks/train_step.py --compile --append benchmarks/RESULTS.md
fi
