"""vLLM's POST /tokenize (a prompt, or chat messages through the template) and
POST /detokenize."""

from __future__ import annotations

from pagedllm.engine.async_engine import AsyncLLM
from pagedllm.entrypoints.chat_utils import render_chat
from pagedllm.entrypoints.openai.protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from pagedllm.entrypoints.openai.serving_engine import OpenAIServing
from pagedllm.entrypoints.openai.serving_models import ServedModels


class OpenAIServingTokenization(OpenAIServing):
    def __init__(
        self, engine: AsyncLLM, models: ServedModels, chat_template: str | None = None
    ) -> None:
        super().__init__(engine, models, log_requests=False)
        self.chat_template = chat_template

    def tokenize_request(self, request: TokenizeRequest) -> TokenizeResponse:
        self.models.resolve(request.model)
        if request.messages is not None:
            text = render_chat(
                self.tokenizer,
                request.messages,
                request.chat_template or self.chat_template,
                request.add_generation_prompt,
                request.continue_final_message,
            )
            add_special = bool(request.add_special_tokens)  # default False for chat
        else:
            text = request.prompt or ""
            add_special = request.add_special_tokens is not False  # default True
        ids = list(self.tokenizer(text, add_special_tokens=add_special).input_ids)
        strs = self.tokenizer.convert_ids_to_tokens(ids) if request.return_token_strs else None
        return TokenizeResponse(
            count=len(ids), max_model_len=self.max_model_len, tokens=ids, token_strs=strs
        )

    def detokenize_request(self, request: DetokenizeRequest) -> DetokenizeResponse:
        self.models.resolve(request.model)
        self._check_token_ids(request.tokens)
        return DetokenizeResponse(prompt=self.tokenizer.decode(request.tokens))
