"""Per-request KV block lists on top of the BlockPool.

Block j of a request holds cache positions [j * block_size, (j + 1) * block_size).
A block is full once the request's computed tokens cover it; full blocks are
hashed (chained over the parent) and entered into the prefix cache, so a later
request with the same prefix shares them copy-free (ref_cnt > 1).
"""

from __future__ import annotations

import itertools

from pagedllm.core.block_pool import BlockPool, KVCacheBlock, hash_block_tokens
from pagedllm.core.request import Request


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool) -> None:
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.block_pool = BlockPool(num_blocks, enable_caching)
        self.req_to_blocks: dict[str, list[KVCacheBlock]] = {}
        self.req_to_block_ids: dict[str, list[int]] = {}  # the same blocks' ids, kept in step
        self.num_cached_blocks: dict[str, int] = {}  # leading blocks already in the cache map
        self.prefix_cache_queries = 0  # tokens looked up
        self.prefix_cache_hits = 0  # tokens found

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
        if not self.enable_caching or request.wants_prompt_logprobs or request.is_pooling:
            return [], 0
        hashes = self._update_block_hashes(request)
        max_blocks = (request.num_tokens - 1) // self.block_size
        hits: list[KVCacheBlock] = []
        for block_hash in hashes[:max_blocks]:
            block = self.block_pool.get_cached_block(block_hash)
            if block is None:
                break
            hits.append(block)
        self.prefix_cache_queries += request.num_tokens
        self.prefix_cache_hits += len(hits) * self.block_size
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
        num_new_blocks = max(0, required - len(held) - len(new_computed_blocks))
        # Reviving a free cached block takes it out of the free queue as well.
        revived = sum(1 for b in new_computed_blocks if b.ref_cnt == 0)
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
        self.block_pool.touch(new_computed_blocks)
        new_blocks = self.block_pool.get_new_blocks(num_new_blocks)
        for block in itertools.chain(new_computed_blocks, new_blocks):
            blocks.append(block)
            block_ids.append(block.block_id)
        num_known = request.num_computed_tokens + len(new_computed_blocks) * self.block_size
        self._cache_full_blocks(request, blocks, num_known + num_new_tokens)
        return new_blocks

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
        blocks = self.req_to_blocks.pop(request.request_id, [])
        self.req_to_block_ids.pop(request.request_id, None)
        self.num_cached_blocks.pop(request.request_id, None)
        self.block_pool.free_blocks(list(reversed(blocks)))

    def reset_prefix_cache(self) -> bool:
        return self.block_pool.reset_prefix_cache()

    def check_integrity(self) -> None:
        self.block_pool.check_integrity()
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
