"""Scheduler decisions: token budget, running-first order, chunking, preemption."""

from __future__ import annotations

from pagedllm.config import SchedulerConfig
from pagedllm.core.kv_cache_manager import KVCacheManager
from pagedllm.core.request import Request, RequestStatus
from pagedllm.core.scheduler import Scheduler
from pagedllm.sampling_params import SamplingParams
from pagedllm.scheduler_output import ModelRunnerOutput, SchedulerOutput


def make_scheduler(
    num_blocks: int = 64,
    block_size: int = 4,
    budget: int = 16,
    max_seqs: int = 8,
    caching: bool = False,
) -> Scheduler:
    config = SchedulerConfig(
        max_num_seqs=max_seqs, max_num_batched_tokens=budget, max_model_len=256
    )
    return Scheduler(config, KVCacheManager(num_blocks, block_size, caching))


def make_request(req_id: str, prompt_len: int, max_tokens: int = 4) -> Request:
    sp = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    return Request(req_id, list(range(1, prompt_len + 1)), sp)


def run_step(sched: Scheduler, token: int = 7) -> tuple[SchedulerOutput, list[Request]]:
    out = sched.schedule()
    sampled = [token if s.samples else None for s in out.scheduled]
    result = ModelRunnerOutput(req_ids=[s.req_id for s in out.scheduled], sampled_token_ids=sampled)
    updated = sched.update_from_output(out, result)
    sched.kv.check_integrity()
    return out, updated


def plan(out: SchedulerOutput) -> list[tuple[str, int, int]]:
    return [(s.req_id, s.num_computed_tokens, s.num_new_tokens) for s in out.scheduled]


def test_long_prompt_is_chunked_then_decoded() -> None:
    sched = make_scheduler(budget=8)
    sched.add_request(make_request("a", 20))
    steps = [plan(run_step(sched)[0]) for _ in range(4)]
    assert steps == [[("a", 0, 8)], [("a", 8, 8)], [("a", 16, 4)], [("a", 20, 1)]]
    assert sched.requests["a"].output_token_ids == [7, 7]


def test_running_requests_come_first_and_budget_is_shared() -> None:
    sched = make_scheduler(budget=10)
    sched.add_request(make_request("a", 6))
    sched.add_request(make_request("b", 6))
    out, _ = run_step(sched)
    assert plan(out) == [("a", 0, 6), ("b", 0, 4)]  # b chunked by the budget
    out, _ = run_step(sched)
    assert plan(out) == [("a", 6, 1), ("b", 4, 2)]
    sched.add_request(make_request("c", 20))
    out, _ = run_step(sched)
    assert plan(out) == [("a", 7, 1), ("b", 6, 1), ("c", 0, 8)]


def test_max_num_seqs_limits_running() -> None:
    sched = make_scheduler(max_seqs=2, budget=64)
    for name in "abc":
        sched.add_request(make_request(name, 4))
    out, _ = run_step(sched)
    assert [s.req_id for s in out.scheduled] == ["a", "b"]
    assert [r.request_id for r in sched.waiting] == ["c"]


def test_finish_by_length_frees_blocks() -> None:
    sched = make_scheduler()
    sched.add_request(make_request("a", 5, max_tokens=2))
    run_step(sched)
    _, updated = run_step(sched)
    assert updated[0].status == RequestStatus.FINISHED_LENGTH_CAPPED
    assert updated[0].output_token_ids == [7, 7]
    assert sched.kv.get_num_free_blocks() == 64 and not sched.has_unfinished_requests()


def test_preemption_by_recompute_when_blocks_run_out() -> None:
    # 4 blocks of 4 tokens; two requests of 7 prompt tokens take 2 blocks each.
    sched = make_scheduler(num_blocks=4, budget=32)
    sched.add_request(make_request("a", 7, max_tokens=8))
    sched.add_request(make_request("b", 7, max_tokens=8))
    run_step(sched)  # both prefilled: 7 computed tokens in 2 blocks each
    run_step(sched)  # position 7 still fits in the second block
    out, _ = run_step(sched)  # position 8 needs a third block: b (the newest) is preempted
    assert [s.req_id for s in out.scheduled] == ["a"]
    b = sched.waiting[0]
    assert (
        b.request_id == "b" and b.status == RequestStatus.PREEMPTED and b.num_computed_tokens == 0
    )
    assert sched.stats.num_preemptions == 1
    while sched.has_unfinished_requests():
        run_step(sched)
    assert sched.kv.get_num_free_blocks() == 4


def test_request_that_can_never_fit_is_finished_not_hung() -> None:
    sched = make_scheduler(num_blocks=2, budget=32)
    sched.add_request(make_request("a", 7, max_tokens=8))
    steps = 0
    while sched.has_unfinished_requests() and steps < 20:
        run_step(sched)
        steps += 1
    assert not sched.has_unfinished_requests()


def test_abort_frees_blocks_everywhere() -> None:
    sched = make_scheduler(max_seqs=1)
    sched.add_request(make_request("a", 9))
    sched.add_request(make_request("b", 9))
    run_step(sched)
    done = sched.finish_requests(["a", "b"], RequestStatus.FINISHED_ABORTED)
    assert {r.request_id for r in done} == {"a", "b"}
    assert sched.kv.get_num_free_blocks() == 64 and not sched.has_unfinished_requests()
    assert sched.schedule().finished_req_ids == {"a", "b"}


def test_prefix_cache_hit_starts_with_computed_tokens() -> None:
    sched = make_scheduler(caching=True)
    sched.add_request(make_request("a", 10))
    run_step(sched)
    sched.add_request(make_request("b", 10))
    out, _ = run_step(sched)
    assert ("b", 8, 2) in plan(out)
    assert sched.requests["b"].num_cached_tokens == 8


def make_priority_scheduler(num_blocks: int = 64, budget: int = 16) -> Scheduler:
    config = SchedulerConfig(
        max_num_seqs=8, max_num_batched_tokens=budget, max_model_len=256, policy="priority"
    )
    return Scheduler(config, KVCacheManager(num_blocks, 4, False))


def prioritized(req_id: str, prompt_len: int, priority: int, arrival: float) -> Request:
    request = make_request(req_id, prompt_len, max_tokens=8)
    request.priority, request.arrival_time = priority, arrival
    return request


def test_priority_policy_admits_the_lowest_value_first() -> None:
    sched = make_priority_scheduler(budget=8)
    sched.add_request(prioritized("first-come", 8, priority=5, arrival=1.0))
    sched.add_request(prioritized("urgent", 8, priority=0, arrival=2.0))
    out, _ = run_step(sched)
    assert plan(out) == [("urgent", 0, 8)]  # FCFS would have run first-come
    out, _ = run_step(sched)
    assert plan(out) == [("urgent", 8, 1), ("first-come", 0, 7)]


def test_fcfs_policy_ignores_priority() -> None:
    sched = make_scheduler(budget=8)
    sched.add_request(prioritized("first-come", 8, priority=5, arrival=1.0))
    sched.add_request(prioritized("urgent", 8, priority=0, arrival=2.0))
    assert plan(run_step(sched)[0]) == [("first-come", 0, 8)]


def test_priority_policy_preempts_the_lowest_priority_not_the_newest() -> None:
    # 4 blocks of 4 tokens; two requests of 7 prompt tokens take 2 blocks each. The
    # newest (b) has the higher priority, so the older low-priority a is preempted.
    sched = make_priority_scheduler(num_blocks=4, budget=32)
    sched.add_request(prioritized("a", 7, priority=2, arrival=1.0))
    sched.add_request(prioritized("b", 7, priority=1, arrival=2.0))
    run_step(sched)
    run_step(sched)
    out, _ = run_step(sched)  # position 8 needs a third block
    assert [s.req_id for s in out.scheduled] == ["b"]
    a = sched.waiting[0]
    assert a.request_id == "a" and a.status == RequestStatus.PREEMPTED
    while sched.has_unfinished_requests():
        run_step(sched)
    assert sched.kv.get_num_free_blocks() == 4


def test_priority_policy_finishes_the_request_that_can_never_fit_not_the_queue_head() -> None:
    # 2 blocks of 4 tokens. a (low priority) grows past the whole cache while b (high
    # priority) waits for room: a is the one finished, and b then runs.
    sched = make_priority_scheduler(num_blocks=2, budget=32)
    sched.add_request(prioritized("a", 7, priority=5, arrival=1.0))
    run_step(sched)  # a prefilled: 2 blocks
    sched.add_request(prioritized("b", 4, priority=0, arrival=2.0))
    finished: list[Request] = []
    for _ in range(12):
        if not sched.has_unfinished_requests():
            break
        _, updated = run_step(sched)
        finished += [r for r in (*updated, *sched.finished_now) if r.is_finished]
        sched.finished_now.clear()
    by_id = {r.request_id: r for r in finished}
    assert by_id["a"].status == RequestStatus.FINISHED_LENGTH_CAPPED
    # b's max_tokens=8 is cut by the 8-slot cache: 4 prompt + 4 output tokens in it,
    # and a fifth output token sampled from the last of them.
    assert by_id["b"].status == RequestStatus.FINISHED_LENGTH_CAPPED
    assert len(by_id["b"].output_token_ids) == 5
    assert sched.kv.get_num_free_blocks() == 2
