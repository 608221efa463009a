"""`GET /dashboard` (the page), `/dashboard/snapshot` (JSON) and `/dashboard/events`
(server-sent events) on the OpenAI server; `--disable-dashboard` leaves them out (404).

With `--api-key` the three routes take the key as `Authorization: Bearer <key>`, as
the query parameter `?api_key=<key>` (a browser's address bar; EventSource cannot send
headers), or as the cookie that a page opened with the query parameter gets (HttpOnly,
SameSite=Strict, limited to the dashboard's path), so the page's own requests carry it.
"""

from __future__ import annotations

import secrets
from http import HTTPStatus
from importlib import resources

from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from pagedllm.engine.async_engine import AsyncLLM
from pagedllm.entrypoints.dashboard.history import DashboardStatLogger
from pagedllm.entrypoints.dashboard.sampler import DashboardSampler, engine_summary
from pagedllm.entrypoints.openai.errors import error_json

KEY_PARAM = "api_key"
KEY_COOKIE = "pagedllm_dashboard_key"
_PAGE = "dashboard.html"


class DashboardAuth:
    def __init__(self, api_key: str | None) -> None:
        self.api_key = api_key

    def allows(self, request: Request) -> bool:
        if not self.api_key:
            return True
        offered = [
            request.headers.get("authorization", "").removeprefix("Bearer "),
            request.query_params.get(KEY_PARAM, ""),
            request.cookies.get(KEY_COOKIE, ""),
        ]
        expected = self.api_key.encode()
        return any(secrets.compare_digest(key.encode(), expected) for key in offered if key)

    def remember(self, request: Request, response: Response) -> None:
        """A page opened with ?api_key= gets the cookie its own requests will carry."""
        key = request.query_params.get(KEY_PARAM)
        if self.api_key and key:
            root = request.scope.get("root_path", "") or ""
            response.set_cookie(
                KEY_COOKIE, key, path=f"{root}/dashboard", httponly=True, samesite="strict"
            )


def _unauthorized() -> Response:
    return error_json(
        "Unauthorized: the dashboard needs the API key (Authorization: Bearer <key>, "
        f"?{KEY_PARAM}=<key>, or the cookie set by opening /dashboard?{KEY_PARAM}=<key>)",
        HTTPStatus.UNAUTHORIZED,
    )


def page_html() -> str:
    return resources.files(__package__).joinpath(_PAGE).read_text(encoding="utf-8")


def install_dashboard(
    app: FastAPI, engine: AsyncLLM, api_key: str | None, version: str
) -> DashboardSampler:
    """Add the routes, and the stat logger that keeps the page's history."""
    history = DashboardStatLogger()
    engine.stat_loggers.append(history)
    inflight = getattr(app.state, "inflight", None)
    sampler = DashboardSampler(
        engine,
        history,
        engine_summary(engine.engine_config, version),
        closing=lambda: bool(inflight is not None and inflight.closing),
    )
    auth = DashboardAuth(api_key)
    html = page_html()

    async def page(request: Request) -> Response:
        if not auth.allows(request):
            return _unauthorized()
        response = HTMLResponse(html, headers={"Cache-Control": "no-store"})
        auth.remember(request, response)
        return response

    async def snapshot(request: Request) -> Response:
        if not auth.allows(request):
            return _unauthorized()
        return JSONResponse(await sampler.snapshot(), headers={"Cache-Control": "no-store"})

    async def events(request: Request) -> Response:
        if not auth.allows(request):
            return _unauthorized()
        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return StreamingResponse(sampler.events(), media_type="text/event-stream", headers=headers)

    app.add_api_route("/dashboard", page, methods=["GET"], include_in_schema=False)
    app.add_api_route("/dashboard/snapshot", snapshot, methods=["GET"])
    app.add_api_route("/dashboard/events", events, methods=["GET"], include_in_schema=False)
    app.state.dashboard = sampler
    return sampler
