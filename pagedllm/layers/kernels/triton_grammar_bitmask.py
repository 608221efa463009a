"""The structured-output bitmask applied in one pass: logits -> a masked copy.

    out[r, v] = logits[r, v]  if row r samples under no grammar, or bit v of its mask is set
                -inf          otherwise (and for v >= 32 * W, past the mask's words)

The packed mask ([R, W] int32, bit j of word w = token 32 * w + j, see
layers/grammar_bitmask.py) is read as it came from the host: no [R, V] unpacked
tensor, no clone beside it. The sampler needs a copy of the logits anyway (it never
writes its input), so this kernel is that copy: the mask costs the 4.8 MB of its
words on top of the clone's read and write (T1: 256 rows x 151,936 tokens).

Grid (N, cdiv(V, BLOCK_V)); program (r, b) copies tokens [b * BLOCK_V, ...) of row r.
Its mask row is `row_map[r]` (-1 = no grammar) when some logits rows have none,
else r. Each lane loads the word of its token (32 lanes share a word: one cached
load). Torch reference: `masked_logits_ref`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

import pagedllm.triton_utils as tu

BLOCK_V_CUDA = 2048
BLOCK_V_CPU = 64  # the interpreter runs small blocks faster


@triton.jit
def _masked_copy_kernel(
    logits_ptr,  # [N, V] float, row stride stride_in, last dim contiguous
    out_ptr,  # [N, V] same dtype, row stride stride_out
    bitmask_ptr,  # [R, W] int32, contiguous
    row_map_ptr,  # [N] int32 mask row of each logits row, -1 = none (read if HAS_ROW_MAP)
    vocab_size,  # V
    num_words,  # W
    stride_in,
    stride_out,
    BLOCK_V: tl.constexpr,
    HAS_ROW_MAP: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    in_vocab = offs < vocab_size
    x = tl.load(logits_ptr + row * stride_in + offs, mask=in_vocab)
    if HAS_ROW_MAP:
        mask_row = tl.load(row_map_ptr + row).to(tl.int64)
    else:
        mask_row = row
    word_idx = offs >> 5
    has_word = in_vocab & (word_idx < num_words) & (mask_row >= 0)
    words = tl.load(bitmask_ptr + mask_row * num_words + word_idx, mask=has_word, other=0)
    allowed = ((words >> (offs & 31)) & 1) != 0
    allowed = allowed | (mask_row < 0)
    tl.store(out_ptr + row * stride_out + offs, tl.where(allowed, x, float("-inf")), mask=in_vocab)


def masked_logits(
    logits: torch.Tensor, bitmask: torch.Tensor, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """logits [N, V] float; bitmask [R, W] int32; rows [R] int64, the logits row of each
    mask row (None: R == N, in order) -> a new [N, V] tensor, banned tokens -inf."""
    tu.check_ndim("logits", logits, 2)
    tu.check_ndim("bitmask", bitmask, 2)
    tu.check_last_dim_contiguous("logits", logits)
    tu.check_dtype("bitmask", bitmask, (torch.int32,))
    device = tu.check_same_device(("logits", logits), ("bitmask", bitmask))
    n, vocab = logits.shape
    out = torch.empty_like(logits, memory_format=torch.contiguous_format)
    if rows is None and bitmask.shape[0] != n:
        raise ValueError(f"bitmask has {bitmask.shape[0]} rows for {n} logits rows")
    row_map = _row_map(rows, n, device)
    if n == 0 or vocab == 0:
        return out
    block_v = BLOCK_V_CUDA if device.type == "cuda" else BLOCK_V_CPU
    tu.launch(
        _masked_copy_kernel,
        (n, tu.cdiv(vocab, block_v)),
        device,
        logits,
        out,
        bitmask.contiguous(),
        row_map if row_map is not None else bitmask,  # not read without a row map
        vocab,
        bitmask.shape[1],
        logits.stride(0),
        out.stride(0),
        BLOCK_V=block_v,
        HAS_ROW_MAP=row_map is not None,
        num_warps=8 if device.type == "cuda" else 1,
    )
    return out


def _row_map(rows: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor | None:
    """[N] int32: the mask row of each logits row, -1 for rows under no grammar (on the
    device, no host sync)."""
    if rows is None:
        return None
    row_map = torch.full((n,), -1, dtype=torch.int32, device=device)
    mask_rows = torch.arange(rows.shape[0], dtype=torch.int32, device=device)
    return row_map.index_copy_(0, rows, mask_rows)


def masked_logits_ref(
    logits: torch.Tensor, bitmask: torch.Tensor, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """The torch reference of `masked_logits` (bit by bit, int64 arithmetic)."""
    n, vocab = logits.shape
    tokens = torch.arange(vocab, device=logits.device)
    words = tokens // 32
    in_mask = words < bitmask.shape[1]
    picked = bitmask.to(torch.int64)[:, words.clamp(max=max(bitmask.shape[1] - 1, 0))]
    allowed = ((picked >> (tokens % 32)) & 1).bool() & in_mask  # [R, V]
    full = torch.ones(n, vocab, dtype=torch.bool, device=logits.device)
    full[rows if rows is not None else torch.arange(n, device=logits.device)] = allowed
    return logits.masked_fill(~full, float("-inf"))
