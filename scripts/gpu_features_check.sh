#!/usr/bin/env bash
# One GPU call for the feature issues: quantization (16: kernel tests, L1 AWQ/FP8 and
# T2 FP8), MoE (22: fused kernel, T3, L3) and structured outputs (17: T1 constrained
# against free). STEPS picks a subset: "quant moe structured". Logs under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$(mktemp -d)}"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
STEPS="${STEPS:-quant moe structured}"
LOGS="$OUT" HIDE="${HIDE:-preempted}"
source scripts/gpu_step.sh
if [[ " $STEPS " == *" quant "* ]]; then
    step quant_tests 60 "$PY" -m pytest -m gpu -q -p no:cacheprovider tests/kernels/test_triton_quant_dequant.py
    step quant 200 "$PY" scripts/gpu_quant_check.py --skip-kernels
fi
[[ " $STEPS " == *" moe "* ]] && step moe 170 "$PY" scripts/gpu_moe_check.py
[[ " $STEPS " == *" structured "* ]] && step structured 110 "$PY" scripts/gpu_structured_bench.py
exit 0
