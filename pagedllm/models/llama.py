"""Llama-family decoders: Llama 2/3, SmolLM2, Mistral, Qwen2 (qkv bias) and Qwen3
(per-head q/k RMSNorm). Pre-norm blocks with the residual carried beside the
hidden states (RMSNorm fuses the add). Sliding windows per layer as HF applies them
(`layer_sliding_window`: Mistral's on every layer, Qwen2's per `layer_types`)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from transformers import PretrainedConfig

from pagedllm.layers.activation import get_act_and_mul_fn
from pagedllm.layers.attention import Attention, AttentionMetadata
from pagedllm.layers.cpu import decode_stack
from pagedllm.layers.layernorm import RMSNorm
from pagedllm.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from pagedllm.layers.qk_norm_rotary import QKNormRotary
from pagedllm.layers.rotary import get_rope_from_config
from pagedllm.models.causal_lm import STACKED_QKV_GATE_UP, CausalLM, DecoderStack
from pagedllm.models.pipeline import IntermediateTensors, PPMissingLayer, make_layers
from pagedllm.models.utils import config_head_dim, layer_sliding_window

_STACKED = STACKED_QKV_GATE_UP  # the MoE models load their dense weights with it


class LlamaMLP(nn.Module):
    """The gated MLP; `intermediate_size` other than the config's for the shared
    expert of a MoE block, which also sums the partial outputs itself (reduce_results)."""

    def __init__(
        self,
        config: PretrainedConfig,
        intermediate_size: int | None = None,
        reduce_results: bool = True,
    ) -> None:
        super().__init__()
        bias = bool(getattr(config, "mlp_bias", False))
        inter = intermediate_size or config.intermediate_size
        self.gate_up_proj = MergedColumnParallelLinear(
            config.hidden_size, [inter, inter], bias=bias
        )
        self.down_proj = RowParallelLinear(
            inter, config.hidden_size, bias=bias, reduce_results=reduce_results
        )
        self.act_fn = get_act_and_mul_fn(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_up_proj(x)))


class LlamaAttention(nn.Module):
    def __init__(
        self, config: PretrainedConfig, qkv_bias: bool, qk_norm: bool, layer_idx: int = 0
    ) -> None:
        super().__init__()
        total_heads = config.num_attention_heads
        total_kv = getattr(config, "num_key_value_heads", None) or total_heads
        self.head_dim = config_head_dim(config)
        self.qkv_proj = QKVParallelLinear(
            config.hidden_size, self.head_dim, total_heads, total_kv, qkv_bias
        )
        self.num_heads, self.num_kv_heads = self.qkv_proj.num_heads, self.qkv_proj.num_kv_heads
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        o_bias = bool(getattr(config, "attention_bias", False))  # Qwen2: no o_proj bias
        self.o_proj = RowParallelLinear(
            total_heads * self.head_dim, config.hidden_size, bias=o_bias
        )
        self.rotary_emb = get_rope_from_config(config, self.head_dim)
        scale = self.head_dim**-0.5
        self.attn = Attention(
            self.num_heads,
            self.head_dim,
            scale,
            self.num_kv_heads,
            sliding_window=layer_sliding_window(config, layer_idx),
        )
        self.qk_norm_rotary: QKNormRotary | None = None
        if qk_norm:  # Qwen3: per-head q/k RMSNorm before the rotary
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
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


class LlamaDecoderLayer(nn.Module):
    def __init__(
        self,
        config: PretrainedConfig,
        qkv_bias: bool,
        qk_norm: bool,
        mlp: nn.Module,
        layer_idx: int = 0,
    ) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(config, qkv_bias, qk_norm, layer_idx)
        self.mlp = mlp  # LlamaMLP, or a MoE block (models/moe.py): [T, H] -> [T, H]
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

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
        hidden_states, residual = self.post_attention_layernorm(hidden_states, residual)
        return self.mlp(hidden_states), residual


class LlamaModel(DecoderStack):
    """Only this pipeline stage's layers are built (see models/pipeline.py); with pp = 1
    that is all of them."""

    # The layer and MLP types the CPU decode stack (layers/cpu/decode_stack.py) runs.
    decode_stack_types = (LlamaDecoderLayer, LlamaMLP)

    def __init__(
        self,
        config: PretrainedConfig,
        qkv_bias: bool,
        qk_norm: bool,
        make_mlp: Callable[[int], nn.Module],
    ) -> None:
        super().__init__()
        self.init_embedding(config, tie_default=False)
        self.start_layer, self.end_layer, self.layers = make_layers(
            config.num_hidden_layers,
            lambda i: LlamaDecoderLayer(config, qkv_bias, qk_norm, make_mlp(i), i),
        )
        self.norm: RMSNorm | PPMissingLayer
        if self.is_last_stage:
            self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        else:
            self.norm = PPMissingLayer()

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        attn_metadata: AttentionMetadata,
        intermediate_tensors: IntermediateTensors | None = None,
    ) -> torch.Tensor | IntermediateTensors:
        """CPU decode steps run as one C++ call where they can (layers/cpu/decode_stack.py)."""
        if intermediate_tensors is None:
            hidden = decode_stack.decode_step(self, input_ids, positions, kv_caches, attn_metadata)
            if hidden is not None:
                return hidden
        return super().forward(input_ids, positions, kv_caches, attn_metadata, intermediate_tensors)


class LlamaForCausalLM(CausalLM):
    qkv_bias_default = False  # Qwen2 always has q/k/v biases; Llama follows `attention_bias`
    qk_norm = False

    def __init__(self, config: PretrainedConfig, prefix: str = "") -> None:
        super().__init__()
        self.config = config
        qkv_bias = self.qkv_bias_default or bool(getattr(config, "attention_bias", False))
        self.model = LlamaModel(config, qkv_bias, self.qk_norm, self.make_mlp)
        self.init_lm_head(config)

    def make_mlp(self, layer_idx: int) -> nn.Module:
        """Layer `layer_idx`'s feed-forward block (the MoE models override this)."""
        return LlamaMLP(self.config)


class MistralForCausalLM(LlamaForCausalLM):
    pass


class Qwen2ForCausalLM(LlamaForCausalLM):
    qkv_bias_default = True


class Qwen3ForCausalLM(LlamaForCausalLM):
    qk_norm = True
