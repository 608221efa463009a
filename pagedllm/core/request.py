"""One sequence being served: its prompt, its outputs so far, how far the KV cache
has caught up (`num_computed_tokens`), and its status."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from pagedllm.outputs import RequestMetrics
from pagedllm.sampling_params import PoolingParams, SamplingParams
from pagedllm.scheduler_output import SampledLogprobs
from pagedllm.structured_output.request import StructuredOutputRequest


class RequestStatus(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    # Everything from here on is finished.
    FINISHED_STOPPED = 3
    FINISHED_LENGTH_CAPPED = 4
    FINISHED_ABORTED = 5
    FINISHED_ERROR = 6

    @staticmethod
    def is_finished(status: RequestStatus) -> bool:
        return status >= RequestStatus.FINISHED_STOPPED


FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH_CAPPED: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
    RequestStatus.FINISHED_ERROR: "error",
}


@dataclass(eq=False)
class Request:
    """The scheduler's unit. With n > 1 a user request fans out into n Requests
    (`parent_id` + `index`) that share the prompt blocks through the prefix cache.

    Invariant: 0 <= num_computed_tokens <= num_tokens, where num_tokens counts
    prompt + output tokens; the KV cache holds the first num_computed_tokens.
    """

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams | None
    pooling_params: PoolingParams | None = None
    arrival_time: float = field(default_factory=time.time)
    priority: int = 0  # scheduling_policy="priority": lower is scheduled first
    prompt: str | None = None
    parent_id: str | None = None
    index: int = 0
    status: RequestStatus = RequestStatus.WAITING
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    # Tokens being sampled by a step still in flight (async scheduling): counted as
    # known for scheduling, appended when the step's output arrives.
    num_output_placeholders: int = 0
    # Steps scheduled for it whose outputs have not arrived (sampling or not).
    num_steps_in_flight: int = 0
    num_cached_tokens: int = -1  # prefix-cache hit at first scheduling; -1: not scheduled yet
    num_preemptions: int = 0
    stop_reason: int | str | None = None
    cumulative_logprob: float = 0.0
    logprobs: list[SampledLogprobs] = field(default_factory=list)  # one per output token
    prompt_logprobs: list[SampledLogprobs] = field(default_factory=list)  # prompt positions 1..
    block_hashes: list[int] = field(default_factory=list)  # hashes of full blocks, computed lazily
    metrics: RequestMetrics | None = None
    pooled: list[float] | None = None  # the embedding, for pooling requests
    seen_by_runner: bool = False  # the runner has its prompt (sent on first scheduling)
    num_sent_blocks: int = 0  # leading blocks of its table the workers were sent
    # What the front end has been sent (EngineCore.make_outputs): output tokens and
    # prompt logprobs so far; stream_outputs=False sends everything once, at the end.
    stream_outputs: bool = True
    num_sent_tokens: int = 0
    num_sent_prompt_logprobs: int = 0
    # Its grammar (structured outputs): compiling, then advanced with every token.
    structured_output_request: StructuredOutputRequest | None = None

    @property
    def max_tokens(self) -> int:
        """sampling_params.max_tokens, resolved at admission (engine/input_processor);
        0 for pooling requests."""
        sp = self.sampling_params
        return 0 if sp is None or sp.max_tokens is None else sp.max_tokens

    def __post_init__(self) -> None:
        if self.metrics is None:
            self.metrics = RequestMetrics(arrival_time=self.arrival_time)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_tokens_with_placeholders(self) -> int:
        return (
            len(self.prompt_token_ids) + len(self.output_token_ids) + self.num_output_placeholders
        )

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    def token_id_at(self, position: int) -> int:
        """The token at a position; -1 for a placeholder (sampled by a step in flight)."""
        n = len(self.prompt_token_ids)
        if position < n:
            return self.prompt_token_ids[position]
        position -= n
        return self.output_token_ids[position] if position < len(self.output_token_ids) else -1

    @property
    def is_finished(self) -> bool:
        return RequestStatus.is_finished(self.status)

    @property
    def is_pooling(self) -> bool:
        return self.pooling_params is not None

    @property
    def finish_reason(self) -> str | None:
        return FINISH_REASONS.get(self.status)

    @property
    def wants_prompt_logprobs(self) -> bool:
        sp = self.sampling_params
        return sp is not None and sp.prompt_logprobs is not None
