"""What one forward step tells every attention layer: where new tokens go in the
paged KV cache and which cached tokens each query attends to.

Tokens of all sequences in the step are flattened into one dimension (no padding):

    query tokens  |-- seq 0 (q0) --|-- seq 1 (q1) --|-- ... --|
    query_start_loc = [0, q0, q0+q1, ..., T]      (cu_seqlens_q)

Sequence i holds `seq_lens[i]` tokens in the cache once this step has written its
new ones; its query tokens are the last `q_i` of them, so query token j of
sequence i sits at position `seq_lens[i] - q_i + j` and attends causally to cache
positions `0 .. seq_lens[i] - q_i + j`. A decode step is q_i == 1, a prefill q_i ==
seq_lens[i], a chunked prefill (or a prefix-cache hit) anything in between.

The KV cache of one layer is a tensor [2, num_blocks, block_size, num_kv_heads,
head_dim]; cache position p of sequence i lives in slot
`block_tables[i, p // block_size] * block_size + p % block_size`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttentionMetadata:
    num_actual_tokens: (
        int  # T: tokens in this step (tensors below may be padded past T for CUDA graphs)
    )
    max_query_len: int
    max_seq_len: int
    query_start_loc: torch.Tensor  # [B + 1] int32, cu_seqlens_q
    seq_lens: torch.Tensor  # [B] int32, cached + new tokens per sequence
    block_tables: torch.Tensor  # [B, max_blocks_per_seq] int32, padded with 0
    slot_mapping: torch.Tensor  # [T] int64, cache slot of each new token (-1: do not write)
    # Host copies, so backends that loop on the CPU need no device sync.
    query_start_loc_cpu: torch.Tensor | None = None  # [B + 1] int32
    seq_lens_cpu: torch.Tensor | None = None  # [B] int32

    @property
    def num_seqs(self) -> int:
        return int(self.seq_lens.shape[0])

    @property
    def is_decode_only(self) -> bool:
        return self.max_query_len == 1
