"""The sentence-transformers directory layout: `modules.json` listing a `Pooling`
module (whose `config.json` sets `pooling_mode_*`) and optionally a `Normalize`
module, and `sentence_bert_config.json` (the input cap). It sets a pooling model's
defaults: the pooler is built here, explicit engine arguments first, then this
layout, then the architecture's default (`layers/pooler.py: default_pooling_type`)."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from pagedllm.layers.pooler import Pooler, PoolingType, default_pooling_type

logger = logging.getLogger(__name__)

# sentence-transformers 1_Pooling/config.json keys -> our pooling types.
_ST_POOLING_MODES: dict[str, PoolingType] = {
    "pooling_mode_cls_token": PoolingType.CLS,
    "pooling_mode_mean_tokens": PoolingType.MEAN,
    "pooling_mode_lasttoken": PoolingType.LAST,
}
_ST_UNSUPPORTED_MODES = (
    "pooling_mode_max_tokens",
    "pooling_mode_mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens",
)
_ST_POOLING = "sentence_transformers.models.Pooling"
_ST_NORMALIZE = "sentence_transformers.models.Normalize"
_ST_TRANSFORMER = "sentence_transformers.models.Transformer"


def st_pooling_type(model_path: str | os.PathLike[str] | None) -> PoolingType | None:
    """The pooling of a sentence-transformers directory's Pooling module, or None."""
    for module in _st_modules(model_path):
        if module.get("type") == _ST_POOLING:
            return _st_pooling_type(model_path, module.get("path", ""))
    return None


def st_normalize(model_path: str | os.PathLike[str] | None) -> bool | None:
    """Whether a sentence-transformers directory lists a Normalize module (None: not
    such a directory). The Normalize module has no files, so its directory may be
    absent; only modules.json counts."""
    modules = _st_modules(model_path)
    if not modules:
        return None
    for module in modules:
        kind = module.get("type", "")
        if kind not in (_ST_TRANSFORMER, _ST_POOLING, _ST_NORMALIZE):
            logger.warning("sentence-transformers module %s is not supported; ignored", kind)
    return any(module.get("type") == _ST_NORMALIZE for module in modules)


def _st_modules(model_path: str | os.PathLike[str] | None) -> list[dict[str, Any]]:
    modules = _read_json(model_path, "modules.json")
    return modules if isinstance(modules, list) else []


def _st_pooling_type(model_path: str | os.PathLike[str] | None, sub: str) -> PoolingType | None:
    config = _read_json(model_path, os.path.join(sub, "config.json"))
    if not isinstance(config, dict):
        return None
    for key, pooling_type in _ST_POOLING_MODES.items():
        if config.get(key):
            return pooling_type
    unsupported = [key for key in _ST_UNSUPPORTED_MODES if config.get(key)]
    if unsupported:
        raise ValueError(
            f"sentence-transformers pooling {unsupported} is not supported; "
            f"pass pooling_type= one of {[t.value for t in PoolingType]}"
        )
    return None


def _read_json(model_path: str | os.PathLike[str] | None, name: str) -> Any:
    if model_path is None or not os.path.isdir(model_path):
        return None
    path = os.path.join(model_path, name)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def st_max_seq_length(model_path: str) -> int | None:
    """The input cap of a sentence-transformers model (sentence_bert_config.json's
    max_seq_length), which vLLM honours as the context length."""
    config = _read_json(model_path, "sentence_bert_config.json")
    value = config.get("max_seq_length") if isinstance(config, dict) else None
    return int(value) if value else None


def make_pooler(
    model_path: str | os.PathLike[str] | None,
    hf_config: Any,
    pooling_type: PoolingType | str | None = None,
    normalize: bool | None = None,
) -> Pooler:
    """Explicit arguments > the sentence-transformers layout > the architecture."""
    if pooling_type is None:
        pooling_type = st_pooling_type(model_path) or default_pooling_type(hf_config)
    if normalize is None:
        st_default = st_normalize(model_path)
        normalize = True if st_default is None else st_default
    pooler = Pooler(
        pooling_type,
        normalize,
        is_matryoshka=bool(getattr(hf_config, "is_matryoshka", False)),
        matryoshka_dimensions=getattr(hf_config, "matryoshka_dimensions", None),
    )
    logger.info("Pooler for %s: %s", model_path, pooler.extra_repr())
    return pooler


def pooler_for_model(model_config: Any) -> Pooler:
    """From a `pagedllm.config.ModelConfig` (engine arguments included)."""
    return make_pooler(
        model_config.model,
        model_config.hf_config,
        model_config.pooling_type,
        model_config.pooling_normalize,
    )
