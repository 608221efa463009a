"""What the workers get for one scheduled row (SchedulerOutput's scheduled_new_reqs /
scheduled_cached_reqs): the request whole on first sight, then only what changed.
worker/request_state.py applies it."""

from __future__ import annotations

from pagedllm.core.request import Request
from pagedllm.scheduler_output import NewRequestData, ScheduledRequest, SchedulerOutput


def add_worker_delta(
    out: SchedulerOutput,
    request: Request,
    row: ScheduledRequest,
    first_sight: bool,
    resumed: bool,
) -> None:
    """First sight: prompt, params, block table. Later: the output tokens among the
    step's tokens and the blocks appended since the workers last saw it (its whole
    table when `resumed`: scheduled from the waiting queue after a preemption, which
    freed or swapped its blocks; a running request's table only grows)."""
    block_ids = row.block_ids
    if first_sight:
        out.scheduled_new_reqs.append(
            NewRequestData(
                request.request_id,
                request.prompt_token_ids,
                request.sampling_params,
                request.pooling_params,
                block_ids,
                row.num_computed_tokens,
            )
        )
    else:
        skip = request.num_prompt_tokens - row.num_computed_tokens  # prompt tokens in the step
        sent = 0 if resumed else request.num_sent_blocks
        out.scheduled_cached_reqs.append(
            request.request_id,
            resumed,
            row.new_token_ids if skip <= 0 else row.new_token_ids[skip:],
            block_ids[sent:],  # [] when nothing was appended
            row.num_computed_tokens,
            row.num_tokens - request.num_prompt_tokens,
        )
    request.num_sent_blocks = len(block_ids)
