"""GLM-4 (HF `GlmForCausalLM`, model_type "glm") and GLM-4-0414 (`Glm4ForCausalLM`,
"glm4") decoders, HF-exact. ChatGLM2/3 checkpoints load onto the same modules
(models/chatglm.py).

What sets them apart from Llama (models/llama.py, whose MLP they share):
    q/k/v biases (`attention_bias`, on by default) but no o_proj bias;
    rotary on the first `partial_rotary_factor` (0.5) of each head only, rotating
    interleaved pairs (2i, 2i + 1), GPT-J style, not neox halves:
        head: [ rotated pairs (0,1) (2,3) ... | passed through ]
              |<---- head_dim * 0.5 ------>|
    gate and up already fused in the checkpoint (`gate_up_proj`, gate first).
    GLM-4-0414 (`sandwich`): each sublayer's output is normed again before the
    residual add (post_self_attn_layernorm, post_mlp_layernorm).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig

from pagedllm.layers.attention import Attention, AttentionMetadata
from pagedllm.layers.layernorm import RMSNorm
from pagedllm.layers.linear import QKVParallelLinear, RowParallelLinear
from pagedllm.layers.rotary import get_rope_from_config
from pagedllm.models.causal_lm import CausalLM, DecoderStack
from pagedllm.models.llama import LlamaMLP
from pagedllm.models.pipeline import PPMissingLayer, make_layers
from pagedllm.models.utils import StackedMapping, config_head_dim

# q/k/v are separate in GLM checkpoints; gate_up_proj is already fused (no entry:
# "up_proj" would match inside "gate_up_proj").
STACKED_QKV: StackedMapping = [
    ("qkv_proj", "q_proj", "q"),
    ("qkv_proj", "k_proj", "k"),
    ("qkv_proj", "v_proj", "v"),
]


def _norm(config: PretrainedConfig) -> RMSNorm:
    return RMSNorm(config.hidden_size, config.rms_norm_eps)


class GlmAttention(nn.Module):
    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        self.head_dim = config_head_dim(config)
        total_heads = config.num_attention_heads
        total_kv = getattr(config, "num_key_value_heads", None) or total_heads
        bias = bool(getattr(config, "attention_bias", True))
        self.qkv_proj = QKVParallelLinear(
            config.hidden_size, self.head_dim, total_heads, total_kv, bias
        )
        self.q_size = self.qkv_proj.num_heads * self.head_dim
        self.kv_size = self.qkv_proj.num_kv_heads * self.head_dim
        self.o_proj = RowParallelLinear(total_heads * self.head_dim, config.hidden_size, bias=False)
        self.rotary_emb = get_rope_from_config(config, self.head_dim, is_neox_style=False)
        self.attn = Attention(
            self.qkv_proj.num_heads, self.head_dim, self.head_dim**-0.5, self.qkv_proj.num_kv_heads
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
        q, k = self.rotary_emb(positions, q, k)
        return self.o_proj(self.attn(q, k, v, kv_cache, attn_metadata))


class GlmDecoderLayer(nn.Module):
    def __init__(self, config: PretrainedConfig, sandwich: bool) -> None:
        super().__init__()
        self.self_attn = GlmAttention(config)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = _norm(config)
        self.post_attention_layernorm = _norm(config)
        self.sandwich = sandwich
        if sandwich:
            self.post_self_attn_layernorm = _norm(config)
            self.post_mlp_layernorm = _norm(config)

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
        if self.sandwich:
            hidden_states = self.post_self_attn_layernorm(hidden_states)
        hidden_states, residual = self.post_attention_layernorm(hidden_states, residual)
        hidden_states = self.mlp(hidden_states)
        if self.sandwich:
            hidden_states = self.post_mlp_layernorm(hidden_states)
        return hidden_states, residual


class GlmModel(DecoderStack):
    def __init__(self, config: PretrainedConfig, sandwich: bool) -> None:
        super().__init__()
        self.init_embedding(config, tie_default=False)
        self.start_layer, self.end_layer, self.layers = make_layers(
            config.num_hidden_layers, lambda i: GlmDecoderLayer(config, sandwich)
        )
        self.norm: RMSNorm | PPMissingLayer
        self.norm = _norm(config) if self.is_last_stage else PPMissingLayer()


class GlmForCausalLM(CausalLM):
    sandwich = False
    stacked_params = STACKED_QKV

    def __init__(self, config: PretrainedConfig, prefix: str = "") -> None:
        super().__init__()
        self.config = config
        self.model = GlmModel(config, self.sandwich)
        self.init_lm_head(config)


class Glm4ForCausalLM(GlmForCausalLM):
    sandwich = True
