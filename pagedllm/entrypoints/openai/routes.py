"""The OpenAI routes; handlers find their serving objects on `app.state`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from pagedllm.entrypoints.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    DetokenizeResponse,
    EmbeddingRequest,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
)
from pagedllm.entrypoints.openai.protocol_scores import RerankRequest, ScoreRequest
from pagedllm.entrypoints.utils import with_cancellation

router = APIRouter()


def _state(raw_request: Request) -> Any:
    return raw_request.app.state


@router.get("/v1/models")
async def show_available_models(raw_request: Request) -> ModelList:
    return _state(raw_request).models.list_models()  # type: ignore[no-any-return]


@router.post("/v1/completions", response_model=None)
@with_cancellation
async def create_completion(request: CompletionRequest, raw_request: Request) -> Any:
    return await _state(raw_request).completion.create_completion(request)


@router.post("/v1/chat/completions", response_model=None)
@with_cancellation
async def create_chat_completion(request: ChatCompletionRequest, raw_request: Request) -> Any:
    return await _state(raw_request).chat.create_chat_completion(request)


@router.post("/v1/embeddings", response_model=None)
@with_cancellation
async def create_embedding(request: EmbeddingRequest, raw_request: Request) -> Any:
    return await _state(raw_request).embedding.create_embedding(request)


@router.post("/score", response_model=None)
@router.post("/v1/score", response_model=None)
@with_cancellation
async def create_score(request: ScoreRequest, raw_request: Request) -> Any:
    return await _state(raw_request).scores.create_score(request)


@router.post("/rerank", response_model=None)
@router.post("/v1/rerank", response_model=None)
@router.post("/v2/rerank", response_model=None)
@with_cancellation
async def create_rerank(request: RerankRequest, raw_request: Request) -> Any:
    return await _state(raw_request).scores.create_rerank(request)


@router.post("/tokenize")
async def tokenize(request: TokenizeRequest, raw_request: Request) -> TokenizeResponse:
    return await _state(raw_request).tokenization.tokenize_request(request)  # type: ignore[no-any-return]


@router.post("/detokenize")
async def detokenize(request: DetokenizeRequest, raw_request: Request) -> DetokenizeResponse:
    return await _state(raw_request).tokenization.detokenize_request(request)  # type: ignore[no-any-return]
