"""What the scheduler hands the executor each step, and what comes back.

Plain, picklable data (no Request objects), so the same SchedulerOutput can be
sent to worker processes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pagedllm.sampling_params import PoolingParams, SamplingParams


@dataclass
class ScheduledRequest:
    req_id: str
    new_token_ids: list[
        int
    ]  # the tokens computed this step (positions start at num_computed_tokens)
    num_computed_tokens: int  # tokens already in the KV cache before this step
    block_ids: list[int]  # the request's whole block table
    num_tokens: int  # prompt + output tokens known so far
    sampling_params: SamplingParams | None
    pooling_params: PoolingParams | None = None
    # Filled only when the runner needs them (penalties / first sight of a request).
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
class SchedulerOutput:
    scheduled: list[ScheduledRequest]
    num_scheduled_tokens: int
    finished_req_ids: set[str] = field(default_factory=set)  # runner may drop their state
    # KV copies to make before the forward, in this order (core/cpu_tier.py):
    swap_out: list[tuple[int, int]] = field(default_factory=list)  # (gpu block, cpu block)
    swap_in: list[tuple[int, int]] = field(default_factory=list)  # (cpu block, gpu block)
    # Structured outputs: row i of the bitmask is what request
    # structured_output_request_ids[i] may sample this step (bit j of word w allows
    # token 32 * w + j); None when no scheduled request samples under a grammar.
    grammar_bitmask: np.ndarray | None = None  # [R, ceil(V / 32)] int32
    structured_output_request_ids: list[str] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


@dataclass
class SampledLogprobs:
    """Logprobs of one sampled position: the sampled token first, then the top-k."""

    token_ids: list[int]
    logprobs: list[float]
    sampled_rank: int


@dataclass
class ModelRunnerOutput:
    req_ids: list[str]  # same order as SchedulerOutput.scheduled
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
