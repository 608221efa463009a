"""Tensor/pipeline parallelism on a machine with 2+ GPUs (NCCL, mp executor): greedy
tokens of every layout against one GPU, eager and with CUDA graphs, then the decode
speed of llama-3.1-8b (dummy weights) at tp 1 and tp 2. Prints one line per check.

    python scripts/gpu_distributed.py [--skip-bench]
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def save_tiny_llama(path: Path) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=4096,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        initializer_range=0.2,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    return str(path)


def greedy(model: str, **kwargs: Any) -> tuple[list[list[int]], float, float]:
    from pagedllm import LLM, SamplingParams

    start = time.perf_counter()
    llm = LLM(
        model=model,
        skip_tokenizer_init=True,
        dtype="float32",
        max_model_len=512,
        gpu_memory_utilization=0.3,
        max_num_seqs=16,
        **kwargs,
    )
    ready = time.perf_counter()
    prompts = [
        {"prompt_token_ids": [(i * 37 + j) % 4000 + 1 for j in range(n)]}
        for i, n in enumerate((5, 70, 300, 33))
    ]
    sp = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)
    out = [list(o.outputs[0].token_ids) for o in llm.generate(prompts, sp, use_tqdm=False)]
    took = time.perf_counter() - ready
    llm.llm_engine.shutdown()
    del llm
    gc.collect()
    torch.cuda.empty_cache()
    return out, ready - start, took


def check_layouts(model: str) -> None:
    ref, _, _ = greedy(model, enforce_eager=True)
    layouts: list[tuple[str, dict[str, Any]]] = [
        ("tp1 graphs", dict()),
        ("mp tp1 graphs (worker process)", dict(distributed_executor_backend="mp")),
    ]
    if torch.cuda.device_count() >= 2:
        layouts += [
            ("tp2 eager", dict(tensor_parallel_size=2, enforce_eager=True)),
            ("tp2 graphs", dict(tensor_parallel_size=2)),
            ("tp2 graphs, NCCL only", dict(tensor_parallel_size=2, disable_custom_all_reduce=True)),
            ("pp2", dict(pipeline_parallel_size=2)),
            ("pp2 eager", dict(pipeline_parallel_size=2, enforce_eager=True)),
        ]
    for name, kwargs in layouts:
        try:
            got, init_s, gen_s = greedy(model, **kwargs)
        except Exception as exc:  # report and go on with the other layouts
            print(f"CHECK {name}: FAILED {exc!r}"[:2000], flush=True)
            continue
        same = sum(a == b for a, b in zip(ref, got))
        print(
            f"CHECK {name}: {same}/{len(ref)} identical to tp1 eager "
            f"(start {init_s:.1f}s, generate {gen_s:.2f}s)",
            flush=True,
        )


def bench_decode(tp: int) -> None:
    from pagedllm import LLM, SamplingParams
    from pagedllm.benchmarks.workload import shape_dir

    llm = LLM(
        model=shape_dir("llama-3.1-8b"),
        load_format="dummy",
        skip_tokenizer_init=True,
        max_model_len=1024,
        tensor_parallel_size=tp,
        max_num_seqs=64,
        gpu_memory_utilization=0.8,
    )
    prompts = [
        {"prompt_token_ids": [(i * 7 + j) % 30000 + 1 for j in range(128)]} for i in range(64)
    ]
    sp = SamplingParams(temperature=0.0, max_tokens=128, ignore_eos=True)
    llm.generate(prompts[:2], SamplingParams(max_tokens=4, ignore_eos=True), use_tqdm=False)
    start = time.perf_counter()
    llm.generate(prompts, sp, use_tqdm=False)
    took = time.perf_counter() - start
    print(
        f"BENCH llama-3.1-8b tp={tp}: 64 x (128 in, 128 out) in {took:.2f}s "
        f"= {64 * 128 / took:.0f} output tok/s",
        flush=True,
    )
    llm.llm_engine.shutdown()
    del llm
    gc.collect()
    torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-bench", action="store_true")
    args = parser.parse_args()
    print(
        "GPUs:",
        torch.cuda.device_count(),
        "NCCL_NVLS_ENABLE before:",
        os.environ.get("NCCL_NVLS_ENABLE"),
    )
    with tempfile.TemporaryDirectory() as tmp:
        check_layouts(save_tiny_llama(Path(tmp) / "llama"))
    if not args.skip_bench and torch.cuda.device_count() >= 2:
        for tp in (2, 1):  # tp 2 first: the workers' memory is gone before tp 1 sizes its cache
            bench_decode(tp)


if __name__ == "__main__":
    main()
