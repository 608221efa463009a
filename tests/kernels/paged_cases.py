"""Paged-attention inputs of the kernel tests (block tables, KV caches, sequence lengths,
metadata), the Triton kernels run on them, and the one torch oracle: the torch attention
backend (layers/attention/torch_backend.py). Imported as a plain module like
kernel_cases.py."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pagedllm.layers.attention.metadata import AttentionMetadata
from pagedllm.layers.attention.torch_backend import TorchAttentionBackend
from pagedllm.layers.kernels.triton_decode_attention import decode_attention
from pagedllm.layers.kernels.triton_prefill_attention import prefill_attention


@dataclass
class PagedCase:
    query: torch.Tensor  # [T, num_heads, head_dim]
    kv_cache: torch.Tensor  # [2, num_blocks, block_size, num_kv_heads, head_dim], random
    block_tables: torch.Tensor  # [B, max_blocks] int32, random distinct blocks, padded with 0
    seq_lens: torch.Tensor  # [B] int32
    query_start_loc: torch.Tensor  # [B + 1] int32
    max_query_len: int
    max_seq_len: int
    scale: float


def make_paged_case(
    seq_lens: Sequence[int],
    query_lens: Sequence[int],
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype,
    device: str,
    seed: int = 0,
    extra_query_rows: int = 0,
) -> PagedCase:
    """Random cache and queries; sequence b's blocks are a random set of distinct block ids
    (a few spare blocks keep unused cache contents in play). extra_query_rows pads T."""
    gen = torch.Generator().manual_seed(seed)
    blocks_per_seq = [-(-s // block_size) for s in seq_lens]
    num_blocks = sum(blocks_per_seq) + 3
    perm = torch.randperm(num_blocks, generator=gen).to(torch.int32)
    max_blocks = max(blocks_per_seq + [1]) + 1
    tables = torch.zeros(len(seq_lens), max_blocks, dtype=torch.int32)
    used = 0
    for b, n in enumerate(blocks_per_seq):
        tables[b, :n] = perm[used : used + n]
        used += n
    starts = torch.zeros(len(seq_lens) + 1, dtype=torch.int32)
    starts[1:] = torch.tensor(list(query_lens), dtype=torch.int32).cumsum(0)
    num_tokens = int(starts[-1]) + extra_query_rows
    cache = torch.randn(2, num_blocks, block_size, num_kv_heads, head_dim, generator=gen)
    query = torch.randn(num_tokens, num_heads, head_dim, generator=gen)
    return PagedCase(
        query=query.to(dtype).to(device),
        kv_cache=cache.to(dtype).to(device),
        block_tables=tables.to(device),
        seq_lens=torch.tensor(list(seq_lens), dtype=torch.int32, device=device),
        query_start_loc=starts.to(device),
        max_query_len=max(list(query_lens) + [0]),
        max_seq_len=max(list(seq_lens) + [0]),
        scale=head_dim**-0.5,
    )


def paged_metadata(
    case: PagedCase,
    slot_mapping: torch.Tensor | None = None,  # [T] int64; None: -1 (nothing written)
    num_actual_tokens: int | None = None,  # None: every query row
) -> AttentionMetadata:
    """The step's metadata as the model runner builds it, from the case's current
    (possibly rewritten) seq_lens."""
    num_rows = case.query.shape[0]
    if slot_mapping is None:
        slot_mapping = torch.full((num_rows,), -1, dtype=torch.int64, device=case.query.device)
    return AttentionMetadata(
        num_actual_tokens=num_rows if num_actual_tokens is None else num_actual_tokens,
        max_query_len=case.max_query_len,
        max_seq_len=int(case.seq_lens.max()) if case.seq_lens.numel() else 0,
        query_start_loc=case.query_start_loc,
        seq_lens=case.seq_lens,
        block_tables=case.block_tables,
        slot_mapping=slot_mapping,
        query_start_loc_cpu=case.query_start_loc.cpu(),
        seq_lens_cpu=case.seq_lens.cpu(),
    )


def slot_mapping_of(case: PagedCase, query_lens: list[int], num_rows: int) -> torch.Tensor:
    """Slots of each sequence's last q_len positions; -1 for rows past the real tokens."""
    block_size = case.kv_cache.shape[2]
    slots = torch.full((num_rows,), -1, dtype=torch.int64)
    tables = case.block_tables.cpu().long()
    row = 0
    for b, (seq_len, q_len) in enumerate(zip(case.seq_lens.tolist(), query_lens)):
        if seq_len > 0:  # a padded sequence (seq_len 0) keeps slot -1 for its row
            pos = torch.arange(seq_len - q_len, seq_len)
            slots[row : row + q_len] = tables[b, pos // block_size] * block_size + pos % block_size
        row += q_len
    return slots.to(case.query.device)


def assert_empty_sequences_give_zeros(out: torch.Tensor, case: PagedCase) -> None:
    """The rows of a sequence with seq_len 0 (a padded entry) are exactly 0."""
    starts = case.query_start_loc.tolist()
    for b, seq_len in enumerate(case.seq_lens.tolist()):
        rows = out[starts[b] : starts[b + 1]]
        if seq_len == 0:
            assert torch.equal(rows, torch.zeros_like(rows)), f"sequence {b} has no keys"


def torch_attention(
    case: PagedCase,
    causal: bool = True,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
) -> torch.Tensor:  # [T, num_heads, head_dim]; rows of no sequence (or seq_len 0) are 0
    """The oracle: the torch attention backend over the case's cache."""
    return TorchAttentionBackend().forward(
        case.query,
        case.kv_cache,
        paged_metadata(case),
        case.scale,
        causal=causal,
        sliding_window=sliding_window,
        soft_cap=soft_cap,
    )


def run_prefill(
    case: PagedCase,
    causal: bool = True,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
    block_m: int = 64,
    block_n: int = 64,
) -> torch.Tensor:
    """prefill_attention into a NaN-filled output (so every row must be written)."""
    out = torch.full_like(case.query, float("nan"))
    prefill_attention(
        case.query,
        case.kv_cache,
        case.block_tables,
        case.seq_lens,
        case.query_start_loc,
        case.max_query_len,
        case.scale,
        causal=causal,
        out=out,
        sliding_window=sliding_window,
        soft_cap=soft_cap,
        block_m=block_m,
        block_n=block_n,
    )
    return out


def run_decode(
    case: PagedCase,
    num_splits: int,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
    block_n: int = 64,
) -> torch.Tensor:
    """decode_attention (one query row per sequence) into a NaN-filled output."""
    out = torch.full_like(case.query, float("nan"))
    decode_attention(
        case.query,
        case.kv_cache,
        case.block_tables,
        case.seq_lens,
        case.scale,
        num_splits=num_splits,
        out=out,
        sliding_window=sliding_window,
        soft_cap=soft_cap,
        block_n=block_n,
    )
    return out
