"""decode_attention (split-K, GQA) against the torch attention backend over random block
tables."""

from __future__ import annotations

import pytest
import torch
from kernel_cases import assert_close, gpu_test
from paged_cases import (
    assert_empty_sequences_give_zeros,
    make_paged_case,
    run_decode,
    torch_attention,
)

from pagedllm.layers.kernels.triton_decode_attention import choose_num_splits


def _check(
    seq_lens: list[int],
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    num_splits: int,
    dtype: torch.dtype,
    device: str,
    block_n: int = 64,
) -> None:
    case = make_paged_case(
        seq_lens, [1] * len(seq_lens), num_heads, num_kv_heads, head_dim, block_size, dtype, device
    )
    out = run_decode(case, num_splits, block_n=block_n)
    assert_close(out, torch_attention(case), dtype)
    assert_empty_sequences_give_zeros(out, case)


# seq_lens hold a padded row (0), lengths off the block size, and one longer than a split.
SEQ_LENS = [37, 0, 130, 5]


@pytest.mark.parametrize("num_heads,num_kv_heads", [(4, 4), (4, 2), (8, 2)])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("num_splits", [1, 3])
def test_decode_attention(
    num_heads: int, num_kv_heads: int, head_dim: int, num_splits: int
) -> None:
    _check(SEQ_LENS, num_heads, num_kv_heads, head_dim, 16, num_splits, torch.float32, "cpu")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_decode_attention_16bit(dtype: torch.dtype) -> None:
    _check(SEQ_LENS, 8, 2, 64, 16, 2, dtype, "cpu")


def test_decode_attention_head_dim_80_odd_block_size() -> None:
    _check([29, 61], 6, 2, 80, 7, 4, torch.float32, "cpu", block_n=16)


def test_decode_attention_many_splits_short_seqs() -> None:
    # More splits than key tiles: trailing splits are empty and must not disturb the merge.
    _check([3, 17, 1], 4, 1, 64, 8, 8, torch.float32, "cpu", block_n=16)


def test_choose_num_splits() -> None:
    cpu = torch.device("cpu")
    assert choose_num_splits(256, 8, 4096, cpu) == 1
    assert choose_num_splits(1, 8, 100, cpu) == 1
    assert 1 < choose_num_splits(1, 1, 100_000, cpu) <= 32


@gpu_test
@pytest.mark.parametrize(
    "num_heads,num_kv_heads,head_dim", [(16, 8, 128), (32, 8, 128), (32, 32, 64), (12, 4, 96)]
)
@pytest.mark.parametrize("num_splits", [1, 7])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_decode_attention_gpu(
    num_heads: int, num_kv_heads: int, head_dim: int, num_splits: int, dtype: torch.dtype
) -> None:
    gen = torch.Generator().manual_seed(num_heads + head_dim + num_splits)
    seq_lens = torch.randint(1, 3000, (24,), generator=gen).tolist() + [0, 1, 16, 4096]
    _check(seq_lens, num_heads, num_kv_heads, head_dim, 16, num_splits, dtype, "cuda")
