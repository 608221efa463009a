"""Scoring with an embedding model (pagedllm/scoring.py, LLM.score) on the real
all-MiniLM-L6-v2: each score is the cosine similarity of the two texts' embeddings,
pairs 1:1, 1:N and N:N, and a bad pairing is a ValueError naming the argument."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

from pagedllm import LLM, PoolingParams
from pagedllm.scoring import cosine_similarity, score_pairs

QUERY = "How do I bake bread?"
DOCS = ["Mix flour, water and yeast, then bake.", "The stock market fell today."]


@pytest.fixture(scope="module")
def embedder() -> Iterator[LLM]:
    llm = LLM(model="all-MiniLM-L6-v2", runner="pooling", kv_cache_memory_bytes=32 << 20)
    yield llm
    llm.shutdown()


def test_score_pairs_are_one_to_one_one_to_n_or_n_to_n() -> None:
    assert score_pairs(1, 1) == [(0, 0)]
    assert score_pairs(1, 3) == [(0, 0), (0, 1), (0, 2)]
    assert score_pairs(2, 2) == [(0, 0), (1, 1)]
    with pytest.raises(ValueError, match="1:1, 1:N or N:N") as bad:
        score_pairs(2, 3)
    assert getattr(bad.value, "param", None) == "text_2"
    with pytest.raises(ValueError, match="^text_1 must have at least one text"):
        score_pairs(0, 3)
    with pytest.raises(ValueError, match="^documents must"):
        score_pairs(1, 0, ("query", "documents"))


def test_cosine_similarity_matches_torch() -> None:
    a, b = torch.randn(384, dtype=torch.float64), torch.randn(384, dtype=torch.float64)
    want = torch.nn.functional.cosine_similarity(a, b, dim=0).item()
    assert cosine_similarity(a.tolist(), b.tolist()) == pytest.approx(want, abs=1e-12)
    assert cosine_similarity([1.0, 0.0], [-2.0, 0.0]) == -1.0
    assert cosine_similarity([0.0, 0.0], [1.0, 2.0]) == 0.0


def test_llm_score_is_the_cosine_of_the_embeddings(embedder: LLM) -> None:
    vectors = [o.outputs.embedding for o in embedder.embed([QUERY, *DOCS], use_tqdm=False)]
    one_to_n = embedder.score(QUERY, DOCS, use_tqdm=False)
    assert [s.outputs.score for s in one_to_n] == pytest.approx(
        [cosine_similarity(vectors[0], v) for v in vectors[1:]], abs=1e-6
    )
    assert one_to_n[0].outputs.score > one_to_n[1].outputs.score > -1.0
    pairwise = embedder.score([QUERY, DOCS[1]], DOCS, use_tqdm=False)
    assert pairwise[0].outputs.score == pytest.approx(one_to_n[0].outputs.score, abs=1e-6)
    assert pairwise[1].outputs.score == pytest.approx(1.0, abs=1e-5)  # a text with itself
    single = embedder.score(DOCS[0], DOCS[0], use_tqdm=False)
    assert len(single) == 1 and math.isclose(single[0].outputs.score, 1.0, abs_tol=1e-5)
    tokens = [o.prompt_token_ids for o in embedder.embed([QUERY, DOCS[0]], use_tqdm=False)]
    assert one_to_n[0].prompt_token_ids == tokens[0] + tokens[1]


def test_llm_score_truncates_and_checks_its_arguments(embedder: LLM) -> None:
    cut = embedder.score(QUERY, DOCS[0], truncate_prompt_tokens=3, use_tqdm=False)[0]
    embedded = embedder.embed(
        [QUERY, DOCS[0]], PoolingParams(truncate_prompt_tokens=3), use_tqdm=False
    )
    assert len(cut.prompt_token_ids) == 6 and [len(o.prompt_token_ids) for o in embedded] == [3, 3]
    assert cut.outputs.score == pytest.approx(
        cosine_similarity(embedded[0].outputs.embedding, embedded[1].outputs.embedding), abs=1e-6
    )
    with pytest.raises(ValueError, match="^data_1 has 2 texts and data_2 has 3"):
        embedder.score(DOCS, [QUERY, *DOCS], use_tqdm=False)
