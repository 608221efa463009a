"""POST /v1/score and /v1/rerank (and their /score, /rerank, /v2/rerank routes) on
the real all-MiniLM-L6-v2, in process: scores are the cosine similarities of
/v1/embeddings' vectors, rerank orders and cuts by top_n, errors are 400s naming
the field, and a generation model refuses both."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from remote_server import EMBED_MODEL

from pagedllm.config import EngineArgs
from pagedllm.entrypoints.openai.api_server import build_app
from pagedllm.scoring import cosine_similarity

QUERY = "What is the capital of France?"
DOCS = ["Bananas are yellow.", "Paris is the capital of France.", "France is in Europe."]


@pytest.fixture()
def client(embed_client: TestClient) -> TestClient:
    return embed_client


def ok(client: TestClient, path: str, body: dict[str, Any]) -> Any:
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def embeddings(client: TestClient, texts: list[str]) -> list[list[float]]:
    return [d["embedding"] for d in ok(client, "/v1/embeddings", {"input": texts})["data"]]


def test_score_is_the_cosine_of_the_embeddings(client: TestClient) -> None:
    query, *docs = embeddings(client, [QUERY, *DOCS])
    body = ok(client, "/v1/score", {"model": EMBED_MODEL, "text_1": QUERY, "text_2": DOCS})
    assert body["object"] == "list" and body["model"] == EMBED_MODEL
    assert body["id"].startswith("score-")
    assert [(d["index"], d["object"]) for d in body["data"]] == [(i, "score") for i in range(3)]
    got = [d["score"] for d in body["data"]]
    assert got == pytest.approx([cosine_similarity(query, d) for d in docs], abs=1e-5)
    assert got[1] == max(got)
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 3
    pairwise = ok(client, "/score", {"text_1": [QUERY, DOCS[0]], "text_2": [DOCS[1], DOCS[0]]})
    assert pairwise["data"][0]["score"] == pytest.approx(got[1], abs=1e-5)
    assert pairwise["data"][1]["score"] == pytest.approx(1.0, abs=1e-5)


def test_rerank_orders_by_relevance_and_cuts_at_top_n(client: TestClient) -> None:
    scores = [
        d["score"] for d in ok(client, "/v1/score", {"text_1": QUERY, "text_2": DOCS})["data"]
    ]
    body = ok(client, "/v1/rerank", {"model": EMBED_MODEL, "query": QUERY, "documents": DOCS})
    order = sorted(range(3), key=lambda i: scores[i], reverse=True)
    assert [r["index"] for r in body["results"]] == order
    assert [r["document"]["text"] for r in body["results"]] == [DOCS[i] for i in order]
    assert [r["relevance_score"] for r in body["results"]] == pytest.approx(
        [scores[i] for i in order], abs=1e-6
    )
    assert body["id"].startswith("rerank-") and body["usage"]["total_tokens"] > 0
    for path in ("/rerank", "/v2/rerank"):
        top = ok(client, path, {"query": QUERY, "documents": DOCS, "top_n": 1})
        assert [r["index"] for r in top["results"]] == order[:1]


@pytest.mark.parametrize(
    "path,body,param",
    [
        ("/v1/score", {"text_1": ["a", "b"], "text_2": ["c", "d", "e"]}, "text_2"),
        ("/v1/score", {"text_1": [], "text_2": "x"}, "text_1"),
        ("/v1/score", {"text_1": "a", "text_2": "b", "truncate_prompt_tokens": 0}, None),
        ("/v1/score", {"text_1": "a", "text_2": "b", "priority": 2}, "priority"),
        ("/v1/rerank", {"query": QUERY, "documents": []}, "documents"),
        ("/v1/rerank", {"query": QUERY, "documents": DOCS, "top_n": -1}, None),
        ("/v1/rerank", {"documents": DOCS}, None),
    ],
)
def test_bad_score_requests_are_400(
    client: TestClient, path: str, body: dict[str, Any], param: str | None
) -> None:
    response = client.post(path, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == 400 and error["message"]
    if param is not None:
        assert error["param"] == param


def test_a_generation_model_refuses_score_and_rerank(smol_llm: Any) -> None:
    from pagedllm.engine.async_engine import AsyncLLM
    from pagedllm.engine.core_client import ThreadedClient

    engine = smol_llm.llm_engine
    async_engine = AsyncLLM(
        engine.engine_config, engine.tokenizer, ThreadedClient(engine.engine_core), log_stats=False
    )
    with TestClient(build_app(EngineArgs(), engine=async_engine)) as generate:
        for path, body in (
            ("/v1/score", {"text_1": "a", "text_2": "b"}),
            ("/v1/rerank", {"query": "a", "documents": ["b"]}),
        ):
            response = generate.post(path, json=body)
            assert response.status_code == 400
            assert "does not support the" in response.json()["error"]["message"]
