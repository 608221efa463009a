"""The Score and Re-rank APIs' request and response bodies (vLLM's /score and
/rerank, with its /v1 and Jina/Cohere-style /v2 routes)."""

from __future__ import annotations

import time
from typing import Literal

from pydantic import Field

from pagedllm.entrypoints.openai.protocol import OpenAIBaseModel, UsageInfo, random_uuid


class ScoreRequest(OpenAIBaseModel):
    model: str | None = None
    text_1: str | list[str]
    text_2: str | list[str]
    truncate_prompt_tokens: int | None = Field(default=None, ge=-1)  # -1: max_model_len
    priority: int = Field(default=0, ge=-(2**63), le=2**63 - 1)


class ScoreResponseData(OpenAIBaseModel):
    index: int
    object: Literal["score"] = "score"
    score: float


class ScoreResponse(OpenAIBaseModel):
    id: str = Field(default_factory=lambda: f"score-{random_uuid()}")
    object: Literal["list"] = "list"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    data: list[ScoreResponseData]
    usage: UsageInfo


class RerankRequest(OpenAIBaseModel):
    model: str | None = None
    query: str
    documents: list[str]
    top_n: int = Field(default=0, ge=0)  # 0: every document
    truncate_prompt_tokens: int | None = Field(default=None, ge=-1)  # -1: max_model_len
    priority: int = Field(default=0, ge=-(2**63), le=2**63 - 1)


class RerankDocument(OpenAIBaseModel):
    text: str


class RerankResult(OpenAIBaseModel):
    index: int
    document: RerankDocument
    relevance_score: float


class RerankUsage(OpenAIBaseModel):
    total_tokens: int


class RerankResponse(OpenAIBaseModel):
    id: str = Field(default_factory=lambda: f"rerank-{random_uuid()}")
    model: str
    usage: RerankUsage
    results: list[RerankResult]
