"""Streaming tool calls (no server): the partial-JSON scanner and the parsers fed the
same text in every kind of piece (mid-key, mid-escape, mid-marker, one character at
a time) send the same calls, whose argument pieces join to exactly the arguments of
the whole answer (`extract`)."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from pagedllm.entrypoints.openai.tool_calls import ToolCallStreamer, make_tool_plan
from pagedllm.entrypoints.openai.tool_parsers import (
    TOOL_PARSERS,
    JsonArrayToolParser,
    ToolStreamParser,
)
from pagedllm.entrypoints.openai.tool_parsers.partial_json import (
    CallObjectScanner,
    JsonStringDecoder,
)

TRICKY_ARGS = (
    '{"q": "say \\"hi\\" \\\\ {not: a brace}", "city": "Zürich 東京 😀",'
    ' "esc": "\\u00e9\\ud83d\\ude00\\n", "n": {"deep": [1, {"x": "}]"}], "e": -1.5e3}}'
)
# (parser, text, content of the whole answer, [(name, arguments)])
CASES: list[tuple[str, str, str | None, list[tuple[str, str]]]] = [
    ("hermes", f'Let me check. <tool_call>\n{{"name": "f", "arguments": {TRICKY_ARGS}}}\n</tool_call>'
     '\n<tool_call>{"name": "g", "arguments": {}}</tool_call>',
     "Let me check.", [("f", TRICKY_ARGS), ("g", "{}")]),
    ("hermes", '<tool_call>{"arguments": {"a": [1, 2]}, "name": "late"}</tool_call>',
     None, [("late", '{"a": [1, 2]}')]),
    ("hermes", '<tool_call>{"name": "s", "arguments": "{\\"a\\": \\"\\u00e9\\ud83d\\ude00\\\\\\"\\"}"}'
     "</tool_call>", None, [("s", '{"a": "é😀\\""}')]),
    ("hermes", '<tool_call>{"name": "none_given"}</tool_call>', None, [("none_given", "{}")]),
    ("llama3_json", '<|python_tag|>{"name": "f", "parameters": ' + TRICKY_ARGS + '}; '
     '{"name": "g", "parameters": {"b": true}}', None, [("f", TRICKY_ARGS), ("g", '{"b": true}')]),
    ("llama3_json", '  {"parameters": 7, "name": "scalar"}', None, [("scalar", "7")]),
    ("mistral", 'ok [TOOL_CALLS][{"name": "f", "arguments": {"a": "]"}}, {"name": "g", '
     '"arguments": {"b": null}}]', "ok", [("f", '{"a": "]"}'), ("g", '{"b": null}')]),
    ("pythonic", '[f(a="x)", b=[1, 2]), g(c={"k": "v"})]', None,
     [("f", '{"a": "x)", "b": [1, 2]}'), ("g", '{"c": {"k": "v"}}')]),
]  # fmt: skip
PLAIN = [
    ("hermes", "No tools: a <b>tag</b> and <tool_c lookalike <tool_call"),
    ("llama3_json", "<|python_tag|> not json {"),
    ("llama3_json", '{"no_name": 1}'),
    ("mistral", "Just [TOOL text"),
    ("pythonic", "[not a call list"),
]


def _splits(text: str) -> list[list[str]]:
    """Every cut into two pieces, one character at a time, and random pieces."""
    pieces = [[text[:i], text[i:]] for i in range(len(text) + 1)]
    pieces.append(list(text))
    rng = random.Random(0)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(text)), min(8, len(text) - 1)))
        pieces.append([text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])])
    return pieces


def _stream(parser: ToolStreamParser, chunks: list[str]) -> tuple[str, list[dict[str, Any]]]:
    """Feed the chunks (the last with finished=True); the content and the calls as an
    OpenAI client puts them together, checking each delta's shape on the way."""
    content, calls = "", list[dict[str, Any]]()
    for i, chunk in enumerate(chunks):
        fields = parser.feed(chunk, finished=i == len(chunks) - 1)
        for delta in (fields or {}).get("tool_calls", []):
            if delta["index"] == len(calls):  # a new call: its first delta names it
                assert delta["id"].startswith("chatcmpl-tool-") and delta["type"] == "function"
                calls.append({"name": delta["function"]["name"], "arguments": ""})
            else:
                assert "id" not in delta and "name" not in delta["function"]
            calls[delta["index"]]["arguments"] += delta["function"]["arguments"]
        content += (fields or {}).get("content", "")
    return content, calls


@pytest.mark.parametrize(("name", "text", "content", "expected"), CASES)
def test_every_split_streams_the_whole_answer(
    name: str, text: str, content: str | None, expected: list[tuple[str, str]]
) -> None:
    parser_cls = TOOL_PARSERS[name]
    whole = parser_cls.extract(text)
    assert whole.content == content
    assert [(c.name, c.arguments) for c in whole.tool_calls] == expected
    for arguments in (c.arguments for c in whole.tool_calls):
        json.loads(arguments)
    for chunks in _splits(text):
        streamed_content, calls = _stream(parser_cls(), chunks)
        assert [(c["name"], c["arguments"]) for c in calls] == expected, chunks
        assert streamed_content.strip() == (content or ""), chunks


@pytest.mark.parametrize(("name", "text"), PLAIN)
def test_text_without_calls_streams_as_content(name: str, text: str) -> None:
    assert TOOL_PARSERS[name].extract(text).content == text
    for chunks in _splits(text):
        assert _stream(TOOL_PARSERS[name](), chunks) == (text, []), chunks


def test_marker_split_is_held_back_not_sent_as_content() -> None:
    parser = TOOL_PARSERS["hermes"]()
    assert parser.feed("Sure <tool") == {"content": "Sure "}
    assert parser.feed('_call>{"na') is None
    first = parser.feed('me": "f", "arguments": {"a"')
    assert first is not None
    assert first["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"a"'}
    assert parser.feed(": 1}}") == {"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}


def test_arguments_go_out_token_by_token() -> None:
    """Each piece of a container's arguments is sent as soon as it is read; a number
    waits for the character that ends it (it might have more digits)."""
    parser = JsonArrayToolParser()
    pieces = ['[{"name": "add", "parameters": ', '{"a": 1', "2", ', "b": ', '"x"}}]']
    sent = [parser.feed(p) for p in pieces]
    assert sent[0] is not None and sent[0]["tool_calls"][0]["function"]["arguments"] == ""
    args = [s["tool_calls"][0]["function"]["arguments"] if s else None for s in sent[1:]]
    assert args == ['{"a": 1', "2", ', "b": ', '"x"}']
    scalar = JsonArrayToolParser()
    scalar.feed('[{"name": "n", "parameters": 1')
    assert scalar.feed("2") is None
    assert scalar.feed("}]")["tool_calls"][0]["function"]["arguments"] == "12"  # type: ignore[index]


def test_required_cut_by_max_tokens() -> None:
    """The stream sends the call it was writing; the whole answer keeps complete ones."""
    text = '[{"name": "f", "parameters": {"a": 1}}, {"name": "f", "parameters": {"a'
    _, calls = _stream(JsonArrayToolParser(), [text[:30], text[30:]])
    assert [c["arguments"] for c in calls] == ['{"a": 1}', '{"a']
    assert [c.arguments for c in JsonArrayToolParser.extract(text).tool_calls] == ['{"a": 1}']


def test_scanner_reports_positions_and_errors() -> None:
    text = ' {"name": "f", "arguments": {"a": "}"}} trailing'
    scanner = CallObjectScanner()
    end = scanner.scan(text, 0)
    assert scanner.done and text[:end].endswith("}}") and scanner.name == "f"
    assert scanner.args_start is not None and scanner.args_end is not None
    assert text[scanner.args_start : scanner.args_end] == '{"a": "}"}'
    bad = CallObjectScanner()
    bad.scan('{"name" "f"}', 0)
    assert bad.error and bad.name is None


def test_string_decoder_any_split() -> None:
    body = 'a\\"b\\\\c\\u00e9\\ud83d\\ude00\\n\\/ 東'
    expected = json.loads(f'"{body}"')
    for i in range(len(body) + 1):
        for j in range(i, len(body) + 1):
            decoder = JsonStringDecoder()
            out = decoder.decode(body[:i]) + decoder.decode(body[:j]) + decoder.decode(body)
            assert out == expected, (i, j)


TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]


def _plan(choice: object, parser: str | None = None) -> Any:
    request = type("Request", (), {"tools": TOOLS, "tool_choice": choice})()
    return make_tool_plan(request, parser is not None, parser)


def test_streamer_required_and_auto_report_calls() -> None:
    streamer = ToolCallStreamer(_plan("required"))
    assert streamer.delta('[{"name": "f", "param', False) == {
        "tool_calls": [
            {"index": 0, "id": streamer.parser.sent[0].id, "type": "function",  # type: ignore[union-attr]
             "function": {"name": "f", "arguments": ""}}
        ]
    }  # fmt: skip
    assert streamer.tools_called
    auto = ToolCallStreamer(_plan("auto", "hermes"))
    assert auto.delta("Hello", True) == {"content": "Hello"} and not auto.tools_called
