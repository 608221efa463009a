"""Reading a tool call's JSON object while it is generated: where its name and its
arguments are in the text so far, without waiting for the closing brace.

    {"name": "get_weather", "arguments": {"city": "Paris"}}
    ^ start       name known ^           ^ args_start      ^ args_end (exclusive)

`CallObjectScanner` walks the text one character at a time and can stop and resume
anywhere (mid-key, mid-escape, mid-number): it keeps the string/escape state and the
nesting depth. Only the keys of the call object itself (depth 1) are read; what is
inside the arguments is skipped over (the grammar, or `json.loads` at the end, checks
it). `JsonStringDecoder` decodes a JSON string's body as it grows, holding back an
escape cut between chunks."""

from __future__ import annotations

import json
import re

ARGS_KEYS = ("arguments", "parameters")
_WS = " \t\r\n"
_SCALAR_END = _WS + ",}"
_STRING_SPECIAL = re.compile(r'["\\]')


class CallObjectScanner:
    """One `{"name": ..., "arguments"|"parameters": ...}` object in a growing text.

    expect (at depth <= 1): open -> key -> colon -> value -> after -> (key | done);
    a value is read in the states string / scalar / nested; error ends the scan."""

    def __init__(self) -> None:
        self.depth = 0  # 1 inside the call object, > 1 inside a nested value
        self.in_string = False
        self.escaped = False
        self.expect = "open"
        self.token_start = 0  # where the depth-1 string or value being read began
        self.key: str | None = None
        self.name: str | None = None
        self.args_start: int | None = None
        self.args_end: int | None = None
        self.args_kind = ""  # '{' '[' '"' or 's' (a number, true, false, null)
        self.end: int | None = None  # just past the closing brace

    @property
    def done(self) -> bool:
        return self.expect == "done"

    @property
    def error(self) -> bool:
        return self.expect == "error"

    def scan(self, text: str, pos: int) -> int:
        """Read text[pos:] up to the object's end; the position reached."""
        while pos < len(text) and self.expect not in ("done", "error"):
            if self.in_string and not self.escaped:
                match = _STRING_SPECIAL.search(text, pos)  # skip a string's plain run
                if match is None:
                    return len(text)
                pos = match.start()
            self._char(text, pos)
            pos += 1
        return pos

    def args_ready(self, pos: int) -> int | None:
        """How far the arguments' raw text can be sent when pos characters were read: a
        container or string as far as read, a scalar only once it has ended."""
        if self.args_end is not None:
            return self.args_end
        if self.args_start is None or self.args_kind == "s":
            return None
        return pos

    def _char(self, text: str, i: int) -> None:
        ch = text[i]
        if self.in_string:
            if self.escaped:
                self.escaped = False
            elif ch == "\\":
                self.escaped = True
            elif ch == '"':
                self.in_string = False
                if self.depth == 1:
                    self._string_closed(text, i + 1)
        elif self.depth > 1:
            self._nested(text, ch, i)
        elif self.expect == "scalar" and ch not in _SCALAR_END:
            return
        else:
            if self.expect == "scalar":
                self._value_done(text, i)
            if ch not in _WS:
                self._structural(ch, i)

    def _structural(self, ch: str, i: int) -> None:
        """A character outside strings at depth 0 or 1."""
        expect = self.expect
        if expect == "open" and ch == "{":
            self.depth, self.expect = 1, "key"
        elif expect == "key" and ch == '"':
            self.in_string, self.token_start = True, i
        elif expect in ("key", "after") and ch == "}":
            self.depth, self.expect, self.end = 0, "done", i + 1
        elif expect == "colon" and ch == ":":
            self.expect = "value"
        elif expect == "after" and ch == ",":
            self.expect, self.key = "key", None
        elif expect == "value":
            self._value_start(ch, i)
        else:
            self.expect = "error"

    def _value_start(self, ch: str, i: int) -> None:
        self.token_start = i
        kind = ch if ch in '{["' else "s"
        if self.key in ARGS_KEYS and self.args_start is None:
            self.args_start, self.args_kind = i, kind
        if ch == '"':
            self.in_string, self.expect = True, "string"
        elif ch in "{[":
            self.depth, self.expect = 2, "nested"
        else:
            self.expect = "scalar"

    def _nested(self, text: str, ch: str, i: int) -> None:
        if ch == '"':
            self.in_string = True
        elif ch in "{[":
            self.depth += 1
        elif ch in "}]":
            self.depth -= 1
            if self.depth == 1:
                self._value_done(text, i + 1)

    def _string_closed(self, text: str, end: int) -> None:
        if self.expect == "key":
            self.key = _loads_string(text[self.token_start : end])
            self.expect = "colon" if self.key is not None else "error"
        elif self.expect == "string":
            if self.key == "name":
                self.name = _loads_string(text[self.token_start : end])
            self._value_done(text, end)

    def _value_done(self, text: str, end: int) -> None:
        if self.key in ARGS_KEYS and self.args_start == self.token_start:
            self.args_end = end
        self.expect = "after"


def _loads_string(literal: str) -> str | None:
    try:
        value = json.loads(literal, strict=False)
    except ValueError:
        return None
    return value if isinstance(value, str) else None


class JsonStringDecoder:
    """The decoded characters of a JSON string's body (no quotes) as its raw text grows.
    An escape cut short (`\\`, `\\u00`) or the first half of a surrogate pair waits for
    the rest, so every piece decodes on its own and the pieces join to the whole."""

    def __init__(self) -> None:
        self.decoded_to = 0  # raw characters decoded so far

    def decode(self, body: str) -> str:
        """The new characters of `body` (the raw body read so far, always growing)."""
        cut = _complete_prefix(body, self.decoded_to)
        if cut == self.decoded_to:
            return ""
        piece = body[self.decoded_to : cut]
        self.decoded_to = cut
        return str(json.loads(f'"{piece}"', strict=False))


def _complete_prefix(body: str, start: int) -> int:
    """The end of the longest prefix of body[start:] that ends on an escape boundary."""
    i = start
    while (j := body.find("\\", i)) >= 0:
        need = 6 if body[j + 1 : j + 2] == "u" else 2
        if need == 6 and _high_surrogate(body[j + 2 : j + 6]):
            if j + 6 == len(body) or body[j + 6 : j + 8] == "\\u" or body[j + 6 :] == "\\":
                need = 12  # wait for (or take) the low half
        if j + need > len(body):
            return j
        i = j + need
    return len(body)


def _high_surrogate(hex4: str) -> bool:
    try:
        return len(hex4) == 4 and 0xD800 <= int(hex4, 16) <= 0xDBFF
    except ValueError:
        return False
