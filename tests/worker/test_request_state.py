"""The workers' request states (worker/request_state.py): fed each SchedulerOutput of a
real Scheduler through pickle (what the mp executor sends), they rebuild every row the
core recorded, through chunked prefill, prefix-cache hits, preemption (recompute and
swap), aborts, penalties, async placeholders and several batches in flight. And a
steady decode step's message is a fraction of the full form's size."""

from __future__ import annotations

import pickle
from collections import deque

import pytest

from pagedllm.config import SchedulerConfig
from pagedllm.core.kv_cache_manager import KVCacheManager
from pagedllm.core.request import Request, RequestStatus
from pagedllm.core.scheduler import Scheduler
from pagedllm.sampling_params import SamplingParams
from pagedllm.scheduler_output import ModelRunnerOutput, ScheduledRequest, SchedulerOutput
from pagedllm.worker.request_state import RequestStates


def make_scheduler(
    num_blocks: int,
    budget: int,
    max_seqs: int = 8,
    num_cpu_blocks: int = 0,
    mode: str = "recompute",
) -> Scheduler:
    config = SchedulerConfig(
        max_num_seqs=max_seqs,
        max_num_batched_tokens=budget,
        max_model_len=256,
        preemption_mode=mode,  # type: ignore[arg-type]
    )
    kv = KVCacheManager(num_blocks, 4, enable_caching=True, num_cpu_blocks=num_cpu_blocks)
    return Scheduler(config, kv)


def make_requests(num: int, penalties: bool = True) -> list[Request]:
    """Shared prefixes (prefix-cache hits), varied lengths, some with penalties."""
    requests = []
    for i in range(num):
        prompt = [1, 2, 3, 4, 5, 6, 7, 8][: 4 * (i % 3)] + [100 + 7 * i + j for j in range(3 + i)]
        sp = SamplingParams(max_tokens=3 + i % 5, ignore_eos=True)
        if penalties and i % 4 == 1:
            sp = SamplingParams(max_tokens=4, ignore_eos=True, repetition_penalty=1.2)
        requests.append(Request(f"r{i}", prompt, sp))
    return requests


def check_rows(core: list[ScheduledRequest], worker: list[ScheduledRequest]) -> None:
    assert [s.req_id for s in worker] == [s.req_id for s in core]
    for c, w in zip(core, worker):
        assert w.new_token_ids == c.new_token_ids, c.req_id
        assert w.num_computed_tokens == c.num_computed_tokens, c.req_id
        assert w.block_ids == c.block_ids, c.req_id
        assert (w.num_tokens, w.samples, w.pools) == (c.num_tokens, c.samples, c.pools)
        assert w.sampling_params == c.sampling_params
        assert w.num_prompt_tokens == c.num_prompt_tokens
        if c.prompt_token_ids is not None:
            assert w.prompt_token_ids == c.prompt_token_ids
        assert w.output_token_ids == c.output_token_ids, c.req_id  # penalties only


class Worker:
    """A worker's side: every SchedulerOutput, pickled as the mp executor sends it."""

    def __init__(self) -> None:
        self.states = RequestStates()
        self.steps = 0
        self.placeholders = 0

    def run(self, out: SchedulerOutput) -> None:
        rows = self.states.update(pickle.loads(pickle.dumps(out, protocol=5)))
        check_rows(out.scheduled, rows)
        self.steps += 1
        self.placeholders += sum(-1 in s.new_token_ids for s in rows)


def result_of(out: SchedulerOutput, step: int) -> ModelRunnerOutput:
    sampled = [100 + step if s.samples else None for s in out.scheduled]
    return ModelRunnerOutput(req_ids=[s.req_id for s in out.scheduled], sampled_token_ids=sampled)


def drive(sched: Scheduler, in_flight: int, abort_at: dict[int, str]) -> Worker:
    """Schedule, send and finish steps with up to `in_flight` launched and unfinished
    (2 with one batch: async scheduling's placeholders, until the requests with
    penalties come, which wait for each step); abort requests at steps."""
    worker, queue = Worker(), deque[SchedulerOutput]()
    for step in range(400):
        if step in abort_at:
            sched.finish_requests([abort_at[step]], RequestStatus.FINISHED_ABORTED)
        if sched.has_token_history_requests() and not sched.wait_for_in_flight:
            while queue:  # as EngineCore: penalties read the latest token
                done = queue.popleft()
                sched.update_from_output(done, result_of(done, step))
        out = sched.schedule()
        if not out.is_empty or out.finished_req_ids:
            worker.run(out)
            queue.append(out)
        if len(queue) >= in_flight or (queue and out.is_empty):
            done = queue.popleft()
            sched.update_from_output(done, result_of(done, step))
        sched.kv.check_integrity()
        if not sched.has_unfinished_requests() and not queue:
            break
    assert not sched.has_unfinished_requests()
    return worker


@pytest.mark.parametrize("in_flight", [1, 2], ids=["sync", "async"])
def test_rows_rebuilt_through_preemption_chunks_and_aborts(in_flight: int) -> None:
    sched = make_scheduler(num_blocks=10, budget=8, max_seqs=4)
    for request in make_requests(8, penalties=in_flight == 1):
        sched.add_request(request)
    worker = drive(sched, in_flight, abort_at={3: "r2", 9: "r5"})
    assert sched.stats.num_preemptions > 0
    assert sched.stats.finished_reasons.get("abort") == 2
    assert worker.steps > 10
    assert (worker.placeholders > 0) == (in_flight == 2)


def test_rows_rebuilt_with_swapped_requests() -> None:
    sched = make_scheduler(num_blocks=10, budget=8, max_seqs=4, num_cpu_blocks=32, mode="swap")
    for request in make_requests(8):
        sched.add_request(request)
    drive(sched, 1, abort_at={})
    assert sched.stats.num_preemptions > 0
    assert sched.make_stats().kv_swapped_in_blocks > 0


def test_rows_rebuilt_with_batches_in_flight() -> None:
    sched = make_scheduler(num_blocks=12, budget=8, max_seqs=3)
    sched.set_max_batches_in_flight(2)
    for request in make_requests(8):
        sched.add_request(request)
    drive(sched, 2, abort_at={4: "r3"})


def test_finished_ids_drop_state_and_an_id_can_come_back() -> None:
    sched, worker = make_scheduler(num_blocks=32, budget=16), Worker()
    sched.add_request(Request("a", [1, 2, 3], SamplingParams(max_tokens=2, ignore_eos=True)))
    out = sched.schedule()
    worker.run(out)
    sched.update_from_output(out, result_of(out, 0))
    sched.finish_requests(["a"], RequestStatus.FINISHED_ABORTED)
    sched.add_request(Request("a", [9, 8], SamplingParams(max_tokens=2, ignore_eos=True)))
    out = sched.schedule()
    assert out.finished_req_ids == {"a"} and [r.req_id for r in out.scheduled_new_reqs] == ["a"]
    worker.run(out)
    assert worker.states.states["a"].prompt_token_ids == [9, 8]


def test_steady_decode_step_is_a_fraction_of_the_full_form() -> None:
    """64 requests decoding (16-token prompts, SamplingParams with a seed and stop ids,
    5 blocks each): the message is the deltas; the full form (every row whole, what
    was sent before) is measured from the same step."""
    sched = make_scheduler(num_blocks=1024, budget=2048, max_seqs=64)
    for i in range(64):
        sp = SamplingParams(temperature=0.8, seed=i, max_tokens=100, stop_token_ids=[2, 3])
        sched.add_request(Request(f"cmpl-{i:08x}-0", [(7 * i + j) % 500 for j in range(16)], sp))
    for step in range(3):  # the prefill, then decode steps
        out = sched.schedule()
        sched.update_from_output(out, result_of(out, step))
    out = sched.schedule()
    assert not out.scheduled_new_reqs and len(out.scheduled_cached_reqs.req_ids) == 64
    delta = len(pickle.dumps(out, protocol=5))
    full = len(pickle.dumps(out.scheduled, protocol=5))
    assert delta * 4 < full, (delta, full)
