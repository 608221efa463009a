"""The engine core in its own process: `python -m pagedllm.core.engine_core_proc`,
started by the front end (pagedllm/engine/core_process.py) with the pickled
EngineConfig on its standard input.

    front end (API server)                      engine core process
      PUSH  --[kind, msgpack]-->  input thread --queue--> busy loop (main thread)
      PULL  <--[msgpack]--------  output thread <--queue-- EngineCore.step()

With several API servers (`--api-server-count N`) the core has one input and one
output address per server: the PULL socket connects to every input address (fair
queueing), one PUSH socket per output address, and an `OutputRouter` sends each
request's outputs to the server that sent it (core/output_router.py).

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
import select
import signal
import sys
import threading
from typing import Any, TextIO

import zmq

from pagedllm.config import EngineConfig
from pagedllm.core.busy_loop import SHUTDOWN, EngineCoreBusyLoop, InputItem
from pagedllm.core.engine_core import EngineCore
from pagedllm.core.messages import EngineCoreOutputs, RequestType, make_encoder, request_decoder
from pagedllm.core.output_router import OutputRouter
from pagedllm.gc_utils import prepare_serving_process

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="pagedllm engine core (started by the front end)")
    # One of each per front end (API server), in client-index order.
    parser.add_argument("--input-address", action="append", required=True)
    parser.add_argument("--output-address", action="append", required=True)
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
    engine_config: EngineConfig,
    input_addresses: list[str],
    output_addresses: list[str],
    status: TextIO,
) -> None:
    """Build the core, report ready (or the error that stopped it), then serve."""
    assert len(input_addresses) == len(output_addresses), "one of each per front end"
    started = threading.Event()
    threading.Thread(
        target=_exit_if_orphaned_while_starting,
        args=(sys.stdin.fileno(), started),
        name="core-start-watch",
        daemon=True,
    ).start()
    try:
        core = EngineCore(engine_config)
    except BaseException as exc:
        logger.debug("The engine core failed to start", exc_info=True)
        _report(status, {"error": f"{type(exc).__name__}: {exc}", "type": type(exc).__name__})
        sys.exit(1)
    finally:
        started.set()
    prepare_serving_process("engine core")
    input_queue: queue.Queue[InputItem | None] = queue.Queue()
    output_queue: queue.Queue[EngineCoreOutputs | None] = queue.Queue()
    _stop_on_sigterm(input_queue)
    # One front end (the default): no routing, outputs go out as they are.
    router = OutputRouter(len(output_addresses)) if len(output_addresses) > 1 else None
    threads = [
        threading.Thread(
            target=_input_thread,
            args=(input_addresses, input_queue, sys.stdin.fileno(), router),
            name="core-input",
            daemon=True,
        ),
        threading.Thread(
            target=_output_thread,
            args=(output_addresses, output_queue, router),
            name="core-output",
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


def _exit_if_orphaned_while_starting(parent_fd: int, started: threading.Event) -> None:
    """Start-up (loading weights, compiling, capturing graphs) can take minutes and
    cannot be interrupted from inside: if the front end's process dies meanwhile (its
    end of our stdin closes), leave at once instead of finishing a start nobody awaits.
    Once started, the input thread watches the same pipe."""
    poller = select.poll()
    poller.register(parent_fd, select.POLLIN | select.POLLHUP)
    while not started.is_set():
        if poller.poll(200) and not started.is_set():
            logger.warning("The front end exited while the engine core was starting: exiting")
            logging.shutdown()
            os._exit(1)


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


def _input_thread(
    addresses: list[str],
    input_queue: queue.Queue[InputItem | None],
    parent_fd: int,
    router: OutputRouter | None,
) -> None:
    decoders = {kind: request_decoder(kind) for kind in RequestType if kind != RequestType.SHUTDOWN}
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    socket = context.socket(zmq.PULL)
    for address in addresses:
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
            item = (kind, decoders[kind].decode(payload.buffer))
            if router is not None:
                _route_input(router, item)
            input_queue.put(item)
    finally:
        socket.close(linger=0)


def _route_input(router: OutputRouter, item: InputItem) -> None:
    """Record the owner of a new request (before the busy loop can produce an output
    for it); forget the owner of an aborted one (the core sends nothing more for it)."""
    kind, payload = item
    if kind == RequestType.ADD:
        router.add(payload.request_id, payload.client_index)
    elif kind == RequestType.ABORT:
        router.forget(payload[1])


def _output_thread(
    addresses: list[str],
    output_queue: queue.Queue[EngineCoreOutputs | None],
    router: OutputRouter | None,
) -> None:
    encoder = make_encoder()
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sockets = [context.socket(zmq.PUSH) for _ in addresses]
    for socket, address in zip(sockets, addresses):
        if router is not None:  # a stopped API server must never block the others' outputs
            socket.setsockopt(zmq.SNDHWM, 0)
        socket.connect(address)
    try:
        while True:
            outputs = output_queue.get()
            if outputs is None:
                return
            if router is None:
                sockets[0].send(encoder.encode(outputs), copy=False)
                continue
            for client, part in router.split(outputs):
                sockets[client].send(encoder.encode(part), copy=False)
    finally:
        for socket in sockets:
            socket.close(linger=2000)  # let the last outputs (a dead-engine notice) go out


if __name__ == "__main__":
    main()
