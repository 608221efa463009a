"""Shared builders and checks of the kernel tests (imported as a plain module: this
folder has no __init__.py, so pytest puts it on sys.path)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import pytest
import torch

F = TypeVar("F", bound=Callable[..., object])

# Relative error bounds ||out - ref|| / ||ref|| by input dtype (METHOD: fp32 far under
# 1e-3; 16-bit operands between 1e-3 and 1e-2).
REL_TOL = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 2e-2}


def gpu_test(fn: F) -> F:
    """Marks a test `gpu` and skips it where CUDA is absent."""
    skip = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
    return pytest.mark.gpu(skip(fn))  # type: ignore[no-any-return]


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    assert out.shape == ref.shape, (out.shape, ref.shape)
    assert torch.isfinite(out).all(), "non-finite values in the output"
    diff = (out.double() - ref.double()).norm()
    scale = ref.double().norm().clamp_min(1e-12)
    rel = float(diff / scale)
    assert rel < REL_TOL[dtype], f"relative error {rel:.3g} >= {REL_TOL[dtype]:.1g}"


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
