#!/usr/bin/env bash
# One GPU call for the MoE models (issue 22) and memory tiers (issue 18): their GPU
# tests, then scripts/gpu_moe_check.py (fused MoE kernel, T3, L3) and
# scripts/gpu_tiers_check.py (swap, prefix spill, cpu_offload_gb). Logs under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$(mktemp -d)}"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
LOGS="$OUT" TAIL="${TAIL:-25}"
source scripts/gpu_step.sh
step gpu_tests 170 "$PY" -m pytest -m gpu -q -p no:cacheprovider tests/kernels/test_triton_fused_moe.py \
    tests/worker/test_memory_tiers_gpu.py tests/models/test_fused_layers_gpu.py -k "moe or mixtral or tiers or offload or swap"
step moe 240 "$PY" scripts/gpu_moe_check.py
step tiers 200 "$PY" scripts/gpu_tiers_check.py --steps "${TIER_STEPS:-swap,prefix,offload}"
