"""vLLM's demo server: POST /generate and GET /health (for simple clients and
benchmarks; use the OpenAI server in production).

    python -m pagedllm.entrypoints.api_server --model MODEL --port 8000

Request: {"prompt": str, "stream": bool, **SamplingParams fields}.
Response: {"text": [prompt + output for each of the n outputs]}; with "stream": true,
one such JSON object per line (newline-delimited), each with the full text so far.
The HTTP flags are the OpenAI server's: --api-key (guards /generate), the body limit,
CORS, --shutdown-timeout.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from pagedllm.config import EngineArgs
from pagedllm.engine.async_engine import AsyncLLM
from pagedllm.entrypoints.chat_utils import check_text
from pagedllm.entrypoints.http_options import HTTPOptions
from pagedllm.entrypoints.middleware import install_http_middleware
from pagedllm.entrypoints.openai.errors import (
    APIError,
    error_json,
    exception_to_error,
    install_error_handlers,
    parse_json_body,
)
from pagedllm.entrypoints.openai.protocol import random_uuid
from pagedllm.entrypoints.openai.serving_engine import prefetch, raise_if_failed
from pagedllm.entrypoints.shutdown import InflightRequests
from pagedllm.entrypoints.utils import with_cancellation
from pagedllm.outputs import RequestOutput
from pagedllm.sampling_params import RequestOutputKind, SamplingParams

logger = logging.getLogger("pagedllm.entrypoints.api_server")


def _parse_request(body: Any, stream_default: bool = False) -> tuple[str, bool, SamplingParams]:
    if not isinstance(body, dict):
        raise APIError("The request body must be a JSON object")
    body = dict(body)
    prompt = body.pop("prompt", None)
    if not isinstance(prompt, str):
        raise APIError("'prompt' (a string) is required", param="prompt")
    check_text(prompt, "prompt")
    stream = bool(body.pop("stream", stream_default))
    bad_words = body.get("bad_words")
    if bad_words is not None and not (
        isinstance(bad_words, list) and all(isinstance(w, str) for w in bad_words)
    ):
        raise APIError("bad_words must be a list of strings", param="bad_words")
    body["output_kind"] = RequestOutputKind.CUMULATIVE if stream else RequestOutputKind.FINAL_ONLY
    try:
        params = SamplingParams(**body)
    except TypeError as exc:  # an unknown field
        raise APIError(f"Invalid sampling parameters: {exc}") from exc
    return prompt, stream, params


def _texts(prompt: str, output: RequestOutput) -> list[str]:
    return [prompt + c.text for c in sorted(output.outputs, key=lambda c: c.index)]


async def _stream_lines(prompt: str, outputs: AsyncIterator[RequestOutput]) -> AsyncIterator[bytes]:
    try:
        async for output in outputs:
            raise_if_failed(output)
            yield (json.dumps({"text": _texts(prompt, output)}) + "\n").encode("utf-8")
    except Exception as exc:
        yield (exception_to_error(exc).model_dump_json() + "\n").encode("utf-8")


@with_cancellation
async def _generate(body: Any, raw_request: Request) -> Response:
    inflight: InflightRequests = raw_request.app.state.inflight
    prompt, stream, params = _parse_request(body)
    outputs = inflight.generate(prompt, params, random_uuid())
    if stream:
        first_ready = await prefetch(outputs)  # errors before the stream starts become a 400
        return StreamingResponse(
            _stream_lines(prompt, first_ready), media_type="application/x-ndjson"
        )
    final: RequestOutput | None = None
    async for output in outputs:
        final = output
    if final is None:
        raise RuntimeError("the request ended without an output")
    raise_if_failed(final)  # an engine failure is a 500, never a 200 with no text
    return JSONResponse({"text": _texts(prompt, final)})


async def generate(raw_request: Request) -> Response:
    body = parse_json_body(await raw_request.body())
    response = await _generate(body, raw_request=raw_request)
    return response if response is not None else Response(status_code=499)


async def health(raw_request: Request) -> Response:
    engine: AsyncLLM = raw_request.app.state.engine
    if engine.errored:
        return error_json(str(engine.dead_error), HTTPStatus.SERVICE_UNAVAILABLE)
    return Response(status_code=200)


def build_app(
    engine_args: EngineArgs,
    engine: AsyncLLM | None = None,
    http_options: HTTPOptions | None = None,
) -> FastAPI:
    async_engine = engine or AsyncLLM.from_engine_args(engine_args)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        async_engine.shutdown()

    app = FastAPI(title="pagedllm /generate server", lifespan=lifespan)
    install_error_handlers(app)
    install_http_middleware(app, http_options or HTTPOptions(api_key_prefixes=("/generate",)))
    app.state.engine = async_engine
    app.state.inflight = InflightRequests(async_engine)
    app.add_api_route("/generate", generate, methods=["POST"])
    app.add_api_route("/health", health, methods=["GET"])
    return app


def main(argv: list[str] | None = None) -> None:
    from pagedllm.entrypoints.cli_args import (
        add_engine_args,
        add_http_args,
        engine_args_from_namespace,
        http_options_from_namespace,
    )
    from pagedllm.entrypoints.startup import start_or_exit
    from pagedllm.entrypoints.utils import configure_logging

    parser = argparse.ArgumentParser(prog="python -m pagedllm.entrypoints.api_server")
    group = parser.add_argument_group("server arguments")
    group.add_argument("--host", type=str, default=None)
    group.add_argument("--port", type=int, default=8000)
    group.add_argument("--log-level", dest="uvicorn_log_level", type=str, default="info")
    group.add_argument("--disable-uvicorn-access-log", action="store_true")
    add_http_args(group)
    add_engine_args(parser)
    args = parser.parse_args(argv)
    configure_logging()

    def make_app() -> FastAPI:
        options = http_options_from_namespace(args, ("/generate",))
        return build_app(engine_args_from_namespace(args), http_options=options)

    start_or_exit(args, make_app)


if __name__ == "__main__":
    main()
