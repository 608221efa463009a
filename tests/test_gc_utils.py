"""gc_utils: a frozen heap is skipped by full collections, garbage made afterwards is
still collected, and PAGEDLLM_GC_DEBUG logs every collection. Each check runs in a
fresh interpreter, so that the test process's own heap is never frozen."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SCRIPT = """
import gc, json, logging, time
logging.basicConfig(level=logging.INFO)
from pagedllm.gc_utils import prepare_serving_process
start_up = [[i] for i in range(300_000)]  # long-lived containers, as a server's heap

def full_collection_ms():
    best = 1e9
    for _ in range(3):
        t = time.perf_counter(); gc.collect(); best = min(best, time.perf_counter() - t)
    return best * 1e3

before = full_collection_ms()
prepare_serving_process("test")
after = full_collection_ms()
a = []; a.append(a); del a  # a reference cycle made after the freeze
print(json.dumps({"before": before, "after": after, "frozen": gc.get_freeze_count(),
                  "collected": gc.collect()}))
"""


def _run(env: dict[str, str]) -> tuple[dict[str, float], str]:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def test_frozen_heap_is_skipped_and_new_garbage_still_collected() -> None:
    result, log = _run({"PAGEDLLM_GC_DEBUG": "0"})
    assert result["frozen"] >= 300_000
    assert result["after"] < result["before"] / 5, result
    assert result["collected"] >= 1  # the cycle made after the freeze
    assert "test: " in log and "objects frozen" in log and "GC thresholds (10000, 10, 10)" in log
    assert "GC generation" not in log  # the debug log is off


def test_gc_debug_logs_every_collection() -> None:
    _, log = _run({"PAGEDLLM_GC_DEBUG": "1"})
    lines = [line for line in log.splitlines() if "test: GC generation 2 took" in line]
    assert len(lines) >= 6, log[-2000:]  # the freeze's and the timed full collections


def test_freeze_can_be_turned_off_for_measurements() -> None:
    result, log = _run({"PAGEDLLM_GC_FREEZE": "0"})
    assert result["frozen"] == 0 and "objects frozen" not in log


FROZEN_CALL = """
import gc, json, time
from pagedllm.gc_utils import frozen_heap
old = [[i] for i in range(300_000)]
cycle = []; cycle.append(cycle); del cycle  # garbage from before the call
def full_ms():
    t = time.perf_counter(); gc.collect(); return (time.perf_counter() - t) * 1e3
gc.collect(); outside = min(full_ms() for _ in range(3))
cycle = []; cycle.append(cycle); del cycle
gc.set_threshold(500, 5, 5)  # the user's
with frozen_heap():
    inside = min(full_ms() for _ in range(3)); count_inside = gc.get_freeze_count()
    threshold_inside = gc.get_threshold()
print(json.dumps({"outside": outside, "inside": inside, "count_inside": count_inside,
                  "threshold_inside": threshold_inside, "threshold_after": gc.get_threshold(),
                  "count_after": gc.get_freeze_count(), "collected_after": gc.collect()}))
"""


def test_frozen_heap_for_one_call_then_everything_collectable_again() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", FROZEN_CALL], capture_output=True, text=True, timeout=120, check=True
    )
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["count_inside"] >= 300_000 and r["count_after"] == 0
    assert r["threshold_inside"] == [10_000, 10, 10] and r["threshold_after"] == [500, 5, 5]
    assert r["inside"] < r["outside"] / 5, r
    assert r["collected_after"] >= 1  # the cycle made before the call, frozen in it


def test_thresholds_default_env_and_bad_value(monkeypatch: pytest.MonkeyPatch) -> None:
    from pagedllm.gc_utils import ENGINE_GC_THRESHOLD, engine_gc_threshold

    monkeypatch.delenv("PAGEDLLM_GC_THRESHOLD", raising=False)
    assert engine_gc_threshold() == ENGINE_GC_THRESHOLD
    monkeypatch.setenv("PAGEDLLM_GC_THRESHOLD", "700,10,10")
    assert engine_gc_threshold() == (700, 10, 10)
    monkeypatch.setenv("PAGEDLLM_GC_THRESHOLD", "700,10")
    with pytest.raises(ValueError, match="PAGEDLLM_GC_THRESHOLD"):
        engine_gc_threshold()


def test_overlapping_calls_undo_once_the_last_leaves() -> None:
    import gc

    from pagedllm.gc_utils import ENGINE_GC_THRESHOLD, frozen_heap

    old = gc.get_threshold()
    gc.set_threshold(500, 5, 5)
    try:
        with frozen_heap():
            with frozen_heap():  # another generate on another thread, say
                assert gc.get_threshold() == ENGINE_GC_THRESHOLD
            assert gc.get_freeze_count() > 0 and gc.get_threshold() == ENGINE_GC_THRESHOLD
        assert gc.get_freeze_count() == 0 and gc.get_threshold() == (500, 5, 5)
    finally:
        gc.set_threshold(*old)
