"""The causal-LM shell that decoder-only models share: the LM head (tied to the input
embedding when the config says so, absent off the last pipeline stage), `forward`
into the model's decoder stack, the pipeline placeholder, `compute_logits` and
weight loading by HF name. A model sets `self.model` (its decoder stack, with an
`embed_tokens`) and calls `init_lm_head`; one whose stack has HF's other names (GPT-2's
`transformer.wte`) overrides `decoder` and `get_input_embeddings`.

`DecoderStack` is the pre-norm residual stack under it: embedding (first stage, and
the last when tied), this stage's layers, the final norm (last stage)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from transformers import PretrainedConfig

from pagedllm.distributed.parallel_state import is_pipeline_first_stage, is_pipeline_last_stage
from pagedllm.layers.attention import AttentionMetadata
from pagedllm.layers.vocab_embedding import LogitsProcessor, ParallelLMHead, VocabParallelEmbedding
from pagedllm.models.pipeline import IntermediateTensors, PPMissingLayer
from pagedllm.models.utils import StackedMapping, load_weights_by_name

# HF's fused-projection names: (pagedllm param, HF name, shard id).
STACKED_QKV_GATE_UP: StackedMapping = [
    ("qkv_proj", "q_proj", "q"),
    ("qkv_proj", "k_proj", "k"),
    ("qkv_proj", "v_proj", "v"),
    ("gate_up_proj", "gate_proj", 0),
    ("gate_up_proj", "up_proj", 1),
]


class DecoderStack(nn.Module):
    """Layers are (positions, hidden, residual, kv_cache, metadata) -> (hidden,
    residual); only this pipeline stage's layers are built (models/pipeline.py)."""

    start_layer: int
    end_layer: int
    layers: nn.ModuleList
    norm: nn.Module

    def init_embedding(self, config: PretrainedConfig, tie_default: bool) -> None:
        """The embedding on the first stage, and on the last when the LM head shares it."""
        self.is_last_stage = is_pipeline_last_stage()
        tied = bool(getattr(config, "tie_word_embeddings", tie_default))
        self.embed_tokens: VocabParallelEmbedding | PPMissingLayer
        if is_pipeline_first_stage() or (tied and self.is_last_stage):
            self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        else:
            self.embed_tokens = PPMissingLayer()

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        attn_metadata: AttentionMetadata,
        intermediate_tensors: IntermediateTensors | None = None,
    ) -> torch.Tensor | IntermediateTensors:
        """kv_caches[j] is layer start_layer + j's cache (this stage's layers only).
        A stage after the first starts from `intermediate_tensors`; a stage before the
        last returns them instead of hidden states."""
        if intermediate_tensors is None:
            hidden_states, residual = self.embed(input_ids), None
        else:
            hidden_states = intermediate_tensors.hidden_states
            residual = intermediate_tensors.residual
        for i in range(self.start_layer, self.end_layer):
            kv_cache = kv_caches[i - self.start_layer] if kv_caches else None
            hidden_states, residual = self.layers[i](
                positions, hidden_states, residual, kv_cache, attn_metadata
            )
        if not self.is_last_stage:
            return IntermediateTensors(hidden_states, residual)
        hidden_states, _ = self.norm(hidden_states, residual)
        return hidden_states


class CausalLM(nn.Module):
    supports_pp = True
    tie_word_embeddings_default = False  # when the config does not say
    stacked_params: StackedMapping = STACKED_QKV_GATE_UP
    skipped_weights: tuple[str, ...] = ("rotary_emb.inv_freq", "rotary_emb.cos_cached")
    carries_residual = True  # pipeline stages hand on (hidden_states, residual)

    config: PretrainedConfig
    model: nn.Module

    @property
    def decoder(self) -> nn.Module:
        """The decoder stack `forward` runs."""
        return self.model

    def get_input_embeddings(self) -> nn.Module:
        """The token embedding a tied LM head shares."""
        embedding = self.decoder.embed_tokens
        assert isinstance(embedding, nn.Module)
        return embedding

    def init_lm_head(
        self,
        config: PretrainedConfig,
        soft_cap: float | None = None,
        hidden_size: int | None = None,
    ) -> None:
        """`hidden_size`: the LM head's input size when not the config's (OPT's
        word_embed_proj_dim)."""
        default = self.tie_word_embeddings_default
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", default))
        self.lm_head: ParallelLMHead | PPMissingLayer
        if is_pipeline_last_stage():
            self.lm_head = ParallelLMHead(config.vocab_size, hidden_size or config.hidden_size)
            if self.tie_word_embeddings:
                self.lm_head.tie_weights(self.get_input_embeddings())  # type: ignore[arg-type]
        else:
            self.lm_head = PPMissingLayer()
        self.logits_processor = LogitsProcessor(config.vocab_size, soft_cap=soft_cap)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        attn_metadata: AttentionMetadata,
        intermediate_tensors: IntermediateTensors | None = None,
    ) -> torch.Tensor | IntermediateTensors:
        return self.decoder(input_ids, positions, kv_caches, attn_metadata, intermediate_tensors)

    def make_empty_intermediate_tensors(
        self, num_tokens: int, dtype: torch.dtype, device: torch.device
    ) -> IntermediateTensors:
        shape = (num_tokens, self.config.hidden_size)
        hidden_states = torch.empty(shape, dtype=dtype, device=device)
        if not self.carries_residual:
            return IntermediateTensors(hidden_states)
        return IntermediateTensors(hidden_states, torch.empty(shape, dtype=dtype, device=device))

    def compute_logits(
        self, hidden_states: torch.Tensor, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.logits_processor(self.lm_head, hidden_states, out)  # last stage only

    def _rename(self, name: str) -> str | None:
        if any(skipped in name for skipped in self.skipped_weights):
            return None
        if self.tie_word_embeddings and name.startswith("lm_head."):
            return None  # shares the embedding
        return name

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return load_weights_by_name(self, weights, self.stacked_params, self._rename)
