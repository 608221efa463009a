"""Pure ASGI middleware shared by both servers: the API key, the request-body size
limit, CORS, the last-resort error handler (a 500 that keeps the connection), and
X-Request-Id response headers (--enable-request-id-headers)."""

from __future__ import annotations

import logging
import secrets
import traceback
import uuid
from http import HTTPStatus

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pagedllm.entrypoints.http_options import HTTPOptions, resolve_api_key
from pagedllm.entrypoints.openai.errors import error_json, exception_to_error

logger = logging.getLogger(__name__)
_TRACEBACK_FRAMES = 8  # the innermost frames of a 500's traceback


def _route_path(scope: Scope) -> str:
    path: str = scope["path"]
    root = scope.get("root_path", "") or ""
    return path[len(root) :] if root and path.startswith(root) else path


class RequestIdHeaderMiddleware:
    """X-Request-Id on every response: the request's own X-Request-Id, else a new id."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = dict(scope["headers"]).get(b"x-request-id") or uuid.uuid4().hex.encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", request_id)]}
            await send(message)

        await self.app(scope, receive, send_with_id)


class AuthenticationMiddleware:
    """A bearer token on the guarded routes (as vLLM); /health, /metrics, ... stay open."""

    def __init__(self, app: ASGIApp, api_key: str, prefixes: tuple[str, ...] = ("/v1",)) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()
        self.prefixes = prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS":
            return await self.app(scope, receive, send)
        if not _route_path(scope).startswith(self.prefixes):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if secrets.compare_digest(headers.get(b"authorization", b""), self.expected):
            return await self.app(scope, receive, send)
        response = error_json(
            "Unauthorized: a valid API key is required (Authorization: Bearer <key>)",
            HTTPStatus.UNAUTHORIZED,
        )
        await response(scope, receive, send)


def _too_large(limit: int) -> str:
    return (
        f"The request body is larger than the server's limit of {limit} bytes "
        "(--max-request-body-size)"
    )


class RequestBodyLimitMiddleware:
    """HTTP 413 for a body over `max_bytes`: at once when Content-Length says so, else
    as soon as the bytes received (a chunked body too) pass the limit. The handler
    reading the body gets an HTTPException(413), which becomes the error body."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            response = error_json(_too_large(self.max_bytes), HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
            return await response(scope, receive, send)
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, _too_large(self.max_bytes))
            return message

        await self.app(scope, limited_receive, send)


def log_internal_error(path: str, exc: BaseException) -> None:
    """One line, then one short traceback (the innermost frames, no chained causes)."""
    lines = traceback.format_exception(
        type(exc), exc, exc.__traceback__, limit=-_TRACEBACK_FRAMES, chain=False
    )
    logger.error(
        "Internal error serving %s: %s: %s\n%s", path, type(exc).__name__, exc, "".join(lines)
    )


class ServerErrorMiddleware:
    """Turns an exception no handler took into one logged 500 with an OpenAI error body.
    Starlette's own ServerErrorMiddleware re-raises after answering, which makes uvicorn
    log the traceback again and close the keep-alive connection; this one sits inside
    it and never lets an exception out."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            log_internal_error(scope.get("path", "?"), exc)
            if started:
                return  # the response is on its way; nothing more can be said
            body = exception_to_error(exc)
            response = error_json(body.error.message, HTTPStatus(body.error.code))
            await response(scope, receive, send)


def install_http_middleware(app: FastAPI, options: HTTPOptions) -> None:
    """Outermost first: the X-Request-Id header (when enabled), errors, CORS (preflight
    answered before the key check), the key, the body limit."""
    app.add_middleware(RequestBodyLimitMiddleware, max_bytes=options.max_request_body_size)  # type: ignore[arg-type]
    key = resolve_api_key(options.api_key)
    if key:
        app.add_middleware(
            AuthenticationMiddleware,  # type: ignore[arg-type]
            api_key=key,
            prefixes=options.api_key_prefixes,
        )
    app.add_middleware(
        CORSMiddleware,  # type: ignore[arg-type]
        allow_origins=options.allowed_origins,
        allow_methods=options.allowed_methods,
        allow_headers=options.allowed_headers,
        allow_credentials=options.allow_credentials,
    )
    app.add_middleware(ServerErrorMiddleware)  # type: ignore[arg-type]
    if options.enable_request_id_headers:
        app.add_middleware(RequestIdHeaderMiddleware)  # type: ignore[arg-type]
