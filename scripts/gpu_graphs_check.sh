#!/usr/bin/env bash
# One GPU call for the CUDA-graph settings: the GPU tests of the worker and models,
# then offline T1 and T2 with and without piecewise graphs for prefill/mixed steps,
# and T2 at max_num_seqs 1024 (vLLM's default on large GPUs; it must start).
# Logs under $OUT; a line per run with its wall time.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$(mktemp -d)}"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
start=$SECONDS
if ! timeout 240 "$PY" -m pytest -m gpu ${GPU_TESTS:-tests/worker tests/models tests/layers} -q \
    -p no:cacheprovider > "$OUT/gpu_tests.log" 2>&1; then
    echo "GPU tests FAILED"; grep -E "FAILED|Error" "$OUT/gpu_tests.log" | head -20
fi
echo "tests: $(tail -1 "$OUT/gpu_tests.log") [$((SECONDS - start)) s]"
bench() {  # bench NAME PIECEWISE ARGS...: one offline run, its last figure
    local name="$1" pieces="$2" t=$SECONDS
    shift 2
    PAGEDLLM_PIECEWISE_GRAPHS="$pieces" timeout 200 "$PY" -m pagedllm.benchmarks.throughput \
        "$@" > "$OUT/$name.log" 2>&1
    echo "$name: $(grep -h 'tokens/s\|tok/s' "$OUT/$name.log" | tail -1) [$((SECONDS - t)) s]"
}
for run in ${RUNS:-T1:0 T1:1 T2:0 T2:1}; do
    bench "${run/:/_pw}" "${run#*:}" --workload "${run%%:*}"
done
[[ "${SKIP_1024:-0}" == 1 ]] || bench T2_seqs1024 "${PIECES_1024:-0}" --workload T2 --max-num-seqs 1024
