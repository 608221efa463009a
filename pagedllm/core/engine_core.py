"""EngineCore: the scheduler, the KV cache manager and the executor, stepped.

It knows token ids only: no tokenizer, no text, no HTTP. The front end
(`pagedllm.engine`) sends it `EngineCoreRequest`s and aborts, and gets back, per
step, the new tokens of each request as `EngineCoreOutputs`. It runs in the front
end's process (offline `LLM`, `InprocClient`) or in its own (`engine_core_proc.py`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import numpy as np

from pagedllm.config import EngineConfig
from pagedllm.core.dashboard import build_dashboard_snapshot
from pagedllm.core.grammar_pipeline import GrammarPipeline, GrammarRow, PrefetchedOutput
from pagedllm.core.kv_cache_manager import KVCacheManager
from pagedllm.core.messages import EngineCoreOutputs, EngineCoreRequest
from pagedllm.core.output_builder import new_outputs
from pagedllm.core.request import Request, RequestStatus
from pagedllm.core.scheduler import Scheduler
from pagedllm.executor.base import ExecutorDeadError, get_executor_class
from pagedllm.outputs import SchedulerStats
from pagedllm.scheduler_output import SchedulerOutput
from pagedllm.structured_output import StructuredOutputManager
from pagedllm.worker.kv_cache import cpu_tier_num_blocks

logger = logging.getLogger(__name__)


def _log_memory_tiers(config: EngineConfig, num_cpu_blocks: int) -> None:
    cc = config.cache_config
    if not config.device_config.is_cuda and (cc.swap_space or cc.cpu_offload_gb):
        logger.info(
            "swap_space=%s and cpu_offload_gb=%s do not apply on the CPU device: ignored",
            cc.swap_space,
            cc.cpu_offload_gb,
        )
    if num_cpu_blocks:
        logger.info(
            "CPU KV tier: %d blocks (swap_space=%s GiB), preemption_mode=%s",
            num_cpu_blocks,
            cc.swap_space,
            config.scheduler_config.preemption_mode or "by length",
        )


class EngineCore:
    def __init__(self, engine_config: EngineConfig) -> None:
        self.engine_config = engine_config
        self.executor = get_executor_class(engine_config)(engine_config)
        num_blocks = self.executor.determine_num_blocks()
        self.executor.initialize_kv_cache(num_blocks)
        engine_config.cache_config.num_gpu_blocks = num_blocks
        cc = engine_config.cache_config
        num_cpu_blocks = cpu_tier_num_blocks(engine_config)
        self.kv_cache_manager = KVCacheManager(
            num_blocks, cc.block_size, cc.enable_prefix_caching, num_cpu_blocks
        )
        _log_memory_tiers(engine_config, num_cpu_blocks)
        self.scheduler = Scheduler(engine_config.scheduler_config, self.kv_cache_manager)
        # Placeholder tokens need the sampling rank to run the next step's first layer.
        pp = engine_config.parallel_config.pipeline_parallel_size
        self.async_scheduling = engine_config.scheduler_config.async_scheduling and pp == 1
        self._pending: tuple[SchedulerOutput, Any] | None = None  # launched, not yet finished
        # Pipeline parallelism: up to one batch per stage launched and unfinished, oldest first.
        self.max_batches = self.executor.max_concurrent_batches
        self.batch_queue: collections.deque[tuple[SchedulerOutput, Any]] = collections.deque()
        self.scheduler.set_max_batches_in_flight(self.max_batches)
        self.structured_output_manager = StructuredOutputManager(engine_config)
        self.grammar_pipeline = GrammarPipeline(self.structured_output_manager)
        logger.info(
            "EngineCore ready: %s, %d KV blocks of %d tokens",
            engine_config.model_config.model,
            num_blocks,
            cc.block_size,
        )

    @property
    def num_gpu_blocks(self) -> int:
        return self.kv_cache_manager.num_blocks

    # ---- requests -----------------------------------------------------------
    def add_request(self, req: EngineCoreRequest) -> None:
        request = Request(
            request_id=req.request_id,
            prompt_token_ids=req.prompt_token_ids,
            sampling_params=req.sampling_params,
            pooling_params=req.pooling_params,
            arrival_time=req.arrival_time,
            priority=req.priority,
            stream_outputs=req.stream_outputs,
        )
        sp = req.sampling_params
        if sp is not None and sp.structured_outputs is not None:
            request.structured_output_request = self.structured_output_manager.grammar_init(
                sp.structured_outputs
            )
        self.scheduler.add_request(request)

    def abort_requests(
        self, request_ids: list[str], status: RequestStatus = RequestStatus.FINISHED_ABORTED
    ) -> None:
        """Finish requests wherever they are (aborted, or stopped by a stop string
        the front end saw); their blocks are freed and nothing more is sent for them."""
        self.scheduler.finish_requests(request_ids, status)

    def has_unfinished_requests(self) -> bool:
        return (
            self.scheduler.has_unfinished_requests()
            or self._pending is not None
            or bool(self.batch_queue)
        )

    # ---- the step -------------------------------------------------------------
    def step(self) -> EngineCoreOutputs:
        """Schedule and launch one step, then finish the previous one (async
        scheduling: the host prepares step N+1 while the device runs step N) or
        this one (synchronous); with pipeline stages, keep a batch per stage in flight.
        Under a grammar, where the executor can, step N+1 launches in two parts: its
        forward pass, then its sampling under the bitmask that step N's tokens give;
        the grammar thread (core/grammar_pipeline.py) advances the grammars by them
        while this thread schedules N+1, and fills the bitmask while it launches N+1's
        forward pass. Raises ExecutorDeadError when no step can run again."""
        if self.max_batches > 1:
            return self.make_outputs(self._step_with_batch_queue())
        updated: list[Request] = []
        if self._must_finish_first():
            updated += self._finish_pending()  # sampling needs the latest tokens first
        deferred = self._pending is not None and self.scheduler.has_structured_requests()
        if deferred:
            self._advance_pending_grammars()
        scheduler_output = self.scheduler.schedule()
        bitmask = self._fill_bitmask_later(scheduler_output) if deferred else None
        if not deferred:
            self._add_grammar_bitmask(scheduler_output)
        if scheduler_output.is_empty and self._pending is None:
            self._wait_for_grammars()
        launch = self.executor.launch_forward if deferred else self.executor.execute_model
        ok, result = self._execute(lambda: launch(scheduler_output), scheduler_output, updated)
        if not ok:
            return self.make_outputs(updated)
        if deferred and result is None:  # sample first: applying step N can wait
            ok, result = self._execute(
                lambda: self._sample_tokens(scheduler_output, bitmask), scheduler_output, updated
            )
        updated += self._finish_pending()
        if not ok:
            return self.make_outputs(updated)
        self._pending = (scheduler_output, result)
        if not self.async_scheduling or scheduler_output.is_empty:
            # Nothing in flight to overlap with: finish now, so that an idle core
            # reports no unfinished work.
            updated += self._finish_pending()
        return self.make_outputs(updated)

    def _must_finish_first(self) -> bool:
        """Whether step N must finish before step N+1 is scheduled: always when
        synchronous; with async scheduling when a request's sampling reads its own
        tokens (penalties), or its grammar's state and the executor cannot sample
        apart from the forward pass."""
        sched = self.scheduler
        if not self.async_scheduling or sched.has_token_history_requests():
            return True
        return sched.has_structured_requests() and not self.executor.supports_deferred_sampling

    def _sample_tokens(
        self, scheduler_output: SchedulerOutput, bitmask: Future[np.ndarray] | None
    ) -> Any:
        so = scheduler_output
        if bitmask is not None:
            so.grammar_bitmask = bitmask.result()
        return self.executor.sample_tokens(so.grammar_bitmask, so.structured_output_request_ids)

    def _advance_pending_grammars(self) -> None:
        """Hand the step in flight to the grammar thread, which waits for its tokens
        and advances the grammars of its sampled rows by them."""
        assert self._pending is not None
        scheduler_output, result = self._pending
        if isinstance(result, PrefetchedOutput):
            return  # handed over already (its next launch failed): advanced once only
        advancing = self.grammar_pipeline.advance(result, self._grammar_rows(scheduler_output))
        self._pending = (scheduler_output, advancing)

    def _fill_bitmask_later(self, scheduler_output: SchedulerOutput) -> Future[np.ndarray] | None:
        """The grammar thread fills the bitmask of the step's grammar rows once it has
        advanced them (their ids are set on the SchedulerOutput now)."""
        rows = self._grammar_rows(scheduler_output)
        if not rows:
            return None
        scheduler_output.structured_output_request_ids = [row.req_id for row in rows]
        return self.grammar_pipeline.fill([row.grammar for row in rows])

    def _execute(
        self, call: Callable[[], Any], scheduler_output: SchedulerOutput, updated: list[Request]
    ) -> tuple[bool, Any]:
        """(True, call()), or (False, None) with the step's requests failed (and
        added to `updated`) when the call raised; a dead executor re-raises."""
        try:
            return True, call()
        except ExecutorDeadError:
            self._fail_step(scheduler_output)
            raise
        except Exception:
            logger.exception("Model execution failed")
            updated += self._fail_step(scheduler_output)
            return False, None

    def _step_with_batch_queue(self) -> list[Request]:
        """Launch a batch while the queue has room (the scheduler leaves out requests
        with a step in flight), then finish the oldest batch unless there is room for
        another and the oldest is still running. Outputs arrive in launch order."""
        updated: list[Request] = []
        if len(self.batch_queue) < self.max_batches:
            so = self.scheduler.schedule()
            self._add_grammar_bitmask(so)
            if so.is_empty and not (so.swap_out or so.swap_in or not self.batch_queue):
                # Nothing to run beside the batches in flight: the next batch carries it.
                self.scheduler.finished_req_ids |= so.finished_req_ids
            else:
                if so.is_empty:
                    self._wait_for_grammars()
                result = self._launch(so, updated)
                if result is not None:
                    self.batch_queue.append((so, result))
                    if not so.is_empty and not self._queue_full_or_oldest_done():
                        return updated
        if self.batch_queue:
            updated += self._finish(*self.batch_queue.popleft())
        return updated

    def _queue_full_or_oldest_done(self) -> bool:
        if len(self.batch_queue) >= self.max_batches:
            return True
        done = getattr(self.batch_queue[0][1], "done", None)
        return done is None or bool(done())

    def _launch(self, scheduler_output: SchedulerOutput, updated: list[Request]) -> Any:
        """Send the step to the executor: its result (a future), or None when it failed
        (its requests then finish with an error, appended to `updated`)."""
        ok, result = self._execute(
            lambda: self.executor.execute_model(scheduler_output), scheduler_output, updated
        )
        return result if ok else None

    def _add_grammar_bitmask(self, scheduler_output: SchedulerOutput) -> None:
        """The bitmask rows of the scheduled requests that sample under a grammar,
        whose grammars have taken every earlier token (step() finished the step in
        flight first)."""
        rows = self._grammar_rows(scheduler_output)
        if rows:
            grammars = [row.grammar for row in rows]
            scheduler_output.grammar_bitmask = self.structured_output_manager.grammar_bitmask(
                grammars
            )
            scheduler_output.structured_output_request_ids = [row.req_id for row in rows]

    def _grammar_rows(self, scheduler_output: SchedulerOutput) -> list[GrammarRow]:
        """The scheduled requests that sample under a grammar (none that finished)."""
        if not self.scheduler.has_structured_requests():
            return []
        rows: list[GrammarRow] = []
        for i, sched in enumerate(scheduler_output.scheduled):
            request = self.scheduler.requests.get(sched.req_id)
            sor = request.structured_output_request if request is not None else None
            grammar = sor.grammar if sor is not None else None
            if grammar is not None and sched.samples:
                rows.append(GrammarRow(i, sched.req_id, grammar))
        return rows

    def _wait_for_grammars(self) -> None:
        """Nothing to run but requests whose grammar compiles: wait a little for one
        (instead of spinning the busy loop), then go back to read inputs."""
        futures = [
            r.structured_output_request.future
            for r in self.scheduler.waiting
            if r.structured_output_request is not None and not r.structured_output_request.is_ready
        ]
        if futures:
            concurrent.futures.wait(futures, timeout=0.01, return_when="FIRST_COMPLETED")

    def _finish_pending(self) -> list[Request]:
        if self._pending is None:
            return []
        scheduler_output, result = self._pending
        self._pending = None
        return self._finish(scheduler_output, result)

    def _finish(self, scheduler_output: SchedulerOutput, result: Any) -> list[Request]:
        """Wait for a launched step's output and apply it."""
        try:
            runner_output = result.get()
        except ExecutorDeadError:
            self._fail_step(scheduler_output)
            raise
        except Exception:
            logger.exception("Model execution failed")
            return self._fail_step(scheduler_output)
        advanced = result.grammars_advanced if isinstance(result, PrefetchedOutput) else None
        return self.scheduler.update_from_output(scheduler_output, runner_output, advanced)

    def _fail_step(self, scheduler_output: SchedulerOutput) -> list[Request]:
        """A step that gives no output: its requests finish with an error."""
        failed = self._fail([s.req_id for s in scheduler_output.scheduled])
        self.scheduler.retire(scheduler_output)
        return failed

    def _fail(self, request_ids: list[str]) -> list[Request]:
        return self.scheduler.finish_requests(request_ids, RequestStatus.FINISHED_ERROR)

    def fail_all(self) -> EngineCoreOutputs:
        """Finish every request with an error (the core cannot go on)."""
        if self._pending is not None:
            self.batch_queue.append(self._pending)
        self._pending = None
        while self.batch_queue:
            self.scheduler.retire(self.batch_queue.popleft()[0])
        ids = [r.request_id for r in (*self.scheduler.running, *self.scheduler.waiting)]
        return self.make_outputs(self._fail(ids))

    # ---- outputs ----------------------------------------------------------------
    def make_outputs(self, updated: list[Request]) -> EngineCoreOutputs:
        """What is new for each updated request (each once, however often it appears)."""
        return EngineCoreOutputs(outputs=new_outputs(updated), scheduler_stats=self.get_stats())

    # ---- utilities (also reachable from the front end by name) ------------------
    def get_stats(self) -> SchedulerStats:
        return self.scheduler.make_stats()

    def get_num_free_blocks(self) -> int:
        return self.kv_cache_manager.get_num_free_blocks()

    def get_num_unfinished_requests(self) -> int:
        return self.scheduler.get_num_unfinished_requests()

    def kv_slot_usage(self) -> tuple[int, int]:
        """(slots in allocated blocks, slots holding a token) right now."""
        kv = self.kv_cache_manager
        allocated = (kv.num_blocks - kv.get_num_free_blocks()) * kv.block_size
        used = sum(r.num_computed_tokens for r in self.scheduler.running)
        return allocated, used

    def reset_prefix_cache(self) -> bool:
        return self.kv_cache_manager.reset_prefix_cache()

    def dashboard_snapshot(self, max_cells: int = 8192, max_requests: int = 256) -> dict[str, Any]:
        """/dashboard's view of the block pool and the queues (built on demand, between steps)."""
        return build_dashboard_snapshot(
            self.scheduler, self.kv_cache_manager, max_cells, max_requests
        )

    def check_integrity(self) -> None:
        self.kv_cache_manager.check_integrity()

    def check_health(self) -> None:
        self.executor.check_health()

    def shutdown(self) -> None:
        self.grammar_pipeline.shutdown()
        self.structured_output_manager.shutdown()
        self.executor.shutdown()


UTILITY_METHODS = frozenset(
    {
        "get_stats",
        "get_num_free_blocks",
        "get_num_unfinished_requests",
        "kv_slot_usage",
        "reset_prefix_cache",
        "check_integrity",
        "check_health",
        "has_unfinished_requests",
        "dashboard_snapshot",
    }
)
