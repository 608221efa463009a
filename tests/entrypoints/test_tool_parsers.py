"""The tool-call parsers and tool_choice checks (no server)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from pagedllm.entrypoints.openai.errors import APIError
from pagedllm.entrypoints.openai.tool_calls import ToolCallStreamer, make_tool_plan
from pagedllm.entrypoints.openai.tool_parsers import TOOL_PARSERS

CALLS = [("f", {"a": 1}), ("g", {})]


@pytest.mark.parametrize(
    ("parser", "text", "content"),
    [
        ("hermes", 'hi <tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>'
         '<tool_call>{"name": "g", "arguments": {}}</tool_call>', "hi"),
        ("llama3_json", '<|python_tag|>{"name": "f", "parameters": {"a": 1}}; '
         '{"name": "g", "parameters": {}}', None),
        ("mistral", '[TOOL_CALLS][{"name": "f", "arguments": {"a": 1}}, {"name": "g", "arguments": {}}]', None),
        ("pythonic", "[f(a=1), g()]", None),
    ],
)  # fmt: skip
def test_parsers_extract_calls(parser: str, text: str, content: str | None) -> None:
    out = TOOL_PARSERS[parser].extract(text)
    assert out.content == content
    assert [(c.name, json.loads(c.arguments)) for c in out.tool_calls] == CALLS


@pytest.mark.parametrize("parser", sorted(TOOL_PARSERS))
def test_plain_text_is_content(parser: str) -> None:
    out = TOOL_PARSERS[parser].extract("The weather is fine.")
    assert out.content == "The weather is fine." and not out.tool_calls


TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]


def _req(tools: object, choice: object) -> SimpleNamespace:
    return SimpleNamespace(tools=tools, tool_choice=choice)


def test_tool_choice_checks() -> None:
    assert make_tool_plan(_req(TOOLS, "required"), False, None).mode == "required"
    assert make_tool_plan(_req(None, None), False, None).mode == "none"
    named = {"type": "function", "function": {"name": "f"}}
    assert make_tool_plan(_req(TOOLS, named), False, None).named == "f"
    bad = [
        (_req(TOOLS, "auto"), "--enable-auto-tool-choice"),
        (_req(TOOLS, {"type": "function", "function": {"name": "nope"}}), "not in tools"),
        (_req(None, "required"), "needs tools"),
        (_req([{"type": "function"}], "required"), "each tool"),
        (_req(TOOLS, "sometimes"), "tool_choice must be"),
    ]
    for request, message in bad:
        with pytest.raises(APIError, match=message):
            make_tool_plan(request, False, None)
    assert make_tool_plan(_req(TOOLS, "auto"), True, "hermes").parser is TOOL_PARSERS["hermes"]


def test_named_stream_deltas_carry_name_once() -> None:
    named = {"type": "function", "function": {"name": "f"}}
    streamer = ToolCallStreamer(make_tool_plan(_req(TOOLS, named), False, None))
    first, second = streamer.delta('{"a"', False), streamer.delta(": 1}", True)
    assert first is not None and second is not None
    assert first["tool_calls"][0]["function"] == {"arguments": '{"a"', "name": "f"}
    assert second["tool_calls"][0] == {"index": 0, "function": {"arguments": ": 1}"}}


def test_required_calls_cut_by_max_tokens_keep_the_complete_ones() -> None:
    plan = make_tool_plan(_req(TOOLS, "required"), False, None)
    text = '[{"name": "f", "parameters": {"a": 1}}, {"name": "f", "parameters": {"a'
    assert [c.arguments for c in plan.extract(text).tool_calls] == ['{"a": 1}']
    assert len(plan.extract('[{"name": "f", "parameters": {}}]').tool_calls) == 1
