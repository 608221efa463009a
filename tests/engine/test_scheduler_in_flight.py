"""The scheduler with several batches in flight (pipeline parallelism): a request with
a step in flight is left out of the next batch, outputs may be applied in any order,
and a request finished with a step in flight keeps its blocks until that step is over."""

from __future__ import annotations

from test_scheduler import make_request, make_scheduler, plan

from pagedllm.core.request import RequestStatus
from pagedllm.core.scheduler import Scheduler
from pagedllm.scheduler_output import ModelRunnerOutput, SchedulerOutput


def in_flight_scheduler(**kwargs: int) -> Scheduler:
    sched = make_scheduler(**kwargs)
    sched.set_max_batches_in_flight(2)
    return sched


def output_of(out: SchedulerOutput, token: int) -> ModelRunnerOutput:
    sampled = [token if s.samples else None for s in out.scheduled]
    return ModelRunnerOutput(req_ids=[s.req_id for s in out.scheduled], sampled_token_ids=sampled)


def test_request_with_a_step_in_flight_is_not_scheduled_again() -> None:
    sched = in_flight_scheduler(budget=16)
    sched.add_request(make_request("a", 6))
    first = sched.schedule()
    sched.add_request(make_request("b", 6))
    second = sched.schedule()
    assert plan(first) == [("a", 0, 6)]
    assert plan(second) == [("b", 0, 6)]  # a's next token is unknown: a waits
    assert sched.schedule().is_empty  # both in flight
    sched.update_from_output(first, output_of(first, 11))
    third = sched.schedule()
    assert plan(third) == [("a", 6, 1)]
    assert third.scheduled[0].new_token_ids == [11]  # the real token, no placeholder
    sched.kv.check_integrity()


def test_a_chunked_prompt_waits_for_its_previous_chunk() -> None:
    sched = in_flight_scheduler(budget=8)
    sched.add_request(make_request("a", 20))
    first = sched.schedule()
    assert sched.schedule().is_empty
    sched.update_from_output(first, output_of(first, 5))
    assert plan(sched.schedule()) == [("a", 8, 8)]
    assert sched.requests["a"].output_token_ids == []  # a chunk samples nothing


def test_outputs_applied_out_of_launch_order() -> None:
    sched = in_flight_scheduler(budget=16)
    sched.add_request(make_request("a", 3))
    first = sched.schedule()
    sched.add_request(make_request("b", 5))
    second = sched.schedule()
    sched.update_from_output(second, output_of(second, 22))
    sched.update_from_output(first, output_of(first, 11))
    assert sched.requests["a"].output_token_ids == [11]
    assert sched.requests["b"].output_token_ids == [22]
    nxt = sched.schedule()
    assert plan(nxt) == [("a", 3, 1), ("b", 5, 1)]
    assert [s.new_token_ids for s in nxt.scheduled] == [[11], [22]]


def test_abort_with_a_step_in_flight_frees_after_the_step() -> None:
    sched = in_flight_scheduler(num_blocks=6, budget=16)
    sched.add_request(make_request("a", 9))  # 3 blocks of 4
    first = sched.schedule()
    free_before = sched.kv.get_num_free_blocks()
    sched.finish_requests(["a"], RequestStatus.FINISHED_ABORTED)
    # The step in flight still writes a's KV: its blocks are not handed out yet.
    assert sched.kv.get_num_free_blocks() == free_before == 3
    assert sched.kv.get_block_ids("a") != []
    assert not sched.has_unfinished_requests()
    sched.add_request(make_request("b", 16))  # needs 4 blocks: only 3 are free
    assert sched.schedule().is_empty
    updated = sched.update_from_output(first, output_of(first, 7))
    assert updated == []  # nothing more is reported for an aborted request
    assert sched.kv.get_num_free_blocks() == 6
    assert plan(sched.schedule()) == [("b", 0, 16)]
    sched.kv.check_integrity()


def test_stop_does_not_wait_when_nothing_is_in_flight() -> None:
    sched = in_flight_scheduler(num_blocks=8)
    sched.add_request(make_request("a", 4, max_tokens=1))
    first = sched.schedule()
    updated = sched.update_from_output(first, output_of(first, 3))
    assert [r.request_id for r in updated] == ["a"]
    assert updated[0].status == RequestStatus.FINISHED_LENGTH_CAPPED
    assert sched.kv.get_num_free_blocks() == 8


def test_failed_step_is_retired_and_frees_its_failed_requests() -> None:
    sched = in_flight_scheduler(num_blocks=8)
    sched.add_request(make_request("a", 5))
    first = sched.schedule()
    sched.finish_requests(["a"], RequestStatus.FINISHED_ERROR)
    assert sched.kv.get_num_free_blocks() == 6
    sched.retire(first)  # the step raised: no output will come
    assert sched.kv.get_num_free_blocks() == 8
    sched.kv.check_integrity()


def test_request_preempted_with_a_step_in_flight_gets_its_token_later() -> None:
    sched = in_flight_scheduler(num_blocks=4, budget=16)
    sched.add_request(make_request("a", 4))
    first = sched.schedule()  # a: 1 block
    sched.add_request(make_request("b", 12))
    second = sched.schedule()  # b: the other 3 blocks
    assert plan(second) == [("b", 0, 12)]
    sched.update_from_output(first, output_of(first, 11))  # a needs a second block
    third = sched.schedule()
    assert plan(third) == [("a", 4, 1)]
    b = sched.requests["b"]  # the newest: preempted although its step is in flight
    assert b.status == RequestStatus.PREEMPTED and b.num_computed_tokens == 0
    assert b.num_steps_in_flight == 1
    assert sched.schedule().is_empty  # b, first in the queue, waits for its step
    sched.update_from_output(second, output_of(second, 22))
    assert b.output_token_ids == [22] and b.status == RequestStatus.PREEMPTED
    sched.update_from_output(third, output_of(third, 33))
    assert sched.requests["a"].output_token_ids == [11, 33]
    sched.kv.check_integrity()
