"""The worker's persistent state of each request (vLLM's CachedRequestState), kept
up to date from each SchedulerOutput's deltas, and the step's rows built from it.

A request arrives whole once (NewRequestData: prompt, sampling params, block table);
after that each step sends only what changed (CachedRequestData): where its step
starts, the output tokens among the step's tokens, the blocks appended since its
last step (its whole table when resumed from preemption), how many outputs it has.
finished_req_ids drop a state. The rows this builds are those the core recorded
(SchedulerOutput.scheduled), field for field, except that they always carry the
prompt (and the outputs, for penalties): tests/worker/test_request_state.py."""

from __future__ import annotations

from dataclasses import dataclass, field

from pagedllm.sampling_params import PoolingParams, SamplingParams
from pagedllm.scheduler_output import (
    CachedRequestData,
    NewRequestData,
    ScheduledRequest,
    SchedulerOutput,
    uses_token_history,
)


@dataclass
class CachedRequestState:
    req_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams | None
    pooling_params: PoolingParams | None
    block_ids: list[int]  # its own list: a new one when resumed (BlockTableBuffer)
    num_computed_tokens: int  # where its latest step started
    num_output_tokens: int = 0  # known to the core, placeholders included
    # Outputs as sent (positions num_prompt_tokens..): -1 where async scheduling
    # filled the token on the device.
    output_token_ids: list[int] = field(default_factory=list)
    needs_history: bool = False  # sampling reads the outputs (penalties, min_tokens)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    def token_ids(self, start: int, end: int) -> list[int]:
        """The tokens at positions [start, end)."""
        prompt = self.prompt_token_ids
        num_prompt = len(prompt)
        if end <= num_prompt:
            return prompt[start:end]
        outputs = self.output_token_ids[max(start - num_prompt, 0) : end - num_prompt]
        return prompt[start:] + outputs if start < num_prompt else outputs


class RequestStates:
    def __init__(self) -> None:
        self.states: dict[str, CachedRequestState] = {}

    def update(self, scheduler_output: SchedulerOutput) -> list[ScheduledRequest]:
        """Apply the step's deltas; the step's rows in batch order. finished_req_ids
        first: a finished request's id may come back as a new request."""
        for req_id in scheduler_output.finished_req_ids:
            self.states.pop(req_id, None)
        for new in scheduler_output.scheduled_new_reqs:
            self._add(new)
        self._apply_cached(scheduler_output.scheduled_cached_reqs)
        return [self._row(r, n) for r, n in scheduler_output.num_scheduled_tokens.items()]

    def drop(self, req_ids: list[str]) -> None:
        for req_id in req_ids:
            self.states.pop(req_id, None)

    def _add(self, new: NewRequestData) -> None:
        sp = new.sampling_params
        self.states[new.req_id] = CachedRequestState(
            req_id=new.req_id,
            prompt_token_ids=new.prompt_token_ids,
            sampling_params=sp,
            pooling_params=new.pooling_params,
            block_ids=list(new.block_ids),  # (in process: the core's live list)
            num_computed_tokens=new.num_computed_tokens,
            needs_history=sp is not None and uses_token_history(sp),
        )

    def _apply_cached(self, cached: CachedRequestData) -> None:
        for i, req_id in enumerate(cached.req_ids):
            state = self.states[req_id]
            start = cached.num_computed_tokens[i]
            if cached.resumed_from_preemption[i]:
                state.block_ids = list(cached.new_block_ids[i])
            elif cached.new_block_ids[i]:
                state.block_ids.extend(cached.new_block_ids[i])
            state.num_computed_tokens = start
            state.num_output_tokens = cached.num_output_tokens[i]
            new_token_ids = cached.new_token_ids[i]
            if new_token_ids:
                first = max(start - state.num_prompt_tokens, 0)  # output index of the first
                outputs = state.output_token_ids
                assert first <= len(outputs), f"{req_id}: outputs {len(outputs)} < {first}"
                del outputs[first:]
                outputs.extend(new_token_ids)

    def _row(self, req_id: str, num_new: int) -> ScheduledRequest:
        state = self.states[req_id]
        start = state.num_computed_tokens
        return ScheduledRequest(
            req_id=req_id,
            new_token_ids=state.token_ids(start, start + num_new),
            num_computed_tokens=start,
            block_ids=state.block_ids,
            num_tokens=state.num_prompt_tokens + state.num_output_tokens,
            sampling_params=state.sampling_params,
            pooling_params=state.pooling_params,
            prompt_token_ids=state.prompt_token_ids,
            output_token_ids=state.output_token_ids if state.needs_history else None,
            num_prompt_tokens=state.num_prompt_tokens,
        )
