"""`--api-server-count N` (N > 1): N API-server processes, one engine core (vLLM's flag).

    parent (this process: binds the port, starts and supervises, serves nothing)
      ├── engine core       python -m pagedllm.core.engine_core_proc (N input/output address pairs)
      ├── API server 0      python -m pagedllm.entrypoints.openai.api_server_worker
      ├── ...                 (each: uvicorn on the shared listening socket, its own AsyncLLM:
      └── API server N-1       HTTP, tokenization, detokenization, SSE; client index i)

- The listening socket is bound once, here (a port in use is reported before the model
  loads), and passed to every server as an inherited file descriptor: the kernel hands
  each new connection to whichever server accepts it first, so an idle server takes
  the next connection while a busy one is still tokenizing.
- The core routes each request's outputs to the server that sent it (core/output_router.py).
  Request ids are `cmpl-`/`chatcmpl-`/`embd-` + a random UUID: unique across servers.
- Each server has its own process group, so Ctrl-C reaches only this process (and the
  core, which ignores SIGINT); each SIGINT/SIGTERM here is forwarded to every server as
  one SIGTERM, so the shutdown keeps its meaning (first signal: drain for
  --shutdown-timeout; second: abort now). When the servers have exited, the core is
  stopped. If a server dies on its own, the others are stopped too (exit status 1).
  If the core dies, the servers stay up and answer 503, as with one server.
- This process dying (even SIGKILL) closes the children's standard input: the core and
  every server stop at its end of file. No orphans.
- /metrics: prometheus_client's multiprocess mode over a temporary directory (see
  metrics.py); logs: each server's lines start with `[api server i]`.
"""

from __future__ import annotations

import argparse
import logging
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from typing import Any

from pagedllm.engine.core_launch import CoreProcess, child_env, start_core_process
from pagedllm.entrypoints.openai.api_server_worker import WorkerSpec
from pagedllm.entrypoints.startup import bind_or_exit, fail_to_start

logger = logging.getLogger("pagedllm.entrypoints.openai.api_server")
_TICK_S = 0.2  # how often the parent looks at its children


def run_multi_api_server(args: argparse.Namespace) -> None:
    from pagedllm.entrypoints.cli_args import engine_args_from_namespace, served_model_names

    sock = bind_or_exit(args)
    socket_dir = tempfile.mkdtemp(prefix="pagedllm-core-")
    metrics_dir = tempfile.mkdtemp(prefix="pagedllm-metrics-")
    core: CoreProcess | None = None
    try:
        engine_args = engine_args_from_namespace(args)
        names = served_model_names(args)
        engine_args.served_model_name = names[0] if names else engine_args.served_model_name
        config = engine_args.create_engine_config()
        core = start_core_process(config, socket_dir, args.api_server_count)
    except BaseException as exc:
        sock.close()
        for path in (socket_dir, metrics_dir):
            shutil.rmtree(path, ignore_errors=True)
        if not isinstance(exc, Exception):
            raise  # Ctrl-C while the model loads
        fail_to_start(args, exc)  # every start-up failure is reported the same way
    code = 1
    try:
        servers = [
            _start_server(WorkerSpec(args, config, core.endpoints(i), sock.fileno()), metrics_dir)
            for i in range(args.api_server_count)
        ]
        sock.close()  # the servers hold it now
        logger.info(
            "Started %d API servers (pids %s) on http://%s:%d, engine core pid %d",
            len(servers),
            ", ".join(str(p.pid) for p in servers),
            args.host or "0.0.0.0",
            args.port,
            core.proc.pid,
        )
        code = Supervisor(servers, core).run()
    finally:
        if core.proc.poll() is None:
            core.proc.terminate()  # the core's SIGTERM handler ends its busy loop cleanly
        core.stop(grace_s=10.0)
        shutil.rmtree(metrics_dir, ignore_errors=True)
    raise SystemExit(code)


def _start_server(spec: WorkerSpec, metrics_dir: str) -> subprocess.Popen[bytes]:
    env = {**child_env(), "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pagedllm.entrypoints.openai.api_server_worker"],
        stdin=subprocess.PIPE,
        pass_fds=(spec.listen_fd, spec.endpoints.status_fd),
        env=env,
        process_group=0,  # Ctrl-C in a terminal reaches the parent only
    )
    assert proc.stdin is not None
    proc.stdin.write(pickle.dumps(spec))
    proc.stdin.flush()  # kept open: the server stops when it closes (this process died)
    return proc


class Supervisor:
    """Forwards signals to the servers and waits for them; the exit status."""

    def __init__(self, servers: list[subprocess.Popen[bytes]], core: CoreProcess) -> None:
        self.servers = servers
        self.core = core
        self.stopping = False  # a signal came: the servers' exits are expected
        self._woken = threading.Event()
        self._core_dead_logged = False

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _SIGNALS}
        try:
            return self._wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if not self.stopping:
            logger.info("Shutting down %d API servers (signal %d)", len(self.servers), signum)
        self.stopping = True
        self._signal_servers(signal.SIGTERM)

    def _signal_servers(self, sig: int) -> None:
        for proc in self.servers:
            if proc.poll() is None:
                try:
                    proc.send_signal(sig)
                except ProcessLookupError:
                    pass

    def _wait(self) -> int:
        while True:
            exited = [(i, p) for i, p in enumerate(self.servers) if p.poll() is not None]
            if len(exited) == len(self.servers):
                return 0 if self.stopping else 1
            if exited and not self.stopping:
                index, proc = exited[0]
                logger.error(
                    "API server %d exited (status %s): stopping the others", index, proc.returncode
                )
                self.stopping = True
                self._signal_servers(signal.SIGTERM)
            self._note_core_death()
            self._woken.wait(_TICK_S)

    def _note_core_death(self) -> None:
        if self.core.proc.poll() is not None and not self._core_dead_logged and not self.stopping:
            self._core_dead_logged = True
            logger.error(
                "The engine core exited (status %s): the API servers answer 503",
                self.core.proc.returncode,
            )


_SIGNALS = (signal.SIGINT, signal.SIGTERM)
__all__ = ["Supervisor", "run_multi_api_server"]
