"""Phi-3 (mini/medium, 4k context): the Llama block with q/k/v and gate/up already
fused in the checkpoint (qkv_proj, gate_up_proj); the fused tensors are split per
tensor-parallel rank by the layers' weight loaders."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from pagedllm.models.llama import LlamaForCausalLM
from pagedllm.models.utils import load_weights_by_name


class Phi3ForCausalLM(LlamaForCausalLM):
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        # No stacking: HF names already are qkv_proj / gate_up_proj (shard_id None = fused).
        return load_weights_by_name(self, weights, [], self._rename)
