"""Pooler: LAST / MEAN / CLS / ALL over flattened prompts, normalization, Matryoshka
dimensions (the defaults read from a sentence-transformers directory:
tests/model_loader/test_sentence_transformers.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from pagedllm.layers.pooler import Pooler, PoolingMetadata, PoolingType, default_pooling_type
from pagedllm.sampling_params import PoolingParams

HIDDEN = 8
PROMPT_LENS = [3, 1, 5]


def _metadata(prompt_lens: list[int], query_lens: list[int] | None = None) -> PoolingMetadata:
    query_lens = query_lens or prompt_lens
    loc = [0]
    for n in query_lens:
        loc.append(loc[-1] + n)
    return PoolingMetadata(
        prompt_lens=torch.tensor(prompt_lens, dtype=torch.int64),
        query_start_loc=torch.tensor(loc, dtype=torch.int64),
    )


@pytest.fixture
def hidden() -> torch.Tensor:
    return torch.randn(sum(PROMPT_LENS), HIDDEN, generator=torch.Generator().manual_seed(0))


def _segments(hidden: torch.Tensor) -> list[torch.Tensor]:
    return list(hidden.split(PROMPT_LENS))


@pytest.mark.parametrize(
    "pooling_type, reduce",
    [
        ("LAST", lambda seg: seg[-1]),
        ("MEAN", lambda seg: seg.mean(0)),
        ("CLS", lambda seg: seg[0]),
    ],
)
@pytest.mark.parametrize("normalize", [False, True])
def test_pooling_types(hidden: torch.Tensor, pooling_type: str, reduce, normalize: bool) -> None:
    pooler = Pooler(pooling_type, normalize=normalize)
    pooled = pooler(hidden, _metadata(PROMPT_LENS))
    assert len(pooled) == len(PROMPT_LENS)
    for seg, vec in zip(_segments(hidden), pooled):
        expected = reduce(seg)
        if normalize:
            expected = F.normalize(expected, dim=-1)
        torch.testing.assert_close(vec, expected)


def test_all_pooling_returns_every_token(hidden: torch.Tensor) -> None:
    pooled = Pooler("all", normalize=False)(hidden, _metadata(PROMPT_LENS))
    for seg, out in zip(_segments(hidden), pooled):
        torch.testing.assert_close(out, seg)


def test_per_request_normalize_overrides_default(hidden: torch.Tensor) -> None:
    pooler = Pooler(PoolingType.MEAN, normalize=True)
    params = [PoolingParams(normalize=False), None, PoolingParams(normalize=True)]
    pooled = pooler(hidden, _metadata(PROMPT_LENS), params)
    segs = _segments(hidden)
    torch.testing.assert_close(pooled[0], segs[0].mean(0))
    torch.testing.assert_close(pooled[1], F.normalize(segs[1].mean(0), dim=-1))
    torch.testing.assert_close(pooled[2], F.normalize(segs[2].mean(0), dim=-1))


def test_dimensions_truncate_then_renormalize(hidden: torch.Tensor) -> None:
    pooler = Pooler("CLS", normalize=True)
    params = [PoolingParams(dimensions=4), None, PoolingParams(dimensions=2, normalize=False)]
    pooled = pooler(hidden, _metadata(PROMPT_LENS), params)
    segs = _segments(hidden)
    assert [v.shape[0] for v in pooled] == [4, HIDDEN, 2]
    torch.testing.assert_close(pooled[0], F.normalize(segs[0][0, :4], dim=-1))
    torch.testing.assert_close(pooled[0].norm(), torch.tensor(1.0))
    torch.testing.assert_close(pooled[2], segs[2][0, :2])


def test_truncate_of_a_pooled_vector_equals_pooling_with_dimensions(hidden: torch.Tensor) -> None:
    pooler = Pooler("MEAN", normalize=True)
    full = pooler(hidden, _metadata(PROMPT_LENS))[0]
    direct = pooler(hidden, _metadata(PROMPT_LENS), [PoolingParams(dimensions=3), None, None])[0]
    torch.testing.assert_close(pooler.truncate(full, 3), direct)


def test_last_pooling_accepts_the_final_chunk_only(hidden: torch.Tensor) -> None:
    # The final chunk of a 10-token prompt (chunked prefill of a decoder): 3 tokens.
    last = Pooler("LAST", normalize=False)(hidden[:3], _metadata([10], [3]))
    torch.testing.assert_close(last[0], hidden[2])


@pytest.mark.parametrize("pooling_type", ["MEAN", "CLS", "ALL"])
def test_partial_prompt_is_refused(hidden: torch.Tensor, pooling_type: str) -> None:
    with pytest.raises(ValueError, match="whole prompt in one step"):
        Pooler(pooling_type)(hidden[:3], _metadata([10], [3]))


def test_params_count_must_match_prompts(hidden: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="pooling_params"):
        Pooler("CLS")(hidden, _metadata(PROMPT_LENS), [None])


def test_unknown_pooling_type() -> None:
    with pytest.raises(ValueError, match="pooling_type must be one of"):
        Pooler("MAX")


def test_half_precision_mean_keeps_dtype(hidden: torch.Tensor) -> None:
    pooled = Pooler("MEAN")(hidden.to(torch.bfloat16), _metadata(PROMPT_LENS))
    assert all(v.dtype == torch.bfloat16 for v in pooled)
    torch.testing.assert_close(pooled[2].float().norm(), torch.tensor(1.0), atol=1e-2, rtol=0)


# ---- dimensions: vLLM's Matryoshka rules (checked at admission: tests/engine/test_validation.py)


def test_matryoshka_dimensions_make_a_matryoshka_pooler() -> None:
    assert Pooler("CLS", matryoshka_dimensions=[2, 4]).is_matryoshka
    assert not Pooler("CLS").is_matryoshka


def test_architecture_defaults() -> None:
    assert default_pooling_type(SimpleNamespace(model_type="bert")) is PoolingType.CLS
    assert default_pooling_type(SimpleNamespace(model_type="llama")) is PoolingType.LAST
