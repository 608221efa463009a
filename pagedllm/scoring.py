"""Scoring with an embedding model (vLLM's Score and Re-rank APIs and `LLM.score`):
the score of a pair of texts is the cosine similarity of their embeddings. Pairs
come 1:1 (one text each), 1:N (one text against each of N) or N:N (pairwise)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from pagedllm.exceptions import InvalidRequestError


def score_pairs(
    num_1: int, num_2: int, names: tuple[str, str] = ("text_1", "text_2")
) -> list[tuple[int, int]]:
    """(index into the first list, index into the second) per score, in output order."""
    if num_1 == 0:
        raise InvalidRequestError(f"{names[0]} must have at least one text", names[0])
    if num_2 == 0:
        raise InvalidRequestError(f"{names[1]} must have at least one text", names[1])
    if num_1 == 1:
        return [(0, j) for j in range(num_2)]
    if num_1 != num_2:
        raise InvalidRequestError(
            f"{names[0]} has {num_1} texts and {names[1]} has {num_2}: the pairs must be "
            "1:1, 1:N or N:N",
            names[1],
        )
    return [(i, i) for i in range(num_1)]


def cosine_similarity(a: Sequence[float], b: Sequence[float]) -> float:
    """In float64; 0.0 when either vector is zero."""
    dot = math.fsum(x * y for x, y in zip(a, b, strict=True))
    norms = math.sqrt(math.fsum(x * x for x in a)) * math.sqrt(math.fsum(y * y for y in b))
    return dot / norms if norms > 0.0 else 0.0
