"""The experts on CUDA: two grouped GEMMs (triton_fused_moe.py), SiLU-and-mul fused into
the first.

    hidden [T, H] --GEMM1 (w13, pairs sorted by expert, silu(gate) * up)--> act [T*k, I]
      --GEMM2 (w2, times topk_weights)--> y [T*k, H]
      --sum over the k experts of each token--> out [T, H]

Rows of act / y are flat pairs t*k + j, so the final reduce is a view and a sum. The
tiles depend on the expert shape and the token count (grouped_tiles.py, swept on an
H200): one CUDA graph per batch size.

Few pairs (decode: T*k <= small_tiles.SMALL_MAX_PAIRS) take the small-batch path
instead (kernels/triton_fused_moe_small.py): no sort, no 16-row blocks for one row.
"""

from __future__ import annotations

import functools

import torch

from pagedllm.layers.fused_moe import grouped_tiles, small_tiles
from pagedllm.layers.fused_moe.moe_align_block_size import moe_align_block_size

Align = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # moe_align_block_size's outputs


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


@functools.cache
def _capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


@functools.cache
def _shared_memory_limit(device: torch.device) -> int:
    props = torch.cuda.get_device_properties(device)
    return int(getattr(props, "shared_memory_per_block_optin", grouped_tiles.SHARED_MEMORY_LIMIT))


def grouped_configs(
    hidden_states: torch.Tensor, w13: torch.Tensor, topk_ids: torch.Tensor
) -> tuple[dict[str, int], dict[str, int]]:
    """The (gate/up, down) configs from grouped_tiles' table for this call."""
    num_tokens, top_k = topk_ids.shape
    num_experts, two_inter, hidden = w13.shape
    device = hidden_states.device
    on_cuda = device.type == "cuda"
    capability = _capability(device) if on_cuda else None
    limit = _shared_memory_limit(device) if on_cuda else grouped_tiles.SHARED_MEMORY_LIMIT
    shape = (num_experts, hidden, two_inter // 2, top_k)
    gate_up, down = grouped_tiles.pick(num_tokens, shape, capability)
    size = hidden_states.element_size()
    gate_up = grouped_tiles.fit_shared_memory(gate_up, size, gated=True, limit=limit)
    down = grouped_tiles.fit_shared_memory(down, size, gated=False, limit=limit)
    return grouped_tiles.as_config(gate_up), grouped_tiles.as_config(down)


def fused_experts_grouped(
    hidden_states: torch.Tensor,  # [T, H]
    w13: torch.Tensor,  # [E, 2I, H]
    w2: torch.Tensor,  # [E, H, I]
    topk_weights: torch.Tensor,  # [T, k] float32
    topk_ids: torch.Tensor,  # [T, k] int32
    config: dict[str, int] | None = None,
) -> torch.Tensor:  # [T, H]
    """`config`: both GEMMs' tiles (else the table's, per GEMM, one BLOCK_M)."""
    num_tokens, top_k = topk_ids.shape
    if config is None:
        gate_up_config, down_config = grouped_configs(hidden_states, w13, topk_ids)
    else:
        gate_up_config = down_config = config
    if gate_up_config["BLOCK_M"] != down_config["BLOCK_M"]:
        raise ValueError(f"the two GEMMs' BLOCK_M differ: {gate_up_config} {down_config}")
    align = moe_align_block_size(topk_ids, gate_up_config["BLOCK_M"], w13.shape[0])
    act = grouped_gate_up(hidden_states, w13, align, top_k, gate_up_config)
    out = grouped_down(act, w2, topk_weights, align, down_config)
    return out.view(num_tokens, top_k, -1).sum(dim=1)


def grouped_gate_up(
    hidden_states: torch.Tensor,  # [T, H]
    w13: torch.Tensor,  # [E, 2I, H]
    align: Align,
    top_k: int,
    config: dict[str, int],
) -> torch.Tensor:  # act [T*k, I] = silu(gate) * up of each pair
    # Imported here: triton must not be imported before TRITON_INTERPRET is settled.
    from pagedllm.layers.kernels.triton_fused_moe import invoke_fused_moe_kernel

    pairs, inter = hidden_states.shape[0] * top_k, w13.shape[1] // 2
    act = torch.empty(pairs, inter, dtype=hidden_states.dtype, device=hidden_states.device)
    sorted_ids, expert_ids, num_post = align
    invoke_fused_moe_kernel(
        hidden_states,
        w13,
        act,
        act,
        sorted_ids,
        expert_ids,
        num_post,
        top_k,
        False,
        config,
        gated=True,
    )  # fmt: skip  (topk_weights unread without MUL_ROUTED_WEIGHT: any tensor)
    return act


def grouped_down(
    act: torch.Tensor,  # [T*k, I]
    w2: torch.Tensor,  # [E, H, I]
    topk_weights: torch.Tensor,  # [T, k] float32
    align: Align,
    config: dict[str, int],
) -> torch.Tensor:  # [T*k, H]: each pair's down projection times its routing weight
    from pagedllm.layers.kernels.triton_fused_moe import invoke_fused_moe_kernel

    out = torch.empty(act.shape[0], w2.shape[1], dtype=act.dtype, device=act.device)
    weights = topk_weights.reshape(-1)
    if weights.dtype != torch.float32:
        weights = weights.float()
    sorted_ids, expert_ids, num_post = align
    invoke_fused_moe_kernel(
        act, w2, out, weights, sorted_ids, expert_ids, num_post, 1, True, config
    )
    return out
