"""Input preparation: positions, slot mapping and block tables of a mixed step."""

from __future__ import annotations

import numpy as np
import torch

from pagedllm.sampling_params import SamplingParams
from pagedllm.scheduler_output import ScheduledRequest
from pagedllm.worker.input_prep import BlockTableBuffer, pad_to_bucket, prepare_inputs

SP = SamplingParams()


def step(*reqs: ScheduledRequest) -> list[ScheduledRequest]:
    return list(reqs)


def test_mixed_step_indices() -> None:
    # a: decode at position 5 (blocks 7, 3); b: chunk of 3 prompt tokens after 2 cached.
    a = ScheduledRequest("a", [11], 5, [7, 3], 6, SP)
    b = ScheduledRequest("b", [1, 2, 3], 2, [9, 4], 10, SP)
    inputs = prepare_inputs(step(a, b), 4, torch.device("cpu"))
    assert inputs.input_ids.tolist() == [11, 1, 2, 3]
    assert inputs.positions.tolist() == [5, 2, 3, 4]
    assert inputs.attn_metadata.slot_mapping.tolist() == [
        3 * 4 + 1,
        9 * 4 + 2,
        9 * 4 + 3,
        4 * 4 + 0,
    ]
    assert inputs.attn_metadata.seq_lens.tolist() == [6, 5]
    assert inputs.attn_metadata.query_start_loc.tolist() == [0, 1, 4]
    assert inputs.sample_rows == [0]  # b's chunk does not reach its end: no sampling
    assert inputs.logits_indices.tolist() == [0]
    assert not inputs.samples_every_token  # 4 tokens, 1 sampled: the runner must gather


def test_decode_only_step_samples_every_token() -> None:
    a = ScheduledRequest("a", [11], 5, [7, 3], 6, SP)
    b = ScheduledRequest("b", [12], 2, [9], 3, SP)
    inputs = prepare_inputs(step(a, b), 4, torch.device("cpu"))
    assert inputs.samples_every_token
    assert inputs.logits_indices.tolist() == [0, 1]  # the gather it lets the runner skip


def test_placeholder_tokens_are_reported() -> None:
    a = ScheduledRequest("a", [-1], 4, [0, 1], 5, SP)
    inputs = prepare_inputs(step(a), 4, torch.device("cpu"))
    assert inputs.placeholder_index == [0] and inputs.placeholder_req_ids == ["a"]
    assert inputs.input_ids.tolist() == [0]


def test_block_table_buffer_appends_rewrites_and_grows() -> None:
    buf = BlockTableBuffer(max_blocks_per_seq=8, rows=1)
    ids_a = [5, 6]
    a = ScheduledRequest("a", [1], 0, ids_a, 1, SP)
    assert buf.gather([a]).tolist() == [[5, 6]]
    ids_a.append(9)  # the live list grows: only the new block is copied
    assert buf.gather([a]).tolist() == [[5, 6, 9]]
    resumed = ScheduledRequest("a", [1], 0, [2, 3, 4], 1, SP)  # a new list (after preemption)
    b = ScheduledRequest("b", [1], 0, [8], 1, SP)
    assert buf.gather([resumed, b]).tolist() == [[2, 3, 4], [8, 0, 0]]  # grew to 2 rows
    buf.release({"a"})
    c = ScheduledRequest("c", [1], 0, [1], 1, SP)
    assert buf.gather([c, b]).tolist() == [[1], [8]]


def test_logits_indices_padded_to_a_bucket() -> None:
    # Three sampled rows (a decode, two prompts ending) padded to the bucket of 4 with
    # copies of the last index; b's middle chunk samples nothing.
    a = ScheduledRequest("a", [11], 5, [7, 3], 6, SP)
    b = ScheduledRequest("b", [1, 2], 0, [9], 10, SP)
    c = ScheduledRequest("c", [4, 5, 6], 0, [4], 3, SP)
    d = ScheduledRequest("d", [8, 9], 0, [2], 2, SP)
    inputs = prepare_inputs(step(a, b, c, d), 4, torch.device("cpu"), logits_buckets=[1, 2, 4, 8])
    assert inputs.sample_rows == [0, 2, 3]
    assert inputs.logits_indices.tolist() == [0, 5, 7, 7]


def test_decode_step_with_padding_gathers() -> None:
    # Two decodes, bucket 4: the runner must gather the padded rows, not use hidden as is.
    a = ScheduledRequest("a", [11], 5, [7, 3], 6, SP)
    b = ScheduledRequest("b", [12], 2, [9], 3, SP)
    inputs = prepare_inputs(step(a, b), 4, torch.device("cpu"), logits_buckets=[4])
    assert inputs.logits_indices.tolist() == [0, 1, 1, 1]
    assert not inputs.samples_every_token
    exact = prepare_inputs(step(a, b), 4, torch.device("cpu"), logits_buckets=[1, 2, 4])
    assert exact.samples_every_token and exact.logits_indices.tolist() == [0, 1]


def test_pad_to_bucket_edges() -> None:
    assert pad_to_bucket(np.array([], dtype=np.int64), [4]).tolist() == []
    assert pad_to_bucket(np.array([3, 9]), None).tolist() == [3, 9]
    assert pad_to_bucket(np.array([3, 9, 10]), [1, 2]).tolist() == [3, 9, 10]  # past every bucket
    assert pad_to_bucket(np.array([3]), [1, 2]).tolist() == [3]
