"""The waiting queue per scheduling policy: fcfs is a deque, priority keeps
(priority, arrival_time, order added) order wherever a request is added."""

from __future__ import annotations

from collections import deque

import pytest

from pagedllm.core.request import Request
from pagedllm.core.request_queue import PriorityRequestQueue, make_waiting_queue


def req(name: str, priority: int, arrival: float) -> Request:
    return Request(name, [1, 2, 3], None, priority=priority, arrival_time=arrival)


def names(queue: PriorityRequestQueue) -> list[str]:
    return [r.request_id for r in queue]


def test_lower_priority_value_first_then_earlier_arrival() -> None:
    queue = PriorityRequestQueue()
    for r in [req("late-0", 0, 3.0), req("urgent", -5, 9.0), req("early-0", 0, 1.0)]:
        queue.append(r)
    queue.append(req("low", 10, 0.0))
    assert names(queue) == ["urgent", "early-0", "late-0", "low"]
    assert queue[0].request_id == "urgent" and len(queue) == 4


def test_ties_keep_the_order_of_adding() -> None:
    queue = PriorityRequestQueue()
    for name in "abc":  # n > 1 children share one arrival time
        queue.append(req(name, 1, 5.0))
    assert names(queue) == ["a", "b", "c"]


def test_a_preempted_request_goes_back_by_its_key_not_to_the_head() -> None:
    queue = PriorityRequestQueue()
    queue.append(req("high", 0, 2.0))
    queue.appendleft(req("preempted-low", 3, 1.0))
    queue.extendleft([req("compiled-mid", 1, 4.0)])
    assert names(queue) == ["high", "compiled-mid", "preempted-low"]


def test_popleft_and_remove() -> None:
    queue = PriorityRequestQueue()
    a, b, c = req("a", 0, 1.0), req("b", 1, 1.0), req("c", 2, 1.0)
    for r in (c, a, b):
        queue.append(r)
    queue.remove(b)
    assert queue.popleft() is a and names(queue) == ["c"]
    with pytest.raises(ValueError):
        queue.remove(b)
    queue.popleft()
    assert not queue
    with pytest.raises(IndexError):
        queue.popleft()


def test_iterating_is_safe_while_removing() -> None:
    queue = PriorityRequestQueue()
    for i in range(4):
        queue.append(req(str(i), i, 0.0))
    for r in queue:
        queue.remove(r)
    assert len(queue) == 0


def test_make_waiting_queue_per_policy() -> None:
    assert isinstance(make_waiting_queue("fcfs"), deque)
    assert isinstance(make_waiting_queue("priority"), PriorityRequestQueue)
    with pytest.raises(ValueError, match="scheduling_policy"):
        make_waiting_queue("lifo")
