"""The parsers of the model families' tool-call formats:

    hermes       <tool_call>{"name": ..., "arguments": {...}}</tool_call> (repeated)
    llama3_json  [<|python_tag|>]{"name": ..., "parameters": {...}} (several joined by ;)
    mistral      [TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]
    pythonic     [get_weather(city="Paris"), other(x=1)]

Text that does not parse is returned as content with no tool calls."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ToolCall:
    name: str
    arguments: str  # JSON text, as OpenAI sends it


@dataclass
class ExtractedToolCalls:
    content: str | None
    tool_calls: list[ToolCall] = field(default_factory=list)

    @property
    def tools_called(self) -> bool:
        return bool(self.tool_calls)


def _call(obj: Any, args_key: str) -> ToolCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get(args_key, obj.get("arguments", obj.get("parameters", {})))
    return ToolCall(obj["name"], args if isinstance(args, str) else json.dumps(args))


def _calls(objs: list[Any], args_key: str) -> list[ToolCall] | None:
    calls = [_call(o, args_key) for o in objs]
    return None if not calls or any(c is None for c in calls) else calls  # type: ignore[return-value]


_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def parse_hermes(text: str) -> ExtractedToolCalls:
    if "<tool_call>" not in text:
        return ExtractedToolCalls(text)
    try:
        calls = _calls([json.loads(m) for m in _HERMES.findall(text)], "arguments")
    except json.JSONDecodeError:
        return ExtractedToolCalls(text)
    content = text[: text.index("<tool_call>")].strip() or None
    return ExtractedToolCalls(content, calls) if calls else ExtractedToolCalls(text)


def parse_llama3_json(text: str) -> ExtractedToolCalls:
    body = text.replace("<|python_tag|>", "").strip()
    if not body.startswith("{"):
        return ExtractedToolCalls(text)
    try:
        calls = _calls(_json_objects(body), "parameters")
    except json.JSONDecodeError:
        return ExtractedToolCalls(text)
    return ExtractedToolCalls(None, calls) if calls else ExtractedToolCalls(text)


def _json_objects(body: str) -> list[Any]:
    """JSON values one after the other, separated by ';' and whitespace."""
    decoder, objs, i = json.JSONDecoder(), [], 0
    while i < len(body):
        obj, i = decoder.raw_decode(body, i)
        objs.append(obj)
        while i < len(body) and body[i] in "; \n\t":
            i += 1
    return objs


def parse_mistral(text: str) -> ExtractedToolCalls:
    if "[TOOL_CALLS]" not in text:
        return ExtractedToolCalls(text)
    head, _, tail = text.partition("[TOOL_CALLS]")
    try:
        parsed = json.loads(tail.strip())
    except json.JSONDecodeError:
        return ExtractedToolCalls(text)
    calls = _calls(parsed if isinstance(parsed, list) else [parsed], "arguments")
    return ExtractedToolCalls(head.strip() or None, calls) if calls else ExtractedToolCalls(text)


def parse_pythonic(text: str) -> ExtractedToolCalls:
    body = text.strip()
    if not (body.startswith("[") and body.endswith("]")):
        return ExtractedToolCalls(text)
    try:
        tree = ast.parse(body, mode="eval").body
        assert isinstance(tree, ast.List)
        calls = [_python_call(node) for node in tree.elts]
    except (SyntaxError, ValueError, AssertionError):
        return ExtractedToolCalls(text)
    return ExtractedToolCalls(None, calls) if calls else ExtractedToolCalls(text)


def _python_call(node: ast.expr) -> ToolCall:
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or node.args:
        raise ValueError("not a keyword-argument call")
    args = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg}
    return ToolCall(node.func.id, json.dumps(args))


TOOL_PARSERS: dict[str, Callable[[str], ExtractedToolCalls]] = {
    "hermes": parse_hermes,
    "llama3_json": parse_llama3_json,
    "mistral": parse_mistral,
    "pythonic": parse_pythonic,
}


def get_tool_parser(name: str) -> Callable[[str], ExtractedToolCalls]:
    if name not in TOOL_PARSERS:
        raise ValueError(f"--tool-call-parser must be one of {sorted(TOOL_PARSERS)}, got {name!r}")
    return TOOL_PARSERS[name]
