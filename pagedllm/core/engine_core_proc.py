"""The engine core in its own process: `python -m pagedllm.core.engine_core_proc`,
started by the front end (pagedllm/engine/core_process.py) with the pickled
EngineConfig on its standard input.

    front end (API server)                      engine core process
      PUSH  --[kind, msgpack]-->  input thread --queue--> busy loop (main thread)
      PULL  <--[msgpack]--------  output thread <--queue-- EngineCore.step()

Three threads, so that the busy loop never waits on a socket: the input thread
decodes, the output thread encodes and sends. A status pipe carries one JSON line
(ready, with the KV cache size, or the error that stopped the start) and then stays
open: the front end sees the core die when it closes. The core exits when the front
end says so (a shutdown message, or SIGTERM), and also when the front end's process
dies: its standard input, which only the front end holds open, reaches end of file,
and the input thread polls it beside the socket.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import queue
import signal
import sys
import threading
from typing import Any, TextIO

import zmq

from pagedllm.config import EngineConfig
from pagedllm.core.busy_loop import SHUTDOWN, EngineCoreBusyLoop, InputItem
from pagedllm.core.engine_core import EngineCore
from pagedllm.core.messages import EngineCoreOutputs, RequestType, make_encoder, request_decoder

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="pagedllm engine core (started by the front end)")
    parser.add_argument("--input-address", required=True)
    parser.add_argument("--output-address", required=True)
    parser.add_argument("--status-fd", type=int, required=True)
    parser.add_argument("--log-level", type=int, default=logging.INFO)
    args = parser.parse_args(argv)
    _configure_process(args.log_level)
    status = os.fdopen(args.status_fd, "w")
    # Worker processes forked from here must not hold the status pipe open: the front
    # end learns of this process's death when the pipe closes.
    os.register_at_fork(after_in_child=lambda: _close_quietly(args.status_fd))
    _allow_remote_code_classes()
    engine_config: EngineConfig = pickle.load(sys.stdin.buffer)
    run_engine_core(engine_config, args.input_address, args.output_address, status)


def _allow_remote_code_classes() -> None:
    """A config class of a model's own code (trust_remote_code) lives in transformers'
    module cache (`transformers_modules.*`); put that cache on sys.path so that the
    pickled config can name its class here."""
    from transformers.dynamic_module_utils import init_hf_modules

    init_hf_modules()


def run_engine_core(
    engine_config: EngineConfig, input_address: str, output_address: str, status: TextIO
) -> None:
    """Build the core, report ready (or the error that stopped it), then serve."""
    try:
        core = EngineCore(engine_config)
    except BaseException as exc:
        logger.debug("The engine core failed to start", exc_info=True)
        _report(status, {"error": f"{type(exc).__name__}: {exc}", "type": type(exc).__name__})
        sys.exit(1)
    input_queue: queue.Queue[InputItem | None] = queue.Queue()
    output_queue: queue.Queue[EngineCoreOutputs | None] = queue.Queue()
    _stop_on_sigterm(input_queue)
    threads = [
        threading.Thread(
            target=_input_thread,
            args=(input_address, input_queue, sys.stdin.fileno()),
            name="core-input",
            daemon=True,
        ),
        threading.Thread(
            target=_output_thread, args=(output_address, output_queue), name="core-output"
        ),
    ]
    for thread in threads:
        thread.start()
    _report(status, {"num_gpu_blocks": core.num_gpu_blocks})
    try:
        EngineCoreBusyLoop(core, input_queue, output_queue.put).run()
    finally:
        output_queue.put(None)  # the output thread sends what is queued, then ends
        threads[1].join(timeout=5)
        core.shutdown()


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _report(status: TextIO, message: dict[str, Any]) -> None:
    status.write(json.dumps(message) + "\n")
    status.flush()


def _configure_process(log_level: int) -> None:
    # Ctrl-C reaches the whole process group: the front end decides when the core
    # stops (a shutdown message, SIGTERM as a fallback), so in-flight requests end cleanly.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=log_level, format="%(levelname)s %(asctime)s [engine core] %(name)s: %(message)s"
    )


def _stop_on_sigterm(input_queue: queue.Queue[InputItem | None]) -> None:
    def handler(signum: int, frame: Any) -> None:
        input_queue.put(SHUTDOWN)

    signal.signal(signal.SIGTERM, handler)


def _input_thread(address: str, input_queue: queue.Queue[InputItem | None], parent_fd: int) -> None:
    decoders = {kind: request_decoder(kind) for kind in RequestType if kind != RequestType.SHUTDOWN}
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    socket = context.socket(zmq.PULL)
    socket.connect(address)
    poller = zmq.Poller()
    poller.register(socket, zmq.POLLIN)
    poller.register(parent_fd, zmq.POLLIN)
    try:
        while True:
            events = dict(poller.poll())
            if parent_fd in events:  # the front end's process is gone
                logger.warning("The front end exited: stopping the engine core")
                input_queue.put(SHUTDOWN)
                return
            kind_frame, payload = socket.recv_multipart(copy=False)
            kind = RequestType(kind_frame.bytes[0])
            if kind == RequestType.SHUTDOWN:
                input_queue.put(SHUTDOWN)
                return
            input_queue.put((kind, decoders[kind].decode(payload.buffer)))
    finally:
        socket.close(linger=0)


def _output_thread(address: str, output_queue: queue.Queue[EngineCoreOutputs | None]) -> None:
    encoder = make_encoder()
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    socket = context.socket(zmq.PUSH)
    socket.connect(address)
    try:
        while True:
            outputs = output_queue.get()
            if outputs is None:
                return
            socket.send(encoder.encode(outputs), copy=False)
    finally:
        socket.close(linger=2000)  # let the last outputs (a dead-engine notice) go out


if __name__ == "__main__":
    main()
