"""MPClient: the engine core in its own process, reached over two ZeroMQ IPC sockets.

The process is `python -m pagedllm.core.engine_core_proc` (started by
core_launch.py), with the pickled EngineConfig on its standard input: a fresh
interpreter that never re-runs the user's script (no `if __name__ == "__main__":`
guard needed) and inherits no CUDA state, threads or locks of the front end.

    front end                                       engine core process
      _send()  PUSH (bound) --[kind][msgpack]-->    PULL  input thread
      reader   PULL (bound) <--[msgpack]--------    PUSH  output thread
      status pipe <--(one JSON line: ready)--------  kept open until the core exits
      core's stdin --(pickled config)------------->  end of file: the front end is gone

The reader thread polls the output socket and the status pipe together: if the core
dies, every caller hears of it at once (`dead_error`, and one final
`EngineCoreOutputs(engine_dead=...)` to the handler), never a hang.

With `--api-server-count N` the parent process starts the core for N front ends and
each API server attaches to it (`MPClient(config, endpoints)`): it binds its own pair
of sockets, stamps its client index on what it sends, and leaves the core's life to
the parent (its shutdown closes only its sockets).
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import weakref
from typing import Any

import zmq

from pagedllm.config import EngineConfig
from pagedllm.core.messages import (
    EngineCoreOutputs,
    EngineCoreRequest,
    RequestType,
    make_encoder,
    outputs_decoder,
)
from pagedllm.engine.core_client import BackgroundClient
from pagedllm.engine.core_launch import (
    CoreEndpoints,
    CoreProcess,
    socket_addresses,
    start_core_process,
    stop_process,
)

logger = logging.getLogger(__name__)


class MPClient(BackgroundClient):
    """Starts its own core, or (`endpoints` given) attaches to one another process started."""

    def __init__(self, engine_config: EngineConfig, endpoints: CoreEndpoints | None = None) -> None:
        super().__init__()
        self._closing = False
        self._core: CoreProcess | None = None
        socket_dir = (
            endpoints.socket_dir if endpoints else tempfile.mkdtemp(prefix="pagedllm-core-")
        )
        self.client_index = endpoints.client_index if endpoints else 0
        input_address, output_address = socket_addresses(socket_dir, self.client_index)
        self._context = zmq.Context()
        self._input = self._context.socket(zmq.PUSH)
        self._input.setsockopt(zmq.LINGER, 0)
        self._input.bind(input_address)
        self._output = self._context.socket(zmq.PULL)
        self._output.setsockopt(zmq.LINGER, 0)
        self._output.bind(output_address)
        self._send_lock = threading.Lock()
        self._encoder = make_encoder()
        self._wake_read, self._wake_write = os.pipe()  # shutdown wakes the reader
        if endpoints is None:
            self._core = self._start_core(engine_config, socket_dir)
            endpoints = self._core.endpoints(0)
        self._status_fd: int = endpoints.status_fd  # end of file: the core has exited
        self.num_gpu_blocks = endpoints.num_gpu_blocks
        self._reader = threading.Thread(target=self._read, name="pagedllm-core-reader", daemon=True)
        self._reader.start()
        atexit.register(_shutdown_ref, weakref.ref(self))

    def _start_core(self, engine_config: EngineConfig, socket_dir: str) -> CoreProcess:
        try:
            return start_core_process(engine_config, socket_dir)
        except BaseException:
            self._context.destroy(linger=0)
            for fd in (self._wake_read, self._wake_write):
                os.close(fd)
            shutil.rmtree(socket_dir, ignore_errors=True)
            raise

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        """The core's process, when this client started it."""
        return self._core.proc if self._core is not None else None

    @property
    def pid(self) -> int | None:
        return self._core.proc.pid if self._core is not None else None

    def add_requests(self, requests: list[EngineCoreRequest]) -> None:
        for request in requests:
            request.client_index = self.client_index
            self._send(RequestType.ADD, request)

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
        poller.register(self._wake_read, zmq.POLLIN)
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
                elif self._wake_read in events:  # shutdown of an attached client
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
        proc = self.proc
        reason = "the engine core process died"
        if proc is not None:
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
            reason += f" (exit code {proc.returncode})"
        logger.error("%s", reason[0].upper() + reason[1:])
        if self.dead_error is None:
            self._on_outputs(EngineCoreOutputs(engine_dead=reason))

    def shutdown(self) -> None:
        """Stop the core (when this client started it) and close the connection."""
        if self._closing:
            return
        with self._send_lock:
            self._closing = True
            if self._core is not None and self._core.proc.poll() is None:
                try:
                    self._input.send_multipart((bytes((RequestType.SHUTDOWN,)), b""))
                except zmq.ZMQError:
                    pass
        if self._core is not None:
            stop_process(self._core.proc)  # the reader sees the status pipe's end of file
        else:
            os.write(self._wake_write, b"x")
        self._reader.join(timeout=5)
        self._context.destroy(linger=0)
        for fd in (self._wake_read, self._wake_write, self._status_fd):
            _close_quietly(fd)
        if self._core is not None:
            shutil.rmtree(self._core.socket_dir, ignore_errors=True)


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _shutdown_ref(ref: weakref.ref[MPClient]) -> None:
    client = ref()
    if client is not None:
        client.shutdown()
