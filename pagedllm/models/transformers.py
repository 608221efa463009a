"""The Transformers fallback (model_impl="transformers"): any decoder-only causal LM of
HF transformers runs through HF's own modeling code, with pagedllm's paged attention
plugged into HF's attention interface (vLLM's TransformersForCausalLM does the same).

The engine's flattened token batch ([T] tokens of all sequences) enters HF's base
model as one row: input_ids and position_ids [1, T], so HF's rotary embedding uses
pagedllm's positions. The attention implementation "pagedllm" is registered with
`AttentionInterface` only (not with the mask interface), so HF builds no causal mask:
which cached tokens each query sees comes from the step's AttentionMetadata. Each HF
attention module gets a pagedllm `Attention` child (`pagedllm_attn`), which writes the
step's keys/values into the layer's paged cache and attends through the engine's
backend; the KV cache of HF layer `layer_idx` is `kv_caches[layer_idx]`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import (
    AttentionInterface,
    AutoModelForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
)

from pagedllm.layers.attention import Attention, AttentionMetadata
from pagedllm.layers.vocab_embedding import LogitsProcessor
from pagedllm.models.pipeline import IntermediateTensors
from pagedllm.models.utils import config_head_dim, load_weights_by_name

logger = logging.getLogger(__name__)

ATTN_IMPLEMENTATION = "pagedllm"


@dataclass
class _Step:
    kv_caches: list[torch.Tensor]
    attn_metadata: AttentionMetadata


class _StepLocal(threading.local):
    step: _Step | None = None  # set by TransformersForCausalLM.forward on this thread


_local = _StepLocal()  # per thread: engines on different threads do not share it


@contextlib.contextmanager
def _step_context(
    kv_caches: list[torch.Tensor], attn_metadata: AttentionMetadata
) -> Iterator[None]:
    previous, _local.step = _local.step, _Step(kv_caches, attn_metadata)
    try:
        yield
    finally:
        _local.step = previous


def _to_tokens(x: torch.Tensor) -> torch.Tensor:
    """HF's [1, heads, T, head_dim] -> pagedllm's [T, heads * head_dim]."""
    return x[0].transpose(0, 1).reshape(x.shape[2], -1)


def paged_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """HF's attention-function signature; returns ([1, T, heads, head_dim], None)."""
    step = _local.step
    if step is None:
        raise RuntimeError("pagedllm attention runs only inside TransformersForCausalLM.forward")
    layer: Attention = module.pagedllm_attn  # type: ignore[assignment]
    if scaling is not None:
        layer.scale = float(scaling)
    # The layer's own window and soft-cap, as HF hands them to its attention functions.
    layer.sliding_window = kwargs.get("sliding_window") or None
    layer.logits_soft_cap = kwargs.get("softcap") or None
    idx = int(module.layer_idx)  # type: ignore[arg-type]
    kv_cache = step.kv_caches[idx] if step.kv_caches else None
    out = layer(_to_tokens(query), _to_tokens(key), _to_tokens(value), kv_cache, step.attn_metadata)
    return out.view(1, query.shape[2], layer.num_heads, layer.head_dim), None


AttentionInterface.register(ATTN_IMPLEMENTATION, paged_attention_forward)


def _attention_modules(model: nn.Module) -> list[nn.Module]:
    """HF's per-layer attention modules (the ones that call the attention interface)."""
    return [
        m
        for m in model.modules()
        if type(m).__name__.endswith("Attention") and isinstance(getattr(m, "layer_idx", None), int)
    ]


def _attach_paged_attention(model: nn.Module, config: PretrainedConfig) -> int:
    """Give every HF attention module its pagedllm Attention; returns how many."""
    num_heads = int(config.num_attention_heads)
    num_kv = int(getattr(config, "num_key_value_heads", None) or num_heads)
    head_dim = config_head_dim(config)
    modules = _attention_modules(model)
    layer_ids = sorted(int(m.layer_idx) for m in modules)  # type: ignore[arg-type]
    if layer_ids != list(range(int(config.num_hidden_layers))):
        raise ValueError(
            f"{type(model).__name__}: cannot map its attention modules to layers "
            f"(found layer ids {layer_ids}); the Transformers fallback does not support it"
        )
    for m in modules:
        causal = bool(getattr(m, "is_causal", True))
        m.pagedllm_attn = Attention(num_heads, head_dim, head_dim**-0.5, num_kv, causal=causal)
    return len(modules)


class TransformersForCausalLM(nn.Module):
    """pagedllm's model contract around an HF `AutoModelForCausalLM` (one GPU only)."""

    supports_pp = False

    def __init__(self, config: PretrainedConfig, prefix: str = "") -> None:
        super().__init__()
        config = copy.deepcopy(config)  # from_config sets the attention implementation on it
        self.hf_model = AutoModelForCausalLM.from_config(
            config, attn_implementation=ATTN_IMPLEMENTATION, dtype=torch.get_default_dtype()
        )
        self.config = self.hf_model.config
        num_layers = _attach_paged_attention(self.hf_model, self.config)
        scale = float(getattr(self.config, "logit_scale", None) or 1.0)  # Cohere
        scale /= float(getattr(self.config, "logits_scaling", None) or 1.0)  # Granite
        soft_cap = getattr(self.config, "final_logit_softcapping", None)
        self.logits_processor = LogitsProcessor(self.config.vocab_size, scale, soft_cap)
        logger.info(
            "Transformers fallback: %s from HF transformers with pagedllm paged attention "
            "(%d attention layers)",
            type(self.hf_model).__name__,
            num_layers,
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        attn_metadata: AttentionMetadata,
        intermediate_tensors: IntermediateTensors | None = None,
    ) -> torch.Tensor:
        """[T] tokens -> hidden states [T, H] (after the final norm)."""
        with _step_context(kv_caches, attn_metadata):
            out = self.hf_model.base_model(
                input_ids=input_ids.unsqueeze(0),
                position_ids=positions.unsqueeze(0),
                use_cache=False,
            )
        return out[0][0]

    def compute_logits(
        self, hidden_states: torch.Tensor, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        head = self.hf_model.get_output_embeddings()
        return self.logits_processor(head, hidden_states, out)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Checkpoint tensors are copied by their HF names (after HF's own renamings of
        legacy checkpoint keys, e.g. GPT-NeoX's embed_out -> lm_head); returns this
        module's parameter names."""
        loaded = load_weights_by_name(
            self.hf_model, weights, [], _checkpoint_renamer(self.hf_model)
        )
        return {f"hf_model.{name}" for name in loaded}


def _checkpoint_renamer(model: PreTrainedModel) -> Callable[[str], str | None]:
    """HF's checkpoint-key renamings for `model` (conversion_mapping.py); tensors that
    HF would merge or split (WeightConverter) are not converted: the coverage check then
    names the parameters left unloaded."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightRenaming, apply_renamings

    renamings = [t for t in get_model_conversion_mapping(model) if isinstance(t, WeightRenaming)]
    return lambda name: apply_renamings(name, renamings)
