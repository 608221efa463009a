"""The engine core's busy loop: take what the front end sent, step while there is
work, hand each step's outputs on. It never waits on the front end: inputs arrive
on a queue (fed by a thread that reads the socket, or by the front end directly when
the loop runs in a thread) and outputs leave through `send` (a queue for the thread
that writes the socket)."""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from typing import Any

from pagedllm.core.engine_core import UTILITY_METHODS, EngineCore
from pagedllm.core.messages import (
    EngineCoreOutput,
    EngineCoreOutputs,
    EngineCoreRequest,
    RequestType,
    UtilityOutput,
    UtilityRequest,
)
from pagedllm.core.request import RequestStatus

logger = logging.getLogger(__name__)

# One item on the input queue: (kind, payload); SHUTDOWN ends the loop.
InputItem = tuple[RequestType, Any]
SHUTDOWN: Any = None
STATS_INTERVAL_S = 0.5  # at most this long between stats while nothing else is sent


class EngineCoreBusyLoop:
    def __init__(
        self,
        core: EngineCore,
        input_queue: queue.Queue[InputItem | None],
        send: Callable[[EngineCoreOutputs], None],
    ) -> None:
        self.core = core
        self.input_queue = input_queue
        self.send = send
        self._running = True
        self._last_sent = 0.0

    def run(self) -> None:
        """Until SHUTDOWN arrives or the core dies (then the front end is told why)."""
        try:
            while self._running:
                self._process_inputs(block=not self.core.has_unfinished_requests())
                if self._running and self.core.has_unfinished_requests():
                    self._step()
        except Exception as exc:
            logger.exception("The engine core failed")
            self._send_dead(exc)

    def _process_inputs(self, block: bool) -> None:
        if block:
            self._send_stats()  # going idle: the gauges must show it
            item = self.input_queue.get()
            self._handle(item)
        while self._running:
            try:
                item = self.input_queue.get_nowait()
            except queue.Empty:
                return
            self._handle(item)

    def _handle(self, item: InputItem | None) -> None:
        if item is SHUTDOWN:
            self._running = False
            return
        assert item is not None
        kind, payload = item
        if kind == RequestType.ADD:
            self._add(payload)
        elif kind == RequestType.ABORT:
            status, request_ids = payload
            self.core.abort_requests(request_ids, RequestStatus(status))
        else:
            self._utility(payload)

    def _add(self, request: EngineCoreRequest) -> None:
        try:
            self.core.add_request(request)
        except Exception:  # validated by the front end: this is a bug
            logger.exception("add_request(%s) failed", request.request_id)
            self._send_error_for(request.request_id)

    def _send_error_for(self, request_id: str) -> None:
        error = EngineCoreOutput(request_id, [], finish_status=int(RequestStatus.FINISHED_ERROR))
        self._emit(EngineCoreOutputs(outputs=[error]))

    def _utility(self, call: UtilityRequest) -> None:
        result = UtilityOutput(call.call_id, client_index=call.client_index)
        try:
            if call.method not in UTILITY_METHODS:
                raise ValueError(f"unknown engine core utility {call.method!r}")
            result.result = getattr(self.core, call.method)(*call.args)
        except Exception as exc:
            result.error = f"{type(exc).__name__}: {exc}"
        self._emit(EngineCoreOutputs(utility_output=result))

    def _step(self) -> None:
        outputs = self.core.step()
        if outputs.outputs or time.monotonic() - self._last_sent >= STATS_INTERVAL_S:
            self._emit(outputs)

    def _send_stats(self) -> None:
        self._emit(EngineCoreOutputs(scheduler_stats=self.core.get_stats()))

    def _emit(self, outputs: EngineCoreOutputs) -> None:
        self._last_sent = time.monotonic()
        self.send(outputs)

    def _send_dead(self, exc: BaseException) -> None:
        self._running = False
        try:
            outputs = self.core.fail_all()
        except Exception:
            outputs = EngineCoreOutputs()
        outputs.engine_dead = f"{type(exc).__name__}: {exc}"
        self._emit(outputs)
