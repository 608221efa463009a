"""OpenAI-style error bodies and the exception handlers that make every failure one.

Status mapping: ValueError (bad sampling params, engine validation) -> 400,
request validation (malformed JSON, wrong types; FastAPI's 422) -> 400,
APIError -> its own status, anything else -> 500 (answered by
entrypoints.middleware.ServerErrorMiddleware, logged once, on a connection that stays
open). No request can take the server down.
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pagedllm.engine.async_engine import EngineDeadError, EngineGenerateError
from pagedllm.entrypoints.openai.protocol import ErrorInfo, ErrorResponse

logger = logging.getLogger(__name__)

_ERROR_TYPES = {
    HTTPStatus.BAD_REQUEST: "BadRequestError",
    HTTPStatus.UNAUTHORIZED: "AuthenticationError",
    HTTPStatus.NOT_FOUND: "NotFoundError",
    HTTPStatus.METHOD_NOT_ALLOWED: "MethodNotAllowedError",
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: "RequestTooLargeError",
    HTTPStatus.INTERNAL_SERVER_ERROR: "InternalServerError",
    HTTPStatus.SERVICE_UNAVAILABLE: "ServiceUnavailableError",
}


class APIError(Exception):
    """Raised by the serving code to answer with a given status and message."""

    def __init__(
        self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param


def error_response(
    message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST, param: str | None = None
) -> ErrorResponse:
    err_type = _ERROR_TYPES.get(status, status.phrase.replace(" ", "") + "Error")
    return ErrorResponse(
        error=ErrorInfo(message=message, type=err_type, param=param, code=int(status))
    )


def error_json(
    message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST, param: str | None = None
) -> JSONResponse:
    body = error_response(message, status, param)
    return JSONResponse(body.model_dump(), status_code=int(status))


def exception_to_error(exc: BaseException) -> ErrorResponse:
    """The error body for an exception raised while serving (also used mid-stream)."""
    if isinstance(exc, APIError):
        return error_response(exc.message, exc.status, exc.param)
    if isinstance(exc, ValueError):  # `param` names the field (InvalidRequestError, chat_utils)
        return error_response(str(exc), HTTPStatus.BAD_REQUEST, getattr(exc, "param", None))
    if isinstance(exc, EngineDeadError):
        return error_response(str(exc), HTTPStatus.SERVICE_UNAVAILABLE)
    message = f"Internal server error: {type(exc).__name__}: {exc}"
    return error_response(message, HTTPStatus.INTERNAL_SERVER_ERROR)


def _format_validation_error(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            return f"Malformed JSON in the request body: {err.get('msg', '')}"
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid value')}")
    return "Invalid request: " + "; ".join(parts) if parts else "Invalid request"


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_json(_format_validation_error(exc), HTTPStatus.BAD_REQUEST)


async def _on_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = HTTPStatus(exc.status_code)
    return error_json(str(exc.detail), status)


async def _on_api_error(request: Request, exc: Exception) -> JSONResponse:
    body = exception_to_error(exc)
    return JSONResponse(body.model_dump(), status_code=body.error.code)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(APIError, _on_api_error)
    app.add_exception_handler(ValueError, _on_api_error)
    app.add_exception_handler(json.JSONDecodeError, _on_api_error)
    app.add_exception_handler(EngineGenerateError, _on_api_error)  # logged by AsyncLLM
    app.add_exception_handler(EngineDeadError, _on_api_error)


def parse_json_body(raw: bytes) -> Any:
    """For handlers that read the body themselves (the legacy /generate)."""
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(f"Malformed JSON in the request body: {exc}") from exc
