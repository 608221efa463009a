"""How the front end reaches the engine core.

- `InprocClient`: the core lives in this process and runs one step per
  `get_output()` call (offline `LLM`: no copies, no threads).
- `BackgroundClient`: the core runs on its own (its busy loop in a thread, or in its
  own process: `MPClient` in core_process.py); outputs arrive on their own, go to a
  handler (AsyncLLM's) or a queue (`get_output`), and utility calls wait for the
  answer that carries their call id.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from abc import ABC, abstractmethod
from concurrent.futures import Future
from typing import Any

from pagedllm.core.busy_loop import SHUTDOWN, EngineCoreBusyLoop, InputItem
from pagedllm.core.engine_core import UTILITY_METHODS, EngineCore
from pagedllm.core.messages import (
    EngineCoreOutputs,
    EngineCoreRequest,
    RequestType,
    UtilityRequest,
)
from pagedllm.core.request import RequestStatus

logger = logging.getLogger(__name__)
OutputHandler = Any  # Callable[[EngineCoreOutputs], None]


class EngineCoreDeadError(RuntimeError):
    """The engine core cannot run any more steps (its process died, or a worker did)."""


class EngineCoreClient(ABC):
    num_gpu_blocks: int

    @abstractmethod
    def add_requests(self, requests: list[EngineCoreRequest]) -> None: ...

    @abstractmethod
    def abort_requests(
        self, request_ids: list[str], status: RequestStatus = RequestStatus.FINISHED_ABORTED
    ) -> None: ...

    @abstractmethod
    def get_output(self, timeout: float | None = None) -> EngineCoreOutputs | None:
        """The next step's outputs (None: nothing within `timeout`)."""

    @abstractmethod
    def call_utility(self, method: str, *args: Any) -> Any:
        """Run one of EngineCore's utility methods (UTILITY_METHODS) and return its result."""

    @abstractmethod
    def shutdown(self) -> None: ...


class InprocClient(EngineCoreClient):
    def __init__(self, core: EngineCore) -> None:
        self.core = core
        self.num_gpu_blocks = core.num_gpu_blocks

    def add_requests(self, requests: list[EngineCoreRequest]) -> None:
        for request in requests:
            self.core.add_request(request)

    def abort_requests(
        self, request_ids: list[str], status: RequestStatus = RequestStatus.FINISHED_ABORTED
    ) -> None:
        self.core.abort_requests(request_ids, status)

    def get_output(self, timeout: float | None = None) -> EngineCoreOutputs | None:
        return self.core.step()  # raises ExecutorDeadError when a worker is gone

    def call_utility(self, method: str, *args: Any) -> Any:
        if method not in UTILITY_METHODS:
            raise ValueError(f"unknown engine core utility {method!r}")
        return getattr(self.core, method)(*args)

    def shutdown(self) -> None:
        self.core.shutdown()


class BackgroundClient(EngineCoreClient):
    """Shared by the thread and process clients: routing of what the core sends."""

    def __init__(self) -> None:
        self._handler: OutputHandler | None = None
        self._outputs: queue.Queue[EngineCoreOutputs] = queue.Queue()
        self._calls: dict[int, Future[Any]] = {}
        self._call_ids = itertools.count()
        self._calls_lock = threading.Lock()
        self.dead_error: str | None = None
        self.client_index = 0  # this front end's index among those sharing the core

    def set_output_handler(self, handler: OutputHandler) -> None:
        """Called from the client's reader thread for each message, instead of queueing."""
        self._handler = handler

    def get_output(self, timeout: float | None = None) -> EngineCoreOutputs | None:
        try:
            return self._outputs.get(timeout=timeout)
        except queue.Empty:
            return None

    def call_utility(self, method: str, *args: Any) -> Any:
        if self.dead_error is not None:
            raise EngineCoreDeadError(self.dead_error)
        future: Future[Any] = Future()
        with self._calls_lock:
            call_id = next(self._call_ids)
            self._calls[call_id] = future
        self._send(
            RequestType.UTILITY, UtilityRequest(call_id, method, list(args), self.client_index)
        )
        return future.result()

    def add_requests(self, requests: list[EngineCoreRequest]) -> None:
        for request in requests:
            self._send(RequestType.ADD, request)

    def abort_requests(
        self, request_ids: list[str], status: RequestStatus = RequestStatus.FINISHED_ABORTED
    ) -> None:
        if request_ids and self.dead_error is None:
            self._send(RequestType.ABORT, (int(status), list(request_ids)))

    @abstractmethod
    def _send(self, kind: RequestType, payload: Any) -> None: ...

    def _on_outputs(self, outputs: EngineCoreOutputs) -> None:
        """Reader side: resolve utility calls, record death, pass the rest on."""
        if outputs.utility_output is not None:
            self._resolve_call(outputs)
            return
        if outputs.engine_dead is not None:
            self._mark_dead(outputs.engine_dead)
        if self._handler is not None:
            self._handler(outputs)
        else:
            self._outputs.put(outputs)

    def _resolve_call(self, outputs: EngineCoreOutputs) -> None:
        result = outputs.utility_output
        assert result is not None
        with self._calls_lock:
            future = self._calls.pop(result.call_id, None)
        if future is None:
            return
        if result.error is not None:
            future.set_exception(RuntimeError(result.error))
        else:
            future.set_result(result.result)

    def _mark_dead(self, reason: str) -> None:
        if self.dead_error is None:
            self.dead_error = reason
        with self._calls_lock:
            calls, self._calls = self._calls, {}
        for future in calls.values():
            future.set_exception(EngineCoreDeadError(reason))


class ThreadedClient(BackgroundClient):
    """The core's busy loop on a thread of this process (tests; no serialization)."""

    def __init__(self, core: EngineCore) -> None:
        super().__init__()
        self.core = core
        self.num_gpu_blocks = core.num_gpu_blocks
        self._inputs: queue.Queue[InputItem | None] = queue.Queue()
        loop = EngineCoreBusyLoop(core, self._inputs, self._on_outputs)
        self._thread = threading.Thread(target=loop.run, name="pagedllm-core", daemon=True)
        self._thread.start()

    def _send(self, kind: RequestType, payload: Any) -> None:
        self._inputs.put((kind, payload))

    def shutdown(self) -> None:
        self._inputs.put(SHUTDOWN)
        self._thread.join(timeout=10)
