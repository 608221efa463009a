"""`pagedllm bench latency`: one request (workload L1: 128 prompt tokens, 512 output
tokens), timed end to end after a warm-up; reports decode tokens/s."""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from pagedllm.benchmarks.workload import (
    SHAPES,
    engine_kwargs,
    make_requests,
    publish_results,
    shape_dir,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="pagedllm bench latency")
    p.add_argument("--model", default=None)
    p.add_argument("--shape", choices=sorted(SHAPES), default="llama-3.1-8b")
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--num-iters", type=int, default=3)
    p.add_argument("--load-format", default="dummy")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--quantization", "-q", default=None)
    p.add_argument("--tensor-parallel-size", type=int, default=1)
    p.add_argument("--pipeline-parallel-size", type=int, default=1)
    p.add_argument("--disable-custom-all-reduce", action="store_true")
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--output-json", default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from pagedllm import LLM, SamplingParams

    args = parse_args(argv)
    model = args.model or shape_dir(args.shape)
    args.max_num_seqs = max(8, args.batch_size)
    llm = LLM(model=model, **engine_kwargs(args))
    requests = make_requests(
        args.batch_size, (args.input_len, args.input_len), (args.output_len, args.output_len)
    )
    prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in requests]
    params = SamplingParams(
        temperature=1.0, ignore_eos=True, max_tokens=args.output_len, detokenize=False
    )
    llm.generate(
        prompts, SamplingParams(max_tokens=16, ignore_eos=True, detokenize=False), use_tqdm=False
    )
    times = []
    for _ in range(args.num_iters):
        start = time.perf_counter()
        llm.generate(prompts, params, use_tqdm=False)
        times.append(time.perf_counter() - start)
    llm.shutdown()
    median = statistics.median(times)
    result = dict(
        batch_size=args.batch_size,
        input_len=args.input_len,
        output_len=args.output_len,
        median_s=round(median, 3),
        tokens_per_s=round(args.batch_size * args.output_len / median, 1),
        times_s=[round(t, 3) for t in times],
    )
    print(
        f"latency: {result['median_s']} s for {args.output_len} tokens -> {result['tokens_per_s']} tokens/s"
    )
    publish_results(result, args.output_json)
    return result


if __name__ == "__main__":
    main()
