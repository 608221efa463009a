"""Starting and stopping the engine core process (`python -m pagedllm.core.engine_core_proc`).

The pickled EngineConfig goes on the child's standard input, which stays open: the
core exits when it closes (its parent is gone). A status pipe carries one JSON line
(ready, with the number of KV blocks, or the start-up error) and then stays open
until the core exits, so whoever holds its read end sees the core's death as end of
file. With `--api-server-count N` the parent starts the core for N front ends
(`CoreEndpoints` tells front end i where to bind and hands it a copy of the status
pipe's read end); with one front end, that front end starts it (MPClient).
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import pickle
import select
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from pagedllm.config import EngineConfig

logger = logging.getLogger(__name__)
STARTUP_TIMEOUT_S = float(os.environ.get("PAGEDLLM_ENGINE_STARTUP_TIMEOUT_S", "1800"))


def socket_addresses(socket_dir: str, client_index: int) -> tuple[str, str]:
    """(input, output) ZeroMQ IPC addresses of front end `client_index`; it binds both."""
    return f"ipc://{socket_dir}/input-{client_index}", f"ipc://{socket_dir}/output-{client_index}"


@dataclass
class CoreEndpoints:
    """What front end `client_index` needs to reach a core that another process started."""

    client_index: int
    socket_dir: str
    status_fd: int  # a read end of the core's status pipe: end of file when the core exits
    num_gpu_blocks: int

    @property
    def addresses(self) -> tuple[str, str]:
        return socket_addresses(self.socket_dir, self.client_index)


@dataclass
class CoreProcess:
    """The engine core process, as the process that started it sees it."""

    proc: subprocess.Popen[bytes]
    status_fd: int
    socket_dir: str
    num_clients: int
    num_gpu_blocks: int

    def endpoints(self, client_index: int) -> CoreEndpoints:
        return CoreEndpoints(client_index, self.socket_dir, self.status_fd, self.num_gpu_blocks)

    def stop(self, grace_s: float = 10.0) -> None:
        """Wait `grace_s` for it to end, then close its standard input (it stops at end
        of file), then terminate, then kill; then clean up."""
        stop_process(self.proc, grace_s)
        try:
            os.close(self.status_fd)
        except OSError:
            pass
        shutil.rmtree(self.socket_dir, ignore_errors=True)


def start_core_process(
    engine_config: EngineConfig, socket_dir: str, num_clients: int = 1
) -> CoreProcess:
    """Start the core for `num_clients` front ends and wait until it is ready (its
    start-up error is raised here, as the same builtin type where there is one)."""
    status_read, status_write = os.pipe()
    command = [sys.executable, "-m", "pagedllm.core.engine_core_proc"]
    for client_index in range(num_clients):
        input_address, output_address = socket_addresses(socket_dir, client_index)
        command += [f"--input-address={input_address}", f"--output-address={output_address}"]
    command += [
        f"--status-fd={status_write}",
        f"--log-level={logging.getLogger('pagedllm').getEffectiveLevel()}",
    ]
    proc = subprocess.Popen(
        command, stdin=subprocess.PIPE, pass_fds=(status_write,), env=child_env()
    )
    os.close(status_write)
    try:
        assert proc.stdin is not None
        proc.stdin.write(pickle.dumps(engine_config))
        proc.stdin.flush()  # kept open: the core exits when it closes
        ready = _wait_ready(proc, status_read)
    except BaseException:
        stop_process(proc, grace_s=0.0)
        os.close(status_read)
        raise
    return CoreProcess(proc, status_read, socket_dir, num_clients, int(ready["num_gpu_blocks"]))


def child_env() -> dict[str, str]:
    """This process's environment, with the directory pagedllm was imported from first
    on the path (it may not be installed, or be another copy)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../pagedllm
    root = os.path.dirname(package)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _wait_ready(proc: subprocess.Popen[bytes], status_fd: int) -> dict[str, Any]:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"the engine core did not start within {STARTUP_TIMEOUT_S:.0f} s")
        readable, _, _ = select.select([status_fd], [], [], min(remaining, 1.0))
        if not readable:
            continue
        chunk = os.read(status_fd, 65536)
        if not chunk:
            proc.wait(timeout=10)
            raise RuntimeError(f"The engine core process exited ({proc.returncode}) while starting")
        line += chunk
    ready: dict[str, Any] = json.loads(line)
    if "error" in ready:
        raise _startup_error(ready)
    return ready


def _startup_error(ready: dict[str, Any]) -> Exception:
    """The core's start-up error, as the same builtin type where there is one."""
    exc_type = getattr(builtins, ready.get("type", ""), None)
    if isinstance(exc_type, type) and issubclass(exc_type, Exception):
        try:
            return exc_type(ready["error"].split(": ", 1)[-1])
        except Exception:
            pass
    return RuntimeError(f"The engine core failed to start: {ready['error']}")


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """Wait `grace_s` for it to end by itself, then close its standard input (the core
    stops at end of file), then terminate, then kill."""
    if _waited(proc, grace_s):
        return
    _close_stdin(proc)
    if _waited(proc, 5.0):
        return
    proc.terminate()
    if not _waited(proc, 5.0):
        proc.kill()
        proc.wait()


def _waited(proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    try:
        proc.wait(timeout=timeout_s)
        return True
    except subprocess.TimeoutExpired:
        return False


def _close_stdin(proc: subprocess.Popen[bytes]) -> None:
    if proc.stdin is not None and not proc.stdin.closed:
        try:
            proc.stdin.close()
        except OSError:
            pass
