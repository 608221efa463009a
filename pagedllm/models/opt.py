"""OPT (facebook/opt-*): learned positions offset by 2, optional project_in/out when
word_embed_proj_dim != hidden_size, pre- or post-LayerNorm blocks (do_layer_norm_before)."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig

from pagedllm.layers.activation import get_act_fn
from pagedllm.layers.attention import Attention, AttentionMetadata
from pagedllm.layers.layernorm import LayerNorm
from pagedllm.layers.linear import (
    ColumnParallelLinear,
    QKVParallelLinear,
    ReplicatedLinear,
    RowParallelLinear,
)
from pagedllm.layers.vocab_embedding import VocabParallelEmbedding
from pagedllm.models.causal_lm import CausalLM
from pagedllm.models.pipeline import IntermediateTensors
from pagedllm.models.utils import StackedMapping

_STACKED: StackedMapping = [
    ("qkv_proj", "q_proj", "q"),
    ("qkv_proj", "k_proj", "k"),
    ("qkv_proj", "v_proj", "v"),
]
_POSITION_OFFSET = 2  # OPT's position table starts at index 2 (a fairseq legacy)


class OPTAttention(nn.Module):
    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        hidden, heads, bias = config.hidden_size, config.num_attention_heads, config.enable_bias
        head_dim = hidden // heads
        self.qkv_proj = QKVParallelLinear(hidden, head_dim, heads, heads, bias=bias)
        self.out_proj = RowParallelLinear(hidden, hidden, bias=bias)
        self.size = self.qkv_proj.num_heads * head_dim
        self.attn = Attention(self.qkv_proj.num_heads, head_dim, head_dim**-0.5)

    def forward(
        self,
        hidden_states: torch.Tensor,
        kv_cache: torch.Tensor | None,
        attn_metadata: AttentionMetadata,
    ) -> torch.Tensor:
        q, k, v = self.qkv_proj(hidden_states).split(self.size, dim=-1)
        return self.out_proj(self.attn(q, k, v, kv_cache, attn_metadata))


class OPTDecoderLayer(nn.Module):
    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        hidden, affine = config.hidden_size, config.layer_norm_elementwise_affine
        self.do_layer_norm_before = config.do_layer_norm_before
        self.self_attn = OPTAttention(config)
        self.self_attn_layer_norm = LayerNorm(hidden, elementwise_affine=affine)
        self.fc1 = ColumnParallelLinear(hidden, config.ffn_dim, bias=config.enable_bias)
        self.activation_fn = get_act_fn(config.activation_function)
        self.fc2 = RowParallelLinear(config.ffn_dim, hidden, bias=config.enable_bias)
        self.final_layer_norm = LayerNorm(hidden, elementwise_affine=affine)

    def forward(
        self,
        hidden_states: torch.Tensor,
        kv_cache: torch.Tensor | None,
        attn_metadata: AttentionMetadata,
    ) -> torch.Tensor:
        pre = self.do_layer_norm_before
        residual = hidden_states
        if pre:
            hidden_states = self.self_attn_layer_norm(hidden_states)
        hidden_states = residual + self.self_attn(hidden_states, kv_cache, attn_metadata)
        if not pre:
            hidden_states = self.self_attn_layer_norm(hidden_states)
        residual = hidden_states
        if pre:
            hidden_states = self.final_layer_norm(hidden_states)
        hidden_states = residual + self.fc2(self.activation_fn(self.fc1(hidden_states)))
        if not pre:
            hidden_states = self.final_layer_norm(hidden_states)
        return hidden_states


class OPTDecoder(nn.Module):
    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        hidden, proj_dim = config.hidden_size, config.word_embed_proj_dim
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, proj_dim)
        self.embed_positions = nn.Embedding(
            config.max_position_embeddings + _POSITION_OFFSET, hidden
        )
        self.embed_positions.weight.requires_grad_(False)
        self.project_in = (
            ReplicatedLinear(proj_dim, hidden, bias=False) if proj_dim != hidden else None
        )
        self.project_out = (
            ReplicatedLinear(hidden, proj_dim, bias=False) if proj_dim != hidden else None
        )
        keep_final_norm = config.do_layer_norm_before and not getattr(
            config, "_remove_final_layer_norm", False
        )
        affine = config.layer_norm_elementwise_affine
        self.final_layer_norm = (
            LayerNorm(hidden, elementwise_affine=affine) if keep_final_norm else None
        )
        self.layers = nn.ModuleList(
            OPTDecoderLayer(config) for _ in range(config.num_hidden_layers)
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        attn_metadata: AttentionMetadata,
        intermediate_tensors: IntermediateTensors | None = None,
    ) -> torch.Tensor:
        """`intermediate_tensors` is always None: OPT runs on one pipeline stage."""
        hidden_states = self.embed_tokens(input_ids)
        if self.project_in is not None:
            hidden_states = self.project_in(hidden_states)
        hidden_states = hidden_states + self.embed_positions(positions + _POSITION_OFFSET)
        for i, layer in enumerate(self.layers):
            hidden_states = layer(hidden_states, kv_caches[i] if kv_caches else None, attn_metadata)
        if self.final_layer_norm is not None:
            hidden_states = self.final_layer_norm(hidden_states)
        if self.project_out is not None:
            hidden_states = self.project_out(hidden_states)
        return hidden_states


class OPTModel(nn.Module):
    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        self.decoder = OPTDecoder(config)


class OPTForCausalLM(CausalLM):
    """The causal-LM shell over `model.decoder` (HF's names); the LM head reads the
    projected width (word_embed_proj_dim)."""

    supports_pp = False
    tie_word_embeddings_default = True
    stacked_params = _STACKED
    skipped_weights = ()
    model: OPTModel

    def __init__(self, config: PretrainedConfig, prefix: str = "") -> None:
        super().__init__()
        self.config = config
        self.model = OPTModel(config)
        self.init_lm_head(config, hidden_size=config.word_embed_proj_dim)

    @property
    def decoder(self) -> nn.Module:
        return self.model.decoder

    def _rename(self, name: str) -> str | None:
        if name.startswith("decoder."):  # the original facebook/opt-* checkpoints
            name = "model." + name
        return super()._rename(name)
