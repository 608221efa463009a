"""`pagedllm bench throughput`: offline throughput on a workload, like
`vllm bench throughput`, with the HF transformers peer in the same command."""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from typing import Any

from pagedllm.benchmarks.workload import (
    SHAPES,
    WORKLOADS,
    BenchRequest,
    engine_kwargs,
    make_requests,
    publish_results,
    shape_dir,
)

logger = logging.getLogger(__name__)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="pagedllm bench throughput")
    p.add_argument("--workload", choices=sorted(WORKLOADS), default=None)
    p.add_argument("--model", default=None, help="model path; default: the workload's dummy shape")
    p.add_argument("--shape", choices=sorted(SHAPES), default=None)
    p.add_argument("--num-prompts", type=int, default=None)
    p.add_argument("--input-len", default=None, help="lo,hi prompt lengths")
    p.add_argument("--output-len", default=None, help="lo,hi output lengths")
    p.add_argument("--backend", choices=["pagedllm", "hf", "both"], default="pagedllm")
    p.add_argument("--load-format", default="dummy")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--quantization", "-q", default=None)
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-num-batched-tokens", type=int, default=None)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument("--tensor-parallel-size", type=int, default=1)
    p.add_argument("--pipeline-parallel-size", type=int, default=1)
    p.add_argument("--disable-custom-all-reduce", action="store_true")
    p.add_argument(
        "--measure-kv-waste",
        action="store_true",
        help="after the timed run, run the workload again step by step and report the "
        "allocated-but-unused KV slots at peak KV use",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--output-json", default=None)
    return p.parse_args(argv)


def _range(text: str | None, default: tuple[int, int]) -> tuple[int, int]:
    if not text:
        return default
    lo, _, hi = text.partition(",")
    return int(lo), int(hi or lo)


def resolve_workload(args: argparse.Namespace) -> tuple[str, list[BenchRequest]]:
    shape, num, in_range, out_range = WORKLOADS[args.workload or "T1"]
    shape = args.shape or shape
    num = args.num_prompts or num
    requests = make_requests(
        num, _range(args.input_len, in_range), _range(args.output_len, out_range)
    )
    return shape, requests


def run_pagedllm(
    args: argparse.Namespace, model: str, requests: list[BenchRequest]
) -> dict[str, Any]:
    from pagedllm import LLM, SamplingParams

    llm = LLM(model=model, **engine_kwargs(args))
    prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in requests]
    params = [
        SamplingParams(
            temperature=1.0, top_p=1.0, ignore_eos=True, max_tokens=r.output_len, detokenize=False
        )
        for r in requests
    ]
    llm.generate(prompts[:8], params[:8], use_tqdm=False)  # warm-up
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    produced = sum(len(o.outputs[0].token_ids) for o in outputs)
    assert produced == sum(r.output_len for r in requests), "every request must produce its tokens"
    result = _result("pagedllm", requests, elapsed)
    if args.measure_kv_waste:
        result["kv_waste_at_peak"] = measure_kv_waste(llm, prompts, params)
    llm.shutdown()  # give the device memory back before a peer runs in this process
    return result


def measure_kv_waste(llm: Any, prompts: list[Any], params: list[Any]) -> dict[str, float]:
    """Step the engine through the workload; at the step with the most KV blocks in
    use, the share of their slots that hold no token (block tails)."""
    from pagedllm.sampling_params import RequestOutputKind

    engine = llm.llm_engine
    for i, (prompt, sp) in enumerate(zip(prompts, params)):
        final_only = sp.clone()
        final_only.output_kind = RequestOutputKind.FINAL_ONLY  # as generate() does
        engine.add_request(f"kv-waste-{i}", prompt, final_only)
    peak_slots, peak_used = 0, 0
    while engine.has_unfinished_requests():
        engine.step()
        slots, used = engine.kv_slot_usage()
        if slots > peak_slots:
            peak_slots, peak_used = slots, used
    waste = 1.0 - peak_used / peak_slots if peak_slots else 0.0
    return dict(
        peak_allocated_slots=peak_slots, peak_used_slots=peak_used, waste_fraction=round(waste, 4)
    )


def run_hf(args: argparse.Namespace, shape: str, requests: list[BenchRequest]) -> dict[str, Any]:
    from pagedllm.benchmarks.hf_backend import run_hf_generate

    elapsed = run_hf_generate(peer_config(args.model, shape), requests)
    return _result("hf-transformers", requests, elapsed)


def peer_config(model: str | None, shape: str) -> dict[str, Any]:
    """The HF peer's model config (random weights of that shape): the config.json of
    --model when it is a directory, else the workload's shape."""
    if model is None:
        return dict(SHAPES[shape])
    path = os.path.join(model, "config.json")
    if not os.path.isfile(path):
        raise ValueError(
            f"--backend hf/both needs --model to be a directory with a config.json: {model!r}"
        )
    with open(path) as f:
        config: dict[str, Any] = json.load(f)
    return config


def _result(backend: str, requests: list[BenchRequest], elapsed: float) -> dict[str, Any]:
    prompt_tokens = sum(len(r.prompt_token_ids) for r in requests)
    output_tokens = sum(r.output_len for r in requests)
    return dict(
        backend=backend,
        num_requests=len(requests),
        elapsed_s=round(elapsed, 2),
        prompt_tokens=prompt_tokens,
        output_tokens=output_tokens,
        requests_per_s=round(len(requests) / elapsed, 3),
        output_tokens_per_s=round(output_tokens / elapsed, 1),
        total_tokens_per_s=round((prompt_tokens + output_tokens) / elapsed, 1),
    )


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    logging.basicConfig(level=logging.INFO)
    args = parse_args(argv)
    shape, requests = resolve_workload(args)
    model = args.model or shape_dir(shape, max_position_embeddings=None)
    results = []
    if args.backend in ("pagedllm", "both"):
        results.append(run_pagedllm(args, model, requests))
    if args.backend in ("hf", "both"):
        results.append(run_hf(args, shape, requests))
    if len(results) == 2:
        results[0]["ratio_to_hf"] = round(results[1]["elapsed_s"] / results[0]["elapsed_s"], 1)
    for r in results:
        print(
            f"{r['backend']:>16}: {r['requests_per_s']:.2f} requests/s, "
            f"{r['total_tokens_per_s']:.1f} total tokens/s, {r['output_tokens_per_s']:.1f} output tokens/s "
            f"({r['elapsed_s']} s)"
        )
    publish_results(results, args.output_json)
    return results


if __name__ == "__main__":
    main()
