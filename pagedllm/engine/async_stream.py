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
    """The per-request asyncio queue, created on the caller's event loop.

    `mergeable`: the outputs are deltas, so a consumer that fell behind takes all that
    is queued as one output (fewer, larger events when the server is loaded, as vLLM)."""

    def __init__(
        self, request_id: str, loop: asyncio.AbstractEventLoop, mergeable: bool = False
    ) -> None:
        self.request_id = request_id
        self.loop = loop
        self.mergeable = mergeable
        self.queue: asyncio.Queue[StreamItem] = asyncio.Queue()
        self._held: list[StreamItem] = []  # taken from the queue while merging, not yet given

    async def get(self) -> StreamItem:
        item = self._held.pop() if self._held else await self.queue.get()
        while self.mergeable and isinstance(item, RequestOutput) and not self.queue.empty():
            following = self.queue.get_nowait()
            if not isinstance(following, RequestOutput):
                self._held.append(following)  # an error or an abort: next, after this output
                break
            item = merge_deltas(item, following)
        return item


def merge_deltas(first: RequestOutput, second: RequestOutput) -> RequestOutput:
    """Two consecutive delta outputs of one request as one."""
    by_index = {c.index: c for c in first.outputs}
    for comp in second.outputs:
        earlier = by_index.get(comp.index)
        if earlier is None:
            by_index[comp.index] = comp
            continue
        earlier.text += comp.text
        earlier.token_ids = list(earlier.token_ids) + list(comp.token_ids)
        if earlier.logprobs is not None and comp.logprobs is not None:
            earlier.logprobs = earlier.logprobs + comp.logprobs
        earlier.cumulative_logprob = comp.cumulative_logprob
        earlier.finish_reason = comp.finish_reason
        earlier.stop_reason = comp.stop_reason
    second.outputs = sorted(by_index.values(), key=lambda c: c.index)
    second.prompt_logprobs = first.prompt_logprobs or second.prompt_logprobs
    return second


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
