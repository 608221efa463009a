"""The hand-written text chunk is the JSON object the pydantic models write."""

from __future__ import annotations

import json

import pytest

from pagedllm.entrypoints.openai.protocol import (
    ChatCompletionResponseStreamChoice,
    ChatCompletionStreamResponse,
    CompletionResponseChoice,
    CompletionStreamResponse,
    DeltaMessage,
)
from pagedllm.entrypoints.openai.sse import TextChunkEncoder, sse_event

TEXTS = ["", "hello", ' "quoted" \\ back', "line\nbreak\ttab\x01", "你好 🙂", "\u2028"]


def _payload(event: str) -> object:
    assert event.startswith("data: ") and event.endswith("\n\n")
    return json.loads(event[len("data: ") : -2])


@pytest.mark.parametrize("text", TEXTS)
def test_completion_chunk_matches_pydantic(text: str) -> None:
    encoder = TextChunkEncoder("cmpl-1", "text_completion", 17, 'm"odel', chat=False)
    choice = CompletionResponseChoice(
        index=3, text=text, logprobs=None, finish_reason=None, stop_reason=None
    )
    model = CompletionStreamResponse(id="cmpl-1", created=17, model='m"odel', choices=[choice])
    assert _payload(encoder.encode(3, text)) == _payload(sse_event(model))


@pytest.mark.parametrize("text", TEXTS)
def test_chat_chunk_matches_pydantic(text: str) -> None:
    encoder = TextChunkEncoder("chatcmpl-1", "chat.completion.chunk", 5, "m", chat=True)
    choice = ChatCompletionResponseStreamChoice(index=0, delta=DeltaMessage(content=text))
    model = ChatCompletionStreamResponse(id="chatcmpl-1", created=5, model="m", choices=[choice])
    assert _payload(encoder.encode(0, text)) == _payload(sse_event(model))
