"""Block pool and KV cache manager: exact block ids, ref counts, eviction order."""

from __future__ import annotations

import pytest

from pagedllm.core.block_pool import BlockPool
from pagedllm.core.kv_cache_manager import KVCacheManager
from pagedllm.core.request import Request
from pagedllm.sampling_params import SamplingParams


def make_request(req_id: str, tokens: list[int], **sp: object) -> Request:
    return Request(req_id, tokens, SamplingParams(**sp))  # type: ignore[arg-type]


def allocate_prompt(kv: KVCacheManager, req: Request) -> int:
    hits, num_hit = kv.get_computed_blocks(req)
    assert kv.allocate_slots(req, req.num_tokens - num_hit, hits) is not None
    req.num_computed_tokens = req.num_tokens
    return num_hit


def test_block_pool_hands_out_lru_order_and_counts_refs() -> None:
    pool = BlockPool(4, enable_caching=True)
    a = pool.get_new_blocks(2)
    assert [b.block_id for b in a] == [0, 1] and all(b.ref_cnt == 1 for b in a)
    pool.touch([a[0]])
    assert a[0].ref_cnt == 2
    pool.free_blocks([a[1], a[0]])
    assert a[0].ref_cnt == 1 and a[1].ref_cnt == 0
    # Free queue order: 2, 3 (never used), then 1 (just freed).
    assert list(pool.free_queue) == [2, 3, 1]
    pool.check_integrity()
    with pytest.raises(ValueError):
        pool.get_new_blocks(4)


def test_allocation_blocks_and_tail_growth() -> None:
    kv = KVCacheManager(num_blocks=8, block_size=4, enable_caching=False)
    req = make_request("a", list(range(10)))
    allocate_prompt(kv, req)
    assert kv.get_block_ids("a") == [0, 1, 2]  # 10 tokens -> 3 blocks of 4
    req.output_token_ids.append(99)  # token 10 fits in block 2
    assert kv.allocate_slots(req, 1) == []
    req.num_computed_tokens += 1
    req.output_token_ids.append(98)
    assert kv.allocate_slots(req, 1) == []  # token 11 still in block 2
    req.num_computed_tokens += 1
    req.output_token_ids.append(97)
    new = kv.allocate_slots(req, 1)  # token 12 opens block 3
    assert new is not None and [b.block_id for b in new] == [3]
    kv.check_integrity()
    kv.free(req)
    assert kv.get_num_free_blocks() == 8
    kv.check_integrity()


def test_allocate_fails_without_change_when_short() -> None:
    kv = KVCacheManager(num_blocks=2, block_size=4, enable_caching=False)
    req = make_request("a", list(range(12)))
    assert kv.allocate_slots(req, 12) is None
    assert kv.get_num_free_blocks() == 2 and kv.get_block_ids("a") == []


def test_prefix_cache_hit_shares_blocks() -> None:
    kv = KVCacheManager(num_blocks=10, block_size=4, enable_caching=True)
    first = make_request("a", list(range(10)))
    assert allocate_prompt(kv, first) == 0
    second = make_request("b", list(range(8)) + [50, 51, 52])
    assert allocate_prompt(kv, second) == 8  # two full shared blocks
    assert kv.get_block_ids("b")[:2] == kv.get_block_ids("a")[:2] == [0, 1]
    assert kv.block_pool.blocks[0].ref_cnt == 2
    assert kv.get_block_ids("b")[2] == 3  # its own tail block
    kv.check_integrity()
    assert kv.prefix_cache_hits == 8 and kv.prefix_cache_queries == 21


def test_full_prompt_hit_leaves_one_token_to_compute() -> None:
    kv = KVCacheManager(num_blocks=10, block_size=4, enable_caching=True)
    allocate_prompt(kv, make_request("a", list(range(8))))
    again = make_request("b", list(range(8)))
    hits, num_hit = kv.get_computed_blocks(again)
    assert num_hit == 4 and [b.block_id for b in hits] == [0]


def test_freed_cached_blocks_revive_and_evict_tail_first() -> None:
    kv = KVCacheManager(num_blocks=4, block_size=4, enable_caching=True)
    first = make_request("a", list(range(12)))
    allocate_prompt(kv, first)
    kv.free(first)
    # Freed tail first: free queue is 3 (never used), then 2, 1, 0.
    assert list(kv.block_pool.free_queue) == [3, 2, 1, 0]
    again = make_request("b", list(range(9)))
    assert allocate_prompt(kv, again) == 8  # blocks 0 and 1 revived from the free queue
    assert kv.get_block_ids("b") == [0, 1, 3]
    assert 2 in kv.block_pool.free_queue and kv.block_pool.blocks[2].block_hash is not None
    other = make_request("c", [7] * 4)
    allocate_prompt(kv, other)
    # Block 2 (cached, free) is evicted for the new request: its hash is dropped.
    assert kv.get_block_ids("c") == [2]
    assert kv.block_pool.num_evictions == 1
    kv.check_integrity()


def test_prompt_logprobs_requests_skip_the_prefix_cache() -> None:
    kv = KVCacheManager(num_blocks=10, block_size=4, enable_caching=True)
    allocate_prompt(kv, make_request("a", list(range(10))))
    req = make_request("b", list(range(10)), prompt_logprobs=1)
    assert kv.get_computed_blocks(req) == ([], 0)
