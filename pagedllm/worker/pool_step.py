"""A pooling model's step: the pooler turns the step's hidden states into one vector
per finished prompt (embedding models, and decoder models served for pooling)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from pagedllm.layers.pooler import PoolingMetadata
from pagedllm.scheduler_output import ModelRunnerOutput, ScheduledRequest
from pagedllm.worker.input_prep import StepInputs


def pool_step(
    pooler: Callable[..., list[torch.Tensor]],
    scheduled: list[ScheduledRequest],
    inputs: StepInputs,
    hidden: torch.Tensor,
) -> ModelRunnerOutput:
    """The step's output: each request's pooled vector as a list of floats."""
    md = inputs.attn_metadata
    assert md.query_start_loc_cpu is not None and md.seq_lens_cpu is not None
    pooling_metadata = PoolingMetadata(
        prompt_lens=md.seq_lens_cpu.to(torch.int64),
        query_start_loc=md.query_start_loc_cpu.to(torch.int64),
    )
    params = [s.pooling_params for s in scheduled]
    pooled = pooler(hidden[: inputs.num_tokens], pooling_metadata, params)
    out = ModelRunnerOutput(
        req_ids=[s.req_id for s in scheduled], sampled_token_ids=[None] * len(scheduled)
    )
    for s, vec in zip(scheduled, pooled):
        out.pooled[s.req_id] = vec.float().cpu().tolist()
    return out
