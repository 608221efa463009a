"""Pooling: one step's flattened hidden states -> one embedding per prompt.

vLLM's pooling types and defaults:

    LAST  the hidden state of the prompt's last token (decoder models)
    MEAN  the mean over the prompt's tokens (sentence-transformers "mean_tokens")
    CLS   the hidden state of the prompt's first token ([CLS] for BERT)
    ALL   every token's hidden state ([prompt_len, hidden] per prompt)

Defaults come from the model directory when it has the sentence-transformers layout
(read by `model_loader/sentence_transformers.py`, which builds the pooler), else from
the architecture (`default_pooling_type`): CLS for encoders (BERT), LAST for
decoders, normalized in both cases. Explicit `pooling_type=` / `normalize=` (engine
arguments) win over both.

Per request, `PoolingParams.normalize` overrides the default and
`PoolingParams.dimensions` truncates the embedding (Matryoshka) before it is
normalized. As in vLLM, `dimensions` is refused unless the model says it was trained
for it (`is_matryoshka` or `matryoshka_dimensions` in its config): admission checks
that (`engine/validation.py: verify_pooling_params`).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.sampling_params import PoolingParams

logger = logging.getLogger(__name__)


@dataclass
class PoolingMetadata:
    """For pooling models: which flattened tokens belong to which prompt."""

    prompt_lens: torch.Tensor  # [B] int64
    query_start_loc: torch.Tensor  # [B + 1] int64


class PoolingType(str, enum.Enum):
    LAST = "LAST"
    MEAN = "MEAN"
    CLS = "CLS"
    ALL = "ALL"


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


def default_pooling_type(hf_config: Any) -> PoolingType:
    """The architecture's default: CLS for encoders (vLLM's BERT default), else LAST."""
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
