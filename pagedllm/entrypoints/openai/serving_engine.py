"""What every OpenAI endpoint shares: model-name checks, tokenization,
request -> SamplingParams, and request logging. The request's validation (context
length, max_tokens, token ids) is the engine's admission (engine/input_processor.py):
its InvalidRequestError becomes a 400 naming the field."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from pagedllm.engine.async_engine import AsyncLLM, EngineGenerateError
from pagedllm.engine.validation import check_token_ids, truncation_size
from pagedllm.entrypoints.chat_utils import check_text
from pagedllm.entrypoints.http_options import DEFAULT_MAX_LOG_LEN
from pagedllm.entrypoints.openai.errors import APIError
from pagedllm.entrypoints.openai.protocol import SamplingRequestMixin
from pagedllm.entrypoints.openai.serving_models import ServedModels
from pagedllm.entrypoints.openai.structured_outputs import structured_outputs_params
from pagedllm.entrypoints.shutdown import InflightRequests
from pagedllm.entrypoints.utils import merge_async_iterators, run_blocking
from pagedllm.outputs import PoolingRequestOutput, RequestOutput
from pagedllm.sampling_params import PoolingParams, RequestOutputKind, SamplingParams

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class TokenizedPrompt:
    text: str  # the prompt as text (decoded when it came as token ids)
    token_ids: list[int]

    def engine_input(self) -> dict[str, Any]:
        return {"prompt": self.text, "prompt_token_ids": self.token_ids}


class OpenAIServing:
    def __init__(
        self,
        engine: AsyncLLM,
        models: ServedModels,
        log_requests: bool = True,
        *,
        inflight: InflightRequests | None = None,
        max_log_len: int = DEFAULT_MAX_LOG_LEN,
        return_tokens_as_token_ids: bool = False,
    ) -> None:
        self.engine = engine
        self.return_tokens_as_token_ids = return_tokens_as_token_ids  # the server's flag
        self.models = models
        self.log_requests = log_requests
        self.max_log_len = max_log_len  # prompt characters a logged request shows
        self.inflight = inflight or InflightRequests(engine)  # shutdown aborts these
        self.model_config = engine.engine_config.model_config
        self.max_model_len: int = self.model_config.max_model_len
        self.tokenizer: Any = engine.tokenizer

    def check_model(self, name: str | None, api: str, runner: str = "generate") -> str:
        """The served name to answer with; 404 for an unknown model, 400 for the wrong kind."""
        served = self.models.resolve(name)
        if self.model_config.runner != runner:
            raise APIError(f"The model `{served}` does not support the {api} API.")
        return served

    def generate(
        self, prompt: TokenizedPrompt, params: SamplingParams, request_id: str, priority: int = 0
    ) -> AsyncIterator[RequestOutput]:
        return self.inflight.generate(prompt.engine_input(), params, request_id, priority)

    def encode(
        self, prompt: TokenizedPrompt, params: PoolingParams, request_id: str, priority: int = 0
    ) -> AsyncIterator[PoolingRequestOutput]:
        return self.inflight.encode(prompt.engine_input(), params, request_id, priority)

    async def encode_all(
        self,
        prompts: list[TokenizedPrompt],
        params: PoolingParams,
        request_id: str,
        priority: int = 0,
    ) -> list[PoolingRequestOutput]:
        """Every prompt's embedding, in order (request ids `<request_id>-<i>`)."""
        generators = []
        for i, prompt in enumerate(prompts):
            self.log_request(f"{request_id}-{i}", prompt, params)
            generators.append(self.encode(prompt, params, f"{request_id}-{i}", priority))
        finals: list[PoolingRequestOutput | None] = [None] * len(prompts)
        async for i, pooled in merge_async_iterators(*generators):
            finals[i] = pooled
        missing = [i for i, output in enumerate(finals) if output is None]
        if missing:
            raise RuntimeError(f"embedding request {request_id}-{missing[0]} returned nothing")
        return cast(list[PoolingRequestOutput], finals)

    def tokens_as_ids(self, request: SamplingRequestMixin) -> bool:
        """Logprobs' tokens as "token_id:{id}": the server's flag, or the request's."""
        return self.return_tokens_as_token_ids or bool(request.return_tokens_as_token_ids)

    async def tokenize_all(
        self,
        prompts: list[str | list[int]],
        add_special_tokens: bool,
        truncate: int | None = None,
        param: str = "prompt",
    ) -> list[TokenizedPrompt]:
        """`tokenize` for each prompt, off the event loop (a huge prompt takes seconds)."""
        return await run_blocking(
            lambda: [self.tokenize(p, add_special_tokens, truncate, param) for p in prompts]
        )

    def tokenize(
        self,
        prompt: str | list[int],
        add_special_tokens: bool,
        truncate: int | None = None,
        param: str = "prompt",
    ) -> TokenizedPrompt:
        if isinstance(prompt, str):
            check_text(prompt, param)
            ids = list(self.tokenizer(prompt, add_special_tokens=add_special_tokens).input_ids)
            text = prompt
        else:
            ids = list(prompt)
            # The engine's check, here because the ids are decoded first (an id past
            # the tokenizer's range is an OverflowError there).
            check_token_ids(ids, self.model_config.vocab_size, param)
            text = self.tokenizer.decode(ids)
        keep = truncation_size(truncate, self.max_model_len)
        if keep is not None and len(ids) > keep:
            ids = ids[-keep:]  # vLLM keeps the last tokens
            text = self.tokenizer.decode(ids)
        return TokenizedPrompt(text, ids)

    def check_logprobs(self, num: int | None, param: str) -> None:
        limit = self.model_config.max_logprobs  # -1: no cap (vLLM's --max-logprobs -1)
        if num is not None and not (0 <= num and (limit == -1 or num <= limit)):
            raise APIError(f"{param} must be between 0 and {limit} (got {num}).", param=param)

    def sampling_params(
        self,
        request: SamplingRequestMixin,
        max_tokens: int | None,
        logprobs: int | None,
        output_kind: RequestOutputKind,
    ) -> SamplingParams:
        """max_tokens None: the rest of the context (the engine resolves it). The sampling
        defaults' max_new_tokens caps it (vLLM's server-wide limit)."""
        defaults = self.model_config.default_sampling
        cap = defaults.get("max_new_tokens")
        if cap is not None:
            max_tokens = cap if max_tokens is None else min(max_tokens, cap)

        def pick(name: str, fallback: Any) -> Any:
            """The request's value, else the model's generation config, else vLLM's default."""
            value = getattr(request, name)
            if value is not None:
                return value
            return defaults.get(name, fallback)

        return SamplingParams(
            n=request.n,
            best_of=request.best_of,
            presence_penalty=request.presence_penalty,
            frequency_penalty=request.frequency_penalty,
            repetition_penalty=pick("repetition_penalty", 1.0),
            temperature=pick("temperature", 1.0),
            top_p=pick("top_p", 1.0),
            top_k=pick("top_k", 0),
            min_p=pick("min_p", 0.0),
            seed=request.seed,
            stop=request.stop,
            stop_token_ids=request.stop_token_ids,
            ignore_eos=request.ignore_eos,
            max_tokens=max_tokens,
            min_tokens=request.min_tokens,
            logprobs=logprobs,
            prompt_logprobs=request.prompt_logprobs,
            skip_special_tokens=request.skip_special_tokens,
            spaces_between_special_tokens=request.spaces_between_special_tokens,
            include_stop_str_in_output=request.include_stop_str_in_output,
            logit_bias=_clamp_logit_bias(request.logit_bias),
            allowed_token_ids=request.allowed_token_ids,
            bad_words=request.bad_words,
            output_kind=output_kind,
            structured_outputs=structured_outputs_params(
                request, self.engine.engine_config.structured_outputs_config
            ),
        )

    def log_request(self, request_id: str, prompt: TokenizedPrompt, params: Any) -> None:
        if self.log_requests:
            logger.info(
                "Received request %s: prompt: %r (%d tokens), params: %s",
                request_id,
                prompt.text[: self.max_log_len],
                len(prompt.token_ids),
                params,
            )


def _clamp_logit_bias(bias: dict[str, float] | None) -> dict[Any, float] | None:
    """OpenAI's range, [-100, 100], as vLLM clamps it; SamplingParams turns the keys
    into token ids and admission checks them against the vocabulary."""
    if not bias:
        return None
    return {key: max(-100.0, min(100.0, float(value))) for key, value in bias.items()}


def raise_if_failed(output: RequestOutput) -> None:
    """finish_reason "error": the engine failed this request's step (HTTP 500)."""
    if any(c.finish_reason == "error" for c in output.outputs):
        raise EngineGenerateError(f"The engine failed while running request {output.request_id}")


async def prefetch(iterator: AsyncIterator[T]) -> AsyncIterator[T]:
    """Wait for the first item now (so errors become a plain HTTP error before a
    stream starts), then return an iterator over all items."""
    try:
        first = await iterator.__anext__()
    except StopAsyncIteration:
        return _empty()
    return _chain(first, iterator)


async def _empty() -> AsyncIterator[Any]:
    return
    yield


async def _chain(first: T, rest: AsyncIterator[T]) -> AsyncIterator[T]:
    yield first
    async for item in rest:
        yield item
