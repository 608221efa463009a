"""Helpers shared by the HTTP servers: client-disconnect cancellation, merging the
output streams of several requests, and running blocking work off the event loop."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # no server packages needed for the offline CLI (GPU image)
    from fastapi import Request

T = TypeVar("T")
# Tokenizing a 1,024-word prompt takes about 2 ms of Rust code that releases the GIL:
# one thread per core (at least 4) tokenizes a burst of requests in parallel.
_BLOCKING_WORKERS = max(4, min(32, os.cpu_count() or 4))


@functools.lru_cache(maxsize=1)
def _blocking_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(_BLOCKING_WORKERS, thread_name_prefix="pagedllm-tokenize")


async def run_blocking(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run `fn` (tokenization, detokenization of huge inputs) in a thread pool, so the
    event loop keeps serving meanwhile. HF fast tokenizers release the GIL while they
    encode, and encoding without truncation or padding changes no tokenizer state,
    so several threads may share one tokenizer."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_blocking_pool(), functools.partial(fn, *args, **kwargs))


async def listen_for_disconnect(request: Request) -> None:
    """Return when the client disconnects (the body was already read by then)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def with_cancellation(handler: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T | None]]:
    """Cancel a non-streaming handler when its client goes away, so that the engine
    aborts the request (AsyncLLM aborts on cancellation) and frees its KV blocks.
    The handler must take the starlette `raw_request` keyword argument."""

    @functools.wraps(handler)
    async def wrapper(*args: Any, **kwargs: Any) -> T | None:
        request: Request = kwargs["raw_request"]
        handler_task = asyncio.ensure_future(handler(*args, **kwargs))
        disconnect_task = asyncio.ensure_future(listen_for_disconnect(request))
        done, pending = await asyncio.wait(
            [handler_task, disconnect_task], return_when=asyncio.FIRST_COMPLETED
        )
        for task in pending:
            task.cancel()
        if handler_task in done:
            return handler_task.result()
        return None

    return wrapper


async def merge_async_iterators(*iterators: AsyncIterator[T]) -> AsyncIterator[tuple[int, T]]:
    """Yield (iterator index, item) as items arrive from any iterator. Closing the
    merged iterator cancels the producers (which aborts their requests)."""
    if len(iterators) == 1:
        async for item in iterators[0]:
            yield 0, item
        return
    queue: asyncio.Queue[tuple[int, T] | BaseException | None] = asyncio.Queue()

    async def drain(i: int, iterator: AsyncIterator[T]) -> None:
        try:
            async for item in iterator:
                await queue.put((i, item))
        except Exception as exc:
            await queue.put(exc)
        finally:
            await queue.put(None)

    tasks = [asyncio.ensure_future(drain(i, it)) for i, it in enumerate(iterators)]
    remaining = len(tasks)
    try:
        while remaining:
            entry = await queue.get()
            if entry is None:
                remaining -= 1
            elif isinstance(entry, BaseException):
                raise entry
            else:
                yield entry
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


_LOG_FORMAT = "%(levelname)s %(asctime)s [%(filename)s:%(lineno)d] %(message)s"


def configure_logging(level: str | None = None, prefix: str = "") -> None:
    """vLLM-like log lines for the `pagedllm` loggers (PAGEDLLM_LOGGING_LEVEL, default
    INFO); `prefix` names the process (`[api server 1] `) when there are several."""
    root = logging.getLogger("pagedllm")
    if root.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(prefix + _LOG_FORMAT, datefmt="%m-%d %H:%M:%S"))
    root.addHandler(handler)
    root.setLevel((level or os.environ.get("PAGEDLLM_LOGGING_LEVEL", "INFO")).upper())
    root.propagate = False
