#!/usr/bin/env bash
# Run every benchmark and append each table to benchmarks/RESULTS.md (with date, device, versions, command).
#
#   bash benchmarks/run_all.sh            # sizes chosen by device: the paper's on CUDA, tiny on CPU
#   bash benchmarks/run_all.sh --quick    # smoke run
#   PYTHON=.venv/bin/python RESULTS=/tmp/r.md bash benchmarks/run_all.sh   # interpreter, output file
#
# Sized for one H200 call of about 10 minutes: each script has its own time limit, so one slow
# script cannot starve the others, and a failure is reported without stopping the rest.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
RESULTS=${RESULTS:-benchmarks/RESULTS.md}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
failed=()
[ -s "$RESULTS" ] || "$PY" -c 'import sys; sys.path.insert(0, "benchmarks"); from common import RESULTS_TITLE
open(sys.argv[1], "w").write(RESULTS_TITLE)' "$RESULTS"

run() {  # run LIMIT_S SCRIPT [FLAGS...]
    local limit=$1 script=$2
    shift 2
    echo "== $script $* (limit ${limit} s)" >&2
    local start=$SECONDS
    timeout "$limit" "$PY" "$script" "$@" --append "$RESULTS"
    local rc=$?
    echo "== $script: exit $rc after $((SECONDS - start)) s" >&2
    [ "$rc" -eq 0 ] || failed+=("$script (exit $rc)")
}

run 240 benchmarks/kd_loss.py "$@"
run 60 benchmarks/kd_kernel_compile.py "$@"
if "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    run 70 benchmarks/kd_kernel_tune.py "$@"  # times the kernel itself: CUDA only
fi
run 100 benchmarks/train_step.py "$@"
run 90 benchmarks/teacher_cache.py "$@"
run 100 benchmarks/sweep_cost.py "$@"

if [ ${#failed[@]} -gt 0 ]; then
    echo "failed: ${failed[*]}" >&2
    exit 1
fi
