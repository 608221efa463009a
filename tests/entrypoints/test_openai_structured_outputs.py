"""Structured outputs through the real server and the real `openai` client (the
embedded SmolLM2): 100 concurrent requests over 10 JSON schemas all validate;
choice and regex always match; bad schemas, regexes and grammars are 400s naming
the field.

The server here is its own (compact JSON: `disable_any_whitespace=true`): with
whitespace allowed, a 135M model greedy-decodes blank lines until max_tokens in a
few of the 100 requests, and a cut-off JSON object cannot validate."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from typing import Any

import jsonschema
import openai
import pytest
from remote_server import MODEL_NAME, SERVER_FLAGS, RemoteServer


@pytest.fixture(scope="module")
def so_server() -> Iterator[RemoteServer]:
    server = RemoteServer(
        "pagedllm.entrypoints.openai.api_server",
        [
            *SERVER_FLAGS,
            "--structured-outputs-config",
            "disable_any_whitespace=true",
            "--enable-auto-tool-choice",
            "--tool-call-parser",
            "hermes",
        ],
    )
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def so_client(so_server: RemoteServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=so_server.url("/v1"), api_key="unused", max_retries=0)


_NAME = {"type": "string", "maxLength": 12}
SCHEMAS: list[dict[str, Any]] = [
    {"type": "object", "properties": {"name": _NAME}, "required": ["name"]},
    {
        "type": "object",
        "properties": {"age": {"type": "integer", "minimum": 18, "maximum": 99}},
        "required": ["age"],
    },
    {
        "type": "object",
        "properties": {"color": {"enum": ["red", "green", "blue"]}, "ok": {"type": "boolean"}},
        "required": ["color", "ok"],
    },
    {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3}
        },
        "required": ["tags"],
    },
    {
        "type": "object",
        "properties": {
            "user": {
                "type": "object",
                "properties": {
                    "name": _NAME,
                    "id": {"type": "integer", "minimum": 0, "maximum": 9999},
                },
                "required": ["name", "id"],
            }
        },
        "required": ["user"],
    },
    {
        "type": "object",
        "properties": {"score": {"type": "number", "minimum": 0, "maximum": 100}},
        "required": ["score"],
    },
    {
        "type": "object",
        "properties": {
            "points": {
                "type": "array",
                "items": {"type": "integer", "minimum": -5, "maximum": 5},
                "minItems": 1,
                "maxItems": 3,
            }
        },
        "required": ["points"],
    },
    {
        "type": "object",
        "properties": {"city": _NAME, "country": {"enum": ["FR", "DE", "IT"]}},
        "required": ["city", "country"],
    },
    {
        "type": "object",
        "properties": {
            "a": {"type": "object", "properties": {"b": {"type": "boolean"}}, "required": ["b"]}
        },
        "required": ["a"],
    },
    {
        "type": "object",
        "properties": {
            "title": _NAME,
            "year": {"type": "integer", "minimum": 1900, "maximum": 2030},
        },
        "required": ["title", "year"],
        "additionalProperties": False,
    },
]


def _strict(schema: Any) -> Any:
    """additionalProperties false on every object (OpenAI's strict schemas): without it
    a small model invents properties until max_tokens cuts the JSON."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if out.get("type") == "object":
            out.setdefault("additionalProperties", False)
        return out
    return [_strict(v) for v in schema] if isinstance(schema, list) else schema


SCHEMAS = [_strict(s) for s in SCHEMAS]
TOPICS = [
    "a cat",
    "Paris",
    "a book",
    "the sea",
    "a robot",
    "music",
    "a tree",
    "rain",
    "a car",
    "tea",
]


async def _one(aclient: openai.AsyncOpenAI, schema: dict[str, Any], topic: str) -> str:
    result = await aclient.chat.completions.create(
        model=MODEL_NAME,
        messages=[{"role": "user", "content": f"Answer in JSON about {topic}."}],
        max_tokens=60,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
    )
    return str(result.choices[0].message.content)


def test_hundred_requests_ten_schemas_validate(so_server: RemoteServer) -> None:
    async def run() -> list[str]:
        aclient = openai.AsyncOpenAI(base_url=so_server.url("/v1"), api_key="x", max_retries=0)
        jobs = [_one(aclient, s, t) for s in SCHEMAS for t in TOPICS]
        return await asyncio.gather(*jobs)

    texts = asyncio.run(run())
    for i, text in enumerate(texts):
        jsonschema.validate(json.loads(text), SCHEMAS[i // len(TOPICS)])


def test_choice_regex_json_object_and_guided_fields(so_client: openai.OpenAI) -> None:
    client = so_client

    def chat(max_tokens: int = 20, **extra: Any) -> str:
        result = client.chat.completions.create(
            model=MODEL_NAME,
            messages=[{"role": "user", "content": "Pick one."}],
            max_tokens=max_tokens,
            temperature=0.9,
            seed=3,
            **extra,
        )
        return str(result.choices[0].message.content)

    for _ in range(3):
        assert chat(extra_body={"structured_outputs": {"choice": ["yes", "no", "maybe"]}}) in (
            "yes",
            "no",
            "maybe",
        )
        assert chat(extra_body={"guided_choice": ["left", "right"]}) in ("left", "right")
        assert re.fullmatch(
            r"[A-Z]{2}[0-9]{2}", chat(extra_body={"guided_regex": "[A-Z]{2}[0-9]{2}"})
        )
    assert isinstance(
        json.loads(chat(response_format={"type": "json_object"}, max_tokens=60)), dict
    )
    text = (
        client.completions.create(
            model=MODEL_NAME,
            prompt="The answer:",
            max_tokens=8,
            extra_body={"guided_regex": "[0-9]+"},
        )
        .choices[0]
        .text
    )
    assert re.fullmatch("[0-9]+", text)


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"guided_json": '{"type": '}, "guided_json"),
        ({"guided_regex": "(ab"}, "guided_regex"),
        ({"structured_outputs": {"json": {"type": "nonsense"}}}, "structured_outputs"),
        ({"guided_grammar": "root ::= undefined_rule"}, "guided_grammar"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "response_format",
        ),
        ({"guided_regex": "a", "guided_choice": ["b"]}, "guided_regex"),
    ],
)
def test_invalid_specs_are_400_naming_the_field(
    so_client: openai.OpenAI, extra: dict[str, Any], field: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        so_client.chat.completions.create(
            model=MODEL_NAME,
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=4,
            extra_body=extra,
        )
    assert field in str(info.value)


WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 16},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
}
ADD = {
    "type": "object",
    "properties": {
        "a": {"type": "integer", "minimum": 0, "maximum": 99},
        "b": {"type": "integer", "minimum": -99, "maximum": 99},
    },
    "required": ["a", "b"],
}
WEATHER, ADD = _strict(WEATHER), _strict(ADD)
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "add", "parameters": ADD}},
]
SCHEMA_OF = {"get_weather": WEATHER, "add": ADD}
QUESTIONS = ["What is the weather in Paris?", "What is 2 plus 3?", "Is it cold in Oslo?"]


def _tool_request(client: openai.OpenAI, question: str, choice: Any, stream: bool) -> Any:
    return client.chat.completions.create(
        model=MODEL_NAME,
        messages=[{"role": "user", "content": question}],
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice=choice,
        max_tokens=60,
        temperature=0,
        stream=stream,
    )


def _streamed_calls(stream: Any) -> tuple[list[dict[str, str]], str | None]:
    """Tool calls put together from OpenAI-style deltas (index, name once, arguments)."""
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"name": "", "arguments": ""})
                if delta.function.name:
                    call["name"] = delta.function.name
                call["arguments"] += delta.function.arguments or ""
    return [calls[i] for i in sorted(calls)], finish


@pytest.mark.parametrize("stream", [False, True])
def test_tool_choice_required_gives_valid_calls(so_client: openai.OpenAI, stream: bool) -> None:
    for question in QUESTIONS:
        result = _tool_request(so_client, question, "required", stream)
        if stream:
            calls, finish = _streamed_calls(result)
        else:
            message = result.choices[0].message
            calls = [
                {"name": c.function.name, "arguments": c.function.arguments}
                for c in message.tool_calls
            ]
            finish = result.choices[0].finish_reason
        # "length": the grammar allows any number of calls, and a 135M model may repeat
        # them until max_tokens; the complete ones are still returned.
        assert calls and finish in ("tool_calls", "length")
        for call in calls:
            jsonschema.validate(json.loads(call["arguments"]), SCHEMA_OF[call["name"]])


@pytest.mark.parametrize("stream", [False, True])
def test_named_tool_choice_gives_that_call(so_client: openai.OpenAI, stream: bool) -> None:
    for name in ("get_weather", "add"):
        choice = {"type": "function", "function": {"name": name}}
        result = _tool_request(so_client, QUESTIONS[0], choice, stream)
        if stream:
            calls, _ = _streamed_calls(result)
        else:
            tool_calls = result.choices[0].message.tool_calls
            calls = [
                {"name": c.function.name, "arguments": c.function.arguments} for c in tool_calls
            ]
            assert tool_calls[0].id and tool_calls[0].type == "function"
        assert [c["name"] for c in calls] == [name]
        jsonschema.validate(json.loads(calls[0]["arguments"]), SCHEMA_OF[name])


def test_tool_choice_none_and_auto_answer_text(so_client: openai.OpenAI) -> None:
    for choice in ("none", "auto"):
        result = _tool_request(so_client, "Say hello.", choice, False)
        message = result.choices[0].message
        assert message.content and not message.tool_calls


# The hermes format written under a regex, so that the 135M model calls a tool with
# tool_choice="auto" (the server's --tool-call-parser is hermes).
HERMES_CALL = (
    r'<tool_call>\{"name": "get_weather", "arguments": \{"city": "[A-Z][a-z]{1,12}", '
    r'"unit": "(celsius|fahrenheit)"\}\}</tool_call>'
)
STREAM_CASES = [
    ("required", {}, "tool_calls"),
    ({"type": "function", "function": {"name": "add"}}, {}, "stop"),  # OpenAI: named -> stop
    ("auto", {"structured_outputs": {"regex": HERMES_CALL}}, "tool_calls"),
]


@pytest.mark.parametrize(("choice", "extra", "finish"), STREAM_CASES)
def test_streamed_tool_calls_come_in_pieces_that_join_to_the_whole(
    so_client: openai.OpenAI, choice: Any, extra: dict[str, Any], finish: str
) -> None:
    """Greedy, streamed and not: the first delta of the call carries its id, type and
    name; its arguments arrive over several chunks and join to exactly the
    non-streamed arguments; the last chunk has the finish reason."""
    args = dict(
        model=MODEL_NAME,
        messages=[{"role": "user", "content": QUESTIONS[0]}],
        tools=TOOLS,
        tool_choice=choice,
        max_tokens=100,
        temperature=0,
        extra_body=extra,
    )
    whole = so_client.chat.completions.create(**args)  # type: ignore[call-overload]
    expected = [
        (c.function.name, c.function.arguments) for c in whole.choices[0].message.tool_calls
    ]
    assert whole.choices[0].finish_reason == finish and len(expected) == 1
    deltas, finishes = [], []
    for chunk in so_client.chat.completions.create(**args, stream=True):  # type: ignore[call-overload]
        deltas += [d for c in chunk.choices for d in c.delta.tool_calls or []]
        finishes += [c.finish_reason for c in chunk.choices]
    first, rest = deltas[0], deltas[1:]
    assert first.index == 0 and first.id and first.type == "function"
    assert first.function.name == expected[0][0]
    assert len([d for d in deltas if d.function.arguments]) >= 5  # token by token
    assert all(d.index == 0 and not d.function.name and not d.id for d in rest)
    arguments = "".join(d.function.arguments or "" for d in deltas)
    assert arguments == expected[0][1]
    jsonschema.validate(json.loads(arguments), SCHEMA_OF[expected[0][0]])
    assert finishes[-1] == finish and all(f is None for f in finishes[:-1])
