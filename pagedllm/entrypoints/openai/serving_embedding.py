"""POST /v1/embeddings on a pooling model (encoding_format float|base64, dimensions)."""

from __future__ import annotations

import base64
import struct

from pagedllm.entrypoints.openai.errors import APIError
from pagedllm.entrypoints.openai.protocol import (
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingResponseData,
    UsageInfo,
    random_uuid,
)
from pagedllm.entrypoints.openai.serving_engine import OpenAIServing
from pagedllm.sampling_params import PoolingParams


def _input_list(value: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
    if isinstance(value, str):
        return [value]
    if not value:
        raise APIError("input must not be empty", param="input")
    if all(isinstance(v, int) for v in value):
        return [list(value)]  # type: ignore[arg-type]
    return list(value)  # type: ignore[arg-type]


def encode_embedding(embedding: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":  # little-endian float32, as OpenAI sends it
        return base64.b64encode(struct.pack(f"<{len(embedding)}f", *embedding)).decode("ascii")
    return embedding


class OpenAIServingEmbedding(OpenAIServing):
    async def create_embedding(self, request: EmbeddingRequest) -> EmbeddingResponse:
        model = self.check_model(request.model, "Embeddings", runner="pooling")
        hidden = self.model_config.hidden_size
        if request.dimensions is not None and not 1 <= request.dimensions <= hidden:
            raise APIError(
                f"dimensions must be between 1 and {hidden} (got {request.dimensions})",
                param="dimensions",
            )
        prompts = await self.tokenize_all(
            _input_list(request.input),
            request.add_special_tokens,
            request.truncate_prompt_tokens,
            param="input",
        )
        params = PoolingParams(dimensions=request.dimensions, normalize=request.normalize)
        request_id = f"embd-{random_uuid()}"
        finals = await self.encode_all(prompts, params, request_id, request.priority)
        data = []
        for i, output in enumerate(finals):
            vector = list(output.outputs.embedding)[: request.dimensions or None]
            data.append(
                EmbeddingResponseData(
                    index=i, embedding=encode_embedding(vector, request.encoding_format)
                )
            )
        num_tokens = sum(len(p.token_ids) for p in prompts)
        usage = UsageInfo(prompt_tokens=num_tokens, total_tokens=num_tokens)
        return EmbeddingResponse(id=request_id, model=model, data=data, usage=usage)
