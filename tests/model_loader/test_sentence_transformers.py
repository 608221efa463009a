"""A pooling model's defaults from its sentence-transformers directory (modules.json,
the Pooling module's config, Normalize), under explicit arguments and over the
architecture's default."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from pagedllm.layers.pooler import PoolingType
from pagedllm.model_loader.sentence_transformers import make_pooler, st_normalize, st_pooling_type

HIDDEN = 8


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
    pooler = make_pooler(tmp_path, BERT)
    assert (pooler.pooling_type, pooler.normalize) == (expected, normalize)


def test_explicit_arguments_win_over_the_directory(tmp_path: Path) -> None:
    _write_st_dir(tmp_path, {"pooling_mode_mean_tokens": True}, normalize=True)
    pooler = make_pooler(tmp_path, BERT, pooling_type="cls", normalize=False)
    assert (pooler.pooling_type, pooler.normalize) == (PoolingType.CLS, False)


def test_architecture_defaults_without_a_sentence_transformers_layout(tmp_path: Path) -> None:
    assert (st_pooling_type(tmp_path), st_normalize(tmp_path)) == (None, None)
    assert (st_pooling_type(None), st_normalize(None)) == (None, None)
    bert = make_pooler(tmp_path, BERT)
    llama = make_pooler(None, LLAMA)
    assert (bert.pooling_type, bert.normalize) == (PoolingType.CLS, True)
    assert (llama.pooling_type, llama.normalize) == (PoolingType.LAST, True)


def test_modules_json_without_pooling_falls_back_to_the_architecture(tmp_path: Path) -> None:
    _write_st_dir(tmp_path, None, normalize=False)
    pooler = make_pooler(tmp_path, LLAMA)
    assert (pooler.pooling_type, pooler.normalize) == (PoolingType.LAST, False)


def test_unsupported_sentence_transformers_pooling(tmp_path: Path) -> None:
    _write_st_dir(tmp_path, {"pooling_mode_max_tokens": True}, normalize=True)
    with pytest.raises(ValueError, match="pooling_mode_max_tokens"):
        make_pooler(tmp_path, BERT)
    # The error names the way out: an explicit pooling type is not read from the directory.
    with pytest.raises(ValueError, match="pass pooling_type="):
        make_pooler(tmp_path, BERT)
    pooler = make_pooler(tmp_path, BERT, pooling_type="MEAN")
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
    pooler = make_pooler(tmp_path, BERT)
    assert pooler.pooling_type is PoolingType.MEAN
    assert "sentence_transformers.models.Dense" in caplog.text
