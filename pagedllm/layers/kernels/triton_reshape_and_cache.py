"""Write the new tokens' keys and values into the paged KV cache.

    key/value [T, num_kv_heads, head_dim]  --slot_mapping[t]-->  kv_cache[0|1, slot // block_size,
                                                                          slot % block_size]
A slot of -1 marks a token that is not stored (padding for CUDA graphs, or a token
whose slot is not owned by this step); its program returns at once.
Torch reference: `reshape_and_cache_ref`, the torch backend's cache write
(layers/attention/torch_backend.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedllm.layers.attention.torch_backend import write_kv_cache as reshape_and_cache_ref
from pagedllm.triton_utils import (
    FLOAT_DTYPES,
    check_contiguous,
    check_dtype,
    check_last_dim_contiguous,
    check_ndim,
    check_same_device,
    launch,
    next_power_of_2,
)

__all__ = ["reshape_and_cache", "reshape_and_cache_ref"]


@triton.jit
def _reshape_and_cache_kernel(
    key_ptr,  # [T, num_kv_heads, head_dim], strides (stride_kt, stride_kh, 1)
    value_ptr,  # [T, num_kv_heads, head_dim], strides (stride_vt, stride_vh, 1)
    cache_ptr,  # [2, num_blocks, block_size, num_kv_heads, head_dim], contiguous
    slot_mapping_ptr,  # [>= T] int64
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    value_offset,  # elements from the key half of the cache to the value half
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr,  # next_power_of_2(NUM_KV_HEADS)
    BLOCK_D: tl.constexpr,  # next_power_of_2(HEAD_DIM)
):
    # grid = (T,): one program per token writes all its heads.
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_mapping_ptr + token)
    if slot < 0:
        return
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_h[:, None] < NUM_KV_HEADS) & (offs_d[None, :] < HEAD_DIM)
    # A contiguous cache makes slot s of head h start at (s * NUM_KV_HEADS + h) * HEAD_DIM.
    dst = slot * (NUM_KV_HEADS * HEAD_DIM) + offs_h[:, None] * HEAD_DIM + offs_d[None, :]
    k = tl.load(key_ptr + token * stride_kt + offs_h[:, None] * stride_kh + offs_d[None, :], mask)
    v = tl.load(value_ptr + token * stride_vt + offs_h[:, None] * stride_vh + offs_d[None, :], mask)
    out_ty = cache_ptr.dtype.element_ty
    tl.store(cache_ptr + dst, k.to(out_ty), mask)
    tl.store(cache_ptr + value_offset + dst, v.to(out_ty), mask)


def reshape_and_cache(
    key: torch.Tensor,  # [T, num_kv_heads, head_dim]
    value: torch.Tensor,  # [T, num_kv_heads, head_dim]
    kv_cache: torch.Tensor,  # [2, num_blocks, block_size, num_kv_heads, head_dim]
    slot_mapping: torch.Tensor,  # [>= T] int64, -1: skip
) -> None:
    """Store key/value row t at cache slot slot_mapping[t] (rows with slot -1 are skipped)."""
    _check_args(key, value, kv_cache, slot_mapping)
    num_tokens, num_kv_heads, head_dim = key.shape
    if num_tokens == 0:
        return
    device = check_same_device(("key", key), ("value", value), ("kv_cache", kv_cache))
    launch(
        _reshape_and_cache_kernel,
        (num_tokens,),
        device,
        key,
        value,
        kv_cache,
        slot_mapping,
        key.stride(0),
        key.stride(1),
        value.stride(0),
        value.stride(1),
        kv_cache.stride(0),
        NUM_KV_HEADS=num_kv_heads,
        HEAD_DIM=head_dim,
        BLOCK_H=next_power_of_2(num_kv_heads),
        BLOCK_D=next_power_of_2(head_dim),
    )


def _check_args(
    key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    check_ndim("key", key, 3)
    check_ndim("kv_cache", kv_cache, 5)
    if value.shape != key.shape:
        raise ValueError(f"value shape {tuple(value.shape)} != key shape {tuple(key.shape)}")
    if kv_cache.shape[0] != 2 or tuple(kv_cache.shape[3:]) != tuple(key.shape[1:]):
        raise ValueError(
            f"kv_cache shape {tuple(kv_cache.shape)} does not match key {tuple(key.shape)}"
        )
    for name, t in (("key", key), ("value", value), ("kv_cache", kv_cache)):
        check_dtype(name, t, FLOAT_DTYPES)
    check_dtype("slot_mapping", slot_mapping, (torch.int64,))
    check_last_dim_contiguous("key", key)
    check_last_dim_contiguous("value", value)
    check_contiguous("kv_cache", kv_cache)
    check_contiguous("slot_mapping", slot_mapping)
    if slot_mapping.shape[0] < key.shape[0]:
        raise ValueError(f"slot_mapping has {slot_mapping.shape[0]} rows < {key.shape[0]} tokens")
