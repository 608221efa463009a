#!/usr/bin/env bash
# One call on a two-GPU machine (#21): the custom all-reduce against its reference and
# NCCL, greedy tokens of every parallel layout against one GPU, then T2 and L1 at
# tp 1 / tp 2 (custom all-reduce on and off) / pp 2. Logs under $OUT, a line per step.
#   STEPS="kernel layouts T2tp2 T2tp2nccl T2tp1 T2pp2 L1tp2 L1tp2nccl L1tp1" bash scripts/gpu_two_gpu_check.sh
# (T2pp2 keeps a batch per stage in flight; T2pp2seq, one batch at a time, is its A/B.)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$(mktemp -d)}"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
nvidia-smi topo -m > "$OUT/topo.txt" 2>&1 && head -4 "$OUT/topo.txt"
step() {  # step NAME TIMEOUT CMD...: run, then say how long and the exit status
    local name="$1" limit="$2" t=$SECONDS
    shift 2
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    echo "== $name rc=$? [$((SECONDS - t)) s]"
}
T2="-m pagedllm.benchmarks.throughput --workload T2"
L1="-m pagedllm.benchmarks.latency --num-iters 2"
for s in ${STEPS:-kernel layouts T2tp2 T2tp2nccl T2tp1 T2pp2 L1tp2 L1tp2nccl L1tp1}; do
    case "$s" in
    kernel) step kernel 180 "$PY" scripts/gpu_custom_ar_check.py
        grep -E "CHECK|KB|peer|Error|error" "$OUT/kernel.log" | head -30 ;;
    layouts) step layouts 300 "$PY" scripts/gpu_distributed.py --skip-bench
        grep -E "CHECK|Error" "$OUT/layouts.log" | head -20 ;;
    T2tp2) step "$s" 200 "$PY" $T2 --tensor-parallel-size 2 ;;
    T2tp2nccl) step "$s" 200 "$PY" $T2 --tensor-parallel-size 2 --disable-custom-all-reduce ;;
    T2tp1) step "$s" 200 "$PY" $T2 ;;
    T2pp2) step "$s" 200 "$PY" $T2 --pipeline-parallel-size 2 ;;
    T2pp2seq) step "$s" 200 env PAGEDLLM_PP_BATCH_QUEUE=0 "$PY" $T2 --pipeline-parallel-size 2 ;;
    L1tp2) step "$s" 150 "$PY" $L1 --tensor-parallel-size 2 ;;
    L1tp2nccl) step "$s" 150 "$PY" $L1 --tensor-parallel-size 2 --disable-custom-all-reduce ;;
    L1tp1) step "$s" 150 "$PY" $L1 ;;
    esac
    case "$s" in T2* | L1*) grep -hE "tok/s|tokens/s|Error" "$OUT/$s.log" | tail -2 ;; esac
done
