"""POST /v1/completions: prompts as text, token ids or lists of either; n, echo,
logprobs (legacy format), streaming over SSE."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi.responses import StreamingResponse

from pagedllm.entrypoints.openai.errors import APIError, exception_to_error
from pagedllm.entrypoints.openai.logprobs import completion_logprobs, prompt_logprobs_json
from pagedllm.entrypoints.openai.protocol import (
    CompletionLogProbs,
    CompletionRequest,
    CompletionResponse,
    CompletionResponseChoice,
    CompletionStreamResponse,
    UsageInfo,
    random_uuid,
)
from pagedllm.entrypoints.openai.serving_engine import (
    OpenAIServing,
    TokenizedPrompt,
    prefetch,
    raise_if_failed,
)
from pagedllm.entrypoints.openai.sse import SSE_DONE, TextChunkEncoder, sse_event
from pagedllm.entrypoints.utils import merge_async_iterators
from pagedllm.outputs import CompletionOutput, Logprob, RequestOutput
from pagedllm.sampling_params import RequestOutputKind, SamplingParams


def _prompt_list(prompt: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise APIError("prompt must not be empty", param="prompt")
    if all(isinstance(p, int) for p in prompt):
        return [list(prompt)]  # type: ignore[arg-type]
    return list(prompt)  # type: ignore[arg-type]


@dataclass
class _StreamState:
    """Per-stream bookkeeping; choice index = prompt index * n + output index."""

    text_len: dict[int, int] = field(default_factory=dict)  # text sent so far, per choice
    echoed: set[int] = field(default_factory=set)
    completion_tokens: int = 0


class OpenAIServingCompletion(OpenAIServing):
    async def create_completion(
        self, request: CompletionRequest
    ) -> CompletionResponse | StreamingResponse:
        model = self.check_model(request.model, "Completions")
        if request.suffix is not None:
            raise APIError("suffix is not currently supported", param="suffix")
        self.check_logprobs(request.logprobs, "logprobs")
        prompts = await self.tokenize_all(
            _prompt_list(request.prompt), request.add_special_tokens, request.truncate_prompt_tokens
        )
        kind = RequestOutputKind.DELTA if request.stream else RequestOutputKind.FINAL_ONLY
        params = [self._params(request, kind) for _ in prompts]  # validate all, then run
        request_id = f"cmpl-{random_uuid()}"
        generators = []
        for i, (prompt, sp) in enumerate(zip(prompts, params)):
            sub_id = f"{request_id}-{i}"
            self.log_request(sub_id, prompt, sp)
            generators.append(self.generate(prompt, sp, sub_id, request.priority))
        merged = merge_async_iterators(*generators)
        if request.stream:
            first_ready = await prefetch(merged)
            body = self._stream(request, model, request_id, prompts, first_ready)
            return StreamingResponse(body, media_type="text/event-stream")
        finals: list[RequestOutput | None] = [None] * len(prompts)
        async for i, output in merged:
            finals[i] = output
        return self._response(request, model, request_id, prompts, finals)

    def _params(self, request: CompletionRequest, kind: RequestOutputKind) -> SamplingParams:
        params = self.sampling_params(request, request.max_tokens, request.logprobs, kind)
        if request.echo and request.logprobs is not None:
            params.prompt_logprobs = request.logprobs
        return params

    def _logprobs(
        self,
        request: CompletionRequest,
        prompt: TokenizedPrompt | None,
        output: RequestOutput,
        comp: CompletionOutput,
        text_offset: int,
    ) -> CompletionLogProbs | None:
        """Logprobs of (the echoed prompt, when `prompt` is given, and) the new tokens."""
        if request.logprobs is None:
            return None
        token_ids = list(comp.token_ids)
        steps: list[dict[int, Logprob] | None] = list(comp.logprobs or [])
        if prompt is not None:
            prompt_steps = list(output.prompt_logprobs or [None] * len(prompt.token_ids))
            token_ids = prompt.token_ids + token_ids
            steps = prompt_steps + steps
        as_ids = self.tokens_as_ids(request)
        return completion_logprobs(
            token_ids, steps, request.logprobs, self.tokenizer, text_offset, as_ids
        )

    def _response(
        self,
        request: CompletionRequest,
        model: str,
        request_id: str,
        prompts: list[TokenizedPrompt],
        finals: list[RequestOutput | None],
    ) -> CompletionResponse:
        choices: list[CompletionResponseChoice] = []
        completion_tokens = 0
        for i, (prompt, output) in enumerate(zip(prompts, finals)):
            if output is None:
                raise RuntimeError(f"request {request_id}-{i} ended without a final output")
            raise_if_failed(output)
            prompt_logprobs = prompt_logprobs_json(output.prompt_logprobs)
            for comp in sorted(output.outputs, key=lambda c: c.index):
                echo = prompt if request.echo else None
                choices.append(
                    CompletionResponseChoice(
                        index=i * request.n + comp.index,
                        text=(prompt.text if echo else "") + comp.text,
                        logprobs=self._logprobs(request, echo, output, comp, 0),
                        finish_reason=comp.finish_reason,
                        stop_reason=comp.stop_reason,
                        prompt_logprobs=prompt_logprobs,
                    )
                )
                completion_tokens += len(comp.token_ids)
        usage = _usage(prompts, completion_tokens)
        return CompletionResponse(id=request_id, model=model, choices=choices, usage=usage)

    async def _stream(
        self,
        request: CompletionRequest,
        model: str,
        request_id: str,
        prompts: list[TokenizedPrompt],
        outputs: AsyncIterator[tuple[int, RequestOutput]],
    ) -> AsyncIterator[str]:
        created = int(time.time())
        state = _StreamState()
        options = request.stream_options
        fast = TextChunkEncoder(request_id, "text_completion", created, model, chat=False)
        plain = not request.echo and request.logprobs is None
        running_usage = bool(options and options.continuous_usage_stats)
        try:
            async for i, output in outputs:
                raise_if_failed(output)
                for comp in output.outputs:
                    if plain and not running_usage and comp.text and comp.finish_reason is None:
                        state.completion_tokens += len(comp.token_ids)
                        yield fast.encode(i * request.n + comp.index, comp.text)
                        continue
                    choice = self._stream_choice(request, prompts[i], i, output, comp, state)
                    if choice is None:
                        continue
                    chunk = CompletionStreamResponse(
                        id=request_id, created=created, model=model, choices=[choice]
                    )
                    if running_usage:
                        chunk.usage = _usage(prompts, state.completion_tokens)
                    yield sse_event(chunk)
            if options and options.include_usage:
                usage = _usage(prompts, state.completion_tokens)
                yield sse_event(
                    CompletionStreamResponse(
                        id=request_id, created=created, model=model, choices=[], usage=usage
                    )
                )
        except Exception as exc:
            yield sse_event(exception_to_error(exc))
        yield SSE_DONE

    def _stream_choice(
        self,
        request: CompletionRequest,
        prompt: TokenizedPrompt,
        prompt_index: int,
        output: RequestOutput,
        comp: CompletionOutput,
        state: _StreamState,
    ) -> CompletionResponseChoice | None:
        index = prompt_index * request.n + comp.index
        echo = prompt if request.echo and index not in state.echoed else None
        state.echoed.add(index)
        state.completion_tokens += len(comp.token_ids)
        text = (echo.text if echo else "") + comp.text
        if not text and comp.finish_reason is None and request.logprobs is None:
            return None  # nothing to show yet (e.g. half of a multi-byte character)
        offset = state.text_len.get(index, 0)
        state.text_len[index] = offset + len(text)
        return CompletionResponseChoice(
            index=index,
            text=text,
            logprobs=self._logprobs(request, echo, output, comp, offset),
            finish_reason=comp.finish_reason,
            stop_reason=comp.stop_reason,
        )


def _usage(prompts: list[TokenizedPrompt], completion_tokens: int) -> UsageInfo:
    prompt_tokens = sum(len(p.token_ids) for p in prompts)
    return UsageInfo(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )
