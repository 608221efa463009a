"""POST /v1/embeddings on the real all-MiniLM-L6-v2 (in process: it loads in seconds)."""

from __future__ import annotations

import base64
import math
import struct

import pytest
from fastapi.testclient import TestClient
from remote_server import EMBED_MODEL


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_embeddings_float_and_base64(embed_client: TestClient) -> None:
    inputs = [
        "A cat sits on the mat.",
        "A kitten is sitting on a rug.",
        "Stock markets fell today.",
    ]
    response = embed_client.post("/v1/embeddings", json={"model": EMBED_MODEL, "input": inputs})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list" and body["model"] == EMBED_MODEL
    vectors = [d["embedding"] for d in body["data"]]
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert all(len(v) == 384 and abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-3 for v in vectors)
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2])
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0
    encoded = embed_client.post(
        "/v1/embeddings", json={"input": inputs[0], "encoding_format": "base64"}
    ).json()["data"][0]["embedding"]
    decoded = struct.unpack("<384f", base64.b64decode(encoded))
    assert decoded == pytest.approx(vectors[0], abs=1e-6)


def test_embeddings_errors(embed_client: TestClient) -> None:
    completion = embed_client.post("/v1/completions", json={"prompt": "hi"})
    assert completion.status_code == 400
    assert "does not support the Completions API" in completion.json()["error"]["message"]
    too_wide = embed_client.post("/v1/embeddings", json={"input": "hi", "dimensions": 4096})
    assert too_wide.status_code == 400 and too_wide.json()["error"]["param"] == "dimensions"
    empty = embed_client.post("/v1/embeddings", json={"input": []})
    assert empty.status_code == 400
    assert embed_client.get("/health").status_code == 200
