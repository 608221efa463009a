"""The CPU tier of the KV cache (`swap_space` GiB per GPU): the core's bookkeeping.

The blocks themselves are pinned CPU tensors owned by the workers
(worker/kv_swap.py); here is a second BlockPool of CPU block ids and the list of
copies the step must make, sent to the workers in the SchedulerOutput. Two kinds
of tenant share the pool:
  - a request preempted by swap: its computed blocks are copied GPU -> CPU and its
    GPU blocks freed; on resume it gets new GPU blocks and the copies come back;
  - the prefix cache's spill: a cached GPU block about to be handed out again is
    copied to a free CPU block first, keeping its hash, so that a later prefix hit
    there is copied back instead of recomputed. Spilled blocks are free, cached
    CPU blocks: the CPU pool evicts them least recently used first.
    Only blocks whose prefix has shown reuse are spilled: a block that served a
    hit, or whose hash was evicted unspilled once and then asked for again (a
    "ghost" list of such hashes, ARC-style, as long as twice the tier). Spilling
    every evicted block made a server whose GPU pool had filled with never-shared
    prompts copy each block it handed out over PCIe (2 MiB a block on the
    Llama-3.1-8B shape): 27% of S1's throughput on the H200 (docs/benchmarks.md),
    for blocks nobody asked for again.

The worker runs a step's copies in this order: every swap-out (GPU -> CPU), then
every swap-in (CPU -> GPU), then the forward. So a GPU block freed or evicted and
handed out again in the same step is read before it is overwritten, and a CPU
block written by a swap-out can be read back by a swap-in of the same step. A CPU
block being swapped in keeps a reference until the step's copies are taken
(`take_copies`), so no swap-out of the same step can write over it first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from pagedllm.core.block_pool import BlockPool, KVCacheBlock

# preemption_mode=None swaps a request with at least this many computed tokens and
# recomputes a shorter one. Both costs grow with the length: recompute is a prefill
# (linear in the weights' work, quadratic in attention) that shares a step's token
# budget; a swap is two PCIe copies of the blocks (2 x 128 KiB a token on the
# Llama-3.1-8B shape, ~5 us a token at 50 GB/s, against ~25 us a token of prefill
# compute), plus a fixed cost per swap (launches, a staging buffer, a scheduling
# round trip). Below a few hundred tokens recompute rides along in a batched step at
# almost no cost, so the short ones are recomputed.
SWAP_MIN_TOKENS = 256


def _remember(hashes: OrderedDict[int, None], block_hash: int, capacity: int) -> None:
    hashes[block_hash] = None
    hashes.move_to_end(block_hash)
    if len(hashes) > capacity:
        hashes.popitem(last=False)


class CpuTier:
    def __init__(self, num_blocks: int, enable_caching: bool, spill_all: bool = False) -> None:
        self.pool = BlockPool(num_blocks, enable_caching, on_cpu=True)
        self.spill_all = spill_all  # spill every evicted cached block (tests of the copies)
        self._ghosts: OrderedDict[int, None] = OrderedDict()  # evicted unspilled
        self._reused: OrderedDict[int, None] = OrderedDict()  # ghosts asked for again
        self._memory = 2 * num_blocks
        self.req_to_blocks: dict[str, list[KVCacheBlock]] = {}  # swapped-out requests
        self.swap_out: list[tuple[int, int]] = []  # (gpu block, cpu block) this step
        self.swap_in: list[tuple[int, int]] = []  # (cpu block, gpu block) this step
        self._held_for_step: list[KVCacheBlock] = []
        self.num_swapped_out = 0  # blocks, cumulative
        self.num_swapped_in = 0

    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    def has(self, req_id: str) -> bool:
        return req_id in self.req_to_blocks

    def num_held(self, req_id: str) -> int:
        return len(self.req_to_blocks.get(req_id, ()))

    def store(self, req_id: str, gpu_ids: list[int]) -> bool:
        """Swap a preempted request's blocks out; False (and no change) when the
        tier has no room for them."""
        if not gpu_ids or len(gpu_ids) > self.pool.get_num_free_blocks():
            return False
        blocks = self.pool.get_new_blocks(len(gpu_ids))
        self.req_to_blocks[req_id] = blocks
        self.swap_out += zip(gpu_ids, (b.block_id for b in blocks))
        self.num_swapped_out += len(blocks)
        return True

    def restore(self, req_id: str, gpu_ids: list[int]) -> None:
        """Copy a swapped-out request back into `gpu_ids` (as many as it has blocks)."""
        blocks = self.req_to_blocks.pop(req_id)
        self._load(blocks, gpu_ids)

    def load_hits(self, blocks: list[KVCacheBlock], gpu_ids: list[int]) -> None:
        """Copy prefix-cache hits of this tier into `gpu_ids` (references taken by
        `touch` already; they are dropped once the step's copies are taken)."""
        self._load(blocks, gpu_ids)

    def touch(self, blocks: list[KVCacheBlock]) -> None:
        self.pool.touch(blocks)

    def _load(self, blocks: list[KVCacheBlock], gpu_ids: list[int]) -> None:
        assert len(gpu_ids) >= len(blocks)
        self.swap_in += zip((b.block_id for b in blocks), gpu_ids)
        self._held_for_step += blocks
        self.num_swapped_in += len(blocks)

    def spill(self, gpu_block: KVCacheBlock) -> None:
        """A cached GPU block is being evicted: keep a copy (and its hash) here if
        its prefix has shown reuse, unless this tier has one already or no block
        to spare."""
        block_hash = gpu_block.block_hash
        assert block_hash is not None
        if not self._worth_spilling(gpu_block, block_hash):
            return
        if self.pool.get_cached_block(block_hash) is not None:
            return
        if self.pool.get_num_free_blocks() == 0:
            return
        (block,) = self.pool.get_new_blocks(1)
        self.pool.cache_full_block(block, block_hash)
        self.swap_out.append((gpu_block.block_id, block.block_id))
        self.num_swapped_out += 1
        self.pool.free_blocks([block])  # free but cached, at the LRU tail

    def _worth_spilling(self, gpu_block: KVCacheBlock, block_hash: int) -> bool:
        if self.spill_all or gpu_block.num_hits > 0 or block_hash in self._reused:
            return True
        _remember(self._ghosts, block_hash, self._memory)
        return False

    def note_misses(self, block_hashes: Iterable[int]) -> None:
        """Prefix blocks a new request looked for and neither tier had: those
        evicted unspilled before are reused prefixes, spilled when evicted again."""
        for block_hash in block_hashes:
            if block_hash in self._ghosts:
                del self._ghosts[block_hash]
                _remember(self._reused, block_hash, self._memory)

    def drop(self, req_id: str) -> None:
        """A swapped-out request finished or was aborted: its blocks are free."""
        blocks = self.req_to_blocks.pop(req_id, None)
        if blocks:
            self.pool.free_blocks(list(reversed(blocks)))

    def take_copies(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """This step's (swap-out, swap-in) pairs; the blocks swapped in are released."""
        out, into = self.swap_out, self.swap_in
        self.swap_out, self.swap_in = [], []
        held, self._held_for_step = self._held_for_step, []
        self.pool.free_blocks(held)
        return out, into

    def reset_prefix_cache(self) -> bool:
        return self.pool.reset_prefix_cache()

    def check_integrity(self) -> None:
        self.pool.check_integrity()
        counts: dict[int, int] = {}
        for blocks in (*self.req_to_blocks.values(), self._held_for_step):
            for b in blocks:
                counts[b.block_id] = counts.get(b.block_id, 0) + 1
        for block in self.pool.blocks:
            held = counts.get(block.block_id, 0)
            assert block.ref_cnt == held, (
                f"cpu block {block.block_id}: ref_cnt {block.ref_cnt} but held {held} times"
            )
