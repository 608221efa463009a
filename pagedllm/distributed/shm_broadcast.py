"""MessageQueue: one writer, many readers, over a ring of fixed-size slots in shared
memory (vLLM's name, in its shm_broadcast). A message is pickled once (protocol 5)
and copied once into a slot; every reader unpickles it from the shared block. No
pipe, no kernel copy per reader.

Layout of the block (n slots, r readers, s bytes per slot):

    [ flags of slot 0 | ... | flags of slot n-1 ][ slot 0 | ... | slot n-1 ]
      flags of a slot: 1 byte "written", then 1 byte "read" per reader
      slot: 1 byte kind (inline / overflow), 8 bytes length, then s bytes of data

Protocol (each side walks the ring in order, so message k lives in slot k % n):
- writer: wait until the slot is free (never written, or read by every reader);
  clear "written"; write the data; clear the read flags; set "written".
- reader: wait until the slot is "written" and its own read flag is clear; unpickle;
  set its read flag.
The writer clears the read flags only after the data is in place, and a reader's
own flag stays set from the last lap until then, so a reader never reads a slot
being rewritten. (Byte stores in program order: x86 keeps them ordered.)

A message larger than a slot goes to an overflow block of its own (the slot holds
its name); the writer unlinks it when the slot is reused, or on close.

No wait is unbounded without a way out: waits take a timeout (QueueTimeoutError,
naming the readers that did not read) and a `check` callback, called every few
milliseconds, that raises when the other side is dead.
"""

from __future__ import annotations

import os
import pickle
import struct
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import resource_tracker, shared_memory
from typing import Any

_HEADER = struct.Struct("<BQ")  # kind, length
_INLINE, _OVERFLOW = 0, 1
_CHECK_EVERY_S = 0.005  # how often a waiting side calls `check`
_MAX_SLEEP_S = 0.0001  # longest nap between polls once spinning is over (~1% of a core)

Check = Callable[[], None]


class QueueTimeoutError(TimeoutError):
    """The other side did not write or read within the timeout."""


@dataclass(frozen=True)
class Handle:
    """What a process needs to attach (picklable; passed to workers at start)."""

    name: str
    num_readers: int
    num_slots: int
    slot_bytes: int

    @property
    def flags_bytes(self) -> int:
        return self.num_slots * (1 + self.num_readers)

    @property
    def total_bytes(self) -> int:
        return self.flags_bytes + self.num_slots * (_HEADER.size + self.slot_bytes)


def _attach(name: str) -> shared_memory.SharedMemory:
    """Open a block without registering it with the resource tracker: its creator
    owns (and unlinks) it; a reader that registered it would have it unlinked, or
    warned about, when the reader exits. (Registering and then unregistering would
    drop the creator's entry too: the tracker keeps one set of names per process tree.)"""
    if sys.version_info >= (3, 13):
        return shared_memory.SharedMemory(name=name, track=False)  # type: ignore[call-arg]
    register = resource_tracker.register
    resource_tracker.register = lambda *args, **kwargs: None  # type: ignore[assignment]
    try:
        return shared_memory.SharedMemory(name=name)
    finally:
        resource_tracker.register = register  # type: ignore[assignment]


class _Waiter:
    """Spin (yielding the core) for `spin_s`, then nap with growing pauses; call
    `check` every few ms; raise QueueTimeoutError after `timeout` seconds."""

    def __init__(self, timeout: float | None, check: Check | None, spin_s: float) -> None:
        self.start = time.monotonic()
        self.deadline = None if timeout is None else self.start + timeout
        self.check = check
        self.spin_until = self.start + spin_s
        self.next_check = self.start + _CHECK_EVERY_S
        self.nap = 1e-5

    def wait(self, what: Callable[[], str]) -> None:
        now = time.monotonic()
        if now >= self.next_check:
            self.next_check = now + _CHECK_EVERY_S
            if self.check is not None:
                self.check()
            if self.deadline is not None and now > self.deadline:
                raise QueueTimeoutError(f"{what()} within {now - self.start:.1f} s")
        if now < self.spin_until:
            os.sched_yield()
            return
        time.sleep(self.nap)
        self.nap = min(self.nap * 2, _MAX_SLEEP_S)


class MessageQueue:
    """One end of the ring: the writer (`create`) or reader number i (`attach`)."""

    def __init__(
        self, handle: Handle, shm: shared_memory.SharedMemory, reader: int | None, spin_s: float
    ) -> None:
        self.handle = handle
        self._shm = shm
        self._buf: memoryview = _view(shm)
        self.reader = reader  # None: the writer
        self.spin_s = spin_s
        self._index = 0  # the next slot to write / read
        self._overflow: dict[int, shared_memory.SharedMemory] = {}  # writer: slot -> block
        self._all_read = b"\x01" * handle.num_readers
        self._owner = False  # whether this end created the block (and unlinks it)

    @classmethod
    def create(
        cls, num_readers: int, num_slots: int = 8, slot_bytes: int = 1 << 20, spin_s: float = 0.0
    ) -> MessageQueue:
        if slot_bytes < 64:
            raise ValueError(f"slot_bytes ({slot_bytes}) must be at least 64")
        handle = Handle(f"pagedllm_mq_{uuid.uuid4().hex[:16]}", num_readers, num_slots, slot_bytes)
        shm = shared_memory.SharedMemory(name=handle.name, create=True, size=handle.total_bytes)
        _view(shm)[: handle.flags_bytes] = bytes(handle.flags_bytes)
        queue = cls(handle, shm, None, spin_s)
        queue._owner = True
        return queue

    @classmethod
    def attach(cls, handle: Handle, reader: int, spin_s: float = 0.0) -> MessageQueue:
        if not 0 <= reader < handle.num_readers:
            raise ValueError(f"reader {reader} of a queue with {handle.num_readers} readers")
        return cls(handle, _attach(handle.name), reader, spin_s)

    @classmethod
    def attach_writer(cls, handle: Handle, spin_s: float = 0.0) -> MessageQueue:
        """The writer's end in another process than the creator's (the creator
        still owns the block: it unlinks it)."""
        return cls(handle, _attach(handle.name), None, spin_s)

    # ---- offsets ------------------------------------------------------------------
    def _flags(self, slot: int) -> int:
        return slot * (1 + self.handle.num_readers)

    def _slot(self, slot: int) -> int:
        return self.handle.flags_bytes + slot * (_HEADER.size + self.handle.slot_bytes)

    def _unread_by(self, slot: int) -> list[int]:
        flags = self._flags(slot) + 1
        row = self._buf[flags : flags + self.handle.num_readers]
        return [i for i, flag in enumerate(row) if not flag]

    # ---- the writer ------------------------------------------------------------------
    def enqueue(self, obj: Any, timeout: float | None = None, check: Check | None = None) -> None:
        """Put one message in the ring; waits while the next slot is still unread."""
        assert self.reader is None, "only the writer enqueues"
        data = pickle.dumps(obj, protocol=5)
        slot, flags = self._index, self._flags(self._index)
        waiter = _Waiter(timeout, check, self.spin_s)
        while self._buf[flags] and self._buf[flags + 1 : flags + 1 + len(self._all_read)] != (
            self._all_read
        ):
            waiter.wait(lambda: f"readers {self._unread_by(slot)} did not read slot {slot}")
        self._buf[flags] = 0
        self._write(slot, data)
        n = self.handle.num_readers
        self._buf[flags + 1 : flags + 1 + n] = bytes(n)
        self._buf[flags] = 1
        self._index = (slot + 1) % self.handle.num_slots

    def _write(self, slot: int, data: bytes) -> None:
        old = self._overflow.pop(slot, None)
        if old is not None:  # every reader has read it: the slot is being reused
            _release(old, unlink=True)
        start = self._slot(slot)
        if len(data) <= self.handle.slot_bytes:
            _HEADER.pack_into(self._buf, start, _INLINE, len(data))
            self._buf[start + _HEADER.size : start + _HEADER.size + len(data)] = data
            return
        block = shared_memory.SharedMemory(
            name=f"{self.handle.name}_o{uuid.uuid4().hex[:8]}", create=True, size=len(data)
        )
        _view(block)[: len(data)] = data
        self._overflow[slot] = block
        name = block.name.encode()
        _HEADER.pack_into(self._buf, start, _OVERFLOW, len(data))
        self._buf[start + _HEADER.size : start + _HEADER.size + len(name)] = name
        self._buf[start + _HEADER.size + len(name)] = 0

    # ---- a reader -----------------------------------------------------------------------
    def poll(self) -> bool:
        """Whether a message is waiting for this reader (does not consume it)."""
        flags = self._flags(self._index)
        return bool(self._buf[flags]) and not self._buf[flags + 1 + (self.reader or 0)]

    def dequeue(self, timeout: float | None = None, check: Check | None = None) -> Any:
        """The next message; waits for the writer."""
        assert self.reader is not None, "only a reader dequeues"
        slot, flags = self._index, self._flags(self._index)
        waiter = _Waiter(timeout, check, self.spin_s)
        while not self.poll():
            waiter.wait(lambda: f"reader {self.reader}: no message in slot {slot}")
        obj = self._read(slot)
        self._buf[flags + 1 + self.reader] = 1
        self._index = (slot + 1) % self.handle.num_slots
        return obj

    def _read(self, slot: int) -> Any:
        start = self._slot(slot)
        kind, length = _HEADER.unpack_from(self._buf, start)
        body = start + _HEADER.size
        if kind == _INLINE:
            return pickle.loads(self._buf[body : body + length])
        end = bytes(self._buf[body : body + 256]).index(0)
        block = _attach(bytes(self._buf[body : body + end]).decode())
        try:
            return pickle.loads(_view(block)[:length])
        finally:
            _release(block, unlink=False)

    # ---- the end --------------------------------------------------------------------
    def close(self) -> None:
        """Detach; the creator also unlinks the ring; the writer its overflow blocks."""
        for block in self._overflow.values():
            _release(block, unlink=True)
        self._overflow.clear()
        del self._buf
        _release(self._shm, unlink=self._owner)


def _view(block: shared_memory.SharedMemory) -> memoryview:
    view = block.buf
    assert view is not None, "a closed shared memory block"
    return view


def _release(block: shared_memory.SharedMemory, unlink: bool) -> None:
    try:
        block.close()
    except BufferError:  # a view still alive somewhere: the mapping goes with the process
        pass
    if unlink:
        try:
            block.unlink()
        except FileNotFoundError:
            pass
