"""The worker's half of the CPU KV tier (core/cpu_tier.py keeps the books): the
CPU blocks, and each step's copies between them and the device KV cache.

CPU layout: one tensor [num_cpu_blocks, num_layers, 2, block_size, kv_heads,
head_dim], pinned on CUDA, so that one block of every layer is one contiguous run
(one DMA copy). A swap-out gathers the blocks of every layer into a device staging
buffer in that layout and copies runs of consecutive CPU ids at once; a swap-in
copies runs into a staging buffer and scatters them into each layer.

On CUDA the copies run on a side stream that first waits for the work queued on the
compute stream (the previous step still writes the blocks to be copied), and the
compute stream waits for them before the step's forward (an event each way): the
host never blocks. Elsewhere (the CPU device, tests) they are plain copies.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch

from pagedllm.layers.host_to_device import tensor_to_device
from pagedllm.worker.kv_cache import KVCacheSpec

logger = logging.getLogger(__name__)

CHUNK_BLOCKS = 64  # blocks per staging buffer (64 x 2 MiB on the Llama-3.1-8B shape)


class KVSwapper:
    def __init__(
        self, spec: KVCacheSpec, num_cpu_blocks: int, gpu_caches: list[torch.Tensor]
    ) -> None:
        self.gpu_caches = gpu_caches
        self.device = gpu_caches[0].device
        self.on_cuda = self.device.type == "cuda"
        shape = (
            num_cpu_blocks,
            spec.num_layers,
            2,
            spec.block_size,
            spec.num_kv_heads,
            spec.head_dim,
        )
        self.cpu_cache = torch.zeros(shape, dtype=spec.dtype, pin_memory=self.on_cuda)
        self.stream = torch.cuda.Stream(self.device) if self.on_cuda else None
        logger.info(
            "CPU KV tier: %d blocks, %.2f GiB%s",
            num_cpu_blocks,
            self.cpu_cache.numel() * self.cpu_cache.element_size() / (1 << 30),
            " pinned" if self.on_cuda else "",
        )

    def swap(self, swap_out: list[tuple[int, int]], swap_in: list[tuple[int, int]]) -> None:
        """Every swap-out, then every swap-in (the order core/cpu_tier.py relies on)."""
        if not swap_out and not swap_in:
            return
        if self.stream is None:
            self._copy(swap_out, swap_in)
            return
        compute = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(compute)
        with torch.cuda.stream(self.stream):
            self._copy(swap_out, swap_in)
        compute.wait_stream(self.stream)

    def _copy(self, swap_out: list[tuple[int, int]], swap_in: list[tuple[int, int]]) -> None:
        for chunk in _chunks(swap_out):
            self._copy_out([g for g, _ in chunk], [c for _, c in chunk])
        for chunk in _chunks(swap_in):
            self._copy_in([c for c, _ in chunk], [g for _, g in chunk])

    def _index(self, ids: list[int]) -> torch.Tensor:
        return tensor_to_device(torch.tensor(ids, dtype=torch.int64), self.device)

    def _copy_out(self, gpu_ids: list[int], cpu_ids: list[int]) -> None:
        index = self._index(gpu_ids)
        # [L, 2, n, ...] -> [n, L, 2, ...]
        staging = torch.stack([kv.index_select(1, index) for kv in self.gpu_caches])
        staging = staging.permute(2, 0, 1, 3, 4, 5).contiguous()
        for i, c, n in _runs(cpu_ids):
            self.cpu_cache[c : c + n].copy_(staging[i : i + n], non_blocking=True)

    def _copy_in(self, cpu_ids: list[int], gpu_ids: list[int]) -> None:
        index = self._index(gpu_ids)
        staging = torch.empty(
            (len(cpu_ids), *self.cpu_cache.shape[1:]),
            dtype=self.cpu_cache.dtype,
            device=self.device,
        )
        for i, c, n in _runs(cpu_ids):
            staging[i : i + n].copy_(self.cpu_cache[c : c + n], non_blocking=True)
        for layer, kv in enumerate(self.gpu_caches):
            kv.index_copy_(1, index, staging[:, layer].transpose(0, 1))


def _chunks(pairs: list[tuple[int, int]]) -> Iterator[list[tuple[int, int]]]:
    for start in range(0, len(pairs), CHUNK_BLOCKS):
        yield pairs[start : start + CHUNK_BLOCKS]


def _runs(ids: list[int]) -> Iterator[tuple[int, int, int]]:
    """(position in ids, first id, length) of each run of consecutive ids."""
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or ids[i] != ids[i - 1] + 1:
            yield start, ids[start], i - start
            start = i
