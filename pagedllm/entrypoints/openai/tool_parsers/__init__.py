"""Tool-call parsers (`--tool-call-parser`, vLLM's names): model output text ->
(content, tool calls) for `tool_choice="auto"`, streamed as OpenAI deltas or whole."""

from __future__ import annotations

from pagedllm.entrypoints.openai.tool_parsers.parsers import (
    TOOL_PARSERS,
    JsonArrayToolParser,
    get_tool_parser,
)
from pagedllm.entrypoints.openai.tool_parsers.stream import ToolStreamParser
from pagedllm.entrypoints.openai.tool_parsers.tool_call import ExtractedToolCalls, ToolCall

__all__ = [
    "TOOL_PARSERS",
    "ExtractedToolCalls",
    "JsonArrayToolParser",
    "ToolCall",
    "ToolStreamParser",
    "get_tool_parser",
]
