"""Triton kernels of the custom all-reduce: one-shot and two-shot sums over buffers
that every rank of one host maps (CUDA IPC on GPUs, shared files under the
interpreter), with `all_reduce_reference` beside them.

Every rank launches the same grid of `G` programs. Program `b` owns, in each of the
`WORLD` slices of the message (slice q = elements [q*S, (q+1)*S), S = ceil(n/WORLD)),
the chunks b, b+G, b+2G, ... of `BLOCK` elements. Program b of one rank only ever
waits for program b of the others, and only reads what they wrote, so no barrier
spans a whole grid:

- copy-in: program b copies its chunks of the input into this rank's staging
  buffer, half `c % 2` (c counts the calls, per program, in device memory, so a
  replayed CUDA graph counts on);
- barrier: program b stores flag value v into slot (b, rank) of every rank's signal
  array (a system-scope release after a block barrier) and spins until slot (b, p)
  of its own array holds at least v for every p (system-scope acquire);
- one-shot: program b sums its chunks of every slice over the ranks' staging buffers,
  ranks in order 0..WORLD-1 in float32, so every rank gets the same bits;
- two-shot: program b sums only its chunks of slice `rank` (reduce-scatter) into this
  rank's result buffer, a second barrier, then copies the other slices' chunks from
  the ranks that reduced them (all-gather). Each rank reads 2x less than one-shot.

Why one barrier per phase is enough: a rank writes half c%2 of its staging buffer
before the barrier of call c, while a slower peer may still be reading call c-1's
half, the other one. Passing the barrier of call c-1 proved every peer had launched
call c-1, hence finished call c-2 (kernels of one stream do not overlap), the last
reader of this half. The result buffer is written after call c's first barrier, which
proves every peer is done with call c-1. Flag values grow by 2 per call (2c-1 for
two-shot's first barrier, 2c for the last barrier of either kind), so the two kinds
can follow each other in any order; int64 flags do not wrap.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedllm.triton_utils import launch

# Elements a program moves per chunk, and its warps (16-byte vectors per thread).
BLOCK = 2048
NUM_WARPS = 8


def all_reduce_reference(inputs: list[torch.Tensor]) -> torch.Tensor:
    """What every rank must get: the float32 sum in rank order, in the input dtype."""
    acc = torch.zeros_like(inputs[0], dtype=torch.float32)
    for x in inputs:
        acc += x.float()
    return acc.to(inputs[0].dtype)


@triton.jit
def _at(table, p, ty: tl.constexpr):
    """Rank p's buffer, from a table of addresses valid in this process."""
    return tl.load(table + p).to(tl.pointer_type(ty))


@triton.jit
def _barrier(signals, pid, rank, value, WORLD: tl.constexpr):
    tl.debug_barrier()  # this program's writes come before its release
    for p in tl.static_range(WORLD):
        slot = _at(signals, p, tl.int64) + pid * WORLD + rank
        tl.atomic_xchg(slot, value, sem="release", scope="sys")
    own = _at(signals, rank, tl.int64) + pid * WORLD
    for p in tl.static_range(WORLD):
        seen = tl.atomic_add(own + p, 0, sem="acquire", scope="sys")
        while seen < value:
            seen = tl.atomic_add(own + p, 0, sem="acquire", scope="sys")
    tl.debug_barrier()


@triton.jit
def _copy_in(inp, staged, n, slice_len, pid, G, BLOCK: tl.constexpr, WORLD: tl.constexpr):
    chunks = tl.cdiv(slice_len, BLOCK)
    for q in tl.static_range(WORLD):
        lo = q * slice_len
        hi = tl.minimum(lo + slice_len, n)
        for j in range(pid, chunks, G):
            offs = lo + j * BLOCK + tl.arange(0, BLOCK)
            mask = offs < hi
            tl.store(staged + offs, tl.load(inp + offs, mask=mask), mask=mask)


@triton.jit
def _sum_chunk(staging, shift, offs, mask, ty: tl.constexpr, WORLD: tl.constexpr):
    acc = tl.zeros(offs.shape, tl.float32)
    for p in tl.static_range(WORLD):
        src = _at(staging, p, ty) + shift + offs
        acc += tl.load(src, mask=mask, other=0.0, cache_modifier=".cg").to(tl.float32)
    return acc.to(ty)


@triton.jit
def _reduce_slice(out, staging, shift, q, n, slice_len, pid, G, result,
                  ty: tl.constexpr, BLOCK: tl.constexpr, WORLD: tl.constexpr,
                  KEEP: tl.constexpr):  # fmt: skip
    lo = q * slice_len
    hi = tl.minimum(lo + slice_len, n)
    for j in range(pid, tl.cdiv(slice_len, BLOCK), G):
        offs = lo + j * BLOCK + tl.arange(0, BLOCK)
        mask = offs < hi
        total = _sum_chunk(staging, shift, offs, mask, ty, WORLD)
        tl.store(out + offs, total, mask=mask)
        if KEEP:
            tl.store(result + offs, total, mask=mask)


@triton.jit
def _start(inp, n, slice_len, staging, signals, counter, rank, half,
           BLOCK: tl.constexpr, WORLD: tl.constexpr):  # fmt: skip
    """Count the call, copy the input in, return (call number, staging offset)."""
    pid = tl.program_id(0)
    c = tl.load(counter + pid) + 1
    tl.store(counter + pid, c)
    shift = (c % 2) * half
    own = _at(staging, rank, inp.dtype.element_ty) + shift
    _copy_in(inp, own, n, slice_len, pid, tl.num_programs(0), BLOCK, WORLD)
    return c, shift


@triton.jit
def one_shot_kernel(inp, out, n, slice_len, staging, signals, counter, rank, half,
                    BLOCK: tl.constexpr, WORLD: tl.constexpr):  # fmt: skip
    pid = tl.program_id(0)
    G = tl.num_programs(0)
    ty = inp.dtype.element_ty
    c, shift = _start(inp, n, slice_len, staging, signals, counter, rank, half, BLOCK, WORLD)
    _barrier(signals, pid, rank, 2 * c, WORLD)
    for q in tl.static_range(WORLD):
        _reduce_slice(out, staging, shift, q, n, slice_len, pid, G, out, ty, BLOCK, WORLD, False)


@triton.jit
def two_shot_kernel(inp, out, n, slice_len, staging, signals, counter, rank, half, results,
                    BLOCK: tl.constexpr, WORLD: tl.constexpr):  # fmt: skip
    pid = tl.program_id(0)
    G = tl.num_programs(0)
    ty = inp.dtype.element_ty
    c, shift = _start(inp, n, slice_len, staging, signals, counter, rank, half, BLOCK, WORLD)
    _barrier(signals, pid, rank, 2 * c - 1, WORLD)
    own_result = _at(results, rank, ty)
    _reduce_slice(out, staging, shift, rank, n, slice_len, pid, G, own_result, ty, BLOCK, WORLD,
                  True)  # fmt: skip
    _barrier(signals, pid, rank, 2 * c, WORLD)
    for q in tl.static_range(WORLD):
        if q != rank:
            _gather_slice(out, _at(results, q, ty), q, n, slice_len, pid, G, BLOCK)


@triton.jit
def _gather_slice(out, src, q, n, slice_len, pid, G, BLOCK: tl.constexpr):
    lo = q * slice_len
    hi = tl.minimum(lo + slice_len, n)
    for j in range(pid, tl.cdiv(slice_len, BLOCK), G):
        offs = lo + j * BLOCK + tl.arange(0, BLOCK)
        mask = offs < hi
        tl.store(out + offs, tl.load(src + offs, mask=mask, cache_modifier=".cg"), mask=mask)


def launch_all_reduce(
    inp: torch.Tensor,
    out: torch.Tensor,
    tables: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    counter: torch.Tensor,
    rank: int,
    half: int,
    two_shot: bool,
) -> None:
    """Sum `inp` over the ranks into `out` (both contiguous, same shape and dtype).
    `tables` = (staging, signals, results) address tables; `half` is the staging
    half's length in elements of `inp`'s dtype; `counter` has one slot per program."""
    world = tables[0].numel()
    n = inp.numel()
    slice_len = -(-n // world)
    staging, signals, results = tables
    grid = (counter.numel(),)
    args = (inp, out, n, slice_len, staging, signals, counter, rank, half)
    kernel, extra = (two_shot_kernel, (results,)) if two_shot else (one_shot_kernel, ())
    launch(kernel, grid, inp.device, *args, *extra, BLOCK=BLOCK, WORLD=world, num_warps=NUM_WARPS)
