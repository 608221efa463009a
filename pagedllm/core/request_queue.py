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
        self._keys: list[tuple[int, float, int]] = []
        self._requests: list[Request] = []
        self._order = itertools.count()

    def append(self, request: Request) -> None:
        key = (*priority_key(request), next(self._order))
        i = bisect.bisect(self._keys, key)
        self._keys.insert(i, key)
        self._requests.insert(i, request)

    appendleft = append

    def extendleft(self, requests: Iterable[Request]) -> None:
        for request in requests:
            self.append(request)

    def popleft(self) -> Request:
        if not self._requests:
            raise IndexError("pop from an empty queue")
        del self._keys[0]
        return self._requests.pop(0)

    def remove(self, request: Request) -> None:
        i = self._requests.index(request)  # ValueError when absent, as deque.remove
        del self._keys[i]
        del self._requests[i]

    def __getitem__(self, index: int) -> Request:
        return self._requests[index]

    def __iter__(self) -> Iterator[Request]:
        return iter(list(self._requests))

    def __len__(self) -> int:
        return len(self._requests)


def make_waiting_queue(policy: str) -> WaitingQueue:
    if policy == "priority":
        return PriorityRequestQueue()
    if policy == "fcfs":
        return deque()
    raise ValueError(f"scheduling_policy must be 'fcfs' or 'priority', got {policy!r}")
