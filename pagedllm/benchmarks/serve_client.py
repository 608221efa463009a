"""The HTTP client of `pagedllm bench serve`: one streamed OpenAI request (completions
or chat completions) over a shared aiohttp session, timed as vLLM's benchmark does.

It must stay cheap: one process drives 1,000 concurrent streams at ~15,000 tokens/s.
So each network read is timestamped once, split into SSE events by bytes, and only
the events that carry usage or an error go through `json.loads`; a content chunk is
recognised by a substring test and never parsed.

Works against any OpenAI-compatible server; the only non-OpenAI field sent is
`ignore_eos` (vLLM takes it too), and only when asked for."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

# Six hours, as vLLM's benchmark client: a request under heavy load may wait long.
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=6 * 60 * 60)


@dataclass
class RequestFuncInput:
    prompt: str
    api_url: str
    prompt_len: int
    output_len: int
    model: str
    temperature: float = 1.0
    ignore_eos: bool = False
    chat: bool = False


@dataclass
class RequestFuncOutput:
    success: bool = False
    prompt_len: int = 0
    output_tokens: int = 0  # from the final usage, else the number of content chunks
    ttft: float = 0.0  # seconds from sending to the first content chunk
    latency: float = 0.0  # seconds from sending to the end of the stream
    itl: list[float] = field(default_factory=list)  # gaps between content chunks
    start_time: float = 0.0
    error: str = ""


def make_session(max_concurrency: int | None = None) -> aiohttp.ClientSession:
    """One session for the whole run; the connection pool is as large as the run needs."""
    limit = max_concurrency or 0  # 0: no limit
    connector = aiohttp.TCPConnector(
        limit=limit, limit_per_host=limit, keepalive_timeout=60, ttl_dns_cache=300
    )
    return aiohttp.ClientSession(
        connector=connector, timeout=REQUEST_TIMEOUT, auto_decompress=False
    )


def request_headers() -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    api_key = os.environ.get("OPENAI_API_KEY")
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def request_payload(inp: RequestFuncInput) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "model": inp.model,
        "temperature": inp.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if inp.chat:
        payload["messages"] = [{"role": "user", "content": inp.prompt}]
        payload["max_completion_tokens"] = inp.output_len
    else:
        payload["prompt"] = inp.prompt
        payload["max_tokens"] = inp.output_len
    if inp.ignore_eos:
        payload["ignore_eos"] = True
    return payload


class _StreamState:
    """Folds one stream's SSE events into a RequestFuncOutput."""

    def __init__(self, output: RequestFuncOutput) -> None:
        self.output = output
        self.last_chunk_time = 0.0
        self.num_chunks = 0
        self.usage_tokens: int | None = None

    def on_data(self, data: bytes, now: float) -> None:
        """Complete SSE events; OpenAI servers send one `data: <payload>` line each."""
        for line in data.split(b"\n"):
            if line.startswith(b"data:"):
                self._on_payload(line[5:].strip(), now)

    def _on_payload(self, payload: bytes, now: float) -> None:
        if not payload or payload == b"[DONE]":
            return
        has_choices = b'"choices"' in payload
        if not has_choices and b'"error"' in payload:
            self.output.error = _error_message(payload)
            return
        # Plain `in` tests (no generator expressions): this runs for every token.
        if b'"usage":{' in payload or b'"usage": {' in payload:
            usage = json.loads(payload).get("usage") or {}
            if "completion_tokens" in usage:
                self.usage_tokens = int(usage["completion_tokens"])
        if has_choices and b'"choices":[]' not in payload and b'"choices": []' not in payload:
            self._on_content(now)

    def _on_content(self, now: float) -> None:
        if self.num_chunks == 0:
            self.output.ttft = now - self.output.start_time
        else:
            self.output.itl.append(now - self.last_chunk_time)
        self.last_chunk_time = now
        self.num_chunks += 1

    def finish(self, now: float) -> None:
        out = self.output
        out.latency = now - out.start_time
        out.output_tokens = self.usage_tokens if self.usage_tokens is not None else self.num_chunks
        if not out.error and self.num_chunks == 0:
            out.error = "the stream ended without any content chunk"
        out.success = not out.error


def _error_message(payload: bytes) -> str:
    try:
        body = json.loads(payload)
    except ValueError:
        return payload.decode(errors="replace")[:500]
    err = body.get("error", body)
    return str(err.get("message", err) if isinstance(err, dict) else err)[:500]


async def _stream(response: aiohttp.ClientResponse, state: _StreamState) -> None:
    buffer = b""
    async for data in response.content.iter_any():
        now = time.perf_counter()  # every event of one network read arrived now
        buffer += data
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")
        end = buffer.rfind(b"\n\n")  # the events are complete up to the last blank line
        if end >= 0:
            state.on_data(buffer[:end], now)
            buffer = buffer[end + 2 :]
    if buffer.strip():
        state.on_data(buffer, time.perf_counter())


def request_body(inp: RequestFuncInput) -> bytes:
    """The JSON body, serialised ahead of the timed run."""
    return json.dumps(request_payload(inp)).encode()


async def request_openai_stream(
    session: aiohttp.ClientSession, inp: RequestFuncInput, body: bytes | None = None
) -> RequestFuncOutput:
    """Send one streamed request (`body`: request_body(inp), made in advance); never
    raises (a failure is recorded in `error`)."""
    body = body if body is not None else request_body(inp)
    headers = request_headers()
    output = RequestFuncOutput(prompt_len=inp.prompt_len)
    state = _StreamState(output)
    output.start_time = time.perf_counter()
    try:
        async with session.post(inp.api_url, data=body, headers=headers) as response:
            if response.status != 200:
                text = await response.text()
                output.error = f"HTTP {response.status}: {text[:500]}"
            else:
                await _stream(response, state)
    except Exception as exc:  # a benchmark counts failures; it does not stop on one
        output.error = f"{type(exc).__name__}: {exc}"
    state.finish(time.perf_counter())
    return output
