"""Workload C1 (../shared/BENCHMARKS.md): the embedded SmolLM2-135M-Instruct on the
CPU, 32 chat prompts ("Write a short paragraph about X.", 16 topics twice), 128
greedy tokens each, all 32 at once and one at a time. `pagedllm bench cpu-chat`
(the engine's default, the packed GGUF weights; `--quantization none` for float32,
`--quantization auto,none` for both in turn; `--llama-cpp` to run llama.cpp on the same
file one chat at a time in the same command)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from pagedllm.benchmarks.workload import publish_results

TOPICS = [
    "the ocean",
    "machine learning",
    "the history of Rome",
    "healthy breakfast ideas",
    "how rainbows form",
    "Python decorators",
    "the moon landing",
    "photosynthesis",
    "the stock market",
    "learning a new language",
    "black holes",
    "baking bread",
    "the French revolution",
    "electric cars",
    "meditation",
    "volcanoes",
]
PROMPTS = [f"Write a short paragraph about {t}." for t in TOPICS] * 2


def run(llm: Any, batch: int, max_tokens: int) -> dict[str, Any]:
    from pagedllm import SamplingParams

    sp = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    conversations = [[{"role": "user", "content": p}] for p in PROMPTS]
    start = time.perf_counter()
    tokens = 0
    for i in range(0, len(conversations), batch):
        outputs = llm.chat(conversations[i : i + batch], sp, use_tqdm=False)
        tokens += sum(len(o.outputs[0].token_ids) for o in outputs)
    elapsed = time.perf_counter() - start
    return dict(
        engine="pagedllm",
        batch=batch,
        prompts=len(PROMPTS),
        output_tokens=tokens,
        elapsed_s=round(elapsed, 2),
        output_tokens_per_s=round(tokens / elapsed, 1),
    )


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    from pagedllm import LLM

    p = argparse.ArgumentParser(prog="pagedllm bench cpu-chat")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--batches", default="32,1", help="comma-separated batch sizes to run")
    p.add_argument("--output-json", default=None)
    p.add_argument(
        "--quantization",
        default="auto",
        help="comma-separated, run in turn: 'auto' (the engine's default: on the CPU the "
        "GGUF file stays quantized) or 'gguf' keep it packed, 'none' dequantizes it to "
        "float32",
    )
    p.add_argument("--llama-cpp", action="store_true", help="also run llama-cpp-python")
    p.add_argument("--llama-cpp-threads", type=int, default=2)
    args = p.parse_args(argv)
    results: list[dict[str, Any]] = []
    path = ""
    for quantization in args.quantization.split(","):
        llm = LLM(
            device="cpu",
            max_model_len=2048,
            quantization=None if quantization == "auto" else quantization,
        )
        path = llm.llm_engine.model_config.model
        llm.chat([{"role": "user", "content": "Hi"}], use_tqdm=False)  # warm-up
        for batch in args.batches.split(","):
            results.append(run(llm, int(batch), args.max_tokens))
            results[-1]["quantization"] = llm.llm_engine.model_config.quantization or "none"
        llm.shutdown()
    if args.llama_cpp:
        from pagedllm.benchmarks.llama_cpp_peer import run_llama_cpp

        results.append(run_llama_cpp(path, PROMPTS, args.max_tokens, args.llama_cpp_threads))
    for r in results:
        print(
            f"C1 {r['engine']} {r.get('quantization', 'gguf')} batch={r['batch']}: "
            f"{r['output_tokens_per_s']} output tokens/s "
            f"({r['elapsed_s']} s)"
        )
    publish_results(results, args.output_json)
    return results


if __name__ == "__main__":
    main()
