"""Errors every layer may raise (a leaf module, like vLLM's `vllm/exceptions.py`)."""

from __future__ import annotations


class InvalidRequestError(ValueError):
    """A request the engine will not run, naming the field it is about (`param`).

    A ValueError, so callers that catch ValueError keep working; the OpenAI server
    answers it with HTTP 400 and `param` in the error body (vLLM's
    VLLMValidationError). The message is the whole user-facing text."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param
