"""FusedMoE: every expert's weights in two stacked parameters and one forward over all
of them (vLLM's layer and parameter names).

    w13_weight [E, 2*I/tp, H]   rows [0, I/tp): gate (w1) | rows [I/tp, 2I/tp): up (w3)
    w2_weight  [E, H, I/tp]     down

Tensor parallelism splits each expert along its intermediate dim (rank r holds rows /
columns [r*I/tp, (r+1)*I/tp) of every expert, like a column- then row-parallel MLP) and
the partial outputs are all-reduced. Expert parallelism would instead give each rank
whole experts: the expert dim is the first of both parameters, so that is a slice of
dim 0 and a remap of topk_ids.

The weight loader takes HF's per-expert tensors (`experts.{e}.gate_proj/up_proj/
down_proj`, Mixtral's `w1/w3/w2`) with shard_id "w1" / "w3" / "w2" and the expert id,
or transformers 5's stacked `experts.gate_up_proj` [E, 2I, H] / `experts.down_proj`
[E, H, I] with shard_id "w13" / "w2" and expert_id None.
"""

from __future__ import annotations

import torch
from torch import nn

from pagedllm.distributed.parallel_state import (
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_world_size,
    tensor_model_parallel_all_reduce,
)
from pagedllm.layers.fused_moe.moe_torch import fused_experts_torch
from pagedllm.layers.fused_moe.router import select_experts
from pagedllm.layers.linear import default_weight_loader, divide

# HF per-expert projection name -> shard id.
EXPERT_SHARDS = {
    "gate_proj": "w1",
    "up_proj": "w3",
    "down_proj": "w2",
    "w1": "w1",
    "w3": "w3",
    "w2": "w2",
}


def fused_experts(
    hidden_states: torch.Tensor,  # [T, H]
    w13: torch.Tensor,  # [E, 2I, H]
    w2: torch.Tensor,  # [E, H, I]
    topk_weights: torch.Tensor,  # [T, k] float32
    topk_ids: torch.Tensor,  # [T, k] int32
) -> torch.Tensor:  # [T, H]
    """The Triton grouped GEMMs on CUDA, the torch loop elsewhere."""
    if hidden_states.is_cuda and hidden_states.shape[0] > 0:
        from pagedllm.layers.fused_moe.fused_moe import fused_experts_triton

        return fused_experts_triton(hidden_states, w13, w2, topk_weights, topk_ids)
    return fused_experts_torch(hidden_states, w13, w2, topk_weights, topk_ids)


class FusedMoE(nn.Module):
    def __init__(
        self,
        num_experts: int,
        top_k: int,
        hidden_size: int,
        intermediate_size: int,
        renormalize: bool = True,
        reduce_results: bool = True,
        hidden_act: str = "silu",
    ) -> None:
        super().__init__()
        if hidden_act.lower() not in ("silu", "swish"):
            raise ValueError(f"FusedMoE supports the silu activation, not {hidden_act!r}")
        self.tp_rank = get_tensor_model_parallel_rank()
        self.tp_size = get_tensor_model_parallel_world_size()
        self.num_experts, self.top_k = num_experts, top_k
        self.renormalize, self.reduce_results = renormalize, reduce_results
        self.intermediate_size_per_partition = divide(
            intermediate_size, self.tp_size, "moe_intermediate_size"
        )
        inter = self.intermediate_size_per_partition
        self.w13_weight = nn.Parameter(
            torch.empty(num_experts, 2 * inter, hidden_size), requires_grad=False
        )
        self.w2_weight = nn.Parameter(
            torch.empty(num_experts, hidden_size, inter), requires_grad=False
        )
        for param in (self.w13_weight, self.w2_weight):
            param.weight_loader = self.weight_loader  # type: ignore[attr-defined]

    def weight_loader(
        self,
        param: nn.Parameter,
        loaded_weight: torch.Tensor,
        shard_id: str,
        expert_id: int | None = None,
    ) -> None:
        if expert_id is None:  # all experts stacked: [E, 2I, H] or [E, H, I]
            for expert in range(loaded_weight.shape[0]):
                if shard_id == "w13":
                    full = loaded_weight.shape[1] // 2
                    self.weight_loader(param, loaded_weight[expert, :full], "w1", expert)
                    self.weight_loader(param, loaded_weight[expert, full:], "w3", expert)
                else:
                    self.weight_loader(param, loaded_weight[expert], shard_id, expert)
            return
        inter = self.intermediate_size_per_partition
        start = self.tp_rank * inter
        if shard_id == "w2":  # [H, I]: this rank's columns
            default_weight_loader(param.data[expert_id], loaded_weight.narrow(1, start, inter))
            return
        if shard_id not in ("w1", "w3"):
            raise ValueError(f"unknown expert shard id {shard_id!r}")
        offset = 0 if shard_id == "w1" else inter
        target = param.data[expert_id].narrow(0, offset, inter)
        default_weight_loader(target, loaded_weight.narrow(0, start, inter))

    def forward(
        self,
        hidden_states: torch.Tensor,  # [T, H]
        router_logits: torch.Tensor,  # [T, E]
    ) -> torch.Tensor:  # [T, H]
        topk_weights, topk_ids = select_experts(router_logits, self.top_k, self.renormalize)
        out = fused_experts(hidden_states, self.w13_weight, self.w2_weight, topk_weights, topk_ids)
        if self.reduce_results and self.tp_size > 1:
            out = tensor_model_parallel_all_reduce(out)
        return out

    def extra_repr(self) -> str:
        return (
            f"num_experts={self.num_experts}, top_k={self.top_k}, "
            f"intermediate_size_per_partition={self.intermediate_size_per_partition}, "
            f"renormalize={self.renormalize}"
        )
