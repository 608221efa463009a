"""The parsers of the model families' tool-call formats (`--tool-call-parser`):

    hermes       <tool_call>{"name": ..., "arguments": {...}}</tool_call> (repeated)
    llama3_json  [<|python_tag|>]{"name": ..., "parameters": {...}} (several joined by ;)
    mistral      [TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]
    pythonic     [get_weather(city="Paris"), other(x=1)]

and the output of tool_choice="required" (a JSON list of {"name", "parameters"}).
Each is a `ToolStreamParser` (stream.py): `feed` streams, `extract` parses a whole
answer. Text that does not parse is returned as content with no tool calls."""

from __future__ import annotations

import ast
import json

from pagedllm.entrypoints.openai.protocol import random_uuid
from pagedllm.entrypoints.openai.tool_parsers.stream import (
    DeltaBuilder,
    SentCall,
    ToolStreamParser,
)
from pagedllm.entrypoints.openai.tool_parsers.tool_call import ExtractedToolCalls, ToolCall

_WS = " \t\r\n"


class HermesToolParser(ToolStreamParser):
    """Content, then `<tool_call>` objects; text between calls is skipped."""

    content_marker = "<tool_call>"
    _MARKERS = ("<tool_call>", "</tool_call>")

    def _between(self, out: DeltaBuilder) -> bool:
        rest = self.text[self.pos :]
        for marker in self._MARKERS:
            if rest.startswith(marker):
                self.pos += len(marker)
                return True
            if marker.startswith(rest):
                return False  # perhaps a marker: wait for more
        if rest[0] in _WS:
            self.pos += 1
        elif rest[0] == "{":
            return self._skip_or_open(_WS, "")
        else:
            self.state = "seek"
        return True


class JsonArrayToolParser(ToolStreamParser):
    """tool_choice="required": `[{"name": ..., "parameters": ...}, ...]`. The calls
    read whole are kept when max_tokens cuts the list short."""

    all_or_nothing = False

    def _between(self, out: DeltaBuilder) -> bool:
        return self._skip_or_open(_WS + "[,", "]")


class MistralToolParser(JsonArrayToolParser):
    content_marker = "[TOOL_CALLS]"
    all_or_nothing = True


class Llama3JsonToolParser(ToolStreamParser):
    """Calls if the answer starts with '{' (after <|python_tag|>), else all content."""

    _TAG = "<|python_tag|>"

    def __init__(self) -> None:
        super().__init__()
        self.state = "start"

    def _start(self, out: DeltaBuilder) -> bool:
        rest = self.text[self.pos :]
        if rest.startswith(self._TAG):
            self.pos += len(self._TAG)
        elif self._TAG.startswith(rest):
            return False
        elif rest[0] in _WS:
            self.pos += 1
        elif rest[0] == "{":
            self.state = "between"
        else:
            self.state, self.pos = "plain", 0  # all of it is content
        return True

    def _between(self, out: DeltaBuilder) -> bool:
        return self._skip_or_open(_WS + ";", "")


class PythonicToolParser(ToolStreamParser):
    """`[f(a=1), g()]`: each call goes out whole once its ')' is read (its arguments
    are Python literals turned into JSON, so there is no raw JSON text to stream)."""

    def __init__(self) -> None:
        super().__init__()
        self.state = "start"
        self.list_start = 0
        self.parsed_to = 0  # the prefix of the list read into calls so far

    @classmethod
    def extract(cls, text: str) -> ExtractedToolCalls:
        return parse_pythonic(text)

    def _start(self, out: DeltaBuilder) -> bool:
        ch = self.text[self.pos]
        if ch in _WS:
            self.pos += 1
        elif ch == "[":
            self.state, self.list_start = "list", self.pos
        else:
            self.state, self.pos = "plain", 0
        return True

    def _list(self, out: DeltaBuilder) -> bool:
        body = self.text[self.list_start :]
        for close in _positions(body, ")", self.parsed_to):
            calls = _try_calls(body[: close + 1] + "]")
            if calls is not None:
                self.parsed_to = close + 1
                for call in calls[len(self.sent) :]:
                    self._send_whole(out, call)
                break
        self.pos = len(self.text)
        return False

    def _send_whole(self, out: DeltaBuilder, call: ToolCall) -> None:
        sent = SentCall(f"chatcmpl-tool-{random_uuid()}", call.name, call.arguments)
        self.sent.append(sent)
        self.complete.append(True)
        out.start_call(len(self.sent) - 1, sent)


def _positions(text: str, ch: str, start: int) -> list[int]:
    """Where ch occurs in text[start:], last first."""
    return [i for i in range(len(text) - 1, start - 1, -1) if text[i] == ch]


def _try_calls(source: str) -> list[ToolCall] | None:
    try:
        tree = ast.parse(source.strip(), mode="eval").body
        if not isinstance(tree, ast.List):
            return None
        return [_python_call(node) for node in tree.elts]
    except (SyntaxError, ValueError):
        return None


def parse_pythonic(text: str) -> ExtractedToolCalls:
    body = text.strip()
    if not (body.startswith("[") and body.endswith("]")):
        return ExtractedToolCalls(text)
    calls = _try_calls(body)
    return ExtractedToolCalls(None, calls) if calls else ExtractedToolCalls(text)


def _python_call(node: ast.expr) -> ToolCall:
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or node.args:
        raise ValueError("not a keyword-argument call")
    args = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg}
    return ToolCall(node.func.id, json.dumps(args))


TOOL_PARSERS: dict[str, type[ToolStreamParser]] = {
    "hermes": HermesToolParser,
    "llama3_json": Llama3JsonToolParser,
    "mistral": MistralToolParser,
    "pythonic": PythonicToolParser,
}


def get_tool_parser(name: str) -> type[ToolStreamParser]:
    if name not in TOOL_PARSERS:
        raise ValueError(f"--tool-call-parser must be one of {sorted(TOOL_PARSERS)}, got {name!r}")
    return TOOL_PARSERS[name]
