"""LLMEngine: the synchronous front end behind the offline LLM class.

add_request (tokenize, validate, resolve: RequestBuilder) -> core client ->
step(): the core's outputs of one step -> OutputProcessor (detokenize, stop strings)
-> RequestOutputs.

The core runs in this process by default (`InprocClient`: one `step()` here is one
core step, with no copies); PAGEDLLM_ENABLE_MULTIPROCESSING=1 (or vLLM's
VLLM_ENABLE_V1_MULTIPROCESSING=1) runs it in its own process instead (`MPClient`).
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Iterable
from typing import Any

from pagedllm.config import EngineArgs, EngineConfig
from pagedllm.core.engine_core import EngineCore
from pagedllm.core.messages import EngineCoreOutputs
from pagedllm.core.request import RequestStatus
from pagedllm.engine import input_processor as ip
from pagedllm.engine.core_client import EngineCoreClient, EngineCoreDeadError, InprocClient
from pagedllm.engine.output_processor import OutputProcessor
from pagedllm.engine.request_builder import RequestBuilder
from pagedllm.model_loader.tokenizer import get_tokenizer
from pagedllm.outputs import PoolingRequestOutput, RequestOutput, SchedulerStats
from pagedllm.sampling_params import PoolingParams, SamplingParams

logger = logging.getLogger(__name__)

EngineOutput = RequestOutput | PoolingRequestOutput
MULTIPROCESSING_ENV_VARS = ("PAGEDLLM_ENABLE_MULTIPROCESSING", "VLLM_ENABLE_V1_MULTIPROCESSING")


def multiprocessing_enabled(default: bool) -> bool:
    for name in MULTIPROCESSING_ENV_VARS:
        value = os.environ.get(name)
        if value is not None:
            return value.strip().lower() not in ("0", "false", "no", "off", "")
    return default


def make_core_client(engine_config: EngineConfig, multiprocess: bool) -> EngineCoreClient:
    if multiprocess:
        from pagedllm.engine.core_process import MPClient

        return MPClient(engine_config)
    return InprocClient(EngineCore(engine_config))


def load_tokenizer(engine_config: EngineConfig, skip_tokenizer_init: bool) -> Any:
    if skip_tokenizer_init:
        return None
    mc = engine_config.model_config
    return get_tokenizer(mc.tokenizer, mc.trust_remote_code, mc.revision)


class LLMEngine:
    def __init__(
        self,
        engine_config: EngineConfig,
        skip_tokenizer_init: bool = False,
        multiprocess: bool | None = None,
    ) -> None:
        self.engine_config = engine_config
        self.model_config = engine_config.model_config
        self.tokenizer: Any = load_tokenizer(engine_config, skip_tokenizer_init)
        use_mp = multiprocessing_enabled(False) if multiprocess is None else multiprocess
        self.core_client = make_core_client(engine_config, use_mp)
        engine_config.cache_config.num_gpu_blocks = self.core_client.num_gpu_blocks
        self.builder = RequestBuilder(
            engine_config, self.tokenizer, self.core_client.num_gpu_blocks
        )
        self.output_processor = OutputProcessor(self.tokenizer)
        self._counter = itertools.count()
        self._stats = SchedulerStats()

    @classmethod
    def from_engine_args(cls, engine_args: EngineArgs) -> LLMEngine:
        config = engine_args.create_engine_config()
        return cls(config, skip_tokenizer_init=engine_args.skip_tokenizer_init)

    @property
    def engine_core(self) -> EngineCore:
        """The core, when it runs in this process."""
        if not isinstance(self.core_client, InprocClient):
            raise AttributeError("the engine core runs in another process")
        return self.core_client.core

    @property
    def executor(self) -> Any:
        return self.engine_core.executor

    @property
    def kv_cache_manager(self) -> Any:
        return self.engine_core.kv_cache_manager

    @property
    def scheduler(self) -> Any:
        return self.engine_core.scheduler

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    @property
    def eos_token_id(self) -> int | None:
        return self.builder.eos_token_id

    # ---- requests -----------------------------------------------------------
    def add_request(
        self,
        request_id: str,
        prompt: ip.PromptType,
        params: SamplingParams | PoolingParams,
        arrival_time: float | None = None,
        add_special_tokens: bool = True,
        priority: int = 0,
    ) -> None:
        """`priority`: with scheduling_policy="priority", lower runs first."""
        if self.output_processor.has_request(request_id):
            raise ValueError(f"request_id {request_id!r} is already in use")
        arrival = arrival_time if arrival_time is not None else time.time()
        built = self.builder.build(
            request_id, prompt, params, arrival, add_special_tokens, priority
        )
        self.output_processor.add_request(request_id, built)
        self.core_client.add_requests(built.children)

    def abort_request(self, request_ids: str | Iterable[str]) -> None:
        ids = [request_ids] if isinstance(request_ids, str) else list(request_ids)
        children: list[str] = []
        for parent_id in ids:
            children += self.output_processor.abort(parent_id)
        self.core_client.abort_requests(children)

    def new_request_id(self) -> str:
        return str(next(self._counter))

    # ---- the step -------------------------------------------------------------
    def step(self) -> list[EngineOutput]:
        """One core step's outputs (in process: run the step; otherwise: wait for it)."""
        if not self.has_unfinished_requests():
            return []
        core_outputs = self.core_client.get_output()
        if core_outputs is None:
            return []
        return self.process_outputs(core_outputs)

    def process_outputs(self, core_outputs: EngineCoreOutputs) -> list[EngineOutput]:
        if core_outputs.scheduler_stats is not None:
            self._stats = core_outputs.scheduler_stats
        outputs, stopped = self.output_processor.process(core_outputs.outputs)
        if stopped:
            self.core_client.abort_requests(stopped, RequestStatus.FINISHED_STOPPED)
        if core_outputs.engine_dead is not None:
            raise EngineCoreDeadError(f"The engine core is dead: {core_outputs.engine_dead}")
        return outputs

    def has_unfinished_requests(self) -> bool:
        if isinstance(self.core_client, InprocClient):
            return self.engine_core.has_unfinished_requests() or bool(self.output_processor.states)
        return bool(self.output_processor.states)

    def get_num_unfinished_requests(self) -> int:
        return len(self.output_processor.states)

    def get_stats(self) -> SchedulerStats:
        if isinstance(self.core_client, InprocClient):
            return self.engine_core.get_stats()
        return self._stats

    def get_num_free_blocks(self) -> int:
        return int(self.core_client.call_utility("get_num_free_blocks"))

    def kv_slot_usage(self) -> tuple[int, int]:
        allocated, used = self.core_client.call_utility("kv_slot_usage")
        return int(allocated), int(used)

    def get_kv_cache_usage(self) -> float:
        return self.get_stats().kv_cache_usage

    def reset_prefix_cache(self) -> bool:
        return bool(self.core_client.call_utility("reset_prefix_cache"))

    def check_integrity(self) -> None:
        self.core_client.call_utility("check_integrity")

    def shutdown(self) -> None:
        self.core_client.shutdown()
