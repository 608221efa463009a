"""The experts on CUDA: two grouped GEMMs (triton_fused_moe.py) around SiLU-and-mul.

    hidden [T, H] --GEMM1 (w13, pairs sorted by expert)--> gate_up [T*k, 2I]
      --silu_and_mul--> act [T*k, I] --GEMM2 (w2, times topk_weights)--> y [T*k, H]
      --sum over the k experts of each token--> out [T, H]

Rows of gate_up / act / y are flat pairs t*k + j, so the final reduce is a view and a
sum. The tile sizes depend only on the token count: one CUDA graph per batch size.

Few pairs (decode: T*k <= small_tiles.SMALL_MAX_PAIRS) take the small-batch path
instead (kernels/triton_fused_moe_small.py): no sort, no 16-row blocks for one row.
"""

from __future__ import annotations

import torch

from pagedllm.layers.fused_moe import small_tiles
from pagedllm.layers.fused_moe.moe_align_block_size import moe_align_block_size


def get_config(num_tokens: int, top_k: int, num_experts: int) -> dict[str, int]:
    """Tiles by rows per expert: few rows (decode) read each expert's weights once with
    16-row blocks; many rows (prefill) use big tiles for tensor-core throughput."""
    rows_per_expert = num_tokens * top_k / max(num_experts, 1)
    if rows_per_expert <= 16:
        return dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=128, GROUP_M=1, num_warps=4, num_stages=4)
    if rows_per_expert <= 64:
        return dict(BLOCK_M=32, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=4)
    return dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=4)


def fused_experts_triton(
    hidden_states: torch.Tensor,  # [T, H]
    w13: torch.Tensor,  # [E, 2I, H]
    w2: torch.Tensor,  # [E, H, I]
    topk_weights: torch.Tensor,  # [T, k] float32
    topk_ids: torch.Tensor,  # [T, k] int32
    config: dict[str, int] | None = None,
) -> torch.Tensor:  # [T, H]
    """The small-batch path for few pairs, else the grouped GEMMs (always with an
    explicit `config`: the grouped GEMMs' tiles)."""
    num_tokens, top_k = topk_ids.shape
    if config is None and small_tiles.use_small_path(num_tokens, top_k):
        from pagedllm.layers.kernels.triton_fused_moe_small import fused_experts_small

        tiles = small_tiles.pick(num_tokens)
        return fused_experts_small(hidden_states, w13, w2, topk_weights, topk_ids, tiles)
    return fused_experts_grouped(hidden_states, w13, w2, topk_weights, topk_ids, config)


def fused_experts_grouped(
    hidden_states: torch.Tensor,  # [T, H]
    w13: torch.Tensor,  # [E, 2I, H]
    w2: torch.Tensor,  # [E, H, I]
    topk_weights: torch.Tensor,  # [T, k] float32
    topk_ids: torch.Tensor,  # [T, k] int32
    config: dict[str, int] | None = None,
) -> torch.Tensor:  # [T, H]
    # Imported here: triton must not be imported before TRITON_INTERPRET is settled.
    from pagedllm.layers.kernels.triton_activation import silu_and_mul
    from pagedllm.layers.kernels.triton_fused_moe import invoke_fused_moe_kernel

    num_tokens, top_k = topk_ids.shape
    num_experts, two_inter, hidden = w13.shape
    config = config or get_config(num_tokens, top_k, num_experts)
    sorted_ids, expert_ids, num_post = moe_align_block_size(
        topk_ids, config["BLOCK_M"], num_experts
    )
    flat_weights = topk_weights.reshape(-1).float()
    dtype, device = hidden_states.dtype, hidden_states.device
    gate_up = torch.empty(num_tokens * top_k, two_inter, dtype=dtype, device=device)
    invoke_fused_moe_kernel(
        hidden_states, w13, gate_up, flat_weights, sorted_ids, expert_ids, num_post,
        top_k, False, config,
    )  # fmt: skip
    act = silu_and_mul(gate_up)
    out = torch.empty(num_tokens * top_k, hidden, dtype=dtype, device=device)
    invoke_fused_moe_kernel(
        act, w2, out, flat_weights, sorted_ids, expert_ids, num_post, 1, True, config
    )
    return out.view(num_tokens, top_k, hidden).sum(dim=1)
