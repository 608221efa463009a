"""pagedllm: high-throughput LLM inference and serving with a paged KV cache."""

from typing import TYPE_CHECKING, Any

from pagedllm.config import EngineArgs
from pagedllm.outputs import (
    CompletionOutput,
    EmbeddingOutput,
    EmbeddingRequestOutput,
    Logprob,
    PoolingRequestOutput,
    RequestOutput,
    ScoringOutput,
    ScoringRequestOutput,
)
from pagedllm.sampling_params import PoolingParams, RequestOutputKind, SamplingParams

if TYPE_CHECKING:
    from pagedllm.llm import LLM

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # LLM pulls in the whole engine; import it on first use only.
    if name == "LLM":
        from pagedllm.llm import LLM

        return LLM
    raise AttributeError(f"module 'pagedllm' has no attribute {name!r}")


__all__ = [
    "LLM",
    "CompletionOutput",
    "EmbeddingOutput",
    "EmbeddingRequestOutput",
    "EngineArgs",
    "Logprob",
    "PoolingParams",
    "PoolingRequestOutput",
    "RequestOutput",
    "RequestOutputKind",
    "SamplingParams",
    "ScoringOutput",
    "ScoringRequestOutput",
    "__version__",
]
