"""Mixture-of-Experts: the router's top-k, the experts' stacked weights (FusedMoE) and
their compute (a torch loop over experts on the CPU, a Triton grouped GEMM on CUDA)."""

from pagedllm.layers.fused_moe.layer import FusedMoE
from pagedllm.layers.fused_moe.router import select_experts

__all__ = ["FusedMoE", "select_experts"]
