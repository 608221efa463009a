"""A step's rows (worker/request_state.py) -> the flattened input tensors of one
forward step.

All index arithmetic is vectorized in numpy on the host, then copied to the device
once (one pinned, non-blocking copy on CUDA: layers/host_to_device.py):

    token t belongs to request req_idx[t]; its position is
    positions[t] = num_computed[req_idx[t]] + (t - query_start_loc[req_idx[t]])
    slot_mapping[t] = block_table[req_idx[t], positions[t] // bs] * bs + positions[t] % bs
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pagedllm.layers.attention.metadata import AttentionMetadata
from pagedllm.layers.host_to_device import pack_to_device
from pagedllm.scheduler_output import ScheduledRequest


@dataclass
class StepInputs:
    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    attn_metadata: AttentionMetadata
    # [S'] int64: the last token of each sampling request, then (S' > S when the runner
    # asks for row buckets) copies of the last one; logits rows past S are ignored.
    logits_indices: torch.Tensor
    sample_rows: list[int]  # [S] index into the step's rows of each sampled row
    num_tokens: int
    # Async scheduling: input tokens not known yet (-1 on the host), to be taken from
    # the previous step's sampled tokens on the device.
    placeholder_index: list[int]  # flat token indices
    placeholder_req_ids: list[str]  # the request of each
    # Every token is a sampled row (a decode-only step) and no padding was asked for:
    # logits_indices is 0..T-1 and the runner can take the hidden states as they are.
    samples_every_token: bool = False


def build_block_table(block_ids: list[list[int]], min_width: int = 1) -> np.ndarray:
    """[B, max_blocks] int32, rows padded with 0 (padding is never read: seq_lens mask it)."""
    width = max(min_width, max((len(b) for b in block_ids), default=1))
    table = np.zeros((len(block_ids), width), dtype=np.int32)
    for i, ids in enumerate(block_ids):
        table[i, : len(ids)] = ids
    return table


class BlockTableBuffer:
    """Block tables kept across steps, one row per request, so that a step copies
    only the blocks added since the last one (a decode step adds one block every
    block_size tokens) and gathers its rows with one numpy indexing.

    A row is rewritten whole when the request's block list is a new list (first
    sight, or resumed after preemption) or got shorter."""

    def __init__(self, max_blocks_per_seq: int, rows: int = 256) -> None:
        self.table = np.zeros((rows, max_blocks_per_seq), dtype=np.int32)
        self.rows: dict[str, tuple[int, list[int], int]] = {}  # req -> (row, list, blocks written)
        self.free_rows = list(range(rows - 1, -1, -1))

    def _row_for(self, req_id: str) -> int:
        if not self.free_rows:
            old = self.table.shape[0]
            self.table = np.concatenate([self.table, np.zeros_like(self.table)])
            self.free_rows = list(range(2 * old - 1, old - 1, -1))
        return self.free_rows.pop()

    def release(self, req_ids: set[str]) -> None:
        for req_id in req_ids:
            entry = self.rows.pop(req_id, None)
            if entry is not None:
                self.free_rows.append(entry[0])

    def gather(self, scheduled: list[ScheduledRequest]) -> np.ndarray:
        row_ids = np.empty(len(scheduled), dtype=np.int64)
        width = 1
        for i, s in enumerate(scheduled):
            ids = s.block_ids
            entry = self.rows.get(s.req_id)
            if entry is None:
                row, written = self._row_for(s.req_id), 0
            else:
                row, old_ids, written = entry
                if old_ids is not ids or written > len(ids):
                    written = 0
            if written < len(ids):
                self.table[row, written : len(ids)] = ids[written:]
            self.rows[s.req_id] = (row, ids, len(ids))
            row_ids[i] = row
            width = max(width, len(ids))
        return self.table[row_ids, :width]


def pad_to_bucket(indices: np.ndarray, buckets: Sequence[int] | None) -> np.ndarray:
    """indices padded with copies of the last one to the smallest bucket that holds
    them (unchanged when empty, without buckets, or longer than every bucket)."""
    if not buckets or not len(indices):
        return indices
    size = next((b for b in buckets if b >= len(indices)), len(indices))
    return np.concatenate([indices, np.full(size - len(indices), indices[-1])])


def prepare_inputs(
    scheduled: list[ScheduledRequest],
    block_size: int,
    device: torch.device,
    block_tables: BlockTableBuffer | None = None,
    logits_buckets: Sequence[int] | None = None,
) -> StepInputs:
    """logits_buckets: row counts (ascending) to pad logits_indices to, so that the LM
    head runs at a few shapes only (see pad_to_bucket)."""
    num_new = np.fromiter((s.num_new_tokens for s in scheduled), np.int64, len(scheduled))
    num_computed = np.fromiter((s.num_computed_tokens for s in scheduled), np.int64, len(scheduled))
    query_start_loc = np.zeros(len(scheduled) + 1, dtype=np.int64)
    np.cumsum(num_new, out=query_start_loc[1:])
    total = int(query_start_loc[-1])
    req_idx = np.repeat(np.arange(len(scheduled)), num_new)
    positions = np.arange(total, dtype=np.int64) - query_start_loc[req_idx] + num_computed[req_idx]
    if block_tables is None:
        table = build_block_table([s.block_ids for s in scheduled])
    else:
        table = block_tables.gather(scheduled)
    slot_mapping = table[req_idx, positions // block_size].astype(np.int64) * block_size + (
        positions % block_size
    )
    input_ids = np.fromiter(
        (t for s in scheduled for t in s.new_token_ids), dtype=np.int64, count=total
    )
    placeholder_index = np.flatnonzero(input_ids < 0)
    input_ids[placeholder_index] = 0
    seq_lens = (num_computed + num_new).astype(np.int32)
    sample_rows = [i for i, s in enumerate(scheduled) if s.samples or s.pools]
    logits_indices = pad_to_bucket(query_start_loc[1:][sample_rows] - 1, logits_buckets)
    qsl32 = query_start_loc.astype(np.int32)
    qsl_d, seq_lens_d, table_d, slots_d, ids_d, positions_d, logits_d = pack_to_device(
        [qsl32, seq_lens, table, slot_mapping, input_ids, positions, logits_indices], device
    )
    metadata = AttentionMetadata(
        num_actual_tokens=total,
        max_query_len=int(num_new.max()) if len(scheduled) else 0,
        max_seq_len=int(seq_lens.max()) if len(scheduled) else 0,
        query_start_loc=qsl_d,
        seq_lens=seq_lens_d,
        block_tables=table_d,
        slot_mapping=slots_d,
        query_start_loc_cpu=torch.from_numpy(qsl32),
        seq_lens_cpu=torch.from_numpy(seq_lens),
    )
    return StepInputs(
        input_ids=ids_d,
        positions=positions_d,
        attn_metadata=metadata,
        logits_indices=logits_d,
        sample_rows=sample_rows,
        num_tokens=total,
        placeholder_index=placeholder_index.tolist(),
        placeholder_req_ids=[scheduled[i].req_id for i in req_idx[placeholder_index]],
        samples_every_token=len(sample_rows) == total == len(logits_indices),
    )
