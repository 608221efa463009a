"""The pool of KV cache blocks: reference counts, an LRU free queue, and the
prefix-cache map from block hash to block.

Every block is in exactly one of two states:
  - in use:  ref_cnt > 0, not in the free queue;
  - free:    ref_cnt == 0, in the free queue (oldest-freed first). A free block may
             still hold a cached prefix (block_hash set and in the hash map) until it
             is handed out again, at which point its hash is evicted.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(eq=False)
class KVCacheBlock:
    block_id: int
    ref_cnt: int = 0
    block_hash: int | None = None  # set once the block is full and cached
    num_hits: int = 0  # prefix-cache hits on it since it was handed out
    on_cpu: bool = False  # a block of the CPU tier (core/cpu_tier.py)


def hash_block_tokens(parent_hash: int | None, token_ids: tuple[int, ...]) -> int:
    """Chained block hash: a block's identity covers every token before it."""
    return hash((parent_hash, token_ids))


class BlockPool:
    def __init__(self, num_blocks: int, enable_caching: bool, on_cpu: bool = False) -> None:
        if num_blocks <= 0:
            raise ValueError(f"num_blocks must be > 0, got {num_blocks}")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.blocks = [KVCacheBlock(i, on_cpu=on_cpu) for i in range(num_blocks)]
        # LRU order: popitem(last=False) hands out the block freed longest ago.
        self.free_queue: OrderedDict[int, KVCacheBlock] = OrderedDict(
            (b.block_id, b) for b in self.blocks
        )
        self.cached_block_hash_to_block: dict[int, KVCacheBlock] = {}
        self.num_evictions = 0
        # Called with a cached block about to be handed out again (its hash still
        # set): the CPU tier copies it out first (prefix-cache spill).
        self.on_evict: Callable[[KVCacheBlock], None] | None = None

    # ---- queries -------------------------------------------------------
    def get_num_free_blocks(self) -> int:
        return len(self.free_queue)

    def get_usage(self) -> float:
        return 1.0 - len(self.free_queue) / self.num_blocks

    def get_cached_block(self, block_hash: int) -> KVCacheBlock | None:
        return self.cached_block_hash_to_block.get(block_hash)

    # ---- mutations -----------------------------------------------------
    def get_new_blocks(self, num_blocks: int) -> list[KVCacheBlock]:
        if num_blocks > len(self.free_queue):
            raise ValueError(f"cannot get {num_blocks} free blocks, {len(self.free_queue)} free")
        out = []
        for _ in range(num_blocks):
            _, block = self.free_queue.popitem(last=False)
            if self.on_evict is not None and self._is_cached(block):
                self.on_evict(block)
            self._evict_cached(block)
            block.ref_cnt = 1
            block.num_hits = 0
            out.append(block)
        return out

    def touch(self, blocks: list[KVCacheBlock]) -> None:
        """Take a reference on prefix-cache hits (reviving free ones)."""
        for block in blocks:
            if block.ref_cnt == 0:
                del self.free_queue[block.block_id]
            block.ref_cnt += 1
            block.num_hits += 1

    def free_blocks(self, ordered_blocks: list[KVCacheBlock]) -> None:
        """Drop one reference each; blocks reaching zero join the free queue's tail
        in the given order (callers pass a request's blocks tail first, so prefix
        blocks are evicted last)."""
        for block in ordered_blocks:
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                self.free_queue[block.block_id] = block

    def cache_full_block(self, block: KVCacheBlock, block_hash: int) -> None:
        if not self.enable_caching or block.block_hash is not None:
            return
        if block_hash in self.cached_block_hash_to_block:
            return  # an identical block is cached already; this one stays private
        block.block_hash = block_hash
        self.cached_block_hash_to_block[block_hash] = block

    def reset_prefix_cache(self) -> bool:
        if any(b.ref_cnt > 0 for b in self.blocks):
            return False
        for block in self.blocks:
            self._evict_cached(block)
        return True

    def _is_cached(self, block: KVCacheBlock) -> bool:
        h = block.block_hash
        return h is not None and self.cached_block_hash_to_block.get(h) is block

    def _evict_cached(self, block: KVCacheBlock) -> None:
        if block.block_hash is None:
            return
        if self.cached_block_hash_to_block.get(block.block_hash) is block:
            del self.cached_block_hash_to_block[block.block_hash]
            self.num_evictions += 1
        block.block_hash = None

    def check_integrity(self) -> None:
        for block in self.blocks:
            in_free = block.block_id in self.free_queue
            assert block.ref_cnt >= 0, f"block {block.block_id} ref_cnt {block.ref_cnt}"
            assert in_free == (block.ref_cnt == 0), (
                f"block {block.block_id}: ref_cnt {block.ref_cnt}, in free queue {in_free}"
            )
        for block_hash, block in self.cached_block_hash_to_block.items():
            assert block.block_hash == block_hash, f"hash map out of sync at {block.block_id}"
