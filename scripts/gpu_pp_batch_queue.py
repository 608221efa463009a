"""Pipeline parallelism with a batch per stage in flight, on a machine with 2 GPUs
(NCCL, mp executor). First the greedy tokens of pp 2 with the batch queue, and of
pp 2 one batch at a time (PAGEDLLM_PP_BATCH_QUEUE=0), against one GPU (float32,
a tiny Llama, more requests than max_num_seqs, chunked prefill); then, with
--bench, T2's throughput at pp 2 both ways and at tp 1. One line per check.

    python scripts/gpu_pp_batch_queue.py [--bench]
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from gpu_distributed import save_tiny_llama


def greedy(model: str, batch_queue: str, **kwargs: Any) -> tuple[list[list[int]], int, float]:
    """(tokens, most launched steps unread at a launch, seconds)."""
    from pagedllm import LLM, SamplingParams

    os.environ["PAGEDLLM_PP_BATCH_QUEUE"] = batch_queue
    llm = LLM(
        model=model,
        skip_tokenizer_init=True,
        dtype="float32",
        max_model_len=512,
        gpu_memory_utilization=0.3,
        max_num_seqs=8,
        max_num_batched_tokens=128,
        **kwargs,
    )
    unread = spy_unread(llm)
    prompts = [
        {"prompt_token_ids": [(i * 37 + j) % 4000 + 1 for j in range(n)]}
        for i, n in enumerate(5 + (i * 53) % 300 for i in range(40))
    ]
    sp = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    start = time.perf_counter()
    out = [list(o.outputs[0].token_ids) for o in llm.generate(prompts, sp, use_tqdm=False)]
    took = time.perf_counter() - start
    llm.llm_engine.check_integrity()
    llm.llm_engine.shutdown()
    del llm
    gc.collect()
    torch.cuda.empty_cache()
    return out, max(unread, default=0), took


def spy_unread(llm: Any) -> list[int]:
    executor = llm.llm_engine.executor
    if not hasattr(executor, "_futures"):
        return []
    unread: list[int] = []
    original = executor.execute_model

    def spy(scheduler_output: Any) -> Any:
        unread.append(sum(f.output is None for f in executor._futures))
        return original(scheduler_output)

    executor.execute_model = spy
    return unread


def check_tokens(model: str) -> None:
    ref, _, _ = greedy(model, "1", enforce_eager=True)
    for name, queue in (("pp2 batch queue", "1"), ("pp2 one batch at a time", "0")):
        try:
            got, unread, took = greedy(model, queue, pipeline_parallel_size=2)
        except Exception as exc:
            print(f"CHECK {name}: FAILED {exc!r}"[:2000], flush=True)
            continue
        same = sum(a == b for a, b in zip(ref, got))
        print(
            f"CHECK {name}: {same}/{len(ref)} identical to tp1 eager, at most {unread + 1} "
            f"batch(es) in flight, generate {took:.2f}s",
            flush=True,
        )


def bench() -> None:
    t2 = [sys.executable, "-m", "pagedllm.benchmarks.throughput", "--workload", "T2"]
    runs = [
        ("T2 pp2 batch queue", "1", ["--pipeline-parallel-size", "2"]),
        ("T2 pp2 one batch at a time", "0", ["--pipeline-parallel-size", "2"]),
        ("T2 pp2 one batch at a time, 512 seqs", "0", ["--pipeline-parallel-size", "2"]),
        ("T2 tp1", "1", []),
    ]
    for name, queue, extra in runs:
        if "512" in name:
            extra = [*extra, "--max-num-seqs", "512"]
        env = {**os.environ, "PAGEDLLM_PP_BATCH_QUEUE": queue}
        proc = subprocess.run([*t2, *extra], env=env, capture_output=True, text=True, timeout=400)
        lines = [line for line in proc.stdout.splitlines() if "tokens/s" in line]
        print(f"BENCH {name}: rc={proc.returncode} {lines[-1] if lines else proc.stderr[-500:]}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bench", action="store_true")
    args = parser.parse_args()
    if torch.cuda.device_count() < 2:
        print("needs 2 GPUs")
        return
    with tempfile.TemporaryDirectory() as tmp:
        check_tokens(save_tiny_llama(Path(tmp) / "llama"))
    if args.bench:
        bench()


if __name__ == "__main__":
    main()
