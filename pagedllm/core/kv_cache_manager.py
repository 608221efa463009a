"""Per-request KV block lists on top of the BlockPool.

Block j of a request holds cache positions [j * block_size, (j + 1) * block_size).
A block is full once the request's computed tokens cover it; full blocks are
hashed (chained over the parent) and entered into the prefix cache, so a later
request with the same prefix shares them copy-free (ref_cnt > 1).

With a CPU tier (core/cpu_tier.py) a preempted request can be swapped out instead
of recomputed, evicted cached blocks spill into the tier, and a prefix lookup
that misses on the GPU looks there next: its hits come back as copies.
"""

from __future__ import annotations

import itertools

from pagedllm.core.block_pool import BlockPool, KVCacheBlock, hash_block_tokens
from pagedllm.core.cpu_tier import CpuTier
from pagedllm.core.request import Request


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class KVCacheManager:
    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        enable_caching: bool,
        num_cpu_blocks: int = 0,
        spill_all: bool = False,
    ) -> None:
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.block_pool = BlockPool(num_blocks, enable_caching)
        self.req_to_blocks: dict[str, list[KVCacheBlock]] = {}
        self.req_to_block_ids: dict[str, list[int]] = {}  # the same blocks' ids, kept in step
        self.num_cached_blocks: dict[str, int] = {}  # leading blocks already in the cache map
        self.prefix_cache_queries = 0  # tokens looked up
        self.prefix_cache_hits = 0  # tokens found (both tiers)
        self.cpu_prefix_cache_hits = 0  # tokens found in the CPU tier
        self.cpu_tier = (
            CpuTier(num_cpu_blocks, enable_caching, spill_all) if num_cpu_blocks > 0 else None
        )
        if self.cpu_tier is not None and enable_caching:
            self.block_pool.on_evict = self.cpu_tier.spill

    @property
    def num_blocks(self) -> int:
        return self.block_pool.num_blocks

    @property
    def usage(self) -> float:
        return self.block_pool.get_usage()

    def get_num_free_blocks(self) -> int:
        return self.block_pool.get_num_free_blocks()

    def get_block_ids(self, request_id: str) -> list[int]:
        """The request's block table (a live list: read it, do not keep or change it)."""
        return self.req_to_block_ids.get(request_id, [])

    def _update_block_hashes(self, request: Request) -> list[int]:
        """Extend request.block_hashes over every full block of known tokens."""
        bs = self.block_size
        hashes = request.block_hashes
        num_full = request.num_tokens // bs
        if len(hashes) < num_full:
            tokens = request.all_token_ids
            parent = hashes[-1] if hashes else None
            for j in range(len(hashes), num_full):
                parent = hash_block_tokens(parent, tuple(tokens[j * bs : (j + 1) * bs]))
                hashes.append(parent)
        return hashes

    def get_computed_blocks(self, request: Request) -> tuple[list[KVCacheBlock], int]:
        """The longest cached prefix of a new request: (blocks, number of tokens).
        At least one token is always left to compute, so the step yields logits."""
        if self.cpu_tier is not None and self.cpu_tier.has(request.request_id):
            return [], request.num_computed_tokens  # swapped out: its own blocks come back
        if not self.enable_caching or request.wants_prompt_logprobs or request.is_pooling:
            return [], 0
        hashes = self._update_block_hashes(request)
        max_blocks = (request.num_tokens - 1) // self.block_size
        hits: list[KVCacheBlock] = []
        for block_hash in hashes[:max_blocks]:
            block = self.block_pool.get_cached_block(block_hash)
            if block is None and self.cpu_tier is not None:
                block = self.cpu_tier.pool.get_cached_block(block_hash)
            if block is None:
                break
            hits.append(block)
        if self.cpu_tier is not None and len(hits) < max_blocks:
            self.cpu_tier.note_misses(hashes[len(hits) : max_blocks])
        self.prefix_cache_queries += request.num_tokens
        self.prefix_cache_hits += len(hits) * self.block_size
        self.cpu_prefix_cache_hits += sum(b.on_cpu for b in hits) * self.block_size
        return hits, len(hits) * self.block_size

    def can_allocate(
        self, request: Request, num_new_tokens: int, new_computed_blocks: list[KVCacheBlock]
    ) -> bool:
        return self._num_blocks_to_take(request, num_new_tokens, new_computed_blocks) is not None

    def _num_blocks_to_take(
        self, request: Request, num_new_tokens: int, new_computed_blocks: list[KVCacheBlock]
    ) -> int | None:
        held = self.req_to_blocks.get(request.request_id, [])
        num_computed = request.num_computed_tokens + len(new_computed_blocks) * self.block_size
        required = cdiv(num_computed + num_new_tokens, self.block_size)
        # Hits in the CPU tier need GPU blocks to be copied into.
        gpu_hits = [b for b in new_computed_blocks if not b.on_cpu]
        num_new_blocks = max(0, required - len(held) - len(gpu_hits))
        # Reviving a free cached block takes it out of the free queue as well.
        revived = sum(1 for b in gpu_hits if b.ref_cnt == 0)
        if num_new_blocks + revived > self.block_pool.get_num_free_blocks():
            return None
        return num_new_blocks

    def allocate_slots(
        self,
        request: Request,
        num_new_tokens: int,
        new_computed_blocks: list[KVCacheBlock] | None = None,
    ) -> list[KVCacheBlock] | None:
        """Give the request blocks for num_new_tokens more tokens (after its
        computed ones and the new prefix hits). None, and no change, when the pool
        is short."""
        if not new_computed_blocks:
            blocks = self.req_to_blocks.get(request.request_id)
            end = request.num_computed_tokens + num_new_tokens
            if blocks is not None and end <= len(blocks) * self.block_size:
                # Fast path (most decode steps): the tokens fit in the blocks held.
                self._cache_full_blocks(request, blocks, end)
                return []
        new_computed_blocks = new_computed_blocks or []
        num_new_blocks = self._num_blocks_to_take(request, num_new_tokens, new_computed_blocks)
        if num_new_blocks is None:
            return None
        blocks = self.req_to_blocks.setdefault(request.request_id, [])
        block_ids = self.req_to_block_ids.setdefault(request.request_id, [])
        cpu_hits = [b for b in new_computed_blocks if b.on_cpu]
        self.block_pool.touch([b for b in new_computed_blocks if not b.on_cpu])
        if self.cpu_tier is not None:
            self.cpu_tier.touch(cpu_hits)  # before any spill could evict them
        new_blocks = self.block_pool.get_new_blocks(num_new_blocks)
        fresh = iter(new_blocks)
        placed = [next(fresh) if b.on_cpu else b for b in new_computed_blocks]
        for hit, block in zip(new_computed_blocks, placed):
            block.num_hits += hit.on_cpu  # a CPU-tier hit proved this block's reuse too
        for block in itertools.chain(placed, fresh):
            blocks.append(block)
            block_ids.append(block.block_id)
        if self.cpu_tier is not None:
            self._copy_back(request, new_computed_blocks, placed, new_blocks)
        num_known = request.num_computed_tokens + len(new_computed_blocks) * self.block_size
        self._cache_full_blocks(request, blocks, num_known + num_new_tokens)
        return new_blocks

    def _copy_back(
        self,
        request: Request,
        hits: list[KVCacheBlock],
        placed: list[KVCacheBlock],
        new_blocks: list[KVCacheBlock],
    ) -> None:
        """Record the CPU -> GPU copies of a resumed request or of CPU-tier hits
        (`placed`: the GPU block standing for each hit)."""
        assert self.cpu_tier is not None
        if self.cpu_tier.has(request.request_id):
            self.cpu_tier.restore(request.request_id, [b.block_id for b in new_blocks])
            return
        pairs = [(h, g.block_id) for h, g in zip(hits, placed) if h.on_cpu]
        if pairs:
            self.cpu_tier.load_hits([h for h, _ in pairs], [g for _, g in pairs])

    def swap_out(self, request: Request) -> bool:
        """Preempt by swap: copy the request's computed blocks to the CPU tier and
        free its GPU blocks (it keeps num_computed_tokens). False, and no change,
        without a tier or room in it."""
        if self.cpu_tier is None:
            return False
        ids = self.req_to_block_ids.get(request.request_id, [])
        ids = ids[: cdiv(request.num_computed_tokens, self.block_size)]
        if not self.cpu_tier.store(request.request_id, list(ids)):
            return False
        self._free_gpu(request)
        return True

    def take_copies(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """This step's (swap-out, swap-in) block pairs, for the SchedulerOutput."""
        if self.cpu_tier is None:
            return [], []
        return self.cpu_tier.take_copies()

    def _cache_full_blocks(
        self, request: Request, blocks: list[KVCacheBlock], num_tokens: int
    ) -> None:
        if not self.enable_caching or request.is_pooling:
            return
        num_full = min(num_tokens, request.num_tokens) // self.block_size
        start = self.num_cached_blocks.get(request.request_id, 0)
        if num_full <= start:
            return
        hashes = self._update_block_hashes(request)
        for j in range(start, num_full):
            self.block_pool.cache_full_block(blocks[j], hashes[j])
        self.num_cached_blocks[request.request_id] = num_full

    def free(self, request: Request) -> None:
        self._free_gpu(request)
        if self.cpu_tier is not None:
            self.cpu_tier.drop(request.request_id)

    def _free_gpu(self, request: Request) -> None:
        blocks = self.req_to_blocks.pop(request.request_id, [])
        self.req_to_block_ids.pop(request.request_id, None)
        self.num_cached_blocks.pop(request.request_id, None)
        self.block_pool.free_blocks(list(reversed(blocks)))

    def reset_prefix_cache(self) -> bool:
        if self.cpu_tier is not None and not self.cpu_tier.reset_prefix_cache():
            return False
        return self.block_pool.reset_prefix_cache()

    def check_integrity(self) -> None:
        self.block_pool.check_integrity()
        if self.cpu_tier is not None:
            self.cpu_tier.check_integrity()
        counts: dict[int, int] = {}
        for req_id, blocks in self.req_to_blocks.items():
            assert self.req_to_block_ids[req_id] == [b.block_id for b in blocks]
            for b in blocks:
                counts[b.block_id] = counts.get(b.block_id, 0) + 1
        for block in self.block_pool.blocks:
            assert block.ref_cnt == counts.get(block.block_id, 0), (
                f"block {block.block_id}: ref_cnt {block.ref_cnt} but held "
                f"{counts.get(block.block_id, 0)} times"
            )
