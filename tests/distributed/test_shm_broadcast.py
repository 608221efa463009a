"""The shared-memory broadcast queue under real processes: many readers, messages
larger than a slot, a ring that wraps while readers lag, and a reader that dies."""

from __future__ import annotations

import multiprocessing
import os
import time
from multiprocessing.connection import Connection
from typing import Any

import pytest

from pagedllm.distributed.shm_broadcast import Handle, MessageQueue, QueueTimeoutError

CTX = multiprocessing.get_context("fork")


def message(i: int) -> dict[str, Any]:
    # Every 7th message is far over the slot size (an overflow block).
    size = 5000 if i % 7 == 3 else i % 50
    return {"i": i, "payload": bytes([i % 256]) * size, "ids": list(range(i % 13))}


def read_all(handle: Handle, reader: int, count: int, conn: Connection) -> None:
    queue = MessageQueue.attach(handle, reader)
    got = []
    for k in range(count):
        if k % 10 == reader:  # lag a little, in a different place per reader
            time.sleep(0.01)
        got.append(queue.dequeue(timeout=30))
    queue.close()
    conn.send(all(g == message(i) for i, g in enumerate(got)) and len(got) == count)


def shm_names(prefix: str) -> list[str]:
    return [n for n in os.listdir("/dev/shm") if n.startswith(prefix)]


def test_many_readers_get_every_message_in_order_large_ones_too() -> None:
    readers, count = 4, 120
    writer = MessageQueue.create(readers, num_slots=4, slot_bytes=1024)
    pipes = [CTX.Pipe(duplex=False) for _ in range(readers)]
    procs = [
        CTX.Process(target=read_all, args=(writer.handle, r, count, pipes[r][1]))
        for r in range(readers)
    ]
    for proc in procs:
        proc.start()
    for i in range(count):
        writer.enqueue(message(i), timeout=30)
    assert [pipes[r][0].recv() for r in range(readers)] == [True] * readers
    for proc in procs:
        proc.join(10)
        assert proc.exitcode == 0
    assert shm_names(writer.handle.name)  # the ring and the last overflow blocks
    writer.close()
    assert not shm_names(writer.handle.name), "close() left shared memory behind"


def read_one_then_die(handle: Handle) -> None:
    MessageQueue.attach(handle, 1).dequeue(timeout=30)
    os._exit(3)


def test_a_dead_reader_is_a_clear_error_not_a_hang() -> None:
    writer = MessageQueue.create(2, num_slots=2, slot_bytes=256)
    proc = CTX.Process(target=read_one_then_die, args=(writer.handle,))
    proc.start()
    other = MessageQueue.attach(writer.handle, 0)
    try:
        # Reader 0 keeps up; reader 1 reads message 0 (slot 0) and dies, so slot 0 is
        # free again and message 3 waits for slot 1.
        for i in range(3):
            writer.enqueue(i, timeout=10)
            assert other.dequeue(timeout=10) == i
        proc.join(10)
        start = time.monotonic()
        with pytest.raises(QueueTimeoutError, match=r"readers \[1\] did not read slot 1"):
            writer.enqueue(3, timeout=0.5)
        assert time.monotonic() - start < 5

        # With a liveness check, the death is noticed without waiting for the timeout.
        def check() -> None:
            if not proc.is_alive():
                raise RuntimeError(f"reader 1 died with exit code {proc.exitcode}")

        start = time.monotonic()
        with pytest.raises(RuntimeError, match="exit code 3"):
            writer.enqueue(3, timeout=60, check=check)
        assert time.monotonic() - start < 1
    finally:
        other.close()
        writer.close()


def test_a_reader_waiting_for_a_silent_writer_times_out() -> None:
    writer = MessageQueue.create(1, num_slots=2, slot_bytes=128)
    reader = MessageQueue.attach(writer.handle, 0)
    try:
        assert not reader.poll()
        with pytest.raises(QueueTimeoutError, match="reader 0: no message"):
            reader.dequeue(timeout=0.2)
        writer.enqueue("x" * 1000)  # over the slot: an overflow block
        assert reader.poll()
        assert reader.dequeue(timeout=1) == "x" * 1000
    finally:
        reader.close()
        writer.close()
