"""Fused sampling for plain temperature rows: one pass over the logits.

token[r] = argmax_v (logits[r, v] / T[r] + G[r, v]),  G ~ Gumbel(0, 1) i.i.d.

The Gumbel-max trick draws v with probability softmax(logits[r] / T[r])[v] exactly,
with no softmax, no cumulative sum and no second pass. G comes from Triton's
counter-based Philox generator keyed by (seed, r * V + v), so a launch is a pure
function of (logits, T, seed). Used only for unseeded rows without top-k / top-p /
min-p; everything else goes through the torch sampler.

Two stages, split over the vocabulary so that a small batch still fills the GPU:

    stage 1: grid = (N, S)   program (r, s) scans vocab slice
             [s*L, min((s+1)*L, V))  with L = cdiv(cdiv(V, BLOCK_V), S) * BLOCK_V
             (whole BLOCK_V chunks; trailing slices may be empty) and writes its best
             (value, index) to part_val / part_idx [N, S], the smallest index among ties;
    stage 2: grid = (N,)     program r reduces row r of the partials: the maximum value,
             the smallest index among the splits holding it -> out[r] int64.

With S == 1 stage 1 writes out[r] itself and stage 2 is not launched. S comes from
`choose_num_splits(N, V)`: about TARGET_PROGRAMS (32 per SM of an H200) stage-1
programs, each at least one BLOCK_V chunk, so N = 1 spreads V over ~126 programs and
S = 1 once N >= TARGET_PROGRAMS. The noise of (r, v) and the tie rule do not depend on
S, so the tokens of a given (logits, T, seed) are the same for every S. The launch reads
host ints only and allocates with torch.empty, so it can be captured in a CUDA graph.
Torch reference: `gumbel_sample_ref` (the same distribution, not the same draws).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

import pagedllm.triton_utils as tu

BLOCK_V_CUDA = 1024
BLOCK_V_CPU = 128  # the interpreter runs small blocks faster
# Stage-1 programs aimed for: about 32 per SM of an H200 (132 SMs). The kernel is bound by
# Philox arithmetic; measured there (fp32 logits, V = 151936, CUDA graphs), 32 a SM beat 4
# a SM by 5-12% from N = 64 to N = 2048 and tied below.
TARGET_PROGRAMS = 32 * 132
PARTIAL_NUM_WARPS = 8  # 2-10% faster than 4 from N = 64 up on an H200


@triton.jit(do_not_specialize=["seed", "chunks_per_split", "num_splits"])  # see triton_utils
def _gumbel_partial_kernel(
    logits_ptr,  # [N, V] float32 / bf16 / fp16, row stride stride_row, last dim contiguous
    temperature_ptr,  # [N] float32, > 0
    part_val_ptr,  # [N, S] float32 (unused when WRITE_VAL is False)
    part_idx_ptr,  # [N, S] int32, or the [N] int64 output when S == 1
    seed,  # int
    vocab_size,  # V
    stride_row,
    chunks_per_split,  # L / BLOCK_V
    num_splits,  # S
    BLOCK_V: tl.constexpr,
    WRITE_VAL: tl.constexpr,  # False: S == 1, store the token id (int64) only
):
    row = tl.program_id(0).to(tl.int64)  # row * stride_row can pass 2**31
    split = tl.program_id(1)
    inv_t = 1.0 / tl.load(temperature_ptr + row)
    lo = split * chunks_per_split * BLOCK_V
    hi = tl.minimum(lo + chunks_per_split * BLOCK_V, vocab_size)
    best_val = tl.full([BLOCK_V], float("-inf"), tl.float32)
    best_idx = tl.zeros([BLOCK_V], tl.int32)
    for start in range(lo, hi, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        mask = offs < vocab_size  # chunks never straddle slices: L is a multiple of BLOCK_V
        x = tl.load(logits_ptr + row * stride_row + offs, mask=mask, other=float("-inf"))
        u = tl.rand(seed, (row * vocab_size + offs).to(tl.int32))  # distinct while N * V < 2**32
        u = tl.minimum(tl.maximum(u, 1e-12), 1.0 - 1e-7)
        val = x.to(tl.float32) * inv_t - tl.log(-tl.log(u))
        take = val > best_val
        best_val = tl.where(take, val, best_val)
        best_idx = tl.where(take, offs, best_idx)
    top = tl.max(best_val, axis=0)
    # Among lanes holding the maximum, the smallest vocabulary index wins (an empty or
    # all -inf slice reports (-inf, 0), as the whole row would).
    idx = tl.min(tl.where(best_val == top, best_idx, vocab_size), axis=0)
    if WRITE_VAL:
        tl.store(part_val_ptr + row * num_splits + split, top)
        tl.store(part_idx_ptr + row * num_splits + split, idx)
    else:
        tl.store(part_idx_ptr + row, idx.to(tl.int64))


@triton.jit(do_not_specialize=["num_splits"])  # varies by step: see triton_utils
def _gumbel_reduce_kernel(
    part_val_ptr,  # [N, S] float32
    part_idx_ptr,  # [N, S] int32
    out_ptr,  # [N] int64
    num_splits,  # S
    no_index,  # larger than every index (V)
    BLOCK_S: tl.constexpr,  # >= S
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_S)
    mask = offs < num_splits
    val = tl.load(part_val_ptr + row * num_splits + offs, mask=mask, other=float("-inf"))
    idx = tl.load(part_idx_ptr + row * num_splits + offs, mask=mask, other=no_index)
    top = tl.max(val, axis=0)
    cand = tl.where(val == top, idx, no_index)
    tl.store(out_ptr + row, tl.min(cand, axis=0).to(tl.int64))


def _block_v(device: torch.device) -> int:
    return BLOCK_V_CUDA if device.type == "cuda" else BLOCK_V_CPU


def choose_num_splits(n: int, vocab: int, block_v: int = BLOCK_V_CUDA) -> int:
    """Enough splits for about TARGET_PROGRAMS stage-1 programs, each at least one
    BLOCK_V chunk, none empty. A function of host ints only; 1 once N >= TARGET_PROGRAMS."""
    chunks = tu.cdiv(max(vocab, 1), block_v)
    wanted = min(tu.cdiv(TARGET_PROGRAMS, max(n, 1)), chunks)
    # Rounding the slice length up to whole chunks can leave the last splits empty: drop them.
    return tu.cdiv(chunks, tu.cdiv(chunks, wanted))


def gumbel_sample(
    logits: torch.Tensor, temperature: torch.Tensor, seed: int, *, num_splits: int | None = None
) -> torch.Tensor:
    """logits [N, V], temperature [N] float32 (> 0) -> [N] int64 sampled token ids.

    num_splits pins the vocabulary split S (default `choose_num_splits`); the tokens
    do not depend on it."""
    tu.check_ndim("logits", logits, 2)
    tu.check_last_dim_contiguous("logits", logits)
    tu.check_dtype("temperature", temperature, (torch.float32,))
    device = tu.check_same_device(("logits", logits), ("temperature", temperature))
    if num_splits is not None and num_splits < 1:
        raise ValueError(f"num_splits must be >= 1, got {num_splits}")
    n, vocab = logits.shape
    out = torch.empty(n, dtype=torch.int64, device=device)
    if n == 0:
        return out
    block_v = _block_v(device)
    splits = choose_num_splits(n, vocab, block_v) if num_splits is None else num_splits
    if splits == 1:
        part_val, part_idx = out, out  # stage 1 writes the token ids; part_val is not read
    else:
        part_val = torch.empty((n, splits), dtype=torch.float32, device=device)
        part_idx = torch.empty((n, splits), dtype=torch.int32, device=device)
    tu.launch(
        _gumbel_partial_kernel,
        (n, splits),
        device,
        logits,
        temperature.contiguous(),
        part_val,
        part_idx,
        seed,
        vocab,
        logits.stride(0),
        tu.cdiv(tu.cdiv(max(vocab, 1), block_v), splits),
        splits,
        BLOCK_V=block_v,
        WRITE_VAL=splits > 1,
        num_warps=PARTIAL_NUM_WARPS,
    )
    if splits > 1:
        reduce_partials(part_val, part_idx, vocab, out)
    return out


def reduce_partials(
    part_val: torch.Tensor,  # [N, S] float32
    part_idx: torch.Tensor,  # [N, S] int32, each < vocab
    vocab: int,
    out: torch.Tensor | None = None,  # [N] int64
) -> torch.Tensor:  # [N] int64
    """Stage 2: per row, the index of the largest value; the smallest index among ties."""
    tu.check_ndim("part_val", part_val, 2)
    tu.check_contiguous("part_val", part_val)
    tu.check_contiguous("part_idx", part_idx)
    tu.check_dtype("part_val", part_val, (torch.float32,))
    tu.check_dtype("part_idx", part_idx, (torch.int32,))
    if part_idx.shape != part_val.shape:
        raise ValueError(f"part_idx {tuple(part_idx.shape)} != part_val {tuple(part_val.shape)}")
    device = tu.check_same_device(("part_val", part_val), ("part_idx", part_idx))
    n, splits = part_val.shape
    if out is None:
        out = torch.empty(n, dtype=torch.int64, device=device)
    if n == 0:
        return out
    tu.launch(
        _gumbel_reduce_kernel,
        (n,),
        device,
        part_val,
        part_idx,
        out,
        splits,
        vocab,
        BLOCK_S=tu.next_power_of_2(splits),
    )
    return out


def gumbel_sample_ref(
    logits: torch.Tensor, temperature: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The torch reference: the same distribution (not the same draws)."""
    u = torch.rand(logits.shape, generator=generator, device=logits.device).clamp_(1e-12, 1 - 1e-7)
    return (logits.float() / temperature.unsqueeze(1) - torch.log(-torch.log(u))).argmax(dim=-1)
