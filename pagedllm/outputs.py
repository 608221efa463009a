"""What the engine hands back: vLLM's RequestOutput and friends."""

from __future__ import annotations

from dataclasses import dataclass, field

# One position's logprobs: token id -> Logprob (the sampled token plus the top-k).
LogprobsDict = dict[int, "Logprob"]
SampleLogprobs = list[LogprobsDict]
PromptLogprobs = list[LogprobsDict | None]


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None  # 1 = most likely
    decoded_token: str | None = None


@dataclass
class RequestMetrics:
    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    finished_time: float | None = None
    num_generation_tokens: int = 0


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: SampleLogprobs | None
    finish_reason: str | None = None  # "stop" | "length" | "abort" | None while running
    stop_reason: int | str | None = None  # the stop string or stop token id that ended it

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: PromptLogprobs | None
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestMetrics | None = None
    num_cached_tokens: int = 0


@dataclass
class EmbeddingOutput:
    embedding: list[float]

    @property
    def hidden_size(self) -> int:
        return len(self.embedding)


@dataclass
class PoolingRequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: EmbeddingOutput
    finished: bool = True
    prompt: str | None = None
    metrics: RequestMetrics | None = None


EmbeddingRequestOutput = PoolingRequestOutput


@dataclass
class ScoringOutput:
    score: float


@dataclass
class ScoringRequestOutput:
    """One pair's score (LLM.score): the cosine similarity of the two embeddings."""

    request_id: str
    outputs: ScoringOutput
    prompt_token_ids: list[int]  # the first text's, then the second's
    finished: bool = True


@dataclass
class SchedulerStats:
    """A snapshot for logging and /metrics, taken after each step."""

    num_running_reqs: int = 0
    num_waiting_reqs: int = 0
    kv_cache_usage: float = 0.0  # used blocks / total blocks
    num_gpu_blocks: int = 0
    prefix_cache_queries: int = 0  # tokens looked up (cumulative)
    prefix_cache_hits: int = 0  # tokens found (cumulative, both tiers)
    cpu_prefix_cache_hits: int = 0  # of those, found in the CPU tier (swap_space)
    kv_swapped_out_blocks: int = 0  # cumulative copies to the CPU tier (swap, spill)
    kv_swapped_in_blocks: int = 0  # cumulative copies back
    num_preemptions: int = 0  # cumulative
    prompt_tokens: int = 0  # cumulative, computed prompt tokens
    generation_tokens: int = 0  # cumulative
    finished_reasons: dict[str, int] = field(default_factory=dict)  # cumulative
