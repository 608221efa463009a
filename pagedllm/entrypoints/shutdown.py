"""Serving and shutting down: the listening socket is bound before the model loads
(a port in use is reported at once), and signals end the server on a deadline.

Shutdown (vLLM's `--shutdown-timeout`, seconds, default 0):
  first SIGTERM/SIGINT  new requests get 503; in-flight requests may finish for up to
                        shutdown_timeout seconds; the rest are aborted, and each of their
                        streams ends with an error event (non-streaming ones get a 503);
                        then uvicorn closes the connections and the engine shuts down.
  second signal         the same, without waiting: abort now.
  third signal          uvicorn's force exit.
The process exits with status 0 after a clean shutdown (no signal is re-raised).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator
from http import HTTPStatus
from types import FrameType
from typing import Any

import uvicorn

from pagedllm.engine.async_engine import AsyncLLM
from pagedllm.entrypoints.openai.errors import APIError

logger = logging.getLogger(__name__)
_FLUSH_S = 5.0  # after aborting: how long the streams get to send their error event


class ServerShuttingDownError(APIError):
    def __init__(self, message: str = "The server is shutting down") -> None:
        super().__init__(message, HTTPStatus.SERVICE_UNAVAILABLE)


class InflightRequests:
    """The requests the HTTP layer has in the engine, so shutdown can abort them and
    turn their end into an error instead of a silent end of stream."""

    def __init__(self, engine: AsyncLLM) -> None:
        self.engine = engine
        self.request_ids: set[str] = set()
        self.closing = False  # no new requests
        self.aborting = False  # in-flight requests were aborted by shutdown

    def generate(
        self, prompt: Any, params: Any, request_id: str, priority: int = 0
    ) -> AsyncIterator[Any]:
        if self.closing:
            raise ServerShuttingDownError()
        outputs = self.engine.generate(prompt, params, request_id, priority=priority)
        return self._track(outputs, request_id)

    def encode(
        self, prompt: Any, params: Any, request_id: str, priority: int = 0
    ) -> AsyncIterator[Any]:
        if self.closing:
            raise ServerShuttingDownError()
        outputs = self.engine.encode(prompt, params, request_id, priority=priority)
        return self._track(outputs, request_id)

    async def _track(self, outputs: AsyncIterator[Any], request_id: str) -> AsyncIterator[Any]:
        self.request_ids.add(request_id)
        finished = False
        try:
            async for output in outputs:
                finished = bool(getattr(output, "finished", True))
                yield output
            if not finished and self.aborting:
                raise ServerShuttingDownError("The server is shutting down: request aborted")
        finally:
            self.request_ids.discard(request_id)

    async def wait_idle(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.request_ids and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return not self.request_ids

    async def abort_all(self) -> None:
        self.closing = True
        self.aborting = True
        if self.request_ids:
            logger.info("Aborting %d in-flight request(s)", len(self.request_ids))
            await self.engine.abort(list(self.request_ids))


class GracefulServer(uvicorn.Server):
    """uvicorn.Server whose signals drain the engine's requests on a deadline."""

    def __init__(
        self, config: uvicorn.Config, inflight: InflightRequests, shutdown_timeout: float
    ) -> None:
        super().__init__(config)
        self.inflight = inflight
        self.shutdown_timeout = shutdown_timeout
        self._signals = 0
        self._hurry: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._hurry = asyncio.Event()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._signals += 1
        loop = self._loop
        if loop is None or self._hurry is None:  # not serving yet
            self.should_exit = True
            return
        if self._signals == 1:
            logger.info(
                "Shutting down (signal %d): waiting up to %g s for %d request(s)",
                sig,
                self.shutdown_timeout,
                len(self.inflight.request_ids),
            )
            loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._drain()))
        elif self._signals == 2:
            logger.info("Second signal: aborting the in-flight requests now")
            loop.call_soon_threadsafe(self._hurry.set)
        else:
            self.force_exit = True
            self.should_exit = True

    async def _drain(self) -> None:
        assert self._hurry is not None
        self.inflight.closing = True
        if self.shutdown_timeout > 0 and self.inflight.request_ids:
            idle = asyncio.ensure_future(self.inflight.wait_idle(self.shutdown_timeout))
            hurry = asyncio.ensure_future(self._hurry.wait())
            await asyncio.wait([idle, hurry], return_when=asyncio.FIRST_COMPLETED)
            idle.cancel()
            hurry.cancel()
        await self.inflight.abort_all()
        await self.inflight.wait_idle(_FLUSH_S)
        self.should_exit = True


def bind_socket(host: str | None, port: int) -> socket.socket:
    """The listening socket, bound now (before the model loads): OSError if the port
    is taken."""
    host = host or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def serve_http(
    app: Any,
    sock: socket.socket,
    inflight: InflightRequests,
    shutdown_timeout: float,
    **uvicorn_kwargs: Any,
) -> None:
    config = uvicorn.Config(app, **uvicorn_kwargs)
    server = GracefulServer(config, inflight, shutdown_timeout)
    try:
        server.run(sockets=[sock])
    finally:
        inflight.engine.shutdown()  # also after a force exit (uvicorn skips the lifespan then)
