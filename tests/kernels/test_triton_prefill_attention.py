"""prefill_attention (varlen, chunked, GQA, causal or not) against the torch attention
backend."""

from __future__ import annotations

import pytest
import torch
from kernel_cases import assert_close, gpu_test
from paged_cases import make_paged_case, run_prefill, torch_attention


def _check(
    seq_lens: list[int],
    query_lens: list[int],
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype,
    device: str,
    causal: bool = True,
    block_m: int = 64,
    block_n: int = 64,
) -> None:
    case = make_paged_case(
        seq_lens, query_lens, num_heads, num_kv_heads, head_dim, block_size, dtype, device
    )
    out = run_prefill(case, causal, block_m=block_m, block_n=block_n)
    assert_close(out, torch_attention(case, causal), dtype)


# (seq_lens, query_lens): a whole prompt, a chunk after a cached prefix (lengths off the
# block size), a decode token, and a padded sequence (q_len 0, seq_len 0).
MIXED = ([45, 90, 23, 0], [45, 33, 1, 0])


@pytest.mark.parametrize("num_heads,num_kv_heads", [(4, 4), (4, 2), (8, 2)])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_prefill_attention(num_heads: int, num_kv_heads: int, head_dim: int) -> None:
    _check(*MIXED, num_heads, num_kv_heads, head_dim, 16, torch.float32, "cpu")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_prefill_attention_16bit(dtype: torch.dtype) -> None:
    _check(*MIXED, 8, 2, 64, 16, dtype, "cpu")


def test_prefill_attention_non_causal() -> None:
    _check([40, 21], [40, 21], 4, 2, 64, 16, torch.float32, "cpu", causal=False)


def test_prefill_attention_small_tiles_many_steps() -> None:
    # Several query tiles per sequence and several key steps per tile, GQA 4 with 3 groups
    # of padded rows (GROUP 3 -> GROUP_PAD 4), head_dim 80, block_size 5.
    _check([70, 33], [50, 33], 9, 3, 80, 5, torch.float32, "cpu", block_m=16, block_n=16)


@gpu_test
@pytest.mark.parametrize(
    "num_heads,num_kv_heads,head_dim", [(16, 8, 128), (32, 8, 128), (32, 32, 64), (12, 4, 96)]
)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_prefill_attention_gpu(
    num_heads: int, num_kv_heads: int, head_dim: int, causal: bool, dtype: torch.dtype
) -> None:
    gen = torch.Generator().manual_seed(num_heads + head_dim)
    query_lens = torch.randint(1, 700, (12,), generator=gen).tolist() + [1, 1, 0]
    prefixes = torch.randint(0, 900, (15,), generator=gen).tolist()
    seq_lens = [q + p if q else 0 for q, p in zip(query_lens, prefixes)]
    _check(
        seq_lens, query_lens, num_heads, num_kv_heads, head_dim, 16, dtype, "cuda", causal=causal
    )
