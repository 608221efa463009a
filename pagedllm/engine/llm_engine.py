"""LLMEngine: the synchronous engine behind both LLM and the server.

add_request -> (scheduler queue) -> step(): schedule, execute, update, detokenize
-> RequestOutputs."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable
from typing import Any

from pagedllm.config import EngineArgs, EngineConfig
from pagedllm.engine import input_processor as ip
from pagedllm.engine.kv_cache_manager import KVCacheManager
from pagedllm.engine.output_processor import OutputProcessor
from pagedllm.engine.request import Request, RequestStatus
from pagedllm.engine.scheduler import Scheduler
from pagedllm.engine.scheduler_output import SchedulerOutput
from pagedllm.executor.base import ExecutorDeadError, get_executor_class
from pagedllm.layers.pooler import verify_pooling_params
from pagedllm.model_loader.tokenizer import get_tokenizer
from pagedllm.outputs import PoolingRequestOutput, RequestOutput, SchedulerStats
from pagedllm.sampling_params import PoolingParams, SamplingParams

logger = logging.getLogger(__name__)

EngineOutput = RequestOutput | PoolingRequestOutput


class LLMEngine:
    def __init__(self, engine_config: EngineConfig, skip_tokenizer_init: bool = False) -> None:
        self.engine_config = engine_config
        self.model_config = engine_config.model_config
        mc = self.model_config
        self.tokenizer: Any = (
            None
            if skip_tokenizer_init
            else get_tokenizer(mc.tokenizer, mc.trust_remote_code, mc.revision)
        )
        self.executor = get_executor_class(engine_config)(engine_config)
        num_blocks = self.executor.determine_num_blocks()
        self.executor.initialize_kv_cache(num_blocks)
        engine_config.cache_config.num_gpu_blocks = num_blocks
        cc = engine_config.cache_config
        self.kv_cache_manager = KVCacheManager(num_blocks, cc.block_size, cc.enable_prefix_caching)
        self.scheduler = Scheduler(engine_config.scheduler_config, self.kv_cache_manager)
        self.output_processor = OutputProcessor(self.tokenizer)
        self._counter = itertools.count()
        self.async_scheduling = engine_config.scheduler_config.async_scheduling
        self._pending: tuple[SchedulerOutput, Any] | None = None  # launched, not yet finished
        logger.info(
            "LLMEngine ready: %s, %d KV blocks of %d tokens",
            self.model_config.model,
            num_blocks,
            cc.block_size,
        )

    @classmethod
    def from_engine_args(cls, engine_args: EngineArgs) -> LLMEngine:
        config = engine_args.create_engine_config()
        return cls(config, skip_tokenizer_init=engine_args.skip_tokenizer_init)

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    @property
    def eos_token_id(self) -> int | None:
        return getattr(self.tokenizer, "eos_token_id", None) if self.tokenizer is not None else None

    # ---- requests -----------------------------------------------------------
    def add_request(
        self,
        request_id: str,
        prompt: ip.PromptType,
        params: SamplingParams | PoolingParams,
        arrival_time: float | None = None,
        add_special_tokens: bool = True,
    ) -> None:
        if self.output_processor.has_request(request_id):
            raise ValueError(f"request_id {request_id!r} is already in use")
        pooling = isinstance(params, PoolingParams)
        self._check_runner(pooling)
        processed = ip.process_prompt(prompt, self.tokenizer, self.model_config, add_special_tokens)
        ip.check_prompt_length(len(processed.prompt_token_ids), self.model_config, pooling)
        self._check_fits_cache(len(processed.prompt_token_ids), pooling)
        arrival = arrival_time if arrival_time is not None else time.time()
        if isinstance(params, PoolingParams):
            verify_pooling_params(
                params, self.model_config.hf_config, self.model_config.served_model_name
            )
            children = [self._pooling_request(request_id, processed, params, arrival)]
        else:
            children = self._sampling_requests(request_id, processed, params, arrival)
        self.output_processor.add_request(request_id, children)
        for child in children:
            self.scheduler.add_request(child)

    def _check_runner(self, pooling: bool) -> None:
        runner = self.model_config.runner
        if pooling and runner != "pooling":
            raise ValueError(
                "This model does not support embeddings: start it with runner='pooling'"
            )
        if not pooling and runner == "pooling":
            raise ValueError(
                "This model runs as a pooling (embedding) model and cannot generate text"
            )

    def _check_fits_cache(self, num_prompt_tokens: int, pooling: bool) -> None:
        kv = self.kv_cache_manager
        needed = -(-(num_prompt_tokens + (0 if pooling else 1)) // kv.block_size)
        if needed > kv.num_blocks:
            raise ValueError(
                f"The prompt needs {needed} KV cache blocks but the whole cache has only "
                f"{kv.num_blocks}; shorten the prompt or give the KV cache more memory"
            )
        if (
            pooling
            and num_prompt_tokens > self.engine_config.scheduler_config.max_num_batched_tokens
        ):
            raise ValueError(
                f"The input (length {num_prompt_tokens}) is longer than max_num_batched_tokens="
                f"{self.engine_config.scheduler_config.max_num_batched_tokens}"
            )

    def _sampling_requests(
        self, request_id: str, processed: ip.ProcessedPrompt, params: SamplingParams, arrival: float
    ) -> list[Request]:
        n = params.n
        children = []
        for index in range(n):
            sp, max_tokens = ip.resolve_sampling_params(
                params,
                len(processed.prompt_token_ids),
                self.model_config,
                self.eos_token_id,
                self.tokenizer,
            )
            if n > 1 and sp.seed is not None:
                sp.seed = params.seed + index  # type: ignore[operator]
            child_id = request_id if n == 1 else f"{index}_{request_id}"
            children.append(
                Request(
                    request_id=child_id,
                    prompt_token_ids=processed.prompt_token_ids,
                    sampling_params=sp,
                    arrival_time=arrival,
                    prompt=processed.prompt,
                    parent_id=request_id,
                    index=index,
                    max_tokens=max_tokens,
                )
            )
        return children

    def _pooling_request(
        self, request_id: str, processed: ip.ProcessedPrompt, params: PoolingParams, arrival: float
    ) -> Request:
        return Request(
            request_id=request_id,
            prompt_token_ids=processed.prompt_token_ids,
            sampling_params=None,
            pooling_params=params,
            arrival_time=arrival,
            prompt=processed.prompt,
            parent_id=request_id,
        )

    def abort_request(self, request_ids: str | Iterable[str]) -> None:
        ids = [request_ids] if isinstance(request_ids, str) else list(request_ids)
        for parent_id in ids:
            children = self.output_processor.children_of(parent_id)
            self.scheduler.finish_requests(children, RequestStatus.FINISHED_ABORTED)
            self.output_processor.abort(parent_id)

    def new_request_id(self) -> str:
        return str(next(self._counter))

    # ---- the step -------------------------------------------------------------
    def step(self) -> list[EngineOutput]:
        """Schedule and launch one step, then finish the previous one (async
        scheduling: the host prepares step N+1 while the device runs step N) or
        this one (synchronous)."""
        outputs: list[EngineOutput] = []
        if not self.async_scheduling or self.scheduler.has_history_requests():
            outputs += self._finish_pending()  # sampling needs the latest tokens first
        scheduler_output = self.scheduler.schedule()
        try:
            result = self.executor.execute_model(scheduler_output)
        except ExecutorDeadError:
            # A worker is gone: no later step can run either, so the caller must know.
            self._fail_step([s.req_id for s in scheduler_output.scheduled])
            raise
        except Exception:
            logger.exception("Model execution failed")
            return outputs + self._fail_step([s.req_id for s in scheduler_output.scheduled])
        outputs += self._finish_pending()
        self._pending = (scheduler_output, result)
        if not self.async_scheduling or scheduler_output.is_empty:
            # Nothing in flight to overlap with: finish now, so that an idle engine
            # reports no unfinished work.
            outputs += self._finish_pending()
        return outputs

    def _finish_pending(self) -> list[EngineOutput]:
        if self._pending is None:
            return []
        scheduler_output, result = self._pending
        self._pending = None
        try:
            runner_output = result.get()
        except Exception:
            logger.exception("Model execution failed")
            return self._fail_step([s.req_id for s in scheduler_output.scheduled])
        updated = self.scheduler.update_from_output(scheduler_output, runner_output)
        outputs, stopped = self.output_processor.process(updated)
        self.scheduler.finish_requests(stopped, RequestStatus.FINISHED_STOPPED)
        return outputs

    def _fail_step(self, child_ids: list[str]) -> list[EngineOutput]:
        failed = self.scheduler.finish_requests(child_ids, RequestStatus.FINISHED_ERROR)
        outputs, _ = self.output_processor.process(failed)
        return outputs

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests() or self._pending is not None

    def get_num_unfinished_requests(self) -> int:
        return len(self.output_processor.states)

    def get_stats(self) -> SchedulerStats:
        return self.scheduler.make_stats()

    def get_num_free_blocks(self) -> int:
        return self.kv_cache_manager.get_num_free_blocks()

    def kv_slot_usage(self) -> tuple[int, int]:
        """(slots in allocated blocks, slots holding a token) right now."""
        kv = self.kv_cache_manager
        allocated = (kv.num_blocks - kv.get_num_free_blocks()) * kv.block_size
        used = sum(r.num_computed_tokens for r in self.scheduler.running)
        return allocated, used

    def get_kv_cache_usage(self) -> float:
        return self.kv_cache_manager.usage

    def reset_prefix_cache(self) -> bool:
        return self.kv_cache_manager.reset_prefix_cache()

    def check_integrity(self) -> None:
        self.kv_cache_manager.check_integrity()

    def shutdown(self) -> None:
        self.executor.shutdown()
