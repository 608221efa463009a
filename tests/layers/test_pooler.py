"""Pooler: LAST / MEAN / CLS / ALL over flattened prompts, normalization, Matryoshka
dimensions, and defaults read from the sentence-transformers layout."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from pagedllm.layers.attention.metadata import PoolingMetadata
from pagedllm.layers.pooler import (
    Pooler,
    PoolingType,
    st_normalize,
    st_pooling_type,
)
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


# ---- defaults: sentence-transformers layout > architecture ---------------------------


def _write_st_dir(
    root: Path, pooling: dict[str, bool] | None, normalize: bool, extra: list[str] = ()
) -> Path:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}
    ]
    if pooling is not None:
        modules.append(
            {
                "idx": 1,
                "name": "1",
                "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling",
            }
        )
        (root / "1_Pooling").mkdir()
        (root / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    for kind in extra:
        modules.append({"idx": len(modules), "name": kind, "path": kind, "type": kind})
    if normalize:
        # No 2_Normalize directory: the module has no files (as in all-MiniLM-L6-v2).
        modules.append(
            {
                "idx": 9,
                "name": "2",
                "path": "2_Normalize",
                "type": "sentence_transformers.models.Normalize",
            }
        )
    (root / "modules.json").write_text(json.dumps(modules))
    return root


BERT = SimpleNamespace(model_type="bert", hidden_size=HIDDEN)
LLAMA = SimpleNamespace(model_type="llama", hidden_size=HIDDEN)


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("pooling_mode_mean_tokens", PoolingType.MEAN),
        ("pooling_mode_cls_token", PoolingType.CLS),
        ("pooling_mode_lasttoken", PoolingType.LAST),
    ],
)
@pytest.mark.parametrize("normalize", [False, True])
def test_sentence_transformers_defaults(
    tmp_path: Path, mode: str, expected: PoolingType, normalize: bool
) -> None:
    _write_st_dir(tmp_path, {mode: True, "pooling_mode_max_tokens": False}, normalize)
    pooler = Pooler.from_config(tmp_path, BERT)
    assert (pooler.pooling_type, pooler.normalize) == (expected, normalize)


def test_explicit_arguments_win_over_the_directory(tmp_path: Path) -> None:
    _write_st_dir(tmp_path, {"pooling_mode_mean_tokens": True}, normalize=True)
    pooler = Pooler.from_config(tmp_path, BERT, pooling_type="cls", normalize=False)
    assert (pooler.pooling_type, pooler.normalize) == (PoolingType.CLS, False)


def test_architecture_defaults_without_a_sentence_transformers_layout(tmp_path: Path) -> None:
    assert (st_pooling_type(tmp_path), st_normalize(tmp_path)) == (None, None)
    assert (st_pooling_type(None), st_normalize(None)) == (None, None)
    bert = Pooler.from_config(tmp_path, BERT)
    llama = Pooler.from_config(None, LLAMA)
    assert (bert.pooling_type, bert.normalize) == (PoolingType.CLS, True)
    assert (llama.pooling_type, llama.normalize) == (PoolingType.LAST, True)


def test_modules_json_without_pooling_falls_back_to_the_architecture(tmp_path: Path) -> None:
    _write_st_dir(tmp_path, None, normalize=False)
    pooler = Pooler.from_config(tmp_path, LLAMA)
    assert (pooler.pooling_type, pooler.normalize) == (PoolingType.LAST, False)


def test_unsupported_sentence_transformers_pooling(tmp_path: Path) -> None:
    _write_st_dir(tmp_path, {"pooling_mode_max_tokens": True}, normalize=True)
    with pytest.raises(ValueError, match="pooling_mode_max_tokens"):
        Pooler.from_config(tmp_path, BERT)
    # The error names the way out: an explicit pooling type is not read from the directory.
    with pytest.raises(ValueError, match="pass pooling_type="):
        Pooler.from_config(tmp_path, BERT)
    pooler = Pooler.from_config(tmp_path, BERT, pooling_type="MEAN")
    assert (pooler.pooling_type, pooler.normalize) == (PoolingType.MEAN, True)


def test_unknown_modules_are_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _write_st_dir(
        tmp_path,
        {"pooling_mode_mean_tokens": True},
        normalize=True,
        extra=["sentence_transformers.models.Dense"],
    )
    pooler = Pooler.from_config(tmp_path, BERT)
    assert pooler.pooling_type is PoolingType.MEAN
    assert "sentence_transformers.models.Dense" in caplog.text


# ---- dimensions: vLLM's Matryoshka rules (checked at admission: tests/engine/test_validation.py)


def test_matryoshka_dimensions_make_a_matryoshka_pooler() -> None:
    config = SimpleNamespace(model_type="bert", hidden_size=HIDDEN, matryoshka_dimensions=[2, 4])
    assert Pooler.from_config(None, config).is_matryoshka
