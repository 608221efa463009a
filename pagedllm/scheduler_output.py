"""What the scheduler hands the executor each step, and what comes back.

Plain, picklable data (no Request objects), so the same SchedulerOutput can be
sent to worker processes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pagedllm.sampling_params import PoolingParams, SamplingParams


@dataclass
class ScheduledRequest:
    """One row of a step: the core's record (SchedulerOutput.scheduled, never sent)
    and, rebuilt from its request states, the worker's (worker/request_state.py)."""

    req_id: str
    new_token_ids: list[
        int
    ]  # the tokens computed this step (positions start at num_computed_tokens)
    num_computed_tokens: int  # tokens already in the KV cache before this step
    block_ids: list[int]  # the request's whole block table
    num_tokens: int  # prompt + output tokens known so far
    sampling_params: SamplingParams | None
    pooling_params: PoolingParams | None = None
    # The core fills them on first sight / for penalties; the worker's rows always have
    # the prompt, and the outputs for penalties (uses_token_history).
    prompt_token_ids: list[int] | None = None
    output_token_ids: list[int] | None = None
    num_prompt_tokens: int = 0

    @property
    def num_new_tokens(self) -> int:
        return len(self.new_token_ids)

    @property
    def samples(self) -> bool:
        """Whether this step reaches the end of the known tokens, so a token is sampled."""
        return self.sampling_params is not None and (
            self.num_computed_tokens + self.num_new_tokens == self.num_tokens
        )

    @property
    def pools(self) -> bool:
        return self.pooling_params is not None and (
            self.num_computed_tokens + self.num_new_tokens == self.num_tokens
        )


@dataclass
class NewRequestData:
    """A request the workers see for the first time: what they keep for its life
    (worker/request_state.py). Its tokens this step are prompt tokens."""

    req_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams | None
    pooling_params: PoolingParams | None
    block_ids: list[int]  # its whole block table
    num_computed_tokens: int  # tokens in the KV cache before this step (prefix-cache hits)


@dataclass
class CachedRequestData:
    """The requests the workers already hold: per step only what changed, one entry
    per request in each list (same order as req_ids)."""

    req_ids: list[str] = field(default_factory=list)
    # Preempted since its last step: new_block_ids is then its whole block table.
    resumed_from_preemption: list[bool] = field(default_factory=list)
    # The output tokens among this step's tokens (the workers have the prompt): one per
    # decode step (-1 while it is sampled by a step in flight: async scheduling), every
    # output recomputed when resumed. No rank reads its own sampled tokens back to the
    # host, and pipeline stages before the last never sample, so they come from here.
    new_token_ids: list[list[int]] = field(default_factory=list)
    new_block_ids: list[list[int]] = field(default_factory=list)  # appended since its last step
    num_computed_tokens: list[int] = field(default_factory=list)  # before this step
    # Outputs known to the core, placeholders included: with the prompt, where the
    # request's tokens end (the step samples when it reaches that end).
    num_output_tokens: list[int] = field(default_factory=list)

    def append(
        self,
        req_id: str,
        resumed: bool,
        new_token_ids: list[int],
        new_block_ids: list[int],
        num_computed_tokens: int,
        num_output_tokens: int,
    ) -> None:
        self.req_ids.append(req_id)
        self.resumed_from_preemption.append(resumed)
        self.new_token_ids.append(new_token_ids)
        self.new_block_ids.append(new_block_ids)
        self.num_computed_tokens.append(num_computed_tokens)
        self.num_output_tokens.append(num_output_tokens)


@dataclass
class SchedulerOutput:
    """One step. Workers get it pickled (executor/): requests seen for the first time
    whole (scheduled_new_reqs), the others as deltas (scheduled_cached_reqs), so a
    steady decode step costs a few bytes per request, not its SamplingParams and block
    table. Every SchedulerOutput the scheduler makes reaches the workers, in order
    (the deltas build on each other), or, empty, has its finished_req_ids carried into
    the next one."""

    # The batch, in order: tokens scheduled per request id.
    num_scheduled_tokens: dict[str, int] = field(default_factory=dict)
    total_num_scheduled_tokens: int = 0
    scheduled_new_reqs: list[NewRequestData] = field(default_factory=list)
    scheduled_cached_reqs: CachedRequestData = field(default_factory=CachedRequestData)
    finished_req_ids: set[str] = field(default_factory=set)  # workers drop their state
    # KV copies to make before the forward, in this order (core/cpu_tier.py):
    swap_out: list[tuple[int, int]] = field(default_factory=list)  # (gpu block, cpu block)
    swap_in: list[tuple[int, int]] = field(default_factory=list)  # (cpu block, gpu block)
    # Structured outputs: row i of the bitmask is what request
    # structured_output_request_ids[i] may sample this step (bit j of word w allows
    # token 32 * w + j); None when no scheduled request samples under a grammar.
    grammar_bitmask: np.ndarray | None = None  # [R, ceil(V / 32)] int32
    structured_output_request_ids: list[str] = field(default_factory=list)
    # The core's own record of each row (batch order), for update_from_output. Never
    # sent: __getstate__ leaves it out, and workers rebuild their rows from the deltas.
    scheduled: list[ScheduledRequest] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not self.num_scheduled_tokens

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        state["scheduled"] = []
        return state


@dataclass
class SampledLogprobs:
    """Logprobs of one sampled position: the sampled token first, then the top-k."""

    token_ids: list[int]
    logprobs: list[float]
    sampled_rank: int


@dataclass
class ModelRunnerOutput:
    req_ids: list[str]  # batch order (SchedulerOutput.num_scheduled_tokens)
    sampled_token_ids: list[
        int | None
    ]  # None where the step did not reach the end (chunked prefill)
    logprobs: list[SampledLogprobs | None] | None = None
    # Per request id, one entry per prompt position computed this step.
    prompt_logprobs: dict[str, list[SampledLogprobs]] = field(default_factory=dict)
    pooled: dict[str, list[float]] = field(default_factory=dict)

    def get(self) -> ModelRunnerOutput:
        """Outputs that are already on the host are their own result (see
        worker/async_output.py for the ones that are not yet)."""
        return self


def uses_token_history(sp: SamplingParams) -> bool:
    """Whether sampling reads the output tokens so far (so a step cannot start
    before the previous one's token is known)."""
    return (
        sp.presence_penalty != 0.0
        or sp.frequency_penalty != 0.0
        or sp.repetition_penalty != 1.0
        or sp.min_tokens > 0
        or bool(sp.bad_words_token_ids)
    )
