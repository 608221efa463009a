"""Python's garbage collector while the engine runs (vLLM's `gc_utils`, and more).

Two costs, both measured on the H200 under S1 at rate inf (`PAGEDLLM_GC_DEBUG=1
python3 scripts/gpu_serve.py`), before this module:
- A full (generation 2) collection walks every object the collector tracks. After
  start-up a serving process holds a quarter of a million of them or more (torch,
  transformers, the model's modules, FastAPI's routes), none of which ever becomes
  garbage: the API server's full collections took up to 457 ms each (7 in 2.6 s) and
  the engine core's up to 227 ms (3 in 0.8 s) in one 9.7 s run, stalling every stream.
- With Python's thresholds (700, 10, 10) the many requests in flight are walked again
  and again by the young collections: the API server still spent 2.2 s of its run in
  about 1,150 collections with its start-up heap frozen, the engine core 0.3 s in 900.

What this module does:
- `freeze_gc_heap()`: collect once, then move everything alive into the permanent
  generation (`gc.freeze()`), which collections skip. Called once per process after
  start-up and before traffic (`prepare_serving_process`): by the engine core process,
  the server processes and the multiprocess workers. Objects created later are
  collected as before.
- Thresholds `ENGINE_GC_THRESHOLD` (10,000, 10, 10) in those processes: young
  collections 14x rarer, so a request's objects are mostly gone before one walks them.
  `PAGEDLLM_GC_THRESHOLD=g0,g1,g2` sets others (`700,10,10`: Python's). Garbage cycles
  wait for at most 10,000 net new objects, a few MB.
- `frozen_heap()`: the offline `LLM` lives in the user's process, where a permanent
  freeze would keep reference cycles alive after `del llm`. Its `generate` freezes the
  heap for the call only (no collection first: freezing and unfreezing are O(1)) and
  uses the engine thresholds meanwhile; at the end the frozen objects go back to the
  oldest generation (garbage included, collected later as usual) and the user's
  thresholds come back.
- `maybe_attach_gc_debug_callback()`: with `PAGEDLLM_GC_DEBUG=1` (vLLM:
  `VLLM_GC_DEBUG`) collections are logged with their generation, duration and the
  number of objects collected (full collections and any of 1 ms or more, with the
  totals by generation so far). `PAGEDLLM_GC_FREEZE=0` turns the freezing off, to
  measure what it is worth.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

logger = logging.getLogger(__name__)

GC_DEBUG_ENV = "PAGEDLLM_GC_DEBUG"
GC_FREEZE_ENV = "PAGEDLLM_GC_FREEZE"
GC_THRESHOLD_ENV = "PAGEDLLM_GC_THRESHOLD"
ENGINE_GC_THRESHOLD = (10_000, 10, 10)


def freeze_gc_heap(process: str) -> int:
    """Collect, then freeze every object alive now; returns how many were frozen."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    logger.info("%s: %d objects frozen out of the garbage collector's scans", process, frozen)
    return frozen


class _Scope:
    """The calls inside `frozen_heap` (threads may overlap): the first one in saves the
    user's thresholds and freezes, the last one out restores them and unfreezes."""

    lock = threading.Lock()
    depth = 0
    saved_threshold: tuple[int, ...] = ()
    froze = False


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Inside: collections skip every object alive on entry (unless the heap was frozen
    already, by this process's start-up) and the engine thresholds apply; both are
    undone when the last overlapping call leaves."""
    threshold = engine_gc_threshold()  # a bad PAGEDLLM_GC_THRESHOLD raises before any change
    with _Scope.lock:
        if _Scope.depth == 0:
            _Scope.saved_threshold = gc.get_threshold()
            _Scope.froze = gc.get_freeze_count() == 0 and _freeze_enabled()
            if _Scope.froze:
                gc.freeze()
            gc.set_threshold(*threshold)
        _Scope.depth += 1
    try:
        yield
    finally:
        with _Scope.lock:
            _Scope.depth -= 1
            if _Scope.depth == 0:
                gc.set_threshold(*_Scope.saved_threshold)
                if _Scope.froze:
                    gc.unfreeze()


class GCDebugger:
    """A `gc.callbacks` entry: counts every collection's time by generation and logs
    the full ones and any that took LOG_MS or more, with the totals so far."""

    LOG_MS = 1.0

    def __init__(self, process: str) -> None:
        self.process = process
        self.start_ns = 0
        self.count = [0, 0, 0]
        self.total_ms = [0.0, 0.0, 0.0]

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.start_ns = time.monotonic_ns()
            return
        generation = info["generation"]
        elapsed_ms = (time.monotonic_ns() - self.start_ns) / 1e6
        self.count[generation] += 1
        self.total_ms[generation] += elapsed_ms
        if generation == 2 or elapsed_ms >= self.LOG_MS:
            logger.info(
                "%s: GC generation %d took %.2f ms, %d collected; so far %s",
                self.process,
                generation,
                elapsed_ms,
                info["collected"],
                ", ".join(f"gen{g} {n} in {t:.0f} ms" for g, (n, t) in enumerate(self.totals())),
            )

    def totals(self) -> list[tuple[int, float]]:
        return list(zip(self.count, self.total_ms, strict=True))


def maybe_attach_gc_debug_callback(process: str) -> GCDebugger | None:
    """With PAGEDLLM_GC_DEBUG set (not "0"): count every collection of this process, log
    the full ones and the slow ones (GCDebugger)."""
    if os.environ.get(GC_DEBUG_ENV, "0") in ("", "0"):
        return None
    debugger = GCDebugger(process)
    gc.callbacks.append(debugger)
    return debugger


def prepare_serving_process(process: str) -> None:
    """Start-up is over and traffic begins: attach the GC logger (PAGEDLLM_GC_DEBUG),
    freeze the heap (unless PAGEDLLM_GC_FREEZE=0), set the engine thresholds."""
    maybe_attach_gc_debug_callback(process)
    if _freeze_enabled():
        freeze_gc_heap(process)
    threshold = engine_gc_threshold()
    gc.set_threshold(*threshold)
    logger.info("%s: GC thresholds %s", process, threshold)


def _freeze_enabled() -> bool:
    return os.environ.get(GC_FREEZE_ENV) != "0"


def engine_gc_threshold() -> tuple[int, int, int]:
    """PAGEDLLM_GC_THRESHOLD ("g0,g1,g2") or ENGINE_GC_THRESHOLD."""
    spec = os.environ.get(GC_THRESHOLD_ENV)
    if not spec:
        return ENGINE_GC_THRESHOLD
    try:
        values = tuple(int(x) for x in spec.split(","))
        if len(values) != 3 or min(values) < 0:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"{GC_THRESHOLD_ENV} must be three non-negative integers g0,g1,g2, got {spec!r}"
        ) from None
    return values[0], values[1], values[2]
