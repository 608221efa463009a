"""KV cache sizing and allocation.

One tensor per attention layer: [2, num_blocks, block_size, num_kv_heads, head_dim]
(keys at [0], values at [1]). On a GPU the number of blocks comes from memory
profiling: what `gpu_memory_utilization` of the card leaves after the weights and
the peak activations of a largest step. On the CPU it comes from a memory budget
(`kv_cache_memory_bytes`, default 4 GiB, like vLLM's CPU KV cache space)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from pagedllm.config import EngineConfig

logger = logging.getLogger(__name__)

DEFAULT_CPU_KV_CACHE_BYTES = 4 << 30
# Tests only: build the CPU tier on the CPU device (where the flags otherwise do not apply).
CPU_TIER_TEST_HOOK = "PAGEDLLM_TEST_CPU_KV_TIER"


@dataclass
class KVCacheSpec:
    num_layers: int
    block_size: int
    num_kv_heads: int  # per tensor-parallel rank
    head_dim: int
    dtype: torch.dtype

    @property
    def block_bytes(self) -> int:
        """Bytes of one block across all layers (keys and values)."""
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.block_size * self.num_kv_heads * self.head_dim * itemsize


def kv_cache_spec(config: EngineConfig, num_layers: int, tp_size: int) -> KVCacheSpec:
    mc = config.model_config
    kv_heads = max(1, mc.num_kv_heads // tp_size)
    return KVCacheSpec(
        num_layers=num_layers,
        block_size=config.cache_config.block_size,
        num_kv_heads=kv_heads,
        head_dim=mc.head_dim,
        dtype=mc.dtype,
    )


def cpu_tier_num_blocks(config: EngineConfig) -> int:
    """Blocks of the CPU KV tier (swap_space GiB per rank); 0: no tier. The core and
    every worker call this, so they agree on the count without a message. The block
    size counts all the model's layers (a pipeline stage holds fewer: it stays under
    swap_space)."""
    cc = config.cache_config
    on_device = config.device_config.is_cuda or os.environ.get(CPU_TIER_TEST_HOOK) == "1"
    if cc.swap_space <= 0 or not on_device or config.model_config.runner == "pooling":
        return 0
    tp = config.parallel_config.tensor_parallel_size
    spec = kv_cache_spec(config, config.model_config.num_layers, tp)
    return int(cc.swap_space * (1 << 30)) // spec.block_bytes


def cpu_num_blocks(config: EngineConfig, spec: KVCacheSpec) -> int:
    budget = config.cache_config.kv_cache_memory_bytes or DEFAULT_CPU_KV_CACHE_BYTES
    # No use in more blocks than every sequence at full length could take.
    seqs = config.scheduler_config.max_num_seqs
    max_useful = seqs * -(-config.model_config.max_model_len // spec.block_size) + 1
    return max(1, min(budget // spec.block_bytes, max_useful))


def gpu_num_blocks(
    config: EngineConfig, spec: KVCacheSpec, peak_bytes: int, device: torch.device
) -> int:
    """Blocks that fit in gpu_memory_utilization of the card after `peak_bytes`
    (weights + peak activations, measured by the profiling run)."""
    budget = config.cache_config.kv_cache_memory_bytes
    if budget is None:
        _, total = torch.cuda.mem_get_info(device)
        budget = int(total * config.cache_config.gpu_memory_utilization) - peak_bytes
    num_blocks = budget // spec.block_bytes
    logger.info(
        "KV cache: %.2f GiB for %d blocks of %d tokens (peak use before it: %.2f GiB)",
        num_blocks * spec.block_bytes / (1 << 30),
        num_blocks,
        spec.block_size,
        peak_bytes / (1 << 30),
    )
    return int(num_blocks)


def check_fits(config: EngineConfig, spec: KVCacheSpec, num_blocks: int) -> None:
    """A max_model_len that cannot fit in the cache is an error that says what fits."""
    max_len = config.model_config.max_model_len
    needed = -(-max_len // spec.block_size)
    if num_blocks <= 0 or num_blocks < needed:
        fits = max(0, num_blocks) * spec.block_size
        raise ValueError(
            f"The KV cache has room for {fits} tokens ({num_blocks} blocks), fewer than "
            f"max_model_len={max_len}. Lower max_model_len to at most {fits}, or raise "
            f"gpu_memory_utilization / kv_cache_memory_bytes."
        )


def allocate_kv_caches(
    spec: KVCacheSpec, num_blocks: int, device: torch.device
) -> list[torch.Tensor]:
    shape = (2, num_blocks, spec.block_size, spec.num_kv_heads, spec.head_dim)
    # Zeros, not empty: padding slots are read (then masked) and must not hold NaN.
    return [torch.zeros(shape, dtype=spec.dtype, device=device) for _ in range(spec.num_layers)]
