"""vLLM's POST /tokenize (a prompt, or chat messages through the template) and
POST /detokenize. Templates, tokenizing and decoding run off the event loop."""

from __future__ import annotations

from pagedllm.engine.async_engine import AsyncLLM
from pagedllm.engine.validation import check_token_ids
from pagedllm.entrypoints.chat_render import RenderLimits
from pagedllm.entrypoints.chat_utils import check_text, render_chat_async
from pagedllm.entrypoints.openai.protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from pagedllm.entrypoints.openai.serving_engine import OpenAIServing
from pagedllm.entrypoints.openai.serving_models import ServedModels
from pagedllm.entrypoints.utils import run_blocking


class OpenAIServingTokenization(OpenAIServing):
    def __init__(
        self,
        engine: AsyncLLM,
        models: ServedModels,
        chat_template: str | None = None,
        *,
        render_limits: RenderLimits | None = None,
    ) -> None:
        super().__init__(engine, models, log_requests=False)
        self.chat_template = chat_template
        self.render_limits = render_limits or RenderLimits()

    async def tokenize_request(self, request: TokenizeRequest) -> TokenizeResponse:
        self.models.resolve(request.model)
        if request.messages is not None:
            text = await render_chat_async(
                self.tokenizer,
                request.messages,
                request.chat_template or self.chat_template,
                request.add_generation_prompt,
                request.continue_final_message,
                limits=self.render_limits,
            )
            add_special = bool(request.add_special_tokens)  # default False for chat
        else:
            text = request.prompt or ""
            add_special = request.add_special_tokens is not False  # default True
        return await run_blocking(self._tokenize, text, add_special, request.return_token_strs)

    def _tokenize(self, text: str, add_special: bool, token_strs: bool | None) -> TokenizeResponse:
        check_text(text, "prompt")
        ids = list(self.tokenizer(text, add_special_tokens=add_special).input_ids)
        strs = self.tokenizer.convert_ids_to_tokens(ids) if token_strs else None
        return TokenizeResponse(
            count=len(ids), max_model_len=self.max_model_len, tokens=ids, token_strs=strs
        )

    async def detokenize_request(self, request: DetokenizeRequest) -> DetokenizeResponse:
        self.models.resolve(request.model)
        check_token_ids(request.tokens, self.model_config.vocab_size, "tokens")
        text = await run_blocking(self.tokenizer.decode, request.tokens)
        return DetokenizeResponse(prompt=text)
