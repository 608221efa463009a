"""The engine core's part of `/dashboard`: a compact snapshot of the KV block pool and
the queues, built on demand (a utility call, answered between steps) from state the
scheduler and the KV cache manager keep anyway. Nothing here runs per step.

The block map is one character per cell (`KV_STATES`); a cell is one block, or
`blocks_per_cell` consecutive blocks when the pool has more blocks than `max_cells`
(the cell shows its most common state). Owners are run-length encoded over cells:
`owner_runs = [start_cell, num_cells, owner_index, ...]` into `owner_ids` (a block
shared by several requests shows one of them).
"""

from __future__ import annotations

import itertools
import operator
import time
from collections.abc import Iterable
from typing import Any

import numpy as np

from pagedllm.core.kv_cache_manager import KVCacheManager
from pagedllm.core.request import Request, RequestStatus
from pagedllm.core.scheduler import Scheduler

# Cell codes: index = code. "." free (nothing reusable), "c" free but holding a cached
# prefix (a later prompt can hit it), "u" held by a request, "p" held by a request and
# in the prefix cache (other prompts with that prefix share it). "s" (being swapped) is
# reserved for a CPU swap tier.
KV_STATES = ".cup"
_FREE, _CACHED, _USED = 0, 1, 2
_block_id = operator.attrgetter("block_id")
_STATUS_NAMES = {
    RequestStatus.WAITING: "waiting",
    RequestStatus.RUNNING: "running",
    RequestStatus.PREEMPTED: "preempted",
}


def build_dashboard_snapshot(
    scheduler: Scheduler, kv: KVCacheManager, max_cells: int, max_requests: int
) -> dict[str, Any]:
    start = time.perf_counter()
    now = time.time()
    waiting = list(scheduler.waiting)
    num_preempted = sum(1 for r in waiting if r.status == RequestStatus.PREEMPTED)
    stats = scheduler.make_stats()
    snapshot: dict[str, Any] = {
        "time": now,
        "kv": block_map(kv, max_cells),
        "queue": {
            "num_running": len(scheduler.running),
            "num_waiting": len(waiting) - num_preempted,
            "num_preempted": num_preempted,
            "running": _describe(scheduler.running[:max_requests], kv, now),
            "waiting": _describe(waiting[:max_requests], kv, now),
        },
        "counters": {
            "prompt_tokens": stats.prompt_tokens,
            "generation_tokens": stats.generation_tokens,
            "prefix_cache_queries": stats.prefix_cache_queries,
            "prefix_cache_hits": stats.prefix_cache_hits,
            "num_preemptions": stats.num_preemptions,
            "prefix_cache_evictions": kv.block_pool.num_evictions,
            "finished": dict(stats.finished_reasons),
        },
    }
    snapshot["build_s"] = time.perf_counter() - start  # the core's time spent here
    return snapshot


def block_map(kv: KVCacheManager, max_cells: int) -> dict[str, Any]:
    """Every block's state and owner, folded into at most `max_cells` cells."""
    pool = kv.block_pool
    n = pool.num_blocks
    codes = np.zeros(n, np.uint8)
    cached = pool.cached_block_hash_to_block.values()
    codes[np.fromiter(map(_block_id, cached), np.int64, len(cached))] = _CACHED
    owner_ids = list(kv.req_to_block_ids)
    owner = _owners(n, list(kv.req_to_block_ids.values()))
    codes[owner >= 0] += _USED  # "u", or "p" when also cached
    per_cell = max(1, -(-n // max(1, max_cells)))
    cell_codes, cell_owner = _fold(codes, owner, per_cell)
    lookup = np.frombuffer(KV_STATES.encode(), np.uint8)
    return {
        "num_blocks": n,
        "block_size": kv.block_size,
        "num_free_blocks": pool.get_num_free_blocks(),
        "usage": pool.get_usage(),
        "blocks_per_cell": per_cell,
        "states": lookup[cell_codes].tobytes().decode("ascii"),
        "owner_ids": owner_ids,
        "owner_runs": _run_lengths(cell_owner),
    }


def _owners(num_blocks: int, tables: list[list[int]]) -> np.ndarray:
    """Each block's owner: an index into `tables` (-1: none); C loops only (no per-block
    Python code), so a pool of 350k blocks takes milliseconds."""
    owner = np.full(num_blocks, -1, np.int32)
    lengths = np.fromiter(map(len, tables), np.int64, len(tables))
    flat = np.fromiter(itertools.chain.from_iterable(tables), np.int64, int(lengths.sum()))
    owner[flat] = np.repeat(np.arange(len(tables), dtype=np.int32), lengths)
    return owner


def _fold(codes: np.ndarray, owner: np.ndarray, per_cell: int) -> tuple[np.ndarray, np.ndarray]:
    """Per cell of `per_cell` blocks: the most common code and the highest owner index."""
    if per_cell == 1:
        return codes, owner
    num_cells = -(-len(codes) // per_cell)
    pad = num_cells * per_cell - len(codes)
    codes2d = np.pad(codes, (0, pad)).reshape(num_cells, per_cell)
    owner2d = np.pad(owner, (0, pad), constant_values=-1).reshape(num_cells, per_cell)
    counts = np.stack([(codes2d == c).sum(axis=1) for c in range(len(KV_STATES))], axis=1)
    return counts.argmax(axis=1).astype(np.uint8), owner2d.max(axis=1)


def _run_lengths(cell_owner: np.ndarray) -> list[int]:
    """[start, length, owner, ...] for each run of one owner (cells owned by nobody left out)."""
    if len(cell_owner) == 0:
        return []
    starts = np.concatenate(([0], np.flatnonzero(np.diff(cell_owner)) + 1))
    lengths = np.diff(np.concatenate((starts, [len(cell_owner)])))
    values = cell_owner[starts]
    keep = values >= 0
    runs = np.stack([starts[keep], lengths[keep], values[keep]], axis=1)
    return [int(x) for x in runs.reshape(-1)]


def _describe(requests: Iterable[Request], kv: KVCacheManager, now: float) -> list[dict[str, Any]]:
    return [
        {
            "id": r.request_id,
            "status": _STATUS_NAMES.get(r.status, r.status.name.lower()),
            "prompt_tokens": r.num_prompt_tokens,
            "output_tokens": r.num_output_tokens,
            "computed_tokens": r.num_computed_tokens,
            "num_blocks": len(kv.get_block_ids(r.request_id)),
            "age_s": round(max(0.0, now - r.arrival_time), 3),
            "num_preemptions": r.num_preemptions,
        }
        for r in requests
    ]
