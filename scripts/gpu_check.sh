#!/usr/bin/env bash
# One command on the GPU machine: the GPU tests (every Triton kernel against its torch
# reference, the fused layers, tiny models against HF transformers, eager and with CUDA
# graphs), then workload T1 for pagedllm and the HF transformers peer in the same
# command, then a short table. GPU_CHECK_KERNEL_BENCH=1 adds the kernel micro-benchmarks.
# Steps run in order and each logs to $OUT (the device tool's folder, or a temp dir);
# a failing step is reported and the later steps still run; the exit code is 1 if any
# step failed. About 6 minutes on an H200 (the HF peer takes about 3.5 of them).
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

gpu_tests() {
    "$PY" -m pytest -m gpu tests/kernels tests/layers tests/models -p no:cacheprovider
}

step env env_info
step gpu_tests gpu_tests
step t1 "$PY" -m pagedllm.benchmarks.throughput --workload T1 --backend both \
    --output-json "$OUT/T1.json"
if [[ "${GPU_CHECK_KERNEL_BENCH:-0}" == 1 ]]; then
    step kernel_bench "$PY" scripts/kernel_bench.py --out "$OUT/kernel_bench.md"
fi
if [[ -f "$OUT/T1.json" ]]; then
    "$PY" -m pagedllm.benchmarks.summary "$OUT/T1.json"
fi

if ((${#FAILED[@]})); then
    echo "gpu_check: FAILED steps: ${FAILED[*]}"
    exit 1
fi
echo "gpu_check: all steps ok"
