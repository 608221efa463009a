"""Pipeline-parallel model building (vLLM's make_layers / PPMissingLayer).

Each pipeline stage builds only its own decoder layers; the other positions of the
layer list hold a parameter-free `PPMissingLayer`, so layer indices (and HF weight
names) stay global and checkpoint tensors of other stages find no parameter and
are skipped by the loader:

    stage 0: embed, layers [0, k)        ... last stage: layers [m, L), final norm, LM head

A model supporting pipeline parallelism sets `supports_pp = True`, takes and returns
`IntermediateTensors` between stages, and implements
`make_empty_intermediate_tensors(num_tokens, dtype, device)` (the receive buffers).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from pagedllm.distributed.parallel_state import (
    get_pipeline_model_parallel_rank,
    get_pipeline_model_parallel_world_size,
    get_pp_indices,
)


@dataclass
class IntermediateTensors:
    """What one pipeline stage hands the next."""

    hidden_states: torch.Tensor  # [T, hidden] model dtype
    residual: torch.Tensor | None = None  # [T, hidden], pre-norm models that carry it

    def tensors(self) -> list[torch.Tensor]:
        """The tensors in wire order (sender and receiver agree on it)."""
        return (
            [self.hidden_states] if self.residual is None else [self.hidden_states, self.residual]
        )


class PPMissingLayer(nn.Identity):
    """Stands in for a module that lives on another pipeline stage (no parameters)."""


def make_layers(
    num_layers: int, layer_fn: Callable[[int], nn.Module]
) -> tuple[int, int, nn.ModuleList]:
    """(start, end, layers): `layer_fn(i)` for this stage's [start, end), PPMissingLayer elsewhere."""
    start, end = get_pp_indices(
        num_layers, get_pipeline_model_parallel_rank(), get_pipeline_model_parallel_world_size()
    )
    layers = nn.ModuleList(
        layer_fn(i) if start <= i < end else PPMissingLayer() for i in range(num_layers)
    )
    return start, end, layers
