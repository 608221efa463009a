#!/usr/bin/env bash
# One command on the GPU machine: kernel correctness first, then the micro-benchmarks.
# Steps run in order and each logs to $OUT (the device tool's folder, or a temp dir);
# a failing step is reported and the later steps still run; the exit code is 1 if any
# step failed. Append new steps (the end-to-end throughput benchmark) at the end.
#
#   PYTHONUNBUFFERED=1 bash scripts/gpu_check.sh 2>&1 | tee $OUT/log
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$(mktemp -d)}"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
FAILED=()

step() {  # step NAME COMMAND...: run one step, log it to $OUT/NAME.log
    local name="$1"
    shift
    echo "=== step ${name}: $* ==="
    local start=$SECONDS
    if "$@" 2>&1 | tee "$OUT/${name}.log"; then
        echo "=== step ${name}: ok ($((SECONDS - start)) s) ==="
    else
        echo "=== step ${name}: FAILED ($((SECONDS - start)) s) ==="
        FAILED+=("$name")
    fi
}

env_info() {
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv
    "$PY" -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'
    git rev-parse --short HEAD 2>/dev/null || echo "commit: unknown"
}

kernel_tests() {
    local parallel=()
    if "$PY" -c 'import xdist' 2>/dev/null; then parallel=(-n 8); fi
    "$PY" -m pytest -m gpu tests/kernels -p no:cacheprovider -p no:benchmark "${parallel[@]}"
}

step env env_info
step kernel_tests kernel_tests
step kernel_bench "$PY" scripts/kernel_bench.py --out "$OUT/kernel_bench.md"

if ((${#FAILED[@]})); then
    echo "gpu_check: FAILED steps: ${FAILED[*]}"
    exit 1
fi
echo "gpu_check: all steps ok"
