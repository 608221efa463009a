"""The per-request queues that carry AsyncLLM's outputs from the engine thread to
asyncio consumers, and the errors a consumer can receive."""

from __future__ import annotations

import asyncio
from collections import defaultdict

from pagedllm.outputs import PoolingRequestOutput, RequestOutput

EngineOutput = RequestOutput | PoolingRequestOutput
# What a stream carries: an output, an exception for the consumer to raise, or
# None when the request was aborted.
StreamItem = EngineOutput | BaseException | None
Batches = dict[asyncio.AbstractEventLoop, list[tuple["RequestStream", StreamItem]]]


class EngineDeadError(RuntimeError):
    """The engine cannot serve any more requests (unrecoverable)."""


class EngineGenerateError(RuntimeError):
    """One step failed; the requests in it were failed and aborted (recoverable)."""


class RequestStream:
    """The per-request asyncio queue, created on the caller's event loop."""

    def __init__(self, request_id: str, loop: asyncio.AbstractEventLoop) -> None:
        self.request_id = request_id
        self.loop = loop
        self.queue: asyncio.Queue[StreamItem] = asyncio.Queue()


def post(pairs: Batches) -> None:
    """Engine thread: hand items to their event loops, one wake-up per loop."""
    for loop, items in pairs.items():
        try:
            loop.call_soon_threadsafe(_deliver, items)
        except RuntimeError:
            pass  # that event loop is closed: nobody is listening any more


def _deliver(items: list[tuple[RequestStream, StreamItem]]) -> None:
    for stream, item in items:
        stream.queue.put_nowait(item)


def group_by_loop(pairs: list[tuple[RequestStream, StreamItem]]) -> Batches:
    grouped: Batches = defaultdict(list)
    for stream, item in pairs:
        grouped[stream.loop].append((stream, item))
    return grouped
