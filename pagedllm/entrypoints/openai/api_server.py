"""The OpenAI-compatible HTTP server.

    python -m pagedllm.entrypoints.openai.api_server --model MODEL --port 8000 [engine flags]
    pagedllm serve [MODEL] [flags]

`build_app` makes one FastAPI app around one AsyncLLM; it owns its Prometheus registry.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import FastAPI, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from pagedllm.config import EngineArgs
from pagedllm.engine.async_engine import AsyncLLM
from pagedllm.entrypoints.chat_render import RenderLimits
from pagedllm.entrypoints.chat_utils import load_chat_template
from pagedllm.entrypoints.dashboard import install_dashboard
from pagedllm.entrypoints.http_options import (
    API_KEY_ENV_VARS,
    DEFAULT_MAX_LOG_LEN,
    OPENAI_GUARDED_PREFIXES,
    HTTPOptions,
    resolve_api_key,
)
from pagedllm.entrypoints.middleware import install_http_middleware
from pagedllm.entrypoints.openai.errors import error_json, install_error_handlers
from pagedllm.entrypoints.openai.metrics import PrometheusStatLogger
from pagedllm.entrypoints.openai.routes import router
from pagedllm.entrypoints.openai.serving_chat import OpenAIServingChat
from pagedllm.entrypoints.openai.serving_completion import OpenAIServingCompletion
from pagedllm.entrypoints.openai.serving_embedding import OpenAIServingEmbedding
from pagedllm.entrypoints.openai.serving_models import ServedModels
from pagedllm.entrypoints.openai.serving_score import OpenAIServingScores
from pagedllm.entrypoints.openai.serving_tokenization import OpenAIServingTokenization
from pagedllm.entrypoints.shutdown import InflightRequests
from pagedllm.gc_utils import prepare_serving_process

__all__ = [
    "API_KEY_ENV_VARS",
    "app_kwargs",
    "build_app",
    "main",
    "resolve_api_key",
    "run_server",
]

logger = logging.getLogger("pagedllm.entrypoints.openai.api_server")


def package_version() -> str:
    try:
        return version("pagedllm")
    except PackageNotFoundError:
        return "unknown"


def _served_names(
    engine_args: EngineArgs, served_model_name: str | list[str] | None
) -> list[str] | None:
    if served_model_name is None:
        return None
    names = [served_model_name] if isinstance(served_model_name, str) else list(served_model_name)
    engine_args.served_model_name = names[0] if names else None
    return names or None


def _make_engine(
    engine_args: EngineArgs, registry: CollectorRegistry
) -> tuple[AsyncLLM, PrometheusStatLogger]:
    """The engine core starts in its own process; the front end stays here."""
    engine = AsyncLLM.from_engine_args(engine_args)
    return engine, _attach_prometheus(engine, registry)


def _attach_prometheus(engine: AsyncLLM, registry: CollectorRegistry) -> PrometheusStatLogger:
    """Before any request: nothing is recorded yet."""
    config = engine.engine_config
    prometheus = PrometheusStatLogger(
        registry,
        config.model_config.served_model_name,
        config,
        engine_stats=engine.core_client.client_index == 0,  # see metrics.py
    )
    engine.stat_loggers.append(prometheus)
    return prometheus


def _new_registry() -> CollectorRegistry:
    """The app's own registry, with the process, platform and GC collectors."""
    disable_created_metrics()  # no *_created series (process-wide, as vLLM)
    registry = CollectorRegistry()
    for collector in (ProcessCollector, PlatformCollector, GCCollector):
        collector(registry=registry)
    return registry


def build_app(
    engine_args: EngineArgs,
    served_model_name: str | list[str] | None = None,
    api_key: str | None = None,
    chat_template: str | None = None,
    *,
    engine: AsyncLLM | None = None,
    disable_log_requests: bool = False,
    root_path: str | None = None,
    http_options: HTTPOptions | None = None,
    render_limits: RenderLimits | None = None,
    enable_auto_tool_choice: bool = False,
    tool_call_parser: str | None = None,
    max_log_len: int = DEFAULT_MAX_LOG_LEN,
    disable_fastapi_docs: bool = False,
    return_tokens_as_token_ids: bool = False,
) -> FastAPI:
    """The app around a new engine (or `engine`, already running)."""
    names = _served_names(engine_args, served_model_name)
    template = load_chat_template(chat_template)
    registry = _new_registry()
    if engine is None:
        engine, prometheus = _make_engine(engine_args, registry)
    else:
        prometheus = _attach_prometheus(engine, registry)
    model_config = engine.engine_config.model_config
    models = ServedModels(
        names or [model_config.served_model_name], model_config.model, model_config.max_model_len
    )
    app = _new_app(engine, root_path, docs=not disable_fastapi_docs)
    options = http_options or HTTPOptions()
    options.api_key = options.api_key or api_key
    install_http_middleware(app, options)
    inflight = InflightRequests(engine)
    limits = render_limits or RenderLimits()
    state: Any = app.state
    state.engine = engine
    state.inflight = inflight
    state.models = models
    state.prometheus = prometheus
    log_requests = not disable_log_requests
    serving: dict[str, Any] = dict(
        inflight=inflight,
        max_log_len=max_log_len,
        return_tokens_as_token_ids=return_tokens_as_token_ids,
    )
    state.completion = OpenAIServingCompletion(engine, models, log_requests, **serving)
    state.chat = OpenAIServingChat(
        engine,
        models,
        template,
        log_requests,
        render_limits=limits,
        enable_auto_tools=enable_auto_tool_choice,
        tool_parser=tool_call_parser,
        **serving,
    )
    state.embedding = OpenAIServingEmbedding(engine, models, log_requests, **serving)
    state.scores = OpenAIServingScores(engine, models, log_requests, **serving)
    state.tokenization = OpenAIServingTokenization(engine, models, template, render_limits=limits)
    _add_routes(app, engine, options)
    return app


def _new_app(engine: AsyncLLM, root_path: str | None, docs: bool = True) -> FastAPI:
    """The FastAPI app with the error handlers; it shuts `engine` down when it stops.
    `docs`: serve /docs, /redoc and /openapi.json."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        engine.shutdown()

    hidden: dict[str, Any] = {} if docs else dict(docs_url=None, redoc_url=None, openapi_url=None)
    app = FastAPI(
        title="pagedllm OpenAI-compatible server",
        lifespan=lifespan,
        root_path=root_path or "",
        **hidden,
    )
    install_error_handlers(app)
    return app


def _add_routes(app: FastAPI, engine: AsyncLLM, options: HTTPOptions) -> None:
    app.include_router(router)
    app.add_api_route("/version", lambda: {"version": package_version()}, methods=["GET"])
    app.add_api_route("/metrics", _metrics, methods=["GET"])
    app.add_api_route("/health", _health, methods=["GET"])
    app.add_api_route("/ping", _health, methods=["GET", "POST"])  # vLLM's, for SageMaker
    if options.enable_dashboard:
        install_dashboard(app, engine, resolve_api_key(options.api_key), package_version())


async def _health(raw_request: Request) -> Response:
    engine: AsyncLLM = raw_request.app.state.engine
    if engine.errored:
        return error_json(str(engine.dead_error), HTTPStatus.SERVICE_UNAVAILABLE)
    return Response(status_code=200)


async def _metrics(raw_request: Request) -> Response:
    prometheus: PrometheusStatLogger = raw_request.app.state.prometheus
    return Response(prometheus.render(), media_type=CONTENT_TYPE_LATEST)


def app_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """build_app's arguments from the server's flags (each API server builds the same)."""
    from pagedllm.entrypoints.cli_args import http_options_from_namespace, served_model_names

    return dict(
        served_model_name=served_model_names(args),
        api_key=None,
        chat_template=args.chat_template,
        disable_log_requests=args.disable_log_requests,
        root_path=args.root_path,
        http_options=http_options_from_namespace(args, OPENAI_GUARDED_PREFIXES),
        render_limits=RenderLimits(args.chat_template_timeout, args.chat_template_max_chars),
        enable_auto_tool_choice=args.enable_auto_tool_choice,
        tool_call_parser=args.tool_call_parser,
        max_log_len=args.max_log_len,
        disable_fastapi_docs=args.disable_fastapi_docs,
        return_tokens_as_token_ids=args.return_tokens_as_token_ids,
    )


def run_server(args: argparse.Namespace) -> None:
    from pagedllm.entrypoints.cli_args import engine_args_from_namespace
    from pagedllm.entrypoints.startup import start_or_exit
    from pagedllm.entrypoints.utils import configure_logging

    configure_logging()
    logger.info("pagedllm API server version %s", package_version())
    logger.info("args: %s", {k: v for k, v in vars(args).items() if k != "api_key"})
    if getattr(args, "api_server_count", 1) > 1:
        from pagedllm.entrypoints.openai.multi_server import run_multi_api_server
        from pagedllm.entrypoints.startup import tls_or_exit

        tls_or_exit(args)  # a bad key or certificate stops the start here, not in a worker
        run_multi_api_server(args)
        return

    def make_app() -> FastAPI:
        app = build_app(engine_args_from_namespace(args), **app_kwargs(args))
        prepare_serving_process("API server")
        return app

    start_or_exit(args, make_app, timeout_keep_alive=5)


def main(argv: list[str] | None = None) -> None:
    from pagedllm.entrypoints.cli_args import make_server_parser

    parser = make_server_parser(
        prog="python -m pagedllm.entrypoints.openai.api_server",
        description="pagedllm's OpenAI-compatible server",
    )
    run_server(parser.parse_args(argv))


if __name__ == "__main__":
    main()
