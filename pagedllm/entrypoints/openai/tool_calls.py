"""Tool calling on /v1/chat/completions: what `tools` + `tool_choice` ask for, the
grammar that enforces `required` and named choices, and the `tool_calls` of the answer.

    none      the tools are not shown to the template; plain text
    auto      the tools go into the template; the output is parsed with
              --tool-call-parser (needs --enable-auto-tool-choice, as in vLLM)
    required  output constrained to a JSON list of {"name", "parameters"} of the tools
    named     output constrained to the arguments of that function (its JSON schema)

Streamed, every mode sends the calls as they are generated (`ToolCallStreamer`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pagedllm.entrypoints.openai.errors import APIError
from pagedllm.entrypoints.openai.protocol import random_uuid
from pagedllm.entrypoints.openai.tool_parsers import (
    ExtractedToolCalls,
    JsonArrayToolParser,
    ToolCall,
    ToolStreamParser,
)
from pagedllm.entrypoints.openai.tool_parsers import get_tool_parser as _get_parser
from pagedllm.sampling_params import StructuredOutputsParams


@dataclass
class ToolPlan:
    mode: str  # none | auto | required | named
    tools: list[dict[str, Any]]
    named: str | None = None
    parser: type[ToolStreamParser] | None = None

    @property
    def template_tools(self) -> list[dict[str, Any]] | None:
        return self.tools if self.mode != "none" and self.tools else None

    def constraint(self) -> StructuredOutputsParams | None:
        if self.mode == "named":
            return StructuredOutputsParams(json=_parameters(self._function(self.named)))
        if self.mode == "required":
            return StructuredOutputsParams(json=_required_schema(self.tools))
        return None

    def _function(self, name: str | None) -> dict[str, Any]:
        return next(t["function"] for t in self.tools if t["function"]["name"] == name)

    def stream_parser(self) -> ToolStreamParser | None:
        """A fresh parser of one choice's text (None: named and none need none)."""
        if self.mode == "required":
            return JsonArrayToolParser()
        if self.mode == "auto" and self.parser is not None:
            return self.parser()
        return None

    def extract(self, text: str) -> ExtractedToolCalls:
        """The answer's content and tool calls."""
        if self.mode == "named":
            assert self.named is not None
            return ExtractedToolCalls(None, [ToolCall(self.named, text)])
        parser = self.stream_parser()
        return parser.extract(text) if parser is not None else ExtractedToolCalls(text)


def _parameters(function: dict[str, Any]) -> dict[str, Any]:
    params = function.get("parameters") or {"type": "object", "properties": {}}
    return dict(params)


def _required_schema(tools: list[dict[str, Any]]) -> dict[str, Any]:
    """vLLM's schema for tool_choice="required": at least one call of the tools."""
    calls = [
        {
            "type": "object",
            "properties": {
                "name": {"enum": [t["function"]["name"]]},
                "parameters": _parameters(t["function"]),
            },
            "required": ["name", "parameters"],
            "additionalProperties": False,
        }
        for t in tools
    ]
    return {"type": "array", "minItems": 1, "items": {"anyOf": calls}}


def make_tool_plan(request: Any, enable_auto: bool, parser_name: str | None) -> ToolPlan:
    """Check `tools` and `tool_choice` (400s naming them) and decide the mode."""
    tools = _check_tools(request.tools or [])
    choice = request.tool_choice
    if choice is None:
        choice = "auto" if tools else "none"
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if choice.get("type") != "function" or not isinstance(name, str):
            raise APIError(
                'a named tool_choice is {"type": "function", "function": {"name": ...}}',
                param="tool_choice",
            )
        if name not in {t["function"]["name"] for t in tools}:
            raise APIError(
                f"tool_choice names {name!r}, which is not in tools", param="tool_choice"
            )
        return ToolPlan("named", tools, named=name)
    if choice not in ("none", "auto", "required"):
        raise APIError(
            f"tool_choice must be none, auto, required or a named function, got {choice!r}",
            param="tool_choice",
        )
    if choice != "none" and not tools:
        raise APIError(f"tool_choice={choice!r} needs tools", param="tool_choice")
    if choice == "auto":
        if not enable_auto or parser_name is None:
            raise APIError(
                '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set',
                param="tool_choice",
            )
        return ToolPlan("auto", tools, parser=_get_parser(parser_name))
    return ToolPlan(choice, tools)


def _check_tools(tools: list[Any]) -> list[dict[str, Any]]:
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise APIError(
                'each tool is {"type": "function", "function": {"name": ...}}', param="tools"
            )
        params = function.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise APIError(
                f"tools: {function['name']}.parameters must be a JSON schema object", param="tools"
            )
    return list(tools)


def tool_calls_json(calls: list[ToolCall]) -> list[dict[str, Any]]:
    """OpenAI's message.tool_calls."""
    return [
        {"id": f"chatcmpl-tool-{random_uuid()}", "type": "function",
         "function": {"name": c.name, "arguments": c.arguments}}
        for c in calls
    ]  # fmt: skip


class ToolCallStreamer:
    """The `delta`s of one streamed choice under a tool plan, as OpenAI streams them:
    a call's first delta carries its index, id, type and name, the next ones pieces of
    its arguments, which join to the arguments of the non-streamed answer. Named: the
    text is the arguments. Required / auto: the plan's parser reads the text as it
    comes (tool_parsers/stream.py)."""

    def __init__(self, plan: ToolPlan) -> None:
        self.plan = plan
        self.parser = plan.stream_parser()
        self.started = False

    @property
    def tools_called(self) -> bool:
        """Calls were sent (the finish reason is then "tool_calls", for auto / required)."""
        return self.parser is not None and self.parser.tools_called

    def delta(self, text: str, finished: bool) -> dict[str, Any] | None:
        """A DeltaMessage's fields, or None when there is nothing to send yet."""
        if self.plan.mode == "named":
            return self._named(text)
        if self.parser is None:
            return {"content": text} if text else None
        return self.parser.feed(text, finished)

    def _named(self, text: str) -> dict[str, Any] | None:
        if not text and self.started:
            return None
        call: dict[str, Any] = {"index": 0, "function": {"arguments": text}}
        if not self.started:
            self.started = True
            call.update(id=f"chatcmpl-tool-{random_uuid()}", type="function")
            call["function"]["name"] = self.plan.named
        return {"tool_calls": [call]}


def safe_extract(plan: ToolPlan, text: str) -> ExtractedToolCalls:
    """plan.extract, or the text as content when it does not parse (cut by max_tokens)."""
    try:
        return plan.extract(text)
    except (ValueError, KeyError, TypeError):
        return ExtractedToolCalls(text)
