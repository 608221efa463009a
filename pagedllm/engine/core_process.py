"""MPClient: the engine core in its own process, reached over two ZeroMQ IPC sockets.

The process is `python -m pagedllm.core.engine_core_proc`, with the pickled
EngineConfig on its standard input: a fresh interpreter that never re-runs the
user's script (no `if __name__ == "__main__":` guard needed) and inherits no CUDA
state, threads or locks of the front end.

    front end                                       engine core process
      _send()  PUSH (bound) --[kind][msgpack]-->    PULL  input thread
      reader   PULL (bound) <--[msgpack]--------    PUSH  output thread
      status pipe <--(one JSON line: ready)--------  kept open until the core exits
      core's stdin --(pickled config)------------->  end of file: the front end is gone

The reader thread polls the output socket and the status pipe together: if the core
dies, every caller hears of it at once (`dead_error`, and one final
`EngineCoreOutputs(engine_dead=...)` to the handler), never a hang.
"""

from __future__ import annotations

import atexit
import builtins
import json
import logging
import os
import pickle
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from typing import Any

import zmq

from pagedllm.config import EngineConfig
from pagedllm.core.messages import EngineCoreOutputs, RequestType, make_encoder, outputs_decoder
from pagedllm.engine.core_client import BackgroundClient

logger = logging.getLogger(__name__)
STARTUP_TIMEOUT_S = float(os.environ.get("PAGEDLLM_ENGINE_STARTUP_TIMEOUT_S", "1800"))


class MPClient(BackgroundClient):
    def __init__(self, engine_config: EngineConfig) -> None:
        super().__init__()
        self._closing = False
        self._socket_dir = tempfile.mkdtemp(prefix="pagedllm-core-")
        input_address = f"ipc://{self._socket_dir}/input"
        output_address = f"ipc://{self._socket_dir}/output"
        self._context = zmq.Context()
        self._input = self._context.socket(zmq.PUSH)
        self._input.setsockopt(zmq.LINGER, 0)
        self._input.bind(input_address)
        self._output = self._context.socket(zmq.PULL)
        self._output.setsockopt(zmq.LINGER, 0)
        self._output.bind(output_address)
        self._send_lock = threading.Lock()
        self._encoder = make_encoder()
        try:
            self.proc, self._status_fd, ready = _start_process(
                engine_config, input_address, output_address
            )
        except BaseException:
            self._context.destroy(linger=0)
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            raise
        self.num_gpu_blocks = int(ready["num_gpu_blocks"])
        self._reader = threading.Thread(target=self._read, name="pagedllm-core-reader", daemon=True)
        self._reader.start()
        atexit.register(_shutdown_ref, weakref.ref(self))

    @property
    def pid(self) -> int | None:
        return self.proc.pid

    def _send(self, kind: RequestType, payload: Any) -> None:
        data = self._encoder.encode(payload)
        with self._send_lock:
            if self._closing:
                return
            self._input.send_multipart((bytes((kind,)), data), copy=False)

    def _read(self) -> None:
        decoder = outputs_decoder()
        poller = zmq.Poller()
        poller.register(self._output, zmq.POLLIN)
        poller.register(self._status_fd, zmq.POLLIN)
        try:
            while True:
                events = dict(poller.poll())
                if self._output in events:
                    self._on_outputs(decoder.decode(self._output.recv(copy=False).buffer))
                elif self._status_fd in events:  # end of file: the core has exited
                    self._drain(decoder)
                    if not self._closing:
                        self._on_process_death()
                    return
        except zmq.ZMQError:
            if not self._closing:
                logger.exception("The engine core connection failed")
                self._on_outputs(EngineCoreOutputs(engine_dead="the engine core connection failed"))

    def _drain(self, decoder: Any) -> None:
        """What the core sent before it ended (its own notice of death, say)."""
        while self._output.poll(0):
            self._on_outputs(decoder.decode(self._output.recv(copy=False).buffer))

    def _on_process_death(self) -> None:
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pass
        reason = f"the engine core process died (exit code {self.proc.returncode})"
        logger.error("%s", reason[0].upper() + reason[1:])
        if self.dead_error is None:
            self._on_outputs(EngineCoreOutputs(engine_dead=reason))

    def shutdown(self) -> None:
        if self._closing:
            return
        with self._send_lock:
            self._closing = True
            if self.proc.poll() is None:
                try:
                    self._input.send_multipart((bytes((RequestType.SHUTDOWN,)), b""))
                except zmq.ZMQError:
                    pass
        _stop_process(self.proc)
        self._reader.join(timeout=5)
        self._context.destroy(linger=0)
        os.close(self._status_fd)
        shutil.rmtree(self._socket_dir, ignore_errors=True)


def _start_process(
    engine_config: EngineConfig, input_address: str, output_address: str
) -> tuple[subprocess.Popen[bytes], int, dict[str, Any]]:
    status_read, status_write = os.pipe()
    command = [
        sys.executable,
        "-m",
        "pagedllm.core.engine_core_proc",
        f"--input-address={input_address}",
        f"--output-address={output_address}",
        f"--status-fd={status_write}",
        f"--log-level={logging.getLogger('pagedllm').getEffectiveLevel()}",
    ]
    proc = subprocess.Popen(
        command, stdin=subprocess.PIPE, pass_fds=(status_write,), env=_child_env()
    )
    os.close(status_write)
    try:
        assert proc.stdin is not None
        proc.stdin.write(pickle.dumps(engine_config))
        proc.stdin.flush()  # kept open: the core exits when it closes
        ready = _wait_ready(proc, status_read)
    except BaseException:
        _stop_process(proc, grace_s=0.0)
        os.close(status_read)
        raise
    return proc, status_read, ready


def _child_env() -> dict[str, str]:
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


def _stop_process(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
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


def _shutdown_ref(ref: weakref.ref[MPClient]) -> None:
    client = ref()
    if client is not None:
        client.shutdown()
