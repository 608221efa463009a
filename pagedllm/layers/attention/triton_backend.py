"""The Triton attention backend (NVIDIA GPUs; also runs on CPU tensors through Triton's
interpreter, which is how the tests check it).

Which kernel runs:
    decode-only step (max_query_len == 1)  -> triton_decode_attention (GQA-grouped,
        split-K flash-decoding); query row b is sequence b's token, so
        query_start_loc must be arange(B + 1) over the real sequences, which come first.
    any other step (prefill, chunked prefill, or prefill mixed with decodes)
        -> triton_prefill_attention for every sequence, decodes included (q_len 1 is just
        a short chunk); one launch, no host-side split of the batch.
    `causal=False` (encoder models) uses the same choice: for a single query token at the
    end of its sequence, causal and non-causal attention are the same thing.

Gemma's options go to both kernels as launch arguments (constexpr flags: layers without
them run the plain kernels): `sliding_window` W (a query at position q sees keys > q - W,
HF's convention; the kernels skip key blocks left of the window, and decode splits only
the window) and `soft_cap` c (scores -> c * tanh(scores / c)). Per layer, so Gemma's
mix of sliding and global layers runs on this backend, inside CUDA graphs.

CUDA graphs: forward reads host ints only (num_actual_tokens, max_query_len,
max_seq_len, tensor shapes), makes no host sync, and accepts tensors padded past the
real step: padded sequences must have seq_len 0 (decode: output rows of zeros; prefill:
q_len 0, nothing written) and padded tokens slot -1 (write_kv skips them). Output rows
that no sequence covers are set to zero. The decode split count is a function of
(num_seqs, num_kv_heads, max_seq_len); pass `decode_num_splits` to pin it when capturing
a graph that will be replayed with other max_seq_len values (any count is correct).
"""

from __future__ import annotations

import torch

from pagedllm.layers.attention.backend import AttentionBackend
from pagedllm.layers.attention.metadata import AttentionMetadata
from pagedllm.layers.kernels.triton_decode_attention import choose_num_splits, decode_attention
from pagedllm.layers.kernels.triton_prefill_attention import prefill_attention
from pagedllm.layers.kernels.triton_reshape_and_cache import reshape_and_cache


class TritonAttentionBackend(AttentionBackend):
    name = "triton"
    supports_window_and_soft_cap = True

    def __init__(self, decode_num_splits: int | None = None) -> None:
        if decode_num_splits is not None and decode_num_splits < 1:
            raise ValueError(f"decode_num_splits must be >= 1, got {decode_num_splits}")
        self.decode_num_splits = decode_num_splits

    def write_kv(
        self,
        key: torch.Tensor,  # [T, num_kv_heads, head_dim]
        value: torch.Tensor,  # [T, num_kv_heads, head_dim]
        kv_cache: torch.Tensor,  # [2, num_blocks, block_size, num_kv_heads, head_dim]
        slot_mapping: torch.Tensor,  # [T] int64
    ) -> None:
        reshape_and_cache(key, value, kv_cache, slot_mapping)

    def forward(
        self,
        query: torch.Tensor,  # [T, num_heads, head_dim]
        kv_cache: torch.Tensor,  # [2, num_blocks, block_size, num_kv_heads, head_dim]
        metadata: AttentionMetadata,
        scale: float,
        causal: bool = True,
        sliding_window: int | None = None,
        soft_cap: float | None = None,
    ) -> torch.Tensor:  # [T, num_heads, head_dim]
        out = torch.empty_like(query, memory_format=torch.contiguous_format)
        if metadata.is_decode_only:
            self._decode(query, kv_cache, metadata, scale, out, sliding_window, soft_cap)
            covered = metadata.num_seqs
        else:
            prefill_attention(
                query,
                kv_cache,
                metadata.block_tables,
                metadata.seq_lens,
                metadata.query_start_loc,
                metadata.max_query_len,
                scale,
                causal=causal,
                out=out,
                sliding_window=sliding_window,
                soft_cap=soft_cap,
            )
            covered = metadata.num_actual_tokens
        if query.shape[0] > covered:
            out[covered:].zero_()
        return out

    def _decode(
        self,
        query: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: AttentionMetadata,
        scale: float,
        out: torch.Tensor,
        sliding_window: int | None,
        soft_cap: float | None,
    ) -> None:
        keys = metadata.max_seq_len  # most keys one token attends to
        if sliding_window is not None:
            keys = min(keys, sliding_window)
        num_splits = self.decode_num_splits or choose_num_splits(
            metadata.num_seqs, kv_cache.shape[3], keys, query.device
        )
        decode_attention(
            query,
            kv_cache,
            metadata.block_tables,
            metadata.seq_lens,
            scale,
            num_splits=num_splits,
            out=out,
            sliding_window=sliding_window,
            soft_cap=soft_cap,
        )
