"""One of the N API servers of `--api-server-count N`:
`python -m pagedllm.entrypoints.openai.api_server_worker`, started by multi_server.py
with a pickled `WorkerSpec` on its standard input.

It serves the shared listening socket (an inherited file descriptor) with the same app
as the one-process server, around its own AsyncLLM attached to the parent's engine core
as client `endpoints.client_index`. Its standard input stays open while the parent
lives: end of file (the parent died) is a SIGTERM to itself, so it drains and exits.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import signal
import socket
import sys
import threading
from dataclasses import dataclass

from pagedllm.config import EngineConfig
from pagedllm.engine.core_launch import CoreEndpoints
from pagedllm.gc_utils import prepare_serving_process

logger = logging.getLogger("pagedllm.entrypoints.openai.api_server")


@dataclass
class WorkerSpec:
    args: argparse.Namespace  # the server's flags, as parsed by the parent
    engine_config: EngineConfig  # the one the core was started with
    endpoints: CoreEndpoints
    listen_fd: int  # the shared listening socket (inherited)


def main() -> None:
    spec: WorkerSpec = pickle.load(sys.stdin.buffer)
    index = spec.endpoints.client_index
    from pagedllm.entrypoints.utils import configure_logging

    configure_logging(prefix=f"[api server {index}] ")
    _stop_when_parent_exits()
    serve(spec)


def serve(spec: WorkerSpec) -> None:
    from pagedllm.engine.async_engine import AsyncLLM
    from pagedllm.engine.core_process import MPClient
    from pagedllm.engine.llm_engine import load_tokenizer
    from pagedllm.entrypoints.cli_args import engine_args_from_namespace
    from pagedllm.entrypoints.openai.api_server import app_kwargs, build_app
    from pagedllm.entrypoints.shutdown import serve_http
    from pagedllm.entrypoints.startup import tls_kwargs

    args, config = spec.args, spec.engine_config
    engine_args = engine_args_from_namespace(args)
    tokenizer = load_tokenizer(config, engine_args.skip_tokenizer_init)
    client = MPClient(config, spec.endpoints)
    # The periodic throughput line once, from server 0 (every server sees the same core).
    log_stats = spec.endpoints.client_index == 0 and not engine_args.disable_log_stats
    engine = AsyncLLM(config, tokenizer, client, log_stats)
    app = build_app(engine_args, engine=engine, **app_kwargs(args))
    prepare_serving_process(f"API server {spec.endpoints.client_index}")
    sock = socket.socket(fileno=spec.listen_fd)
    logger.info("API server %d (pid %d) ready", spec.endpoints.client_index, os.getpid())
    serve_http(
        app,
        sock,
        app.state.inflight,
        args.shutdown_timeout,
        log_level=args.uvicorn_log_level,
        access_log=not args.disable_uvicorn_access_log,
        timeout_keep_alive=5,
        **tls_kwargs(args),
    )


def _stop_when_parent_exits() -> None:
    def watch() -> None:
        # os.read, not sys.stdin: a daemon thread must not hold the buffered reader's
        # lock while the interpreter finalizes.
        while os.read(0, 65536):
            pass
        logger.warning("The parent process exited: stopping")
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


if __name__ == "__main__":
    main()
