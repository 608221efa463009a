"""The CPU KV tier's bookkeeping: swap-out/swap-in pairs, reference counts, the
prefix cache's spill and its eviction order across tiers, aborts."""

from __future__ import annotations

import pytest

from pagedllm.config import SchedulerConfig
from pagedllm.core.kv_cache_manager import KVCacheManager
from pagedllm.core.request import Request, RequestStatus
from pagedllm.core.scheduler import Scheduler
from pagedllm.sampling_params import SamplingParams
from pagedllm.scheduler_output import ModelRunnerOutput


def make_request(req_id: str, tokens: list[int], max_tokens: int = 8) -> Request:
    sp = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    return Request(req_id, tokens, sp)


def allocate_prompt(kv: KVCacheManager, req: Request) -> int:
    hits, num_hit = kv.get_computed_blocks(req)
    assert kv.allocate_slots(req, req.num_tokens - num_hit, hits) is not None
    req.num_computed_tokens = req.num_tokens
    return num_hit


def test_swap_out_then_in_moves_blocks_and_keeps_computed_tokens() -> None:
    kv = KVCacheManager(num_blocks=6, block_size=4, enable_caching=False, num_cpu_blocks=4)
    other = make_request("x", [9] * 4)
    allocate_prompt(kv, other)  # takes GPU block 0
    req = make_request("a", list(range(10)))
    allocate_prompt(kv, req)  # GPU blocks 1, 2, 3
    assert kv.swap_out(req)
    assert kv.get_block_ids("a") == [] and kv.get_num_free_blocks() == 5
    assert kv.take_copies() == ([(1, 0), (2, 1), (3, 2)], [])
    assert req.num_computed_tokens == 10 and kv.cpu_tier is not None
    assert kv.cpu_tier.pool.get_num_free_blocks() == 1
    kv.check_integrity()
    # Resume: its own blocks come back (no prefix lookup), one more token to compute.
    req.output_token_ids.append(5)
    hits, num_hit = kv.get_computed_blocks(req)
    assert (hits, num_hit) == ([], 10)
    new = kv.allocate_slots(req, 1, hits)
    assert new is not None
    gpu = kv.get_block_ids("a")
    assert gpu == [4, 5, 3]  # LRU: never used 4, 5, then the freed ones (tail first)
    # The CPU blocks stay held until the step's copies are taken, then are free.
    assert kv.cpu_tier.pool.get_num_free_blocks() == 1
    kv.check_integrity()
    assert kv.take_copies() == ([], [(0, 4), (1, 5), (2, 3)])
    assert kv.cpu_tier.pool.get_num_free_blocks() == 4
    kv.check_integrity()


def test_swap_out_without_room_changes_nothing() -> None:
    kv = KVCacheManager(num_blocks=6, block_size=4, enable_caching=False, num_cpu_blocks=2)
    req = make_request("a", list(range(10)))
    allocate_prompt(kv, req)
    assert not kv.swap_out(req)
    assert kv.get_block_ids("a") == [0, 1, 2] and kv.take_copies() == ([], [])
    assert not KVCacheManager(6, 4, False).swap_out(req)  # no tier at all
    kv.check_integrity()


def test_abort_of_swapped_request_frees_its_cpu_blocks() -> None:
    kv = KVCacheManager(num_blocks=6, block_size=4, enable_caching=False, num_cpu_blocks=4)
    req = make_request("a", list(range(10)))
    allocate_prompt(kv, req)
    assert kv.swap_out(req)
    kv.take_copies()
    kv.free(req)  # finished or aborted while swapped out
    assert kv.cpu_tier is not None and kv.cpu_tier.pool.get_num_free_blocks() == 4
    assert not kv.cpu_tier.has("a") and kv.get_num_free_blocks() == 6
    kv.check_integrity()


def test_evicted_cached_blocks_spill_and_hit_in_the_cpu_tier() -> None:
    kv = KVCacheManager(
        num_blocks=4, block_size=4, enable_caching=True, num_cpu_blocks=8, spill_all=True
    )
    first = make_request("a", list(range(12)))
    allocate_prompt(kv, first)  # blocks 0, 1, 2 cached
    kv.free(first)  # free queue: 3, 2, 1, 0
    kv.take_copies()
    other = make_request("b", [100 + i for i in range(16)])
    allocate_prompt(kv, other)  # all four GPU blocks: the cached 2, 1, 0 are evicted
    out, into = kv.take_copies()
    assert out == [(2, 0), (1, 1), (0, 2)] and into == []  # spilled in eviction order
    assert kv.cpu_tier is not None
    assert all(b.ref_cnt == 0 and b.block_hash is not None for b in kv.cpu_tier.pool.blocks[:3])
    kv.free(other)
    kv.take_copies()
    again = make_request("c", list(range(12)) + [7])
    assert allocate_prompt(kv, again) == 12  # all three blocks found in the CPU tier
    assert kv.cpu_prefix_cache_hits == 12 and kv.prefix_cache_hits == 12
    gpu = kv.get_block_ids("c")
    out, into = kv.take_copies()
    # The new GPU blocks were cached (other's): they spill too, before the copies back.
    assert len(out) == 4
    assert into == [(2, gpu[0]), (1, gpu[1]), (0, gpu[2])]
    assert kv.block_pool.get_cached_block(kv.cpu_tier.pool.blocks[2].block_hash or 0) is not None
    kv.check_integrity()


def test_cpu_tier_evicts_its_least_recently_spilled_block_first() -> None:
    kv = KVCacheManager(
        num_blocks=2, block_size=4, enable_caching=True, num_cpu_blocks=2, spill_all=True
    )
    for i in range(4):  # each request's one block evicts the previous one's
        req = make_request(f"r{i}", [10 * i + j for j in range(4)] + [99])
        allocate_prompt(kv, req)
        kv.free(req)
        kv.take_copies()
    tier = kv.cpu_tier
    assert tier is not None
    cached = set(tier.pool.cached_block_hash_to_block)
    # r0's block spilled first and was evicted from the CPU tier by the third spill.
    hashes = [make_request("q", [10 * i + j for j in range(4)] + [99]) for i in range(4)]
    found = [kv.get_computed_blocks(h)[1] for h in hashes]
    assert found == [0, 4, 4, 4]  # r1 and r2 on the CPU, r3 still on the GPU
    assert len(cached) == 2
    kv.check_integrity()


def test_only_prefixes_that_show_reuse_spill() -> None:
    """A block evicted before anyone asked for its prefix again is not copied out
    (an S1-like server would copy every block it hands out); once a request asks
    for such a prefix again, its blocks spill on their next eviction."""
    kv = KVCacheManager(num_blocks=2, block_size=4, enable_caching=True, num_cpu_blocks=4)
    tier = kv.cpu_tier
    assert tier is not None

    def run(rid: str, first: int) -> int:
        req = make_request(rid, [first + j for j in range(4)] + [99])
        hits = kv.get_computed_blocks(req)[1]
        allocate_prompt(kv, req)
        kv.free(req)
        kv.take_copies()
        return hits

    assert [run(f"a{i}", 10 * i) for i in range(3)] == [0, 0, 0]  # a0, a1 evicted
    assert tier.num_swapped_out == 0  # never reused: nothing copied
    assert run("again", 0) == 0  # a0's prefix asked for again: a miss, now marked reused
    run("b", 50)  # evicts a2 (no reuse) then "again"'s block (reused): one spill
    run("c", 60)
    assert tier.num_swapped_out == 1
    assert run("third", 0) == 4  # found on the CPU
    kv.check_integrity()


def make_scheduler(mode: str | None, num_cpu_blocks: int = 16) -> Scheduler:
    config = SchedulerConfig(
        max_num_seqs=8, max_num_batched_tokens=32, max_model_len=64, preemption_mode=mode
    )
    return Scheduler(config, KVCacheManager(4, 4, False, num_cpu_blocks))


def run_to_end(sched: Scheduler) -> list[tuple[list[tuple[int, int]], list[tuple[int, int]]]]:
    copies = []
    while sched.has_unfinished_requests():
        out = sched.schedule()
        copies.append((out.swap_out, out.swap_in))
        sampled = [7 if s.samples else None for s in out.scheduled]
        result = ModelRunnerOutput([s.req_id for s in out.scheduled], sampled)
        sched.update_from_output(out, result)
        sched.kv.check_integrity()
    return copies


@pytest.mark.parametrize("mode", ["swap", "recompute", None])
def test_scheduler_swaps_or_recomputes_by_mode(
    mode: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("pagedllm.core.scheduler.SWAP_MIN_TOKENS", 8)
    sched = make_scheduler(mode)
    sched.add_request(make_request("a", list(range(7))))
    sched.add_request(make_request("b", list(range(7))))
    copies = run_to_end(sched)
    out_pairs = [p for o, _ in copies for p in o]
    in_pairs = [p for _, i in copies for p in i]
    assert sched.stats.num_preemptions >= 1
    # b is preempted with 8 computed tokens (2 blocks): >= SWAP_MIN_TOKENS for None.
    swapped = mode in ("swap", None)
    assert (len(out_pairs) > 0) == swapped and len(in_pairs) == len(out_pairs)
    assert sched.kv.get_num_free_blocks() == 4
    tier = sched.kv.cpu_tier
    assert tier is not None and tier.pool.get_num_free_blocks() == 16


def test_swapped_request_aborted_while_waiting_frees_both_tiers() -> None:
    sched = make_scheduler("swap")
    for rid in ("a", "b"):
        sched.add_request(make_request(rid, list(range(7))))
    for _ in range(3):
        out = sched.schedule()
        sampled = [7 if s.samples else None for s in out.scheduled]
        sched.update_from_output(out, ModelRunnerOutput([s.req_id for s in out.scheduled], sampled))
    b = sched.waiting[0]
    assert b.status == RequestStatus.PREEMPTED and sched.kv.cpu_tier is not None
    assert sched.kv.cpu_tier.has("b") and b.num_computed_tokens == 8
    sched.finish_requests(["b"], RequestStatus.FINISHED_ABORTED)
    assert not sched.kv.cpu_tier.has("b")
    assert sched.kv.cpu_tier.pool.get_num_free_blocks() == 16
    sched.kv.check_integrity()
