"""GPT-2: learned absolute positions, pre-LayerNorm blocks, fused c_attn. HF stores
GPT-2's projections as Conv1D ([in, out]); they are transposed to [out, in] at load."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from transformers import PretrainedConfig

from pagedllm.distributed.parallel_state import is_pipeline_first_stage, is_pipeline_last_stage
from pagedllm.layers.activation import get_act_fn
from pagedllm.layers.attention import Attention, AttentionMetadata
from pagedllm.layers.layernorm import LayerNorm
from pagedllm.layers.linear import ColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from pagedllm.layers.vocab_embedding import VocabParallelEmbedding
from pagedllm.models.causal_lm import CausalLM
from pagedllm.models.pipeline import IntermediateTensors, PPMissingLayer, make_layers
from pagedllm.models.utils import StackedMapping

_CONV1D_MODULES = ("c_attn", "c_proj", "c_fc")


class GPT2Attention(nn.Module):
    def __init__(self, config: PretrainedConfig, layer_idx: int) -> None:
        super().__init__()
        hidden, heads = config.hidden_size, config.num_attention_heads
        head_dim = hidden // heads
        self.c_attn = QKVParallelLinear(hidden, head_dim, heads, heads, bias=True)
        self.c_proj = RowParallelLinear(hidden, hidden, bias=True)
        self.size = self.c_attn.num_heads * head_dim
        scale = head_dim**-0.5 if getattr(config, "scale_attn_weights", True) else 1.0
        if getattr(config, "scale_attn_by_inverse_layer_idx", False):
            scale /= float(layer_idx + 1)
        self.attn = Attention(self.c_attn.num_heads, head_dim, scale)

    def forward(
        self,
        hidden_states: torch.Tensor,
        kv_cache: torch.Tensor | None,
        attn_metadata: AttentionMetadata,
    ) -> torch.Tensor:
        q, k, v = self.c_attn(hidden_states).split(self.size, dim=-1)
        return self.c_proj(self.attn(q, k, v, kv_cache, attn_metadata))


class GPT2MLP(nn.Module):
    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        inner = getattr(config, "n_inner", None) or 4 * config.hidden_size
        self.c_fc = ColumnParallelLinear(config.hidden_size, inner, bias=True)
        self.act = get_act_fn(config.activation_function)
        self.c_proj = RowParallelLinear(inner, config.hidden_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


class GPT2Block(nn.Module):
    def __init__(self, config: PretrainedConfig, layer_idx: int) -> None:
        super().__init__()
        eps = config.layer_norm_epsilon
        self.ln_1 = LayerNorm(config.hidden_size, eps=eps)
        self.attn = GPT2Attention(config, layer_idx)
        self.ln_2 = LayerNorm(config.hidden_size, eps=eps)
        self.mlp = GPT2MLP(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        kv_cache: torch.Tensor | None,
        attn_metadata: AttentionMetadata,
    ) -> torch.Tensor:
        hidden_states = hidden_states + self.attn(self.ln_1(hidden_states), kv_cache, attn_metadata)
        return hidden_states + self.mlp(self.ln_2(hidden_states))


class GPT2Model(nn.Module):
    """Only this pipeline stage's blocks are built (see models/pipeline.py)."""

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        first, self.is_last_stage = is_pipeline_first_stage(), is_pipeline_last_stage()
        tied = bool(getattr(config, "tie_word_embeddings", True))
        # The last stage holds wte too when the LM head shares its weight.
        self.wte: VocabParallelEmbedding | PPMissingLayer
        if first or (tied and self.is_last_stage):
            self.wte = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        else:
            self.wte = PPMissingLayer()
        self.wpe: nn.Embedding | PPMissingLayer
        if first:
            self.wpe = nn.Embedding(config.max_position_embeddings, config.hidden_size)
            self.wpe.weight.requires_grad_(False)
        else:
            self.wpe = PPMissingLayer()
        self.start_layer, self.end_layer, self.h = make_layers(
            config.num_hidden_layers, lambda i: GPT2Block(config, i)
        )
        self.ln_f: LayerNorm | PPMissingLayer
        if self.is_last_stage:
            self.ln_f = LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        else:
            self.ln_f = PPMissingLayer()

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        attn_metadata: AttentionMetadata,
        intermediate_tensors: IntermediateTensors | None = None,
    ) -> torch.Tensor | IntermediateTensors:
        """kv_caches[j] is block start_layer + j's cache (this stage's blocks only)."""
        if intermediate_tensors is None:
            hidden_states = self.wte(input_ids) + self.wpe(positions)
        else:
            hidden_states = intermediate_tensors.hidden_states
        for i in range(self.start_layer, self.end_layer):
            kv_cache = kv_caches[i - self.start_layer] if kv_caches else None
            hidden_states = self.h[i](hidden_states, kv_cache, attn_metadata)
        if not self.is_last_stage:
            return IntermediateTensors(hidden_states)
        return self.ln_f(hidden_states)


class GPT2LMHeadModel(CausalLM):
    """The causal-LM shell over `transformer` (HF's name); pipeline stages hand on the
    hidden states alone (the blocks add their residuals themselves)."""

    tie_word_embeddings_default = True
    stacked_params: StackedMapping = []  # c_attn is fused in the checkpoint already
    skipped_weights = ()
    carries_residual = False

    def __init__(self, config: PretrainedConfig, prefix: str = "") -> None:
        super().__init__()
        self.config = config
        self.transformer = GPT2Model(config)
        self.init_lm_head(config)

    @property
    def decoder(self) -> nn.Module:
        return self.transformer

    def get_input_embeddings(self) -> nn.Module:
        return self.transformer.wte

    def _rename(self, name: str) -> str | None:
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            return None  # causal-mask buffers of old checkpoints
        if not name.startswith(("lm_head.", "transformer.")):
            name = "transformer." + name
        return super()._rename(name)

    def _transpose_conv1d(
        self, weights: Iterable[tuple[str, torch.Tensor]]
    ) -> Iterable[tuple[str, torch.Tensor]]:
        for name, tensor in weights:
            module = name.rsplit(".", 2)[-2] if name.count(".") >= 2 else ""
            if module in _CONV1D_MODULES and name.endswith(".weight"):
                tensor = tensor.t()
            yield name, tensor

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return super().load_weights(self._transpose_conv1d(weights))
