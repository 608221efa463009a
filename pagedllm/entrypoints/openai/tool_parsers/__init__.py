"""Tool-call parsers (`--tool-call-parser`, vLLM's names): model output text ->
(content, tool calls) for `tool_choice="auto"`."""

from __future__ import annotations

from pagedllm.entrypoints.openai.tool_parsers.parsers import (
    TOOL_PARSERS,
    ExtractedToolCalls,
    ToolCall,
    get_tool_parser,
)

__all__ = ["TOOL_PARSERS", "ExtractedToolCalls", "ToolCall", "get_tool_parser"]
