"""Starting a server the way a user expects: the port is checked before the model
loads, and a start-up failure (port in use, a corrupt model file, a bad flag value)
is one clear line and exit status 1; the traceback only at debug log level
(PAGEDLLM_LOGGING_LEVEL=DEBUG or --uvicorn-log-level debug)."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import ssl
from collections.abc import Callable
from typing import Any, NoReturn

from pagedllm.entrypoints.shutdown import bind_socket, serve_http

logger = logging.getLogger("pagedllm.entrypoints.startup")


def _debug(args: argparse.Namespace) -> bool:
    level = os.environ.get("PAGEDLLM_LOGGING_LEVEL", "").upper()
    return level == "DEBUG" or getattr(args, "uvicorn_log_level", None) in ("debug", "trace")


def _fail(args: argparse.Namespace, message: str, exc: BaseException) -> NoReturn:
    logger.error("%s", message, exc_info=exc if _debug(args) else None)
    raise SystemExit(1)


def bind_or_exit(args: argparse.Namespace) -> socket.socket:
    """The listening socket of --host/--port, or one clear line and exit status 1."""
    host = args.host or "0.0.0.0"
    try:
        return bind_socket(host, args.port)
    except OSError as exc:
        _fail(args, f"Cannot listen on {host}:{args.port}: {exc.strerror or exc}", exc)


def fail_to_start(args: argparse.Namespace, exc: BaseException) -> NoReturn:
    """A start-up failure as one line (ValueError/OSError: their message alone)."""
    detail = str(exc) if isinstance(exc, (ValueError, OSError)) else f"{type(exc).__name__}: {exc}"
    detail = " ".join(line.strip() for line in detail.splitlines() if line.strip())
    _fail(args, f"Could not start the server: {detail}", exc)


def tls_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """uvicorn's TLS arguments from --ssl-* ({} without --ssl-certfile). The files are
    loaded here once, so that a bad key or certificate is an error before the model
    loads (ValueError, or OSError / ssl.SSLError naming the problem)."""
    keyfile, certfile = getattr(args, "ssl_keyfile", None), getattr(args, "ssl_certfile", None)
    if not certfile:
        if keyfile:
            raise ValueError("--ssl-keyfile needs --ssl-certfile")
        return {}
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certfile, keyfile)
    if args.ssl_ca_certs:
        context.load_verify_locations(args.ssl_ca_certs)
    return dict(
        ssl_keyfile=keyfile,
        ssl_certfile=certfile,
        ssl_ca_certs=args.ssl_ca_certs,
        ssl_cert_reqs=args.ssl_cert_reqs,
    )


def tls_or_exit(args: argparse.Namespace) -> dict[str, Any]:
    try:
        return tls_kwargs(args)
    except (ValueError, OSError) as exc:  # ssl.SSLError is an OSError
        fail_to_start(args, exc)


def start_or_exit(
    args: argparse.Namespace, make_app: Callable[[], Any], **uvicorn_kwargs: Any
) -> None:
    tls = tls_or_exit(args)
    sock = bind_or_exit(args)
    try:
        app = make_app()
    except Exception as exc:  # noqa: BLE001 - every start-up failure is reported the same way
        sock.close()
        fail_to_start(args, exc)
    scheme = "https" if tls else "http"
    logger.info("Starting the server on %s://%s:%d", scheme, args.host or "0.0.0.0", args.port)
    serve_http(
        app,
        sock,
        app.state.inflight,
        args.shutdown_timeout,
        log_level=getattr(args, "uvicorn_log_level", "info"),
        access_log=not args.disable_uvicorn_access_log,
        **tls,
        **uvicorn_kwargs,
    )
