"""BERT as an embedding model (all-MiniLM-L6-v2, BGE, E5, ...): a post-norm encoder
whose hidden states are pooled into one vector per prompt (`pool`).

Attention is bidirectional: every token attends to every token of its prompt. It
runs through the same `Attention` layer and paged KV cache as the decoders
(causal=False), which is exact only under one requirement on the engine:

    a pooling request's whole prompt is scheduled in ONE step, with no prefix-cache
    hit (num_computed_tokens == 0 and num_new_tokens == prompt length)

because a token's keys/values in layer l > 0 depend on the tokens after it, so
neither a cached prefix nor an earlier chunk can be reused. token_type_ids are all
0 (single-segment input), as for sentence embeddings.

Parameter names follow HF's `BertModel` (`embeddings.*`, `encoder.layer.N.*`) except
that query/key/value are fused into `attention.self.qkv_proj`; checkpoints of
`BertModel` ("embeddings.") and of the task heads ("bert.embeddings.") both load.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence

import torch
from torch import nn
from transformers import PretrainedConfig

from pagedllm.layers.activation import get_act_fn
from pagedllm.layers.attention import Attention, AttentionMetadata
from pagedllm.layers.layernorm import LayerNorm
from pagedllm.layers.linear import ColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from pagedllm.layers.pooler import PoolingMetadata
from pagedllm.layers.vocab_embedding import VocabParallelEmbedding
from pagedllm.models.utils import load_weights_by_name
from pagedllm.sampling_params import PoolingParams

logger = logging.getLogger(__name__)

# (our fragment, HF fragment, shard id): query/key/value -> one fused qkv_proj.
_STACKED = [
    (".self.qkv_proj.", ".self.query.", "q"),
    (".self.qkv_proj.", ".self.key.", "k"),
    (".self.qkv_proj.", ".self.value.", "v"),
]
# Checkpoint tensors that are not ours: HF's tanh pooler (sentence-transformers does
# not use it), task heads, and the position_ids buffer.
_SKIPPED_PREFIXES = ("pooler.", "cls.", "classifier.", "qa_outputs.")


class BertEmbeddings(nn.Module):
    """word + absolute position + token type 0 embeddings, then LayerNorm."""

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        position_type = getattr(config, "position_embedding_type", "absolute")
        if position_type != "absolute":
            raise ValueError(f"BERT position_embedding_type {position_type!r} is not supported")
        hidden = config.hidden_size
        self.word_embeddings = VocabParallelEmbedding(config.vocab_size, hidden)
        self.position_embeddings = _frozen_embedding(config.max_position_embeddings, hidden)
        self.token_type_embeddings = _frozen_embedding(config.type_vocab_size, hidden)
        self.LayerNorm = LayerNorm(hidden, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        embeds = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        embeds = embeds + self.token_type_embeddings.weight[0]  # token_type_ids == 0
        return self.LayerNorm(embeds)


class BertSelfAttention(nn.Module):
    """Fused q/k/v projection and bidirectional attention over the paged cache."""

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        total_heads = config.num_attention_heads
        head_dim = config.hidden_size // total_heads
        self.qkv_proj = QKVParallelLinear(config.hidden_size, head_dim, total_heads, total_heads)
        num_heads = self.qkv_proj.num_heads  # this rank's heads (== kv heads: plain MHA)
        self.q_size = num_heads * head_dim
        self.attn = Attention(num_heads, head_dim, head_dim**-0.5, num_heads, causal=False)

    def forward(
        self,
        hidden_states: torch.Tensor,  # [T, hidden]
        kv_cache: torch.Tensor | None,
        attn_metadata: AttentionMetadata,
    ) -> torch.Tensor:  # [T, this rank's heads * head_dim]
        q, k, v = self.qkv_proj(hidden_states).split([self.q_size] * 3, dim=-1)
        return self.attn(q, k, v, kv_cache, attn_metadata)


class BertResidualOutput(nn.Module):
    """HF's BertSelfOutput / BertOutput: LayerNorm(dense(x) + residual) (post-norm)."""

    def __init__(self, input_size: int, config: PretrainedConfig) -> None:
        super().__init__()
        self.dense = RowParallelLinear(input_size, config.hidden_size)
        self.LayerNorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nn.Module):
    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        # `self` is HF's name for this submodule; keeping it keeps weight names 1:1.
        self.self = BertSelfAttention(config)
        self.output = BertResidualOutput(config.hidden_size, config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        kv_cache: torch.Tensor | None,
        attn_metadata: AttentionMetadata,
    ) -> torch.Tensor:
        return self.output(self.self(hidden_states, kv_cache, attn_metadata), hidden_states)


class BertIntermediate(nn.Module):
    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        self.dense = ColumnParallelLinear(config.hidden_size, config.intermediate_size)
        self.act_fn = get_act_fn(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act_fn(self.dense(x))


class BertLayer(nn.Module):
    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertResidualOutput(config.intermediate_size, config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        kv_cache: torch.Tensor | None,
        attn_metadata: AttentionMetadata,
    ) -> torch.Tensor:
        attn_out = self.attention(hidden_states, kv_cache, attn_metadata)
        return self.output(self.intermediate(attn_out), attn_out)


class BertEncoder(nn.Module):
    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(
        self,
        hidden_states: torch.Tensor,
        kv_caches: Sequence[torch.Tensor],
        attn_metadata: AttentionMetadata,
    ) -> torch.Tensor:
        for i, layer in enumerate(self.layer):
            kv_cache = kv_caches[i] if kv_caches else None
            hidden_states = layer(hidden_states, kv_cache, attn_metadata)
        return hidden_states


class BertEmbeddingModel(nn.Module):
    """BERT encoder + `Pooler` (the pagedllm model contract, runner="pooling").

    `pooler` defaults to what the model directory says (sentence-transformers
    layout, found through `config.name_or_path`) or CLS + normalize; the loader
    replaces it with `sentence_transformers.pooler_for_model(model_config)` to apply the engine's
    `pooling_type` / `pooling_normalize`.
    """

    def __init__(self, config: PretrainedConfig, prefix: str = "") -> None:
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        from pagedllm.model_loader.sentence_transformers import make_pooler

        self.pooler = make_pooler(_model_dir(config), config)

    def forward(
        self,
        input_ids: torch.Tensor,  # [T] int64, all prompts of the step flattened
        positions: torch.Tensor,  # [T] int64, 0 .. prompt_len - 1 within each prompt
        kv_caches: Sequence[torch.Tensor],  # one [2, blocks, block_size, heads, head_dim] per layer
        attn_metadata: AttentionMetadata,
    ) -> torch.Tensor:  # [T, hidden]
        hidden_states = self.embeddings(input_ids, positions)
        return self.encoder(hidden_states, kv_caches, attn_metadata)

    def pool(
        self,
        hidden_states: torch.Tensor,  # [T, hidden], the output of forward
        pooling_metadata: PoolingMetadata,
        pooling_params: Sequence[PoolingParams | None] | None = None,  # one per prompt
    ) -> list[torch.Tensor]:  # one [hidden'] vector per prompt
        return self.pooler(hidden_states, pooling_metadata, pooling_params)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return load_weights_by_name(self, weights, _STACKED, _rename)


def _rename(hf_name: str) -> str | None:
    """HF checkpoint name -> our parameter name (None: not a parameter of ours)."""
    name = hf_name.removeprefix("bert.")
    if name.startswith(_SKIPPED_PREFIXES) or name.endswith("position_ids"):
        return None
    # Old TF-converted checkpoints name LayerNorm parameters gamma/beta.
    if name.endswith(".gamma"):
        return name.removesuffix(".gamma") + ".weight"
    if name.endswith(".beta"):
        return name.removesuffix(".beta") + ".bias"
    return name


def _frozen_embedding(num: int, dim: int) -> nn.Embedding:
    embedding = nn.Embedding(num, dim)
    embedding.weight.requires_grad_(False)
    return embedding


def _model_dir(config: PretrainedConfig) -> str | None:
    path = getattr(config, "name_or_path", None)
    return path if path and os.path.isdir(path) else None
