"""AsyncLLM: an asyncio front end over one LLMEngine driven by one background thread.

Ownership (the invariant everything here relies on):
- The `LLMEngine` and `_streams` are touched only by the loop thread.
- Callers (any asyncio loop) reach the loop thread through `_commands`, a deque
  guarded by `_cond`; results come back on per-request asyncio queues, fed with
  `loop.call_soon_threadsafe` (one call per event loop per step).
- A request's stream is in `_streams` from the moment the engine accepted it until
  its final output was posted, it was aborted, or its step failed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from pagedllm.engine.async_stats import LoggingStatLogger, StatLoggerBase
from pagedllm.engine.async_stream import (
    EngineDeadError,
    EngineGenerateError,
    EngineOutput,
    RequestStream,
    StreamItem,
    group_by_loop,
    post,
)
from pagedllm.executor.base import ExecutorDeadError
from pagedllm.outputs import PoolingRequestOutput, RequestOutput, SchedulerStats
from pagedllm.sampling_params import PoolingParams, SamplingParams

if TYPE_CHECKING:
    from pagedllm.config import EngineArgs, EngineConfig
    from pagedllm.engine.llm_engine import LLMEngine

logger = logging.getLogger(__name__)

PromptType = str | dict[str, Any]
LOG_INTERVAL_S = 5.0


@dataclass
class _AddCommand:
    stream: RequestStream
    prompt: PromptType
    params: SamplingParams | PoolingParams
    arrival_time: float


@dataclass
class _AbortCommand:
    request_ids: list[str]


class AsyncLLM:
    """vLLM's AsyncLLM: `generate`/`encode` async iterators over a shared engine."""

    def __init__(
        self,
        engine: LLMEngine,
        log_stats: bool = True,
        stat_loggers: Iterable[StatLoggerBase] = (),
        log_interval_s: float = LOG_INTERVAL_S,
        owns_engine: bool = False,
    ) -> None:
        self.engine = engine
        self._owns_engine = owns_engine  # shutdown() also shuts the engine (its executor) down
        self.stat_loggers: list[StatLoggerBase] = list(stat_loggers)
        if log_stats:
            self.stat_loggers.append(LoggingStatLogger())
        self._log_interval_s = log_interval_s
        self._cond = threading.Condition()
        self._commands: deque[_AddCommand | _AbortCommand] = deque()
        self._streams: dict[str, RequestStream] = {}
        self._stopping = False
        self._dead_error: EngineDeadError | None = None
        self._last_stats = SchedulerStats()
        self._thread = threading.Thread(target=self._run_loop, name="pagedllm-engine", daemon=True)
        self._thread.start()

    @classmethod
    def from_engine_args(
        cls, engine_args: EngineArgs, stat_loggers: Iterable[StatLoggerBase] = ()
    ) -> AsyncLLM:
        from pagedllm.engine.llm_engine import LLMEngine

        engine = LLMEngine.from_engine_args(engine_args)
        return cls(engine, not engine_args.disable_log_stats, stat_loggers, owns_engine=True)

    # ---- read-only views, safe from any thread -------------------------------------

    @property
    def engine_config(self) -> EngineConfig:
        return self.engine.engine_config

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    @property
    def errored(self) -> bool:
        return self._dead_error is not None

    @property
    def dead_error(self) -> EngineDeadError | None:
        return self._dead_error

    def get_stats(self) -> SchedulerStats:
        """The snapshot taken after the latest loop iteration."""
        return self._last_stats

    async def check_health(self) -> None:
        if self._dead_error is not None:
            raise self._dead_error

    # ---- the request API ---------------------------------------------------------------

    def generate(
        self,
        prompt: PromptType,
        sampling_params: SamplingParams,
        request_id: str,
        arrival_time: float | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """The request's outputs (per sampling_params.output_kind). Leaving the loop early
        or cancelling the consumer aborts the request and frees its KV blocks."""
        stream = self._run_request(prompt, sampling_params, request_id, arrival_time)
        return cast(AsyncIterator[RequestOutput], stream)

    def encode(
        self,
        prompt: PromptType,
        pooling_params: PoolingParams,
        request_id: str,
        arrival_time: float | None = None,
    ) -> AsyncIterator[PoolingRequestOutput]:
        stream = self._run_request(prompt, pooling_params, request_id, arrival_time)
        return cast(AsyncIterator[PoolingRequestOutput], stream)

    async def abort(self, request_id: str | Iterable[str]) -> None:
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        self._submit(_AbortCommand(ids))

    def shutdown(self, timeout_s: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout_s)
        if self._owns_engine and hasattr(self.engine, "shutdown"):
            self._owns_engine = False  # once
            self.engine.shutdown()

    async def _run_request(
        self,
        prompt: PromptType,
        params: SamplingParams | PoolingParams,
        request_id: str,
        arrival_time: float | None,
    ) -> AsyncIterator[EngineOutput]:
        """Yield the request's outputs; abort it if the consumer goes away early."""
        stream = RequestStream(request_id, asyncio.get_running_loop())
        self._submit(_AddCommand(stream, prompt, params, arrival_time or time.time()))
        done = False
        try:
            while not done:
                item = await stream.queue.get()
                if item is None:  # aborted
                    done = True
                    return
                if isinstance(item, BaseException):
                    done = True
                    raise item
                done = item.finished
                yield item
        finally:
            if not done:  # cancelled (client disconnect) or the consumer stopped early
                self._submit(_AbortCommand([request_id]))

    def _submit(self, command: _AddCommand | _AbortCommand) -> None:
        if self._dead_error is not None and isinstance(command, _AddCommand):
            raise self._dead_error
        with self._cond:
            self._commands.append(command)
            self._cond.notify()

    # ---- the loop thread ---------------------------------------------------------------

    def _run_loop(self) -> None:
        next_log = time.monotonic() + self._log_interval_s
        try:
            while True:
                commands = self._wait_for_work(next_log)
                if commands is None:
                    break
                self._apply_commands(commands)
                if self._dead_error is None and self.engine.has_unfinished_requests():
                    self._step()
                self._record_idle_stats()
                if time.monotonic() >= next_log:
                    self._log_stats()
                    next_log = time.monotonic() + self._log_interval_s
        except Exception as exc:  # a bug in this loop: nothing can be served any more
            logger.exception("The engine loop crashed")
            self._mark_dead(exc)
        finally:
            self._fail_streams(EngineDeadError("The engine is shutting down"))

    def _wait_for_work(self, next_log: float) -> list[_AddCommand | _AbortCommand] | None:
        """Block until there is a command or running work; None means stop."""
        with self._cond:
            while not self._stopping and not self._commands:
                if self._dead_error is None and self.engine.has_unfinished_requests():
                    break
                timeout = next_log - time.monotonic()
                if timeout <= 0:
                    break
                self._cond.wait(timeout)
            if self._stopping:
                return None
            commands = list(self._commands)
            self._commands.clear()
            return commands

    def _apply_commands(self, commands: list[_AddCommand | _AbortCommand]) -> None:
        for command in commands:
            if isinstance(command, _AddCommand):
                self._add(command)
            else:
                self._abort(command.request_ids)

    def _add(self, command: _AddCommand) -> None:
        stream = command.stream
        if self._dead_error is not None:
            post({stream.loop: [(stream, self._dead_error)]})
            return
        if stream.request_id in self._streams:
            error = ValueError(f"request id {stream.request_id!r} is already running")
            post({stream.loop: [(stream, error)]})
            return
        try:
            self.engine.add_request(
                stream.request_id, command.prompt, command.params, command.arrival_time
            )
        except (ValueError, TypeError) as exc:  # a bad request: the caller answers 400
            post({stream.loop: [(stream, ValueError(str(exc)))]})
            return
        except Exception as exc:
            logger.exception("add_request(%s) failed", stream.request_id)
            post({stream.loop: [(stream, EngineGenerateError(f"add_request failed: {exc!r}"))]})
            return
        self._streams[stream.request_id] = stream

    def _abort(self, request_ids: list[str]) -> None:
        streams = [self._streams.pop(rid) for rid in request_ids if rid in self._streams]
        if not streams:
            return
        try:
            self.engine.abort_request([s.request_id for s in streams])
        except Exception as exc:
            logger.exception("abort_request failed")
            self._mark_dead(exc)
        post(group_by_loop([(s, None) for s in streams]))
        logger.info("Aborted request(s) %s", ", ".join(s.request_id for s in streams))

    def _step(self) -> None:
        try:
            outputs = self.engine.step()
        except Exception as exc:
            logger.exception("Engine step failed; failing %d request(s)", len(self._streams))
            self._recover_from_step_error(exc)
            return
        finished: list[EngineOutput] = []
        pairs: list[tuple[RequestStream, StreamItem]] = []
        for output in outputs:
            stream = self._streams.get(output.request_id)
            if stream is None:
                continue  # aborted by its consumer after this step was scheduled
            if output.finished:
                del self._streams[output.request_id]
                finished.append(output)
            pairs.append((stream, output))
        post(group_by_loop(pairs))
        self._record_stats(finished)

    def _recover_from_step_error(self, exc: Exception) -> None:
        """Fail and abort everything in flight; the engine is dead if that fails too."""
        ids = list(self._streams)
        if isinstance(exc, ExecutorDeadError):  # a worker is gone: no step can run again
            self._mark_dead(exc)
            self._fail_streams(self._dead_error or EngineDeadError(str(exc)))
            return
        self._fail_streams(EngineGenerateError(f"The engine step failed: {exc!r}"))
        try:
            if ids:
                self.engine.abort_request(ids)
            if self.engine.has_unfinished_requests():
                raise RuntimeError("requests are still in the engine after aborting all of them")
        except Exception as abort_exc:
            logger.exception("The engine could not recover from a failed step")
            self._mark_dead(abort_exc)

    def _fail_streams(self, error: BaseException) -> None:
        pairs: list[tuple[RequestStream, StreamItem]] = [(s, error) for s in self._streams.values()]
        self._streams.clear()
        post(group_by_loop(pairs))

    def _mark_dead(self, cause: BaseException) -> None:
        if self._dead_error is None:
            self._dead_error = EngineDeadError(f"The engine is dead: {cause!r}")

    def _record_stats(self, finished: list[EngineOutput]) -> None:
        try:
            stats = self.engine.get_stats()
        except Exception:
            logger.exception("get_stats failed")
            return
        self._last_stats = stats
        for stat_logger in self.stat_loggers:
            stat_logger.record(stats, finished)

    def _record_idle_stats(self) -> None:
        """Refresh the gauges when nothing runs (after aborts, after the last finish)."""
        if self._dead_error is None and not self.engine.has_unfinished_requests():
            self._record_stats([])

    def _log_stats(self) -> None:
        for stat_logger in self.stat_loggers:
            stat_logger.log()


AsyncLLMEngine = AsyncLLM
__all__ = ["AsyncLLM", "AsyncLLMEngine", "EngineDeadError", "EngineGenerateError"]
