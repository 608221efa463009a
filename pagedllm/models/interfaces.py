"""The model contract: what the model runner (worker/model_runner.py, cuda_graphs.py,
piecewise_graphs.py) calls on a model, as typing Protocols (vLLM's models/interfaces.py).

    SupportsForward   every model: the forward pass over the step's flattened tokens,
                      the module tree (the runner finds the Attention layers in it),
                      load_weights. A pooling run needs nothing more: the runner owns
                      the pooler (model_loader/sentence_transformers.py) and applies it
                      to the hidden states, for BERT and decoder models alike.
    ModelForCausalLM  text generation: + compute_logits (the LM head).
    SupportsPP        pipeline parallelism (class attribute `supports_pp = True`,
                      models/pipeline.py): forward takes the previous stage's
                      activations; + make_empty_intermediate_tensors (receive buffers).

Model classes are nn.Modules that match these structurally (no base class to inherit);
the loader returns an nn.Module, and `check_model` checks it once at load time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol, TypeGuard, cast

import torch
from torch import nn

from pagedllm.layers.attention import AttentionMetadata
from pagedllm.models.pipeline import IntermediateTensors


class SupportsForward(Protocol):
    def __call__(
        self,
        input_ids: torch.Tensor,  # [T] int64, the step's tokens flattened (no padding)
        positions: torch.Tensor,  # [T] int64
        kv_caches: list[torch.Tensor],  # per layer: [2, blocks, block_size, kv_heads, head_dim]
        attn_metadata: AttentionMetadata,
    ) -> torch.Tensor | IntermediateTensors:
        """Hidden states [T, hidden] (after the final norm); IntermediateTensors on a
        pipeline stage before the last."""
        ...

    def modules(self) -> Iterator[nn.Module]: ...

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Copy checkpoint tensors by their HF names; the parameter names loaded."""
        ...


class ModelForCausalLM(SupportsForward, Protocol):
    def compute_logits(
        self,
        hidden_states: torch.Tensor,  # [N, hidden]
        out: torch.Tensor | None = None,  # [N, vocab] float32, written when given
    ) -> torch.Tensor:  # [N, vocab] float32 (last pipeline stage only)
        ...


class SupportsPP(SupportsForward, Protocol):
    supports_pp: bool

    def __call__(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        attn_metadata: AttentionMetadata,
        intermediate_tensors: IntermediateTensors | None = None,  # None on the first stage
    ) -> torch.Tensor | IntermediateTensors: ...

    def make_empty_intermediate_tensors(
        self, num_tokens: int, dtype: torch.dtype, device: torch.device
    ) -> IntermediateTensors: ...


def is_causal_lm(model: object) -> TypeGuard[ModelForCausalLM]:
    return callable(getattr(model, "compute_logits", None))


def supports_pp(model: object) -> TypeGuard[SupportsPP]:
    return bool(getattr(model, "supports_pp", False)) and callable(
        getattr(model, "make_empty_intermediate_tensors", None)
    )


def check_model(model: nn.Module, generate: bool, pipeline: bool) -> SupportsForward:
    """`model` as the runner sees it; TypeError when it lacks what the run needs
    (`generate`: logits to sample from; `pipeline`: more than one pipeline stage)."""
    name = type(model).__name__
    if not callable(getattr(model, "load_weights", None)):
        raise TypeError(f"{name} has no load_weights: not a pagedllm model")
    if generate and not is_causal_lm(model):
        raise TypeError(f"{name} has no compute_logits: it cannot generate text")
    if pipeline and not supports_pp(model):
        raise TypeError(f"{name} does not support pipeline parallelism")
    return cast(SupportsForward, model)  # checked above (forward: by every model's tests)
