"""The profiling run: one largest step (max_num_batched_tokens tokens over up to
max_num_seqs sequences, logits for every sequence) on a throw-away KV cache, so
that the peak activation memory is known before the real cache is sized."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from pagedllm.sampling_params import SamplingParams
from pagedllm.scheduler_output import NewRequestData, SchedulerOutput
from pagedllm.worker import kv_cache as kvc

if TYPE_CHECKING:
    from pagedllm.worker.model_runner import ModelRunner


def dummy_scheduler_output(num_tokens: int, num_seqs: int, block_size: int) -> SchedulerOutput:
    num_seqs = max(1, min(num_seqs, num_tokens))
    per_seq = [num_tokens // num_seqs] * num_seqs
    per_seq[-1] += num_tokens - sum(per_seq)
    out, next_block = SchedulerOutput(total_num_scheduled_tokens=num_tokens), 0
    params = SamplingParams(temperature=1.0, max_tokens=1)
    for i, n in enumerate(per_seq):
        nblocks = -(-n // block_size)
        block_ids = list(range(next_block, next_block + nblocks))
        out.scheduled_new_reqs.append(
            NewRequestData(f"profile-{i}", [0] * n, params, None, block_ids, 0)
        )
        out.num_scheduled_tokens[f"profile-{i}"] = n
        next_block += nblocks
    return out


def profile_run(runner: ModelRunner) -> None:
    sc = runner.config.scheduler_config
    out = dummy_scheduler_output(sc.max_num_batched_tokens, sc.max_num_seqs, runner.block_size)
    num_blocks = sum(len(r.block_ids) for r in out.scheduled_new_reqs)
    spec = runner.kv_cache_spec()
    saved = runner.kv_caches
    runner.kv_caches = kvc.allocate_kv_caches(spec, num_blocks, runner.device)
    try:
        runner.execute_model(out)
    finally:
        runner.kv_caches = saved
        runner.generators.clear()
        req_ids = list(out.num_scheduled_tokens)
        runner.requests.drop(req_ids)
        runner.block_tables.release(set(req_ids))
    if runner.device.type == "cuda":
        torch.cuda.synchronize(runner.device)
