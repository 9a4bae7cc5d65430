#!/usr/bin/env bash
# Everything this project checks on a lent GPU machine, in one short call (about 5 minutes):
# the GPU tests, then each benchmark at the paper's sizes with its own time limit.
# Where the machine cannot reach PyPI and lacks zarr, numcodecs or medmnist, put their wheels in .whl/
# beforehand (pip download --no-deps --only-binary=:all: -d .whl zarr numcodecs medmnist donfig
# google-crc32c fire termcolor, for the machine's Python); they are installed into /tmp/site.
#
#   bash benchmarks/gpu_session.sh        # writes logs and RESULTS.md into $OUT (or ./gpu-out)
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"

step() {  # step LIMIT_S LOG COMMAND...
    local limit=$1 log=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" > "$OUT/$log" 2>&1
    echo "== $* : exit $? after $((SECONDS - start)) s" | tee -a "$OUT/steps.txt"
    cp benchmarks/RESULTS.md "$OUT/RESULTS.md" 2>/dev/null
}

step 90 gpu_tests.log python3 -m pytest -q -m gpu tests/test_gpu.py tests/test_kd_triton.py -p no:cacheprovider
step 45 train_step.log python3 benchmarks/train_step.py --append benchmarks/RESULTS.md
step 35 teacher_cache.log python3 benchmarks/teacher_cache.py --append benchmarks/RESULTS.md
step 60 kd_loss.log python3 benchmarks/kd_loss.py --batches 65536 --classes 8,14,1000 --append benchmarks/RESULTS.md
step 45 sweep_cost.log python3 benchmarks/sweep_cost.py --append benchmarks/RESULTS.md
