"""Pure-PyTorch paged attention: the CPU path and the oracle for the Triton kernels.

All sequences of a step are attended at once in a padded layout:

    query  [B, max_q, H, D]   row j of sequence b = flat token query_start_loc[b] + j
    keys   [B, max_k, KH, D]  column p of sequence b = cache position p (gathered by slot)
    mask   [B, max_q, max_k]  p < seq_len[b] and (causal) p <= seq_len[b] - q_len[b] + j

Decode sequences (q_len == 1) and prefill/chunked-prefill sequences are attended as
two separate groups, so one long prompt does not pad every decode to its length.
Grouped-query heads: query head h reads kv head h // (H / KH) (HF's repeat_kv order).

Gemma's options: a sliding window W (query at position q sees keys p > q - W, HF's
convention) and a logit soft-cap c (scores -> c * tanh(scores / c) before the mask and
softmax); with a soft-cap the softmax is written out (SDPA has no such hook).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from pagedllm.layers.attention.backend import AttentionBackend
from pagedllm.layers.attention.metadata import AttentionMetadata
from pagedllm.layers.cpu import decode_ops


def _cache_slots(block_tables: torch.Tensor, block_size: int, max_k: int) -> torch.Tensor:
    """[B, max_k] int64 flat cache slot of each key position (past a sequence's end the
    slot is a valid but unused index; the mask hides it)."""
    pos = torch.arange(max_k, device=block_tables.device)
    blocks = block_tables.long()[:, pos // block_size]
    return blocks * block_size + pos % block_size


@dataclass
class _GroupPlan:
    """Everything about one group of sequences that does not depend on the layer:
    computed once per step and reused by every attention layer."""

    key_slots: torch.Tensor  # [B, max_k] int64 index into the key/value stores
    q_index: torch.Tensor  # [B, max_q] flat query token of each padded row (0 on padding)
    q_valid: torch.Tensor  # [B, max_q] bool
    mask: torch.Tensor  # [B, 1, G * max_q, max_k] bool, True = may attend
    tokens: torch.Tensor  # [N] flat token index of each valid row
    max_q: int


def _make_plan(
    key_slots: torch.Tensor,  # [B, max_k] int64
    q_start: torch.Tensor,  # [B] int64 first flat query token of each sequence
    q_lens: torch.Tensor,  # [B] int64
    seq_lens: torch.Tensor,  # [B] int64
    max_q: int,
    group: int,  # query heads per kv head
    causal: bool,
    window: int | None = None,
) -> _GroupPlan:
    num_seqs, max_k = key_slots.shape
    q_off = torch.arange(max_q, device=key_slots.device)
    # A sequence without keys (seq_len 0: a padded entry) has no valid rows: its output
    # stays 0, as in the Triton kernels.
    q_valid = (q_off[None, :] < q_lens[:, None]) & (seq_lens[:, None] > 0)  # [B, max_q]
    q_index = torch.where(q_valid, q_start[:, None] + q_off[None, :], 0)
    k_pos = torch.arange(max_k, device=key_slots.device)
    mask = k_pos[None, None, :] < seq_lens[:, None, None]  # [B, 1, max_k]
    q_pos = (seq_lens - q_lens)[:, None] + q_off[None, :]  # [B, max_q]
    if causal:
        mask = mask & (k_pos[None, None, :] <= q_pos[:, :, None])
    if window is not None:
        mask = mask & (k_pos[None, None, :] > q_pos[:, :, None] - window)
    # Padded query rows see every key so that no softmax row is empty; they are dropped.
    mask = mask | ~q_valid[:, :, None]
    mask = (
        mask[:, None]
        .expand(num_seqs, group, max_q, max_k)
        .reshape(num_seqs, 1, group * max_q, max_k)
    )
    return _GroupPlan(key_slots, q_index, q_valid, mask, q_index[q_valid], max_q)


def _rows(store: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """store[index] for an integer index of any shape: index_select over the flattened
    index, several times faster on the CPU than advanced indexing (same result)."""
    return store.index_select(0, index.reshape(-1)).view(*index.shape, *store.shape[1:])


def _attend_group(
    query: torch.Tensor,  # [T, H, D]
    key_store: torch.Tensor,  # [S, KH, D] flat slots (cache) or flat tokens (no cache)
    value_store: torch.Tensor,  # [S, KH, D]
    plan: _GroupPlan,
    scale: float,
    soft_cap: float | None = None,
) -> torch.Tensor:
    """Returns the valid rows [N, H, D] float32 (their tokens are plan.tokens)."""
    num_seqs, max_k = plan.key_slots.shape
    num_heads, head_dim = query.shape[1], query.shape[2]
    num_kv_heads = key_store.shape[1]
    group, max_q = num_heads // num_kv_heads, plan.max_q
    # [B, max_q, KH, G, D] -> [B, KH, G * max_q, D]
    q = _rows(query, plan.q_index).float()
    q = q.view(num_seqs, max_q, num_kv_heads, group, head_dim)
    q = q.permute(0, 2, 3, 1, 4).reshape(num_seqs, num_kv_heads, group * max_q, head_dim)
    k = _rows(key_store, plan.key_slots).float().transpose(1, 2)  # [B, KH, max_k, D]
    v = _rows(value_store, plan.key_slots).float().transpose(1, 2)
    if soft_cap is None:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=plan.mask, scale=scale)
    else:
        out = _soft_capped_attention(q, k, v, plan.mask, scale, soft_cap)
    out = out.view(num_seqs, num_kv_heads, group, max_q, head_dim).permute(0, 3, 1, 2, 4)
    out = out.reshape(num_seqs, max_q, num_heads, head_dim)
    return out[plan.q_valid]


def _soft_capped_attention(
    q: torch.Tensor,  # [B, KH, M, D] float32
    k: torch.Tensor,  # [B, KH, N, D]
    v: torch.Tensor,  # [B, KH, N, D]
    mask: torch.Tensor,  # [B, 1, M, N] bool, True = may attend
    scale: float,
    soft_cap: float,
) -> torch.Tensor:  # [B, KH, M, D]
    """HF's eager Gemma 2 attention: scale, cap with tanh, mask, softmax."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    scores = torch.tanh(scores / soft_cap) * soft_cap
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def _single_decode(
    query: torch.Tensor,  # [1, H, D]
    key_store: torch.Tensor,  # [S, KH, D]
    value_store: torch.Tensor,  # [S, KH, D]
    key_slots: torch.Tensor,  # [max_k] int64
    metadata: AttentionMetadata,
    scale: float,
) -> torch.Tensor:  # [1, H, D]
    """One sequence, one new token (batch-1 decoding): it sees all of its keys, so no
    padding and no mask. SDPA with grouped-query heads on strided views of the gathered
    keys/values (no copy per query head and no transposed copy: about 5x faster on the
    CPU than expanding K/V to every query head at SmolLM2's shapes)."""
    seq_len = metadata.max_seq_len
    slots = key_slots[:seq_len]
    num_heads, head_dim = query.shape[1], query.shape[2]
    q = query.float().view(1, num_heads, 1, head_dim)
    k = key_store.index_select(0, slots).float().unsqueeze(0).transpose(1, 2)  # [1, KH, L, D]
    v = value_store.index_select(0, slots).float().unsqueeze(0).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=True)
    return out.reshape(1, num_heads, head_dim).to(query.dtype)


def paged_attention(
    query: torch.Tensor,  # [T, H, D]
    key_store: torch.Tensor,  # [S, KH, D]
    value_store: torch.Tensor,  # [S, KH, D]
    key_slots: torch.Tensor,  # [B, max_k] int64
    metadata: AttentionMetadata,
    seq_lens: torch.Tensor,  # [B] keys per sequence
    scale: float,
    causal: bool,
    cache_key: tuple[object, ...] | None = None,
    window: int | None = None,
    soft_cap: float | None = None,
) -> torch.Tensor:
    """Attend every query token of the step; returns [T, H, D] in query dtype."""
    qsl_cpu = metadata.query_start_loc_cpu
    if qsl_cpu is None:
        qsl_cpu = metadata.query_start_loc.cpu()
    q_lens_cpu = (qsl_cpu[1:] - qsl_cpu[:-1]).long()
    plain = window is None and soft_cap is None
    single = qsl_cpu.shape[0] == 2 and int(q_lens_cpu[0]) == 1 and query.shape[0] == 1
    if plain and single and metadata.max_seq_len > 0:
        return _single_decode(query, key_store, value_store, key_slots[0], metadata, scale)
    group = query.shape[1] // key_store.shape[1]
    plans = _step_plans(
        metadata, key_slots, seq_lens, (group, causal, window), q_lens_cpu, cache_key
    )
    out = torch.zeros_like(query)
    for plan in plans:
        rows = _attend_group(query, key_store, value_store, plan, scale, soft_cap)
        out[plan.tokens] = rows.to(query.dtype)
    return out


def _step_plans(
    metadata: AttentionMetadata,
    key_slots: torch.Tensor,  # [B, max_k] int64
    seq_lens: torch.Tensor,  # [B]
    mask_kind: tuple[int, bool, int | None],  # (group, causal, sliding window)
    q_lens_cpu: torch.Tensor,  # [B] int64
    cache_key: tuple[object, ...] | None,
) -> list[_GroupPlan]:
    """Decode sequences and the others, as two plans. With a cache_key (key_slots
    that depend only on the step) they are cached on the step's metadata: every
    layer of the same mask kind shares the key slots, lengths and masks."""
    cache: dict[tuple[object, ...], list[_GroupPlan]] = metadata.__dict__.setdefault(
        "_torch_plans", {}
    )
    if cache_key is not None and (cache_key, *mask_kind) in cache:
        return cache[(cache_key, *mask_kind)]
    qsl = metadata.query_start_loc.long()
    q_lens = qsl[1:] - qsl[:-1]
    plans = []
    is_decode = q_lens_cpu == 1
    for select in (is_decode, ~is_decode):
        if not bool(select.any()):
            continue
        max_q = int(q_lens_cpu[select].max())
        if max_q == 0:  # only padding entries (no query tokens)
            continue
        idx = select.nonzero().squeeze(1).to(key_slots.device)
        plans.append(
            _make_plan(
                key_slots[idx],
                qsl[:-1][idx],
                q_lens[idx],
                seq_lens[idx].long(),
                max_q,
                *mask_kind,
            )
        )
    if cache_key is not None:
        cache[(cache_key, *mask_kind)] = plans
    return plans


def write_kv_cache(
    key: torch.Tensor,  # [T, num_kv_heads, head_dim]
    value: torch.Tensor,  # [T, num_kv_heads, head_dim]
    kv_cache: torch.Tensor,  # [2, num_blocks, block_size, num_kv_heads, head_dim]
    slot_mapping: torch.Tensor,  # [>= T] int64, -1: not stored
) -> None:
    """Token t's key and value into flat cache slot slot_mapping[t] (block slot // block_size,
    row slot % block_size). The reference of the Triton kernel (triton_reshape_and_cache.py)."""
    num_kv_heads, head_dim = kv_cache.shape[-2], kv_cache.shape[-1]
    key_cache = kv_cache[0].view(-1, num_kv_heads, head_dim)
    value_cache = kv_cache[1].view(-1, num_kv_heads, head_dim)
    num_tokens = min(key.shape[0], slot_mapping.shape[0])
    slots = slot_mapping[:num_tokens]
    valid = slots >= 0
    slots = slots[valid]
    key_cache.index_copy_(0, slots, key[:num_tokens][valid].to(key_cache.dtype))
    value_cache.index_copy_(0, slots, value[:num_tokens][valid].to(value_cache.dtype))


def _fused_ops(x: torch.Tensor, kv_cache: torch.Tensor) -> Any | None:
    """The C++ CPU ops (layers/cpu/decode_ops.cpp) where x and the cache are float32 CPU."""
    if x.dtype == torch.float32 and kv_cache.dtype == torch.float32 and kv_cache.is_cpu:
        return decode_ops.decode_ops() if x.is_cpu and x.stride(-1) == 1 else None
    return None


def _all_decode(query: torch.Tensor, metadata: AttentionMetadata) -> bool:
    """One new token per sequence (and int32 tables on the CPU, as input_prep makes)."""
    return (
        metadata.max_query_len == 1
        and query.shape[0] == metadata.seq_lens.shape[0]
        and metadata.seq_lens.dtype == torch.int32
        and metadata.block_tables.dtype == torch.int32
        and metadata.seq_lens.is_cpu
        and metadata.seq_lens.is_contiguous()
        and metadata.block_tables.is_contiguous()
    )


class TorchAttentionBackend(AttentionBackend):
    name = "torch"
    supports_window_and_soft_cap = True

    def write_kv(
        self,
        key: torch.Tensor,  # [T, num_kv_heads, head_dim]
        value: torch.Tensor,  # [T, num_kv_heads, head_dim]
        kv_cache: torch.Tensor,  # [2, num_blocks, block_size, num_kv_heads, head_dim]
        slot_mapping: torch.Tensor,  # [T] int64
    ) -> None:
        ops = _fused_ops(key, kv_cache)
        if ops is not None and slot_mapping.is_contiguous():
            ops.write_kv(key, value, kv_cache, slot_mapping.long())
            return
        write_kv_cache(key, value, kv_cache, slot_mapping)

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
        ops = _fused_ops(query, kv_cache)
        plain = sliding_window is None and soft_cap is None
        if ops is not None and plain and _all_decode(query, metadata):
            # One C++ call reads the keys in place through the block table.
            return ops.decode_attention(  # type: ignore[no-any-return]
                query.contiguous(), kv_cache, metadata.block_tables, metadata.seq_lens, scale
            )
        block_size, num_kv_heads, head_dim = kv_cache.shape[2:]
        key_cache = kv_cache[0].view(-1, num_kv_heads, head_dim)
        value_cache = kv_cache[1].view(-1, num_kv_heads, head_dim)
        max_k = max(metadata.max_seq_len, 1)
        slots_cache: dict[tuple[int, int], torch.Tensor] = metadata.__dict__.setdefault(
            "_torch_key_slots", {}
        )
        key_slots = slots_cache.get((block_size, max_k))
        if key_slots is None:  # once per step: every layer reads the same slots
            key_slots = _cache_slots(metadata.block_tables, block_size, max_k)
            slots_cache[(block_size, max_k)] = key_slots
        return paged_attention(
            query,
            key_cache,
            value_cache,
            key_slots,
            metadata,
            metadata.seq_lens,
            scale,
            causal,
            cache_key=("paged", block_size, max_k),
            window=sliding_window,
            soft_cap=soft_cap,
        )


def attention_without_cache(
    query: torch.Tensor,  # [T, H, D]
    key: torch.Tensor,  # [T, KH, D]
    value: torch.Tensor,  # [T, KH, D]
    metadata: AttentionMetadata,
    scale: float,
    causal: bool = True,
    sliding_window: int | None = None,
    soft_cap: float | None = None,
) -> torch.Tensor:  # [T, H, D]
    """Attention over this step's tokens only (no KV cache: encoders, profiling runs).
    Every sequence must be a whole prompt: its keys are its own query tokens."""
    qsl = metadata.query_start_loc.long()
    q_lens = qsl[1:] - qsl[:-1]
    max_q = max(metadata.max_query_len, 1)
    offsets = torch.arange(max_q, device=query.device)
    key_slots = (qsl[:-1, None] + offsets[None, :]).clamp(max=max(key.shape[0] - 1, 0))
    return paged_attention(
        query,
        key,
        value,
        key_slots,
        metadata,
        q_lens,
        scale,
        causal,
        window=sliding_window,
        soft_cap=soft_cap,
    )
