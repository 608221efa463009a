"""GPU checks of memory beyond the GPU (issue 18), under ~5 minutes on an H200:

swap      greedy tokens identical with swap, with recompute and without preemption
          (a tiny KV cache), then swapspeed;
swapspeed the --workload's requests (T1, or T2 for the Llama-3.1-8B shape) with KV room
          for a quarter of them: output tokens/s with preemption_mode=swap against recompute;
prefix    many requests sharing long prefixes that do not all fit in GPU KV (on
          --prefix-shape, the Qwen3-0.6B shape by default): with
          and without the CPU tier (swap_space), time and CPU-tier hits;
offload   the Llama-3.1-8B shape (dummy) at L1 (1 request, 128 in, 512 out) with
          and without cpu_offload_gb: tokens identical, tokens/s, and the PCIe bound
          (offloaded bytes per step over the measured host->device bandwidth).

  python scripts/gpu_tiers_check.py [--steps swap,prefix,offload] [--offload-gb 4]
  python scripts/gpu_tiers_check.py --steps swapspeed,prefix --workload T2 --prefix-shape llama-3.1-8b
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

import torch

from pagedllm import LLM, SamplingParams
from pagedllm.benchmarks.workload import WORKLOADS, make_requests, shape_dir


def run(model: str, prompts: list[Any], params: list[SamplingParams], **kw: Any) -> tuple:
    llm = LLM(model=model, load_format="dummy", skip_tokenizer_init=True, seed=0, **kw)
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    stats = llm.llm_engine.get_stats()
    llm.shutdown()
    del llm
    torch.cuda.empty_cache()
    return [o.outputs[0].token_ids for o in outs], elapsed, stats


def check_swap(max_model_len: int = 2048) -> None:
    model = shape_dir(WORKLOADS["T1"][0])
    reqs = make_requests(64, (100, 600), (50, 200), seed=1)
    prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in reqs]
    params = [
        SamplingParams(temperature=0.0, max_tokens=r.output_len, ignore_eos=True) for r in reqs
    ]
    base = dict(
        max_model_len=max_model_len, enable_prefix_caching=False, gpu_memory_utilization=0.5
    )
    ref, _, _ = run(model, prompts, params, **base)
    for mode in ("recompute", "swap"):
        got, _, stats = run(
            model, prompts, params, preemption_mode=mode, num_gpu_blocks_override=300, **base
        )
        same = sum(a == b for a, b in zip(ref, got))
        print(
            f"CHECK swap identical ({mode}): {same}/{len(ref)}, preemptions {stats.num_preemptions}, "
            f"blocks out/in {stats.kv_swapped_out_blocks}/{stats.kv_swapped_in_blocks}",
            flush=True,
        )


def check_swap_speed(workload: str, max_model_len: int = 2048) -> None:
    """The workload's requests with KV room for a quarter of them: swap against recompute."""
    shape, num, in_range, out_range = WORKLOADS[workload]
    model = shape_dir(shape)
    base = dict(
        max_model_len=max_model_len, enable_prefix_caching=False, gpu_memory_utilization=0.5
    )
    reqs = make_requests(num, in_range, out_range)
    prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in reqs]
    params = [
        SamplingParams(temperature=0.0, max_tokens=r.output_len, ignore_eos=True) for r in reqs
    ]
    need = sum(-(-(len(r.prompt_token_ids) + r.output_len) // 16) for r in reqs)
    for frac in (0.25,):
        blocks = int(need * frac)
        for mode in ("recompute", "swap"):
            _, t, stats = run(
                model,
                prompts,
                params,
                preemption_mode=mode,
                swap_space=16,
                num_gpu_blocks_override=blocks,
                **base,
            )
            print(
                f"{workload} ({shape}) KV room {frac:.0%} ({blocks} blocks) {mode}: {stats.generation_tokens / t:,.0f} "
                f"output tok/s, {t:.2f} s, preemptions {stats.num_preemptions}",
                flush=True,
            )


def check_prefix(shape: str) -> None:
    model = shape_dir(shape)
    rng = random.Random(0)
    prefixes = [[rng.randint(0, 10000) for _ in range(2000)] for _ in range(16)]
    prompts = [
        {"prompt_token_ids": prefixes[i % 16] + [rng.randint(0, 10000) for _ in range(50)]}
        for i in range(512)
    ]
    params = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)
    kw: dict[str, Any] = dict(max_model_len=4096, gpu_memory_utilization=0.5, max_num_seqs=8)
    # The third run keeps every prefix in GPU memory (2,400 blocks): its hits reuse the same
    # KV as the CPU tier's, so those two must agree token for token. The run without the
    # tier recomputes each prefix inside a longer prefill, whose bf16 rounding differs, so
    # random weights' near-ties may flip a few greedy tokens there.
    results = {}
    for name, swap_space, blocks in (
        ("no tier", 0, 1200),
        ("CPU tier", 16, 1200),
        ("GPU", 0, 2400),
    ):
        kw["num_gpu_blocks_override"] = blocks
        toks, t, stats = run(model, prompts, [params] * len(prompts), swap_space=swap_space, **kw)
        results[name] = toks
        print(
            f"PREFIX ({shape}) {name}: swap_space={swap_space}, {blocks} GPU blocks: {t:.2f} s, "
            f"hits {stats.prefix_cache_hits:,} tokens ({stats.cpu_prefix_cache_hits:,} from the "
            f"CPU tier) of {stats.prefix_cache_queries:,}",
            flush=True,
        )
    for a, b in (("CPU tier", "GPU"), ("CPU tier", "no tier")):
        same = sum(x == y for x, y in zip(results[a], results[b]))
        print(f"CHECK prefix {a} vs {b} identical: {same}/{len(prompts)}", flush=True)


def h2d_bandwidth() -> float:
    host = torch.empty(1 << 30, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty_like(host, device="cuda")
    dev.copy_(host, non_blocking=True)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(5):
        dev.copy_(host, non_blocking=True)
    torch.cuda.synchronize()
    return 5 * (1 << 30) / (time.perf_counter() - start)


def check_offload(offload_gb: float) -> None:
    shape, _, in_range, out_range = WORKLOADS["L1"]
    model = shape_dir(shape)
    reqs = make_requests(1, in_range, out_range)
    prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in reqs]
    params = [
        SamplingParams(temperature=0.0, max_tokens=r.output_len, ignore_eos=True) for r in reqs
    ]
    # Offloading runs eagerly: the reference too (random weights' near-ties make greedy
    # tokens of eager and CUDA-graph steps drift apart; that is not what is checked).
    kw = dict(max_model_len=2048, gpu_memory_utilization=0.8, enforce_eager=True)
    ref, t0, _ = run(model, prompts, params, **kw)
    got, t1, _ = run(model, prompts, params, cpu_offload_gb=offload_gb, **kw)
    n = len(got[0])
    bw = h2d_bandwidth()
    print(f"CHECK offload identical: {ref == got}", flush=True)
    print(
        f"L1 no offload: {n / t0:,.1f} tok/s; cpu_offload_gb={offload_gb}: {n / t1:,.1f} tok/s; "
        f"PCIe bound {bw / (offload_gb * (1 << 30)):,.1f} tok/s (H2D {bw / 1e9:.1f} GB/s)",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", default="swap,prefix,offload")
    ap.add_argument("--offload-gb", type=float, default=4.0)
    ap.add_argument("--workload", default="T1", help="the swap-speed requests and shape (T1, T2)")
    ap.add_argument("--prefix-shape", default="qwen3-0.6b")
    args = ap.parse_args()
    steps = args.steps.split(",")
    if "swap" in steps:
        check_swap()
    if "swap" in steps or "swapspeed" in steps:
        check_swap_speed(args.workload)
    if "prefix" in steps:
        check_prefix(args.prefix_shape)
    if "offload" in steps:
        check_offload(args.offload_gb)


if __name__ == "__main__":
    main()
