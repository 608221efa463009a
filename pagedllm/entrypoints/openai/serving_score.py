"""POST /score and /rerank (with /v1 and /v2 routes) on an embedding model, as in
vLLM: a pair's score is the cosine similarity of the two texts' embeddings
(pagedllm/scoring.py). Each distinct input is embedded once."""

from __future__ import annotations

from pagedllm.entrypoints.openai.protocol import UsageInfo, random_uuid
from pagedllm.entrypoints.openai.protocol_scores import (
    RerankDocument,
    RerankRequest,
    RerankResponse,
    RerankResult,
    RerankUsage,
    ScoreRequest,
    ScoreResponse,
    ScoreResponseData,
)
from pagedllm.entrypoints.openai.serving_engine import OpenAIServing
from pagedllm.sampling_params import PoolingParams
from pagedllm.scoring import cosine_similarity, score_pairs


def _text_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


class OpenAIServingScores(OpenAIServing):
    async def create_score(self, request: ScoreRequest) -> ScoreResponse:
        model = self.check_model(request.model, "Score", runner="pooling")
        texts_1, texts_2 = _text_list(request.text_1), _text_list(request.text_2)
        pairs = score_pairs(len(texts_1), len(texts_2))
        request_id = f"score-{random_uuid()}"
        scores, num_tokens = await self._score(
            (texts_1, "text_1"), (texts_2, "text_2"), pairs, request, request_id
        )
        data = [ScoreResponseData(index=i, score=score) for i, score in enumerate(scores)]
        usage = UsageInfo(prompt_tokens=num_tokens, total_tokens=num_tokens)
        return ScoreResponse(id=request_id, model=model, data=data, usage=usage)

    async def create_rerank(self, request: RerankRequest) -> RerankResponse:
        model = self.check_model(request.model, "Rerank", runner="pooling")
        pairs = score_pairs(1, len(request.documents), ("query", "documents"))
        request_id = f"rerank-{random_uuid()}"
        scores, num_tokens = await self._score(
            ([request.query], "query"), (request.documents, "documents"), pairs, request, request_id
        )
        order = sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)
        results = [
            RerankResult(
                index=i,
                document=RerankDocument(text=request.documents[i]),
                relevance_score=scores[i],
            )
            for i in order[: request.top_n or None]
        ]
        return RerankResponse(
            id=request_id, model=model, usage=RerankUsage(total_tokens=num_tokens), results=results
        )

    async def _score(
        self,
        first: tuple[list[str], str],
        second: tuple[list[str], str],
        pairs: list[tuple[int, int]],
        request: ScoreRequest | RerankRequest,
        request_id: str,
    ) -> tuple[list[float], int]:
        """Each pair's score, and the tokens of every pair's two texts."""
        truncate = request.truncate_prompt_tokens
        ones = await self.tokenize_all(list(first[0]), True, truncate, param=first[1])
        twos = await self.tokenize_all(list(second[0]), True, truncate, param=second[1])
        embedded = await self.encode_all(
            [*ones, *twos], PoolingParams(), request_id, request.priority
        )
        vectors = [output.outputs.embedding for output in embedded]
        scores = [cosine_similarity(vectors[i], vectors[len(ones) + j]) for i, j in pairs]
        num_tokens = sum(len(ones[i].token_ids) + len(twos[j].token_ids) for i, j in pairs)
        return scores, num_tokens
