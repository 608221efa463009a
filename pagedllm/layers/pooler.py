"""Pooling: one step's flattened hidden states -> one embedding per prompt.

vLLM's pooling types and defaults:

    LAST  the hidden state of the prompt's last token (decoder models)
    MEAN  the mean over the prompt's tokens (sentence-transformers "mean_tokens")
    CLS   the hidden state of the prompt's first token ([CLS] for BERT)
    ALL   every token's hidden state ([prompt_len, hidden] per prompt)

Defaults come from the model directory when it has the sentence-transformers layout
(`modules.json` listing a `Pooling` module whose `config.json` sets
`pooling_mode_*`, and optionally a `Normalize` module), else from the architecture:
CLS for encoders (BERT), LAST for decoders, normalized in both cases. Explicit
`pooling_type=` / `normalize=` (engine arguments) win over both.

Per request, `PoolingParams.normalize` overrides the default and
`PoolingParams.dimensions` truncates the embedding (Matryoshka) before it is
normalized. As in vLLM, `dimensions` is refused unless the model says it was trained
for it (`is_matryoshka` or `matryoshka_dimensions` in its config): admission checks
that (`engine/validation.py: verify_pooling_params`).
"""

from __future__ import annotations

import enum
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.layers.attention.metadata import PoolingMetadata
from pagedllm.sampling_params import PoolingParams

logger = logging.getLogger(__name__)


class PoolingType(str, enum.Enum):
    LAST = "LAST"
    MEAN = "MEAN"
    CLS = "CLS"
    ALL = "ALL"


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
# Architectures whose model_type is an encoder: CLS by default (vLLM's BERT default).
_ENCODER_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "nomic_bert", "modernbert")


class Pooler(nn.Module):
    """Pools each prompt's hidden states into one vector; no parameters."""

    def __init__(
        self,
        pooling_type: PoolingType | str,
        normalize: bool = True,
        *,
        is_matryoshka: bool = False,
        matryoshka_dimensions: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.pooling_type = _parse_pooling_type(pooling_type)
        self.normalize = normalize
        self.is_matryoshka = is_matryoshka or bool(matryoshka_dimensions)
        self.matryoshka_dimensions = list(matryoshka_dimensions) if matryoshka_dimensions else None

    def extra_repr(self) -> str:
        return f"pooling_type={self.pooling_type.value}, normalize={self.normalize}"

    @classmethod
    def from_config(
        cls,
        model_path: str | os.PathLike[str] | None,
        hf_config: Any,
        pooling_type: PoolingType | str | None = None,
        normalize: bool | None = None,
    ) -> Pooler:
        """Explicit arguments > the sentence-transformers layout > the architecture."""
        if pooling_type is None:
            pooling_type = st_pooling_type(model_path) or _architecture_pooling_type(hf_config)
        if normalize is None:
            st_default = st_normalize(model_path)
            normalize = True if st_default is None else st_default
        pooler = cls(
            pooling_type,
            normalize,
            is_matryoshka=bool(getattr(hf_config, "is_matryoshka", False)),
            matryoshka_dimensions=getattr(hf_config, "matryoshka_dimensions", None),
        )
        logger.info("Pooler for %s: %s", model_path, pooler.extra_repr())
        return pooler

    @classmethod
    def from_model_config(cls, model_config: Any) -> Pooler:
        """From a `pagedllm.config.ModelConfig` (engine arguments included)."""
        return cls.from_config(
            model_config.model,
            model_config.hf_config,
            model_config.pooling_type,
            model_config.pooling_normalize,
        )

    def forward(
        self,
        hidden_states: torch.Tensor,  # [T, hidden], T = query_start_loc[-1]
        pooling_metadata: PoolingMetadata,
        pooling_params: Sequence[PoolingParams | None] | None = None,  # one per prompt
    ) -> list[torch.Tensor]:  # B tensors: [hidden'] each ([prompt_len, hidden'] for ALL)
        starts, ends, prompt_lens = _boundaries(pooling_metadata)
        if pooling_params is not None and len(pooling_params) != len(starts):
            raise ValueError(f"got {len(pooling_params)} pooling_params for {len(starts)} prompts")
        pooled: list[torch.Tensor] = []
        for i, (start, end) in enumerate(zip(starts, ends)):
            self._check_whole_prompt(end - start, prompt_lens[i])
            vector = self._pool_one(hidden_states[start:end])
            params = pooling_params[i] if pooling_params is not None else None
            pooled.append(self._finish(vector, params))
        return pooled

    def _check_whole_prompt(self, num_tokens: int, prompt_len: int) -> None:
        # LAST only needs the final token to be in this step (chunked prefill of a
        # decoder ends with it); the others need every token of the prompt.
        if self.pooling_type is not PoolingType.LAST and num_tokens != prompt_len:
            raise ValueError(
                f"{self.pooling_type.value} pooling needs the whole prompt in one step: "
                f"got {num_tokens} of its {prompt_len} tokens"
            )

    def _pool_one(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.pooling_type is PoolingType.LAST:
            return hidden[-1]
        if self.pooling_type is PoolingType.CLS:
            return hidden[0]
        if self.pooling_type is PoolingType.MEAN:
            # Accumulate in float32 so half-precision models average exactly enough.
            return hidden.float().mean(dim=0).to(hidden.dtype)
        return hidden

    def _finish(self, vector: torch.Tensor, params: PoolingParams | None) -> torch.Tensor:
        normalize = params.normalize if params is not None else None
        dimensions = params.dimensions if params is not None else None
        return self.truncate(vector, dimensions, normalize)

    def truncate(
        self,
        vector: torch.Tensor,  # [..., hidden]
        dimensions: int | None,
        normalize: bool | None = None,
    ) -> torch.Tensor:  # [..., dimensions]
        """Matryoshka truncation to the first `dimensions` features, then L2
        normalization (`normalize` None: the pooler's default). Normalizing after
        truncating is what makes the short vector a unit vector again; applying this
        to an already pooled (normalized) vector gives the same result."""
        if dimensions is not None:
            vector = vector[..., :dimensions]
        if self.normalize if normalize is None else normalize:
            vector = F.normalize(vector.float(), p=2, dim=-1).to(vector.dtype)
        return vector


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


def _architecture_pooling_type(hf_config: Any) -> PoolingType:
    model_type = getattr(hf_config, "model_type", "")
    return PoolingType.CLS if model_type in _ENCODER_MODEL_TYPES else PoolingType.LAST


def _parse_pooling_type(value: PoolingType | str) -> PoolingType:
    try:
        return PoolingType(value.upper() if isinstance(value, str) else value)
    except ValueError:
        raise ValueError(
            f"pooling_type must be one of {[t.value for t in PoolingType]}, got {value!r}"
        ) from None


def _boundaries(metadata: PoolingMetadata) -> tuple[list[int], list[int], list[int]]:
    """Host lists (one sync per step): start and end of each prompt's tokens in the
    flattened step, and each prompt's full length."""
    loc = metadata.query_start_loc.tolist()
    return loc[:-1], loc[1:], metadata.prompt_lens.tolist()
