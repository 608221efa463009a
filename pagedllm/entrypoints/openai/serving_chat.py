"""POST /v1/chat/completions: messages through the chat template, n, logprobs in
the chat format, streaming over SSE (a role chunk first, [DONE] last)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

from pagedllm.engine.async_engine import AsyncLLM
from pagedllm.entrypoints.chat_render import RenderLimits
from pagedllm.entrypoints.chat_utils import render_chat_async
from pagedllm.entrypoints.http_options import DEFAULT_MAX_LOG_LEN
from pagedllm.entrypoints.openai.errors import APIError, exception_to_error
from pagedllm.entrypoints.openai.logprobs import chat_logprobs, prompt_logprobs_json
from pagedllm.entrypoints.openai.protocol import (
    ChatCompletionLogProbs,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionResponseChoice,
    ChatCompletionResponseStreamChoice,
    ChatCompletionStreamResponse,
    ChatResponseMessage,
    DeltaMessage,
    UsageInfo,
    random_uuid,
)
from pagedllm.entrypoints.openai.serving_engine import (
    OpenAIServing,
    TokenizedPrompt,
    prefetch,
    raise_if_failed,
)
from pagedllm.entrypoints.openai.serving_models import ServedModels
from pagedllm.entrypoints.openai.sse import SSE_DONE, TextChunkEncoder, sse_event
from pagedllm.entrypoints.openai.tool_calls import (
    ToolCallStreamer,
    ToolPlan,
    make_tool_plan,
    safe_extract,
    tool_calls_json,
)
from pagedllm.entrypoints.shutdown import InflightRequests
from pagedllm.outputs import CompletionOutput, RequestOutput
from pagedllm.sampling_params import RequestOutputKind, SamplingParams
from pagedllm.structured_output import validate_structured_outputs


def _check_supported(request: ChatCompletionRequest) -> None:
    if not request.messages:
        raise APIError("messages must contain at least one message", param="messages")
    if request.top_logprobs and not request.logprobs:
        raise APIError(
            "when using `top_logprobs`, `logprobs` must be set to true", param="top_logprobs"
        )


class OpenAIServingChat(OpenAIServing):
    def __init__(
        self,
        engine: AsyncLLM,
        models: ServedModels,
        chat_template: str | None = None,
        log_requests: bool = True,
        *,
        render_limits: RenderLimits | None = None,
        inflight: InflightRequests | None = None,
        enable_auto_tools: bool = False,
        tool_parser: str | None = None,
        max_log_len: int = DEFAULT_MAX_LOG_LEN,
        return_tokens_as_token_ids: bool = False,
    ) -> None:
        super().__init__(
            engine,
            models,
            log_requests,
            inflight=inflight,
            max_log_len=max_log_len,
            return_tokens_as_token_ids=return_tokens_as_token_ids,
        )
        self.chat_template = chat_template
        self.render_limits = render_limits or RenderLimits()
        self.enable_auto_tools = enable_auto_tools
        self.tool_parser = tool_parser

    async def render(
        self, request: ChatCompletionRequest, tools: list[dict[str, Any]] | None = None
    ) -> TokenizedPrompt:
        """The template runs in its own thread (with a deadline), tokenization in the
        pool: the event loop only waits."""
        text = await render_chat_async(
            self.tokenizer,
            request.messages,
            request.chat_template or self.chat_template,
            request.add_generation_prompt,
            request.continue_final_message,
            request.chat_template_kwargs,
            self.render_limits,
            tools,
        )
        # The template already wrote the special tokens it wants (vLLM's default).
        prompts = await self.tokenize_all(
            [text], request.add_special_tokens, request.truncate_prompt_tokens, "messages"
        )
        return prompts[0]

    async def create_chat_completion(
        self, request: ChatCompletionRequest
    ) -> ChatCompletionResponse | StreamingResponse:
        model = self.check_model(request.model, "Chat Completions")
        _check_supported(request)
        plan = make_tool_plan(request, self.enable_auto_tools, self.tool_parser)
        num_logprobs = (request.top_logprobs or 0) if request.logprobs else None
        self.check_logprobs(num_logprobs, "top_logprobs")
        prompt = await self.render(request, plan.template_tools)
        max_tokens = request.max_completion_tokens
        if max_tokens is None:
            max_tokens = request.max_tokens
        kind = RequestOutputKind.DELTA if request.stream else RequestOutputKind.FINAL_ONLY
        params = self.sampling_params(request, max_tokens, num_logprobs, kind)
        self._constrain_tools(params, plan)
        request_id = f"chatcmpl-{random_uuid()}"
        self.log_request(request_id, prompt, params)
        outputs = self.generate(prompt, params, request_id, request.priority)
        if request.stream:
            first_ready = await prefetch(outputs)
            body = self._stream(request, model, request_id, prompt, first_ready, plan)
            return StreamingResponse(body, media_type="text/event-stream")
        final: RequestOutput | None = None
        async for output in outputs:
            final = output
        if final is None:
            raise RuntimeError(f"request {request_id} ended without a final output")
        raise_if_failed(final)
        return self._response(request, model, request_id, prompt, final, plan)

    def _constrain_tools(self, params: SamplingParams, plan: ToolPlan) -> None:
        """tool_choice required / named: the grammar of the call(s)."""
        constraint = plan.constraint()
        if constraint is None:
            return
        if params.structured_outputs is not None:
            raise APIError(
                "tool_choice required or named cannot be combined with a structured output constraint",
                param="tool_choice",
            )
        try:
            validate_structured_outputs(
                constraint, self.engine.engine_config.structured_outputs_config
            )
        except ValueError as exc:
            raise APIError(
                f"tools: a tool's parameters are not a usable JSON schema: {exc}", param="tools"
            ) from None
        params.structured_outputs = constraint

    def _logprobs(
        self, request: ChatCompletionRequest, comp: CompletionOutput
    ) -> ChatCompletionLogProbs | None:
        if not request.logprobs:
            return None
        steps = list(comp.logprobs or [])
        num_top = request.top_logprobs or 0
        as_ids = self.tokens_as_ids(request)
        return chat_logprobs(list(comp.token_ids), steps, num_top, self.tokenizer, as_ids)

    def _response(
        self,
        request: ChatCompletionRequest,
        model: str,
        request_id: str,
        prompt: TokenizedPrompt,
        final: RequestOutput,
        plan: ToolPlan,
    ) -> ChatCompletionResponse:
        choices = [
            ChatCompletionResponseChoice(
                index=comp.index,
                message=_message(comp, plan),
                logprobs=self._logprobs(request, comp),
                finish_reason=_finish_reason(comp, plan),
                stop_reason=comp.stop_reason,
            )
            for comp in sorted(final.outputs, key=lambda c: c.index)
        ]
        completion_tokens = sum(len(c.token_ids) for c in final.outputs)
        usage = _usage(len(prompt.token_ids), completion_tokens)
        return ChatCompletionResponse(
            id=request_id,
            model=model,
            choices=choices,
            usage=usage,
            prompt_logprobs=prompt_logprobs_json(final.prompt_logprobs),
        )

    async def _stream(
        self,
        request: ChatCompletionRequest,
        model: str,
        request_id: str,
        prompt: TokenizedPrompt,
        outputs: AsyncIterator[RequestOutput],
        plan: ToolPlan,
    ) -> AsyncIterator[str]:
        created = int(time.time())
        options = request.stream_options
        completion_tokens = 0

        def chunk(choices: list[Any], usage: UsageInfo | None = None) -> str:
            body = ChatCompletionStreamResponse(
                id=request_id, created=created, model=model, choices=choices, usage=usage
            )
            return sse_event(body)

        for index in range(request.n):
            role = DeltaMessage(role="assistant", content="")
            yield chunk([ChatCompletionResponseStreamChoice(index=index, delta=role)])
        fast = TextChunkEncoder(request_id, "chat.completion.chunk", created, model, chat=True)
        running = bool(options and options.continuous_usage_stats)
        streamers = {i: ToolCallStreamer(plan) for i in range(request.n)}
        try:
            async for output in outputs:
                raise_if_failed(output)
                for comp in output.outputs:
                    completion_tokens += len(comp.token_ids)
                    if plan.mode != "none":
                        tool_chunk = _tool_chunk(streamers[comp.index], comp, plan)
                        if tool_chunk is not None:
                            yield chunk([tool_chunk])
                        continue
                    if not comp.text and comp.finish_reason is None and not request.logprobs:
                        continue  # nothing to show yet (e.g. half of a multi-byte character)
                    if comp.finish_reason is None and not request.logprobs and not running:
                        yield fast.encode(comp.index, comp.text)
                        continue
                    choice = ChatCompletionResponseStreamChoice(
                        index=comp.index,
                        delta=DeltaMessage(content=comp.text),
                        logprobs=self._logprobs(request, comp),
                        finish_reason=comp.finish_reason,
                        stop_reason=comp.stop_reason,
                    )
                    usage = _usage(len(prompt.token_ids), completion_tokens) if running else None
                    yield chunk([choice], usage)
            if options and options.include_usage:
                yield chunk([], _usage(len(prompt.token_ids), completion_tokens))
        except Exception as exc:
            yield sse_event(exception_to_error(exc))
        yield SSE_DONE


def _message(comp: CompletionOutput, plan: ToolPlan) -> ChatResponseMessage:
    if plan.mode == "none":
        return ChatResponseMessage(role="assistant", content=comp.text)
    extracted = safe_extract(plan, comp.text)
    return ChatResponseMessage(
        role="assistant",
        content=extracted.content,
        tool_calls=tool_calls_json(extracted.tool_calls),
    )


def _finish_reason(comp: CompletionOutput, plan: ToolPlan) -> str | None:
    """ "tool_calls" when auto / required produced calls (OpenAI: "stop" for a named one)."""
    if plan.mode in ("auto", "required") and comp.finish_reason == "stop":
        if safe_extract(plan, comp.text).tools_called:
            return "tool_calls"
    return comp.finish_reason


def _tool_chunk(
    streamer: ToolCallStreamer, comp: CompletionOutput, plan: ToolPlan
) -> ChatCompletionResponseStreamChoice | None:
    finished = comp.finish_reason is not None
    fields = streamer.delta(comp.text, finished)
    if fields is None and not finished:
        return None
    reason = comp.finish_reason
    if plan.mode in ("auto", "required") and reason == "stop" and streamer.tools_called:
        reason = "tool_calls"
    return ChatCompletionResponseStreamChoice(
        index=comp.index,
        delta=DeltaMessage(**(fields or {})),
        finish_reason=reason,
        stop_reason=comp.stop_reason,
    )


def _usage(prompt_tokens: int, completion_tokens: int) -> UsageInfo:
    return UsageInfo(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )
