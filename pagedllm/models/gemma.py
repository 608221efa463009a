"""Gemma 1, Gemma 2 and Gemma 3 (text) decoders, HF-exact.

What sets them apart from Llama (models/llama.py, whose MLP and weight names they share):
    RMSNorm scales by (1 + weight), in float32; embeddings are multiplied by
    sqrt(hidden_size) (rounded to the model dtype); the gated MLP is GeGLU (tanh GELU).
    Gemma 2/3: four norms per layer (pre/post attention, pre/post feed-forward),
    attention scale query_pre_attn_scalar**-0.5, `layer_types` of sliding-window
    ("sliding_attention") and global layers, final logit soft-cap.
    Gemma 2: attention logit soft-cap. Gemma 3: per-head q/k RMSNorm and its own rope
    per layer type (rope_parameters["sliding_attention"] = rope_local_base_freq).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig

from pagedllm.layers.activation import get_act_and_mul_fn
from pagedllm.layers.attention import Attention, AttentionMetadata
from pagedllm.layers.layernorm import RMSNorm
from pagedllm.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from pagedllm.layers.qk_norm_rotary import QKNormRotary
from pagedllm.layers.rotary import RotaryEmbedding, get_rope, get_rope_from_config
from pagedllm.models.causal_lm import CausalLM, DecoderStack
from pagedllm.models.pipeline import PPMissingLayer, make_layers
from pagedllm.models.utils import config_head_dim


def _norm(config: PretrainedConfig, size: int | None = None) -> RMSNorm:
    return RMSNorm(size or config.hidden_size, config.rms_norm_eps, weight_offset=1.0)


def _is_sliding(config: PretrainedConfig, layer_idx: int) -> bool:
    layer_types: list[str] = getattr(config, "layer_types", None) or []
    return bool(layer_types) and layer_types[layer_idx] == "sliding_attention"


def _layer_rope(config: PretrainedConfig, head_dim: int, layer_idx: int) -> RotaryEmbedding:
    """Gemma 3 keeps one rope per layer type in rope_parameters; the others one rope."""
    params = getattr(config, "rope_parameters", None) or {}
    layer_type = "sliding_attention" if _is_sliding(config, layer_idx) else "full_attention"
    if not isinstance(params.get(layer_type), dict):
        return get_rope_from_config(config, head_dim)
    rope = dict(params[layer_type])
    theta = float(rope.get("rope_theta") or 10000.0)
    rope_type = rope.get("rope_type") or rope.get("type") or "default"
    scaling = None if rope_type == "default" else {**rope, "rope_type": rope_type}
    max_position = int(getattr(config, "max_position_embeddings", None) or 2048)
    return get_rope(head_dim, head_dim, max_position, theta, True, scaling)


class GemmaMLP(nn.Module):
    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        inter = config.intermediate_size
        self.gate_up_proj = MergedColumnParallelLinear(
            config.hidden_size, [inter, inter], bias=False
        )
        self.down_proj = RowParallelLinear(inter, config.hidden_size, bias=False)
        act = getattr(config, "hidden_activation", None) or config.hidden_act
        self.act_fn = get_act_and_mul_fn(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_up_proj(x)))


class GemmaAttention(nn.Module):
    def __init__(self, config: PretrainedConfig, layer_idx: int, qk_norm: bool) -> None:
        super().__init__()
        self.head_dim = config_head_dim(config)
        total_heads = config.num_attention_heads
        total_kv = getattr(config, "num_key_value_heads", None) or total_heads
        bias = bool(getattr(config, "attention_bias", False))
        self.qkv_proj = QKVParallelLinear(
            config.hidden_size, self.head_dim, total_heads, total_kv, bias
        )
        self.q_size = self.qkv_proj.num_heads * self.head_dim
        self.kv_size = self.qkv_proj.num_kv_heads * self.head_dim
        self.o_proj = RowParallelLinear(total_heads * self.head_dim, config.hidden_size, bias=bias)
        self.rotary_emb = _layer_rope(config, self.head_dim, layer_idx)
        scalar = getattr(config, "query_pre_attn_scalar", None) or self.head_dim
        window = config.sliding_window if _is_sliding(config, layer_idx) else None
        # HF applies the attention soft-cap in Gemma 2 only (Gemma 3 ignores the field).
        cap = getattr(config, "attn_logit_softcapping", None) if not qk_norm else None
        self.attn = Attention(
            self.qkv_proj.num_heads,
            self.head_dim,
            float(scalar) ** -0.5,
            self.qkv_proj.num_kv_heads,
            sliding_window=window,
            logits_soft_cap=cap,
        )
        self.qk_norm_rotary: QKNormRotary | None = None
        if qk_norm:  # Gemma 3: per-head (1 + w) q/k RMSNorm before the rotary
            self.q_norm = _norm(config, self.head_dim)
            self.k_norm = _norm(config, self.head_dim)
            self.qk_norm_rotary = QKNormRotary(
                self.q_norm, self.k_norm, self.rotary_emb, self.head_dim
            )

    def forward(
        self,
        positions: torch.Tensor,
        hidden_states: torch.Tensor,
        kv_cache: torch.Tensor | None,
        attn_metadata: AttentionMetadata,
    ) -> torch.Tensor:
        qkv = self.qkv_proj(hidden_states)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        if self.qk_norm_rotary is not None:
            q, k = self.qk_norm_rotary(positions, q, k)
        else:
            q, k = self.rotary_emb(positions, q, k)
        return self.o_proj(self.attn(q, k, v, kv_cache, attn_metadata))


class GemmaDecoderLayer(nn.Module):
    """Gemma 1: pre-norms only (Llama's block). Gemma 2/3 (`sandwich`): each sublayer's
    output is normed again before the residual add."""

    def __init__(
        self, config: PretrainedConfig, layer_idx: int, qk_norm: bool, sandwich: bool
    ) -> None:
        super().__init__()
        self.self_attn = GemmaAttention(config, layer_idx, qk_norm)
        self.mlp = GemmaMLP(config)
        self.sandwich = sandwich
        self.input_layernorm = _norm(config)
        self.post_attention_layernorm = _norm(config)
        if sandwich:
            self.pre_feedforward_layernorm = _norm(config)
            self.post_feedforward_layernorm = _norm(config)

    def forward(
        self,
        positions: torch.Tensor,
        hidden_states: torch.Tensor,
        residual: torch.Tensor | None,
        kv_cache: torch.Tensor | None,
        attn_metadata: AttentionMetadata,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            residual = hidden_states
            hidden_states = self.input_layernorm(hidden_states)
        else:
            hidden_states, residual = self.input_layernorm(hidden_states, residual)
        hidden_states = self.self_attn(positions, hidden_states, kv_cache, attn_metadata)
        if not self.sandwich:
            hidden_states, residual = self.post_attention_layernorm(hidden_states, residual)
            return self.mlp(hidden_states), residual
        hidden_states = self.post_attention_layernorm(hidden_states)
        hidden_states, residual = self.pre_feedforward_layernorm(hidden_states, residual)
        hidden_states = self.mlp(hidden_states)
        return self.post_feedforward_layernorm(hidden_states), residual


class GemmaModel(DecoderStack):
    def __init__(self, config: PretrainedConfig, qk_norm: bool, sandwich: bool) -> None:
        super().__init__()
        self.init_embedding(config, tie_default=True)
        self.embed_scale = float(config.hidden_size) ** 0.5
        self.start_layer, self.end_layer, self.layers = make_layers(
            config.num_hidden_layers,
            lambda i: GemmaDecoderLayer(config, i, qk_norm, sandwich),
        )
        self.norm: RMSNorm | PPMissingLayer
        self.norm = _norm(config) if self.is_last_stage else PPMissingLayer()

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)
        # HF rounds sqrt(hidden_size) to the model dtype first (55.4256 -> 55.5 in bf16).
        return hidden * torch.tensor(self.embed_scale, dtype=hidden.dtype)


class GemmaForCausalLM(CausalLM):
    qk_norm = False
    sandwich = False
    tie_word_embeddings_default = True
    skipped_weights = ("rotary_emb.",)

    def __init__(self, config: PretrainedConfig, prefix: str = "") -> None:
        super().__init__()
        self.config = config
        self.model = GemmaModel(config, self.qk_norm, self.sandwich)
        self.init_lm_head(config, soft_cap=getattr(config, "final_logit_softcapping", None))


class Gemma2ForCausalLM(GemmaForCausalLM):
    sandwich = True


class Gemma3ForCausalLM(GemmaForCausalLM):
    qk_norm = True
    sandwich = True
