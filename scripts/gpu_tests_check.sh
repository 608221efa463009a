#!/usr/bin/env bash
# One GPU call for the GPU tests that a CPU session cannot run: the Triton kernels (in
# parallel with pytest-xdist when it is installed: compiles are CPU-bound), the models'
# sliding-window and GLM paths, structured outputs' overlap on CUDA, and the bf16 MoE
# check. STEPS picks a subset: "kernels models structured moe". Logs under /tmp.
set -uo pipefail
cd "$(dirname "$0")/.."
LOGS="${LOGS:-$(mktemp -d)}"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
STEPS="${STEPS:-kernels models structured moe}"
SHOW="${SHOW:-passed|failed|FAILED|^E |Error}"
source scripts/gpu_step.sh
PT=("$PY" -m pytest -m gpu -q -p no:cacheprovider -rf --tb=short)
XD=()
"$PY" -c "import xdist" 2>/dev/null && XD=(-n "${XDIST:-6}")
[[ " $STEPS " == *" kernels "* ]] && step kernels "${KERNELS_S:-240}" "${PT[@]}" "${XD[@]}" tests/kernels
[[ " $STEPS " == *" models "* ]] && step models "${MODELS_S:-170}" "${PT[@]}" \
    tests/models/test_sliding_window_gpu.py tests/models/test_chatglm.py
[[ " $STEPS " == *" window_torch "* ]] && PAGEDLLM_ATTENTION_BACKEND=torch step window_torch 60 \
    "${PT[@]}" tests/models/test_sliding_window_gpu.py -k "True-gemma2"
[[ " $STEPS " == *" models "* ]] && step glm "${GLM_S:-90}" "${PT[@]}" \
    tests/models/test_fused_layers_gpu.py -k "glm or gemma"
[[ " $STEPS " == *" structured "* ]] && step structured "${STRUCT_S:-90}" "$PY" -m pytest -q \
    -p no:cacheprovider tests/structured_output/test_structured_parallel.py -k cuda
[[ " $STEPS " == *" moe "* ]] && SHOW="ours|Error" TAIL=20 step moe "${MOE_S:-90}" "$PY" scripts/gpu_moe_tie_check.py
exit 0
