#!/usr/bin/env bash
# One GPU call for the serving issue: the GPU tests of the worker and models (CUDA
# graphs, piecewise graphs, packed host->device copies against eager and HF), then
# offline T1, then S1 (scripts/gpu_serve.py: offline, server at rate inf and 20/s),
# then T2 and L1. If the piecewise-graph test fails, the benchmarks run without them.
# Logs under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$(mktemp -d)}"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ! timeout 200 "$PY" -m pytest -m gpu ${GPU_TESTS:-tests/worker tests/models} -q \
    -p no:cacheprovider > "$OUT/gpu_tests.log" 2>&1; then
    echo "GPU tests FAILED: benchmarks without piecewise graphs"; export PAGEDLLM_PIECEWISE_GRAPHS=0
fi
tail -3 "$OUT/gpu_tests.log"
bench() {  # bench NAME MODULE ARGS...: one offline workload, its last figure
    local name="$1" module="$2"
    shift 2
    timeout 150 "$PY" -m "pagedllm.benchmarks.$module" "$@" > "$OUT/$name.log" 2>&1
    echo "$name: $(grep -h 'tokens/s\|tok/s' "$OUT/$name.log" | tail -1)"
}
bench T1 throughput --workload T1
timeout 330 "$PY" scripts/gpu_serve.py > "$OUT/gpu_serve.log" 2>&1
grep "server-side" "$OUT/gpu_serve.log"; tail -5 "$OUT/gpu_serve.log"
bench T2 throughput --workload T2
[[ "${SKIP_L1:-0}" == 1 ]] || bench L1 latency
