"""The streaming side of the tool-call parsers: model text in, OpenAI `delta` fields
out, as the text is generated.

    first delta of a call   {"index": i, "id": ..., "type": "function",
                             "function": {"name": ..., "arguments": <what is known>}}
    later deltas            {"index": i, "function": {"arguments": <more>}}

A parser reads the text once, left to right, in states (content, between calls, in a
call object, ignored rest); the formats differ only in how calls are framed. A call's
arguments are its raw JSON text as the model wrote it (a JSON string value is decoded),
sent as soon as it is read, so the pieces join to exactly the arguments of the whole
answer: `extract(text)` (the non-streamed answer) is the same parser fed everything at
once. `feed(..., finished=True)` also checks the streamed calls against `extract` of
the whole text and sends what is missing (a call that a parser could only see whole)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pagedllm.entrypoints.openai.protocol import random_uuid
from pagedllm.entrypoints.openai.tool_parsers.partial_json import (
    CallObjectScanner,
    JsonStringDecoder,
)
from pagedllm.entrypoints.openai.tool_parsers.tool_call import ExtractedToolCalls, ToolCall

logger = logging.getLogger(__name__)


@dataclass
class SentCall:
    """What went out of one call: its id, name and the arguments so far."""

    id: str
    name: str
    arguments: str = ""


class DeltaBuilder:
    """The fields of one DeltaMessage: content, and the tool-call pieces by index."""

    def __init__(self) -> None:
        self.content = ""
        self.calls: dict[int, dict[str, Any]] = {}

    def start_call(self, index: int, call: SentCall) -> None:
        self.calls[index] = {
            "index": index,
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments},
        }

    def add_arguments(self, index: int, text: str) -> None:
        entry = self.calls.setdefault(index, {"index": index, "function": {"arguments": ""}})
        entry["function"]["arguments"] += text

    def fields(self) -> dict[str, Any] | None:
        out: dict[str, Any] = {}
        if self.content:
            out["content"] = self.content
        if self.calls:
            out["tool_calls"] = [self.calls[i] for i in sorted(self.calls)]
        return out or None


@dataclass
class _OpenCall:
    """A call object being read: its scanner and how far its arguments were sent."""

    scanner: CallObjectScanner = field(default_factory=CallObjectScanner)
    sent: SentCall | None = None
    args_sent_to: int | None = None  # raw position in the text
    decoder: JsonStringDecoder | None = None


class ToolStreamParser:
    """Base of the formats that frame JSON call objects. Subclasses set the first state
    and override `_between` (what may separate calls); `content_marker` ends content."""

    content_marker: str | None = None  # text before it is content (None: no content state)
    all_or_nothing = True  # one malformed call makes the whole answer content

    def __init__(self) -> None:
        self.text = ""
        self.pos = 0
        self.state = "content" if self.content_marker else "between"
        self.content = ""
        self.sent: list[SentCall] = []
        self.call: _OpenCall | None = None
        self.complete: list[bool] = []  # per sent call: its object was read to the end
        self.malformed = False

    @property
    def tools_called(self) -> bool:
        return bool(self.sent)

    def feed(self, delta: str, finished: bool = False) -> dict[str, Any] | None:
        """The DeltaMessage fields for `delta` (None: nothing to send yet)."""
        self.text += delta
        out = DeltaBuilder()
        while self.pos < len(self.text) and self._step(out):
            pass
        if finished:
            self._flush(out)
            self._reconcile(out)
        return out.fields()

    @classmethod
    def extract(cls, text: str) -> ExtractedToolCalls:
        """The whole answer's content and calls (the non-streamed response)."""
        parser = cls()
        parser.feed(text)
        parser._flush(DeltaBuilder())
        return parser._result()

    # -- states ---------------------------------------------------------------------

    def _step(self, out: DeltaBuilder) -> bool:
        """Advance in the current state (the method `_<state>`); False when more text
        is needed."""
        handler: Callable[[DeltaBuilder], bool] = getattr(self, f"_{self.state}")
        return handler(out)

    def _rest(self, out: DeltaBuilder) -> bool:
        """After the calls: ignored."""
        self.pos = len(self.text)
        return False

    def _plain(self, out: DeltaBuilder) -> bool:
        """No calls in this answer: all of it is content."""
        self._send_content(out, self.text[self.pos :])
        self.pos = len(self.text)
        return False

    def _seek(self, out: DeltaBuilder) -> bool:
        """Skip text up to the next content_marker (more calls after other text)."""
        assert self.content_marker is not None
        at = self.text.find(self.content_marker, self.pos)
        if at < 0:
            self.pos = len(self.text) - _held_back(self.text, self.pos, self.content_marker)
            return False
        self.pos, self.state = at + len(self.content_marker), "between"
        return True

    def _content(self, out: DeltaBuilder) -> bool:
        assert self.content_marker is not None
        at = self.text.find(self.content_marker, self.pos)
        if at >= 0:
            self._send_content(out, self.text[self.pos : at])
            self.pos, self.state = at + len(self.content_marker), "between"
            return True
        end = len(self.text) - _held_back(self.text, self.pos, self.content_marker)
        self._send_content(out, self.text[self.pos : end])
        self.pos = end
        return False

    def _send_content(self, out: DeltaBuilder, text: str) -> None:
        self.content += text
        out.content += text

    def _between(self, out: DeltaBuilder) -> bool:
        """Default framing: calls separated by whitespace; anything else ends them."""
        return self._skip_or_open(" \t\r\n", "")

    def _skip_or_open(self, skip: str, end: str) -> bool:
        """Skip separator characters, open an object at '{'; `end` characters (or any
        other) end the calls."""
        ch = self.text[self.pos]
        if ch == "{":
            self.call, self.state = _OpenCall(), "object"
        elif ch in skip:
            self.pos += 1
        else:
            self.state = "rest"
            self.malformed = self.malformed or ch not in end
        return True

    def _object(self, out: DeltaBuilder) -> bool:
        call = self.call
        assert call is not None
        self.pos = call.scanner.scan(self.text, self.pos)
        self._send_call(out, call)
        if call.scanner.error:
            self.state, self.malformed = "rest", True
        elif call.scanner.done:
            self._close_call(out, call)
            self.state = "between"
        return call.scanner.done or call.scanner.error

    # -- calls ----------------------------------------------------------------------

    def _send_call(self, out: DeltaBuilder, call: _OpenCall) -> None:
        """Send what is new of a call: its start once the name is known, then arguments."""
        scanner = call.scanner
        if scanner.name is None:
            return  # the arguments wait for the name (the first delta carries it)
        if call.sent is None:
            call.sent = SentCall(f"chatcmpl-tool-{random_uuid()}", scanner.name)
            self.sent.append(call.sent)
            self.complete.append(False)
            out.start_call(len(self.sent) - 1, call.sent)
        ready = scanner.args_ready(self.pos)
        if ready is None or scanner.args_start is None:
            return
        if scanner.args_kind == '"':
            piece = self._string_arguments(call, scanner.args_start, ready)
        else:
            start = call.args_sent_to if call.args_sent_to is not None else scanner.args_start
            piece, call.args_sent_to = self.text[start:ready], ready
        self._send_arguments(out, call.sent, piece)

    def _string_arguments(self, call: _OpenCall, start: int, ready: int) -> str:
        """Arguments written as a JSON string: its decoded characters."""
        call.decoder = call.decoder or JsonStringDecoder()
        closed = call.scanner.args_end is not None
        return call.decoder.decode(self.text[start + 1 : ready - 1 if closed else ready])

    def _send_arguments(self, out: DeltaBuilder, sent: SentCall, piece: str) -> None:
        if piece:
            sent.arguments += piece
            out.add_arguments(self.sent.index(sent), piece)

    def _close_call(self, out: DeltaBuilder, call: _OpenCall) -> None:
        if call.sent is None:
            self.malformed = True  # a call object without a name
            return
        if call.scanner.args_start is None:
            self._send_arguments(out, call.sent, "{}")  # no arguments given
        self.complete[self.sent.index(call.sent)] = True

    def _flush(self, out: DeltaBuilder) -> None:
        """The end of the text: held-back content is content after all."""
        if self.state == "content":
            self._send_content(out, self.text[self.pos :])
            self.pos = len(self.text)
        elif self.state == "object":
            self.malformed = True  # cut short (max_tokens)

    # -- the whole answer ------------------------------------------------------------

    def _result(self) -> ExtractedToolCalls:
        calls = [ToolCall(s.name, s.arguments) for s, ok in zip(self.sent, self.complete) if ok]
        if self.all_or_nothing:
            if not calls or self.malformed or not all(map(_valid_json, calls)):
                return ExtractedToolCalls(self.text)
            return ExtractedToolCalls(self.content.strip() or None, calls)
        calls = _valid_prefix(calls)
        return ExtractedToolCalls(None, calls) if calls else ExtractedToolCalls(self.text)

    def _reconcile(self, out: DeltaBuilder) -> None:
        """Send what the whole answer has and the stream did not (see the module doc)."""
        final = type(self).extract(self.text)
        text_only = final.content is not None and not final.tools_called
        if (
            final.content
            and final.content.startswith(self.content)
            and not (text_only and self.sent)
        ):  # (calls already sent are not taken back as text)
            self._send_content(out, final.content[len(self.content) :])
        for index, call in enumerate(final.tool_calls):
            if index >= len(self.sent):
                self.sent.append(SentCall(f"chatcmpl-tool-{random_uuid()}", call.name))
                self.complete.append(True)
                out.start_call(index, self.sent[index])
            sent = self.sent[index]
            if sent.name == call.name and call.arguments.startswith(sent.arguments):
                self._send_arguments(out, sent, call.arguments[len(sent.arguments) :])
            else:
                logger.warning("streamed tool call %d differs from the final answer", index)


def _held_back(text: str, start: int, marker: str) -> int:
    """How many of text's last characters (from start on) could begin `marker`."""
    for n in range(min(len(marker) - 1, len(text) - start), 0, -1):
        if marker.startswith(text[len(text) - n :]):
            return n
    return 0


def _valid_json(call: ToolCall) -> bool:
    try:
        json.loads(call.arguments)
    except ValueError:
        return False
    return True


def _valid_prefix(calls: list[ToolCall]) -> list[ToolCall]:
    for i, call in enumerate(calls):
        if not _valid_json(call):
            return calls[:i]
    return calls
