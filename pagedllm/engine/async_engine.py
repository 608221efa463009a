"""AsyncLLM: the asyncio front end of the server, over an engine core that runs on its
own (in its own process by default: `MPClient`; on a thread: `ThreadedClient`).

Where the work happens:
- The caller's event loop: `generate()` builds the request (validation; prompts
  arrive tokenized from the serving layer, which tokenizes off the event loop) and
  sends it to the core; it then awaits the request's asyncio queue.
- The client's reader thread (`_on_core_outputs`): each step's outputs are
  detokenized (OutputProcessor) and handed to the requests' queues, one
  `call_soon_threadsafe` per event loop per step; stop strings found there are sent
  back to the core as stops.
- The engine core: scheduling and the model, never waiting on any of the above.

Ownership: `_lock` guards `_streams` and the OutputProcessor (the callers' threads
and the reader thread both touch them). A request's stream is in `_streams` from the
moment it was sent to the core until its final output was posted, it was aborted, or
the core failed it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any, cast

from pagedllm.core.messages import EngineCoreOutputs
from pagedllm.core.request import RequestStatus
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
from pagedllm.engine.core_client import BackgroundClient
from pagedllm.engine.output_processor import OutputProcessor
from pagedllm.engine.request_builder import RequestBuilder
from pagedllm.outputs import PoolingRequestOutput, RequestOutput, SchedulerStats
from pagedllm.sampling_params import PoolingParams, RequestOutputKind, SamplingParams

if TYPE_CHECKING:
    from pagedllm.config import EngineArgs, EngineConfig

logger = logging.getLogger(__name__)

PromptType = str | dict[str, Any]
LOG_INTERVAL_S = 5.0


class AsyncLLM:
    """vLLM's AsyncLLM: `generate`/`encode` async iterators over an engine core."""

    def __init__(
        self,
        engine_config: EngineConfig,
        tokenizer: Any,
        core_client: BackgroundClient,
        log_stats: bool = True,
        stat_loggers: Iterable[StatLoggerBase] = (),
        log_interval_s: float = LOG_INTERVAL_S,
    ) -> None:
        self.engine_config = engine_config
        self.tokenizer = tokenizer
        self.core_client = core_client
        engine_config.cache_config.num_gpu_blocks = core_client.num_gpu_blocks
        # The servers' engine: max_tokens past the context is a 400, as in vLLM's server.
        self.builder = RequestBuilder(
            engine_config, tokenizer, core_client.num_gpu_blocks, strict_max_tokens=True
        )
        self.output_processor = OutputProcessor(tokenizer)
        self.stat_loggers: list[StatLoggerBase] = list(stat_loggers)
        if log_stats:
            self.stat_loggers.append(LoggingStatLogger())
        self._lock = threading.Lock()
        self._streams: dict[str, RequestStream] = {}
        self._dead_error: EngineDeadError | None = None
        self._last_stats = SchedulerStats()
        self._stopped = threading.Event()
        self._log_thread = threading.Thread(
            target=self._log_loop, args=(log_interval_s,), name="pagedllm-stats", daemon=True
        )
        self._log_thread.start()
        core_client.set_output_handler(self._on_core_outputs)

    @classmethod
    def from_engine_args(
        cls, engine_args: EngineArgs, stat_loggers: Iterable[StatLoggerBase] = ()
    ) -> AsyncLLM:
        from pagedllm.engine.core_process import MPClient
        from pagedllm.engine.llm_engine import load_tokenizer

        config = engine_args.create_engine_config()
        tokenizer = load_tokenizer(config, engine_args.skip_tokenizer_init)
        client = MPClient(config)
        return cls(config, tokenizer, client, not engine_args.disable_log_stats, stat_loggers)

    # ---- read-only views, safe from any thread -------------------------------------

    @property
    def errored(self) -> bool:
        return self._dead_error is not None

    @property
    def dead_error(self) -> EngineDeadError | None:
        return self._dead_error

    @property
    def request_ids(self) -> list[str]:
        with self._lock:
            return list(self._streams)

    def get_stats(self) -> SchedulerStats:
        """The snapshot the core sent with its latest outputs."""
        return self._last_stats

    async def check_health(self) -> None:
        if self._dead_error is not None:
            raise self._dead_error

    def call_utility(self, method: str, *args: Any) -> Any:
        """One of the core's utility methods (blocking: call it off the event loop)."""
        return self.core_client.call_utility(method, *args)

    # ---- the request API ---------------------------------------------------------------

    def generate(
        self,
        prompt: PromptType,
        sampling_params: SamplingParams,
        request_id: str,
        arrival_time: float | None = None,
        priority: int = 0,
    ) -> AsyncIterator[RequestOutput]:
        """The request's outputs (per sampling_params.output_kind). Leaving the loop early
        or cancelling the consumer aborts the request and frees its KV blocks.
        `priority`: with scheduling_policy="priority", lower runs first."""
        stream = self._run_request(prompt, sampling_params, request_id, arrival_time, priority)
        return cast(AsyncIterator[RequestOutput], stream)

    def encode(
        self,
        prompt: PromptType,
        pooling_params: PoolingParams,
        request_id: str,
        arrival_time: float | None = None,
        priority: int = 0,
    ) -> AsyncIterator[PoolingRequestOutput]:
        stream = self._run_request(prompt, pooling_params, request_id, arrival_time, priority)
        return cast(AsyncIterator[PoolingRequestOutput], stream)

    async def abort(self, request_id: str | Iterable[str]) -> None:
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        self._abort(ids)

    def shutdown(self, timeout_s: float = 10.0) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.core_client.shutdown()
        self._fail_streams(EngineDeadError("The engine is shutting down"))

    async def _run_request(
        self,
        prompt: PromptType,
        params: SamplingParams | PoolingParams,
        request_id: str,
        arrival_time: float | None,
        priority: int,
    ) -> AsyncIterator[EngineOutput]:
        """Yield the request's outputs; abort it if the consumer goes away early."""
        stream = self._add(prompt, params, request_id, arrival_time or time.time(), priority)
        done = False
        try:
            while not done:
                item = await stream.get()
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
                self._abort([request_id])

    def _add(
        self,
        prompt: PromptType,
        params: SamplingParams | PoolingParams,
        request_id: str,
        arrival_time: float,
        priority: int,
    ) -> RequestStream:
        if self._dead_error is not None:
            raise self._dead_error
        built = self.builder.build(  # ValueError: 400
            request_id, prompt, params, arrival_time, priority=priority
        )
        mergeable = getattr(params, "output_kind", None) == RequestOutputKind.DELTA
        stream = RequestStream(request_id, asyncio.get_running_loop(), mergeable)
        with self._lock:
            if request_id in self._streams:
                raise ValueError(f"request id {request_id!r} is already running")
            self.output_processor.add_request(request_id, built)
            self._streams[request_id] = stream
        self.core_client.add_requests(built.children)
        return stream

    def _abort(self, request_ids: list[str]) -> None:
        children: list[str] = []
        streams: list[RequestStream] = []
        with self._lock:
            for rid in request_ids:
                stream = self._streams.pop(rid, None)
                if stream is None:
                    continue
                streams.append(stream)
                children += self.output_processor.abort(rid)
        if not streams:
            return
        self.core_client.abort_requests(children)
        post(group_by_loop([(s, None) for s in streams]))
        logger.info("Aborted request(s) %s", ", ".join(s.request_id for s in streams))

    # ---- the reader thread ----------------------------------------------------------

    def _on_core_outputs(self, core_outputs: EngineCoreOutputs) -> None:
        try:
            self._process(core_outputs)
        except Exception as exc:  # a bug here must not leave streams hanging
            logger.exception("Processing the engine core's outputs failed")
            self._mark_dead(exc)
            self._fail_streams(self._dead_error or EngineDeadError(str(exc)))

    def _process(self, core_outputs: EngineCoreOutputs) -> None:
        if core_outputs.engine_dead is not None:  # every open stream fails with the reason
            self._record_stats(core_outputs.scheduler_stats, [])
            self._mark_dead(RuntimeError(core_outputs.engine_dead))
            self._fail_streams(self._dead_error or EngineDeadError(core_outputs.engine_dead))
            return
        finished: list[EngineOutput] = []
        pairs: list[tuple[RequestStream, StreamItem]] = []
        stopped: list[str] = []
        if core_outputs.outputs:
            with self._lock:
                outputs, stopped = self.output_processor.process(core_outputs.outputs)
                for output in outputs:
                    stream = self._streams.get(output.request_id)
                    if stream is None:
                        continue  # aborted by its consumer meanwhile
                    if output.finished:
                        del self._streams[output.request_id]
                        finished.append(output)
                    pairs.append((stream, _failed_as_error(output)))
        if stopped:
            self.core_client.abort_requests(stopped, RequestStatus.FINISHED_STOPPED)
        if core_outputs.scheduler_stats is not None or finished:
            # Recorded before the callers see the outputs: /metrics is never behind them.
            self._record_stats(core_outputs.scheduler_stats, finished)
        post(group_by_loop(pairs))

    def _fail_streams(self, error: BaseException) -> None:
        with self._lock:
            pairs: list[tuple[RequestStream, StreamItem]] = [
                (s, error) for s in self._streams.values()
            ]
            for rid in list(self._streams):
                self.output_processor.abort(rid)
            self._streams.clear()
        post(group_by_loop(pairs))

    def _mark_dead(self, cause: BaseException) -> None:
        if self._dead_error is None:
            self._dead_error = EngineDeadError(f"The engine is dead: {cause}")
            logger.error("%s", self._dead_error)

    def _record_stats(self, stats: SchedulerStats | None, finished: list[EngineOutput]) -> None:
        if stats is not None:
            self._last_stats = stats
        for stat_logger in self.stat_loggers:
            try:
                stat_logger.record(self._last_stats, finished)
            except Exception:
                logger.exception("A stat logger failed")

    def _log_loop(self, interval_s: float) -> None:
        while not self._stopped.wait(interval_s):
            for stat_logger in self.stat_loggers:
                try:
                    stat_logger.log()
                except Exception:
                    logger.exception("A stat logger failed")


def _failed_as_error(output: EngineOutput) -> StreamItem:
    """A request whose step failed in the core reaches its consumer as an exception."""
    if isinstance(output, RequestOutput) and any(
        c.finish_reason == "error" for c in output.outputs
    ):
        return EngineGenerateError(f"The engine failed while running request {output.request_id}")
    return output


AsyncLLMEngine = AsyncLLM
__all__ = ["AsyncLLM", "AsyncLLMEngine", "EngineDeadError", "EngineGenerateError"]
