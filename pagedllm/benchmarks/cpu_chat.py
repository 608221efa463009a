"""Workload C1 (../shared/BENCHMARKS.md): the embedded SmolLM2-135M-Instruct on the
CPU, 32 chat prompts ("Write a short paragraph about X.", 16 topics twice), 128
greedy tokens each, all 32 at once and one at a time. `pagedllm bench cpu-chat`."""

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
    args = p.parse_args(argv)
    llm = LLM(device="cpu", max_model_len=2048)
    llm.chat([{"role": "user", "content": "Hi"}], use_tqdm=False)  # warm-up
    results = [run(llm, int(b), args.max_tokens) for b in args.batches.split(",")]
    for r in results:
        print(
            f"C1 batch={r['batch']}: {r['output_tokens_per_s']} output tokens/s ({r['elapsed_s']} s)"
        )
    publish_results(results, args.output_json)
    return results


if __name__ == "__main__":
    main()
