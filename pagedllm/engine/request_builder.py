"""A user request -> the engine core's requests: tokenize, validate once, resolve the
SamplingParams against the model, and fan n > 1 out into n child requests. Runs in
the front end, so that the core gets only token ids that are known to be valid."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pagedllm.config import EngineConfig
from pagedllm.core.messages import EngineCoreRequest
from pagedllm.engine import input_processor as ip
from pagedllm.engine.validation import verify_pooling_params
from pagedllm.exceptions import InvalidRequestError
from pagedllm.sampling_params import PoolingParams, RequestOutputKind, SamplingParams


@dataclass
class BuiltRequest:
    """What the front end keeps (prompt text) and what the core gets (children)."""

    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams | PoolingParams
    children: list[EngineCoreRequest]


class RequestBuilder:
    """strict_max_tokens: max_tokens past the context is an error (the OpenAI servers,
    vLLM's serving rule) rather than capped by it (the offline LLM, as in vLLM)."""

    def __init__(
        self,
        engine_config: EngineConfig,
        tokenizer: Any,
        num_gpu_blocks: int,
        strict_max_tokens: bool = False,
    ) -> None:
        self.model_config = engine_config.model_config
        self.scheduler_config = engine_config.scheduler_config
        self.structured_outputs_config = engine_config.structured_outputs_config
        self.block_size = engine_config.cache_config.block_size
        self.num_gpu_blocks = num_gpu_blocks
        self.tokenizer = tokenizer
        self.strict_max_tokens = strict_max_tokens
        self.eos_token_id: int | None = (
            getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
        )

    def build(
        self,
        request_id: str,
        prompt: ip.PromptType,
        params: SamplingParams | PoolingParams,
        arrival_time: float,
        add_special_tokens: bool = True,
        priority: int = 0,
    ) -> BuiltRequest:
        """Raises ValueError (InvalidRequestError naming the field) for anything the
        core cannot run; the prompt's length before anything else is looked at."""
        pooling = isinstance(params, PoolingParams)
        self._check_runner(pooling)
        self._check_priority(priority)
        mc = self.model_config
        processed = ip.process_prompt(
            prompt, self.tokenizer, mc, add_special_tokens, pooling, params.truncate_prompt_tokens
        )
        self._check_fits_cache(len(processed.prompt_token_ids), pooling)
        if isinstance(params, PoolingParams):
            verify_pooling_params(params, mc.hf_config, mc.served_model_name)
            children = [
                EngineCoreRequest(
                    request_id,
                    processed.prompt_token_ids,
                    None,
                    params,
                    arrival_time,
                    priority=priority,
                )
            ]
        else:
            children = self._sampling_children(
                request_id, processed, params, arrival_time, priority
            )
        return BuiltRequest(processed.prompt, processed.prompt_token_ids, params, children)

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

    def _check_priority(self, priority: int) -> None:
        if type(priority) is not int or not -(2**63) <= priority < 2**63:  # noqa: E721
            raise InvalidRequestError(
                f"priority must be a 64-bit integer, got {priority!r}", "priority"
            )
        if priority != 0 and self.scheduler_config.policy != "priority":
            raise InvalidRequestError(
                f"Got priority {priority} but priority scheduling is not enabled: "
                "start the engine with scheduling_policy='priority' "
                "(the server with --scheduling-policy priority)",
                "priority",
            )

    def _check_fits_cache(self, num_prompt_tokens: int, pooling: bool) -> None:
        needed = -(-(num_prompt_tokens + (0 if pooling else 1)) // self.block_size)
        if needed > self.num_gpu_blocks:
            raise InvalidRequestError(
                f"The prompt needs {needed} KV cache blocks but the whole cache has only "
                f"{self.num_gpu_blocks}; shorten the prompt or give the KV cache more memory",
                "prompt",
            )
        limit = self.scheduler_config.max_num_batched_tokens
        if pooling and num_prompt_tokens > limit:
            raise InvalidRequestError(
                f"The input (length {num_prompt_tokens}) is longer than "
                f"max_num_batched_tokens={limit}",
                "prompt",
            )

    def _sampling_children(
        self,
        request_id: str,
        processed: ip.ProcessedPrompt,
        params: SamplingParams,
        arrival_time: float,
        priority: int,
    ) -> list[EngineCoreRequest]:
        n = params.n
        resolved = ip.resolve_sampling_params(
            params,
            len(processed.prompt_token_ids),
            self.model_config,
            self.eos_token_id,
            self.tokenizer,
            max_num_seqs=self.scheduler_config.max_num_seqs,
            structured_outputs_config=self.structured_outputs_config,
            strict_max_tokens=self.strict_max_tokens,
        )
        children = []
        for index in range(n):
            sp = resolved if n == 1 else resolved.clone()
            if n > 1 and sp.seed is not None:
                sp.seed = resolved.seed + index  # type: ignore[operator]
            children.append(
                EngineCoreRequest(
                    child_request_id(request_id, index, n),
                    processed.prompt_token_ids,
                    sp,
                    None,
                    arrival_time,
                    stream_outputs=needs_streamed_tokens(sp),
                    priority=priority,
                )
            )
        return children


def child_request_id(request_id: str, index: int, n: int) -> str:
    return request_id if n == 1 else f"{index}_{request_id}"


def needs_streamed_tokens(params: SamplingParams) -> bool:
    """A final-only request without stop strings needs no token before it finishes:
    the core sends them all at the end and the front end detokenizes them in one go."""
    return params.output_kind != RequestOutputKind.FINAL_ONLY or bool(params.stop)
