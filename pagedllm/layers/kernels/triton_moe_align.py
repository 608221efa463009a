"""moe_align_block_size in three small launches instead of ~25 torch ops (a stable
radix sort among them). Torch reference: fused_moe/moe_align_block_size.py
(`moe_align_block_size_torch`, same outputs bit for bit).

The T*k flat pairs are cut into C chunks of `chunk` pairs; E_PAD = next power of two >= E.

    count   grid (C,)  counts[c, e] = pairs of chunk c that chose expert e (one-hot sums
                       over SUB pairs at a time); program c also fills its share of
                       sorted_token_ids with T*k (padding)
    offsets grid (1,)  counts[c, e] <- pairs of expert e in chunks before c (exclusive
                       scan over the chunks); row C <- start of expert e's padded run;
                       expert_ids per row block; num_tokens_post_padded
    scatter grid (C,)  pair i of chunk c, expert e, goes to slot start[e] + counts[c, e]
                       + (pairs of expert e before i in its chunk: a cumsum of the
                       one-hot rows): experts in order, each expert's pairs in flat order

Static shapes, no host sync: CUDA-graph safe.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

import pagedllm.triton_utils as tu

MAX_CHUNKS = 64  # the offsets program scans this many rows at most (chunks grow beyond)
MIN_CHUNK = 256
FILL_BLOCK = 1024  # slots of sorted_token_ids one store fills


# num_pairs, total_slots, chunk, fill_per_chunk follow the token count (see triton_utils).
@triton.jit(do_not_specialize=["num_pairs", "total_slots", "chunk", "fill_per_chunk"])
def _align_count_kernel(
    ids_ptr,  # [T*k] int32
    counts_ptr,  # [C + 1, E_PAD] int32, rows [0, C) written
    sorted_ptr,  # [total_slots] int32, filled with num_pairs
    num_pairs,
    total_slots,
    chunk,
    fill_per_chunk,
    E_PAD: tl.constexpr,
    SUB: tl.constexpr,
    FILL_BLOCK: tl.constexpr,
):
    c = tl.program_id(0)
    experts = tl.arange(0, E_PAD)
    counts = tl.zeros([E_PAD], dtype=tl.int32)
    for s in range(0, chunk, SUB):
        offs = c * chunk + s + tl.arange(0, SUB)
        ids = tl.load(ids_ptr + offs, mask=offs < num_pairs, other=-1)
        counts += tl.sum((ids[:, None] == experts[None, :]).to(tl.int32), axis=0)
    tl.store(counts_ptr + c * E_PAD + experts, counts)
    fill_end = tl.minimum((c + 1) * fill_per_chunk, total_slots)
    for f in range(c * fill_per_chunk, fill_end, FILL_BLOCK):
        offs = f + tl.arange(0, FILL_BLOCK)
        tl.store(
            sorted_ptr + offs, tl.zeros([FILL_BLOCK], tl.int32) + num_pairs, mask=offs < fill_end
        )


@triton.jit(do_not_specialize=["num_chunks", "num_blocks"])
def _align_offsets_kernel(
    counts_ptr,  # [C + 1, E_PAD] int32
    expert_ids_ptr,  # [num_blocks] int32
    num_post_ptr,  # [1] int32
    num_chunks,
    num_blocks,
    num_experts,
    BLOCK_M: tl.constexpr,
    E_PAD: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    experts = tl.arange(0, E_PAD)
    total = tl.zeros([E_PAD], dtype=tl.int32)
    for c in range(0, num_chunks):
        row = tl.load(counts_ptr + c * E_PAD + experts)
        tl.store(counts_ptr + c * E_PAD + experts, total)
        total += row
    padded = (total + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    ends = tl.cumsum(padded, axis=0)
    tl.store(counts_ptr + num_chunks * E_PAD + experts, ends - padded)
    tl.store(num_post_ptr, tl.sum(padded, axis=0))
    real = experts < num_experts
    for b0 in range(0, num_blocks, BLOCK_B):
        blocks = b0 + tl.arange(0, BLOCK_B)
        slot = blocks * BLOCK_M
        done = (ends[None, :] <= slot[:, None]) & real[None, :]
        tl.store(
            expert_ids_ptr + blocks, tl.sum(done.to(tl.int32), axis=1), mask=blocks < num_blocks
        )


@triton.jit(do_not_specialize=["num_pairs", "num_chunks", "chunk"])
def _align_scatter_kernel(
    ids_ptr,  # [T*k] int32
    counts_ptr,  # [C + 1, E_PAD] int32 after the offsets kernel
    sorted_ptr,  # [total_slots] int32
    num_pairs,
    num_chunks,
    chunk,
    E_PAD: tl.constexpr,
    SUB: tl.constexpr,
):
    c = tl.program_id(0)
    experts = tl.arange(0, E_PAD)
    base = tl.load(counts_ptr + c * E_PAD + experts)
    base += tl.load(counts_ptr + num_chunks * E_PAD + experts)
    for s in range(0, chunk, SUB):
        offs = c * chunk + s + tl.arange(0, SUB)
        ok = offs < num_pairs
        ids = tl.load(ids_ptr + offs, mask=ok, other=-1)
        hot = (ids[:, None] == experts[None, :]).to(tl.int32)
        before = tl.cumsum(hot, axis=0) - 1 + base[None, :]
        dest = tl.sum(hot * before, axis=1)
        tl.store(sorted_ptr + dest, offs, mask=ok)
        base += tl.sum(hot, axis=0)


def moe_align_block_size_triton(
    topk_ids: torch.Tensor,  # [T, k] int
    block_m: int,
    num_experts: int,
    total_slots: int,  # max_padded_len(T*k, E, block_m)
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sorted_token_ids [total_slots], expert_ids [cdiv(total_slots, block_m)],
    num_tokens_post_padded [1]), all int32: see moe_align_block_size.py."""
    ids = topk_ids.reshape(-1)
    if ids.dtype != torch.int32 or not ids.is_contiguous():
        ids = ids.to(torch.int32).contiguous()
    num_pairs, device = ids.numel(), ids.device
    chunk = max(MIN_CHUNK, triton.next_power_of_2(tu.cdiv(num_pairs, MAX_CHUNKS)))
    num_chunks = max(1, tu.cdiv(num_pairs, chunk))
    num_blocks = tu.cdiv(total_slots, block_m)
    e_pad = triton.next_power_of_2(num_experts)
    sub = max(8, min(64, 8192 // e_pad))  # a [SUB, E_PAD] one-hot block at a time
    warps = 4 if e_pad <= 128 else 8
    counts = torch.empty((num_chunks + 1, e_pad), dtype=torch.int32, device=device)
    sorted_ids = torch.empty(total_slots, dtype=torch.int32, device=device)
    expert_ids = torch.empty(num_blocks, dtype=torch.int32, device=device)
    num_post = torch.empty(1, dtype=torch.int32, device=device)
    fill = tu.cdiv(total_slots, num_chunks)
    tu.launch(
        _align_count_kernel, (num_chunks,), device,
        ids, counts, sorted_ids, num_pairs, total_slots, chunk, fill,
        E_PAD=e_pad, SUB=sub, FILL_BLOCK=FILL_BLOCK, num_warps=warps,
    )  # fmt: skip
    tu.launch(
        _align_offsets_kernel, (1,), device,
        counts, expert_ids, num_post, num_chunks, num_blocks, num_experts,
        BLOCK_M=block_m, E_PAD=e_pad, BLOCK_B=max(16, 8192 // e_pad), num_warps=warps,
    )  # fmt: skip
    tu.launch(
        _align_scatter_kernel, (num_chunks,), device,
        ids, counts, sorted_ids, num_pairs, num_chunks, chunk,
        E_PAD=e_pad, SUB=sub, num_warps=warps,
    )  # fmt: skip
    return sorted_ids, expert_ids, num_post
