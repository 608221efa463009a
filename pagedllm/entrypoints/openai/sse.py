"""Server-sent events as OpenAI streams them: `data: <json>\n\n`, then `data: [DONE]`."""

from __future__ import annotations

from pydantic import BaseModel

SSE_DONE = "data: [DONE]\n\n"


def sse_event(payload: BaseModel) -> str:
    return f"data: {payload.model_dump_json()}\n\n"
