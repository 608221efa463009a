"""The scheduler's waiting queue, per scheduling policy.

"fcfs" is a deque: new requests at the tail, preempted ones back at the head.
"priority" keeps the queue sorted by (priority, arrival_time): a lower `priority`
is scheduled first, the earlier arrival breaks ties and then the order of adding.
Both expose the deque operations the scheduler uses, so it has one code path.
"""

from __future__ import annotations

import bisect
import itertools
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Protocol

from pagedllm.core.request import Request


class WaitingQueue(Protocol):
    def append(self, request: Request) -> None: ...
    def appendleft(self, request: Request) -> None: ...
    def extendleft(self, requests: Iterable[Request]) -> None: ...
    def popleft(self) -> Request: ...
    def remove(self, request: Request) -> None: ...
    def __getitem__(self, index: int) -> Request: ...
    def __iter__(self) -> Iterator[Request]: ...
    def __len__(self) -> int: ...


def priority_key(request: Request) -> tuple[int, float]:
    """Smaller first: the scheduling order of the "priority" policy."""
    return request.priority, request.arrival_time


class PriorityRequestQueue:
    """Waiting requests in (priority, arrival_time, order added) order. Where a
    request is put does not depend on which end it is added at: a preempted request
    goes back to where its priority and arrival put it."""

    def __init__(self) -> None:
        # (priority, arrival_time, order added, request), sorted; the order added is
        # unique, so comparisons never reach the request.
        self._entries: list[tuple[int, float, int, Request]] = []
        self._order = itertools.count()

    def append(self, request: Request) -> None:
        bisect.insort(self._entries, (*priority_key(request), next(self._order), request))

    appendleft = append

    def extendleft(self, requests: Iterable[Request]) -> None:
        for request in requests:
            self.append(request)

    def popleft(self) -> Request:
        if not self._entries:
            raise IndexError("pop from an empty queue")
        return self._entries.pop(0)[-1]

    def remove(self, request: Request) -> None:
        for i, entry in enumerate(self._entries):
            if entry[-1] is request:
                del self._entries[i]
                return
        raise ValueError("request not in the queue")  # as deque.remove

    def __getitem__(self, index: int) -> Request:
        return self._entries[index][-1]

    def __iter__(self) -> Iterator[Request]:
        return iter([entry[-1] for entry in self._entries])

    def __len__(self) -> int:
        return len(self._entries)


def make_waiting_queue(policy: str) -> WaitingQueue:
    if policy == "priority":
        return PriorityRequestQueue()
    if policy == "fcfs":
        return deque()
    raise ValueError(f"scheduling_policy must be 'fcfs' or 'priority', got {policy!r}")
