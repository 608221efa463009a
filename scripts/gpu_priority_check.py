"""scheduling_policy="priority" on the GPU (Qwen3-0.6B shape, dummy weights, CUDA
graphs, async scheduling): greedy tokens under forced preemption against an FCFS run
with room to spare, then a T1-sized offline batch (1,000 requests, 10% of them with
priority -1) under each policy: output tok/s and the time to first token of the
urgent tenth against the rest. Prints one line per check.

    PYTHONPATH=$PWD python3 scripts/gpu_priority_check.py
"""

from __future__ import annotations

import gc
import statistics
import time
from typing import Any

import torch

from pagedllm import LLM, SamplingParams
from pagedllm.benchmarks.workload import make_requests, shape_dir

MODEL = shape_dir("qwen3-0.6b")


def make_llm(**kwargs: Any) -> LLM:
    base = dict(
        model=MODEL, load_format="dummy", skip_tokenizer_init=True, max_model_len=2048, seed=0
    )
    return LLM(**{**base, **kwargs})


def release(llm: LLM) -> None:
    llm.shutdown()
    gc.collect()
    torch.cuda.empty_cache()


def check_tokens() -> None:
    reqs = make_requests(64, (16, 200), (32, 96), seed=3)
    prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in reqs]
    params = [
        SamplingParams(temperature=0.0, max_tokens=r.output_len, ignore_eos=True) for r in reqs
    ]
    roomy = make_llm(gpu_memory_utilization=0.3)
    want = [o.outputs[0].token_ids for o in roomy.generate(prompts, params, use_tqdm=False)]
    release(roomy)
    small = make_llm(
        gpu_memory_utilization=0.3, num_gpu_blocks_override=160, scheduling_policy="priority"
    )
    priorities = [(i * 7) % 5 - 2 for i in range(len(prompts))]
    got = small.generate(prompts, params, use_tqdm=False, priority=priorities)
    same = sum(o.outputs[0].token_ids == w for o, w in zip(got, want))
    stats = small.llm_engine.get_stats()
    print(
        f"CHECK tokens, priority policy + {stats.num_preemptions} preemptions vs FCFS roomy: "
        f"{same}/{len(want)} identical",
        flush=True,
    )
    release(small)


def ttft_ms(outputs: list[Any], rows: list[int]) -> float:
    return 1e3 * statistics.median(
        outputs[i].metrics.first_token_time - outputs[i].metrics.arrival_time for i in rows
    )


def bench(policy: str) -> None:
    reqs = make_requests(1000, (50, 1024), (50, 1024), seed=0)  # T1's requests
    prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in reqs]
    params = [
        SamplingParams(temperature=0.0, max_tokens=r.output_len, ignore_eos=True) for r in reqs
    ]
    urgent = [i for i in range(len(reqs)) if i % 10 == 9]  # the tenth that arrives last
    rest = [i for i in range(len(reqs)) if i % 10 != 9]
    priority = [-1 if i % 10 == 9 else 0 for i in range(len(reqs))]
    llm = make_llm(scheduling_policy=policy, gpu_memory_utilization=0.9)
    llm.generate(prompts[:8], params[:8], use_tqdm=False)  # warm-up
    start = time.perf_counter()
    kwargs = {"priority": priority} if policy == "priority" else {}
    outputs = llm.generate(prompts, params, use_tqdm=False, **kwargs)
    elapsed = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    print(
        f"BENCH {policy:8s} {tokens / elapsed:10.1f} output tok/s  {elapsed:6.2f} s  "
        f"TTFT p50 urgent tenth {ttft_ms(outputs, urgent):8.1f} ms, rest {ttft_ms(outputs, rest):8.1f} ms",
        flush=True,
    )
    release(llm)


def main() -> None:
    print(torch.cuda.get_device_name(), flush=True)
    check_tokens()
    for policy in ("fcfs", "priority", "fcfs", "priority"):
        bench(policy)


if __name__ == "__main__":
    main()
