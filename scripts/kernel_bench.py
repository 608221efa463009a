"""Micro-benchmarks of the Triton kernels on one GPU, against their torch references and,
for attention, torch's SDPA on the same tokens laid out densely.

Each row times one call (triton.testing.do_bench, median ms, on random data) and reports
the bytes the kernel must move (each input read once, each output written once) over its
time, against the H200's ~4.3 TB/s device-copy rate; prefill attention reports TFLOP/s.
The linear-layer steps (gemv, skinny_gemm, blas_choice, host_mm) are in linear_bench.py.

    python scripts/kernel_bench.py [--out results.md] [--steps decode,sliding_window]
"""

from __future__ import annotations

import argparse
import datetime
import sys
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import DTYPE, Row, bench, copy_bandwidth_row, markdown, rand  # noqa: E402
from linear_bench import (  # noqa: E402
    bench_blas_choice,
    bench_gemv,
    bench_host_mm,
    bench_skinny_gemm,
)

from pagedllm.layers.attention.metadata import AttentionMetadata  # noqa: E402
from pagedllm.layers.attention.torch_backend import TorchAttentionBackend  # noqa: E402
from pagedllm.layers.kernels.triton_activation import silu_and_mul, silu_and_mul_ref  # noqa: E402
from pagedllm.layers.kernels.triton_decode_attention import (  # noqa: E402
    choose_num_splits,
    decode_attention,
)
from pagedllm.layers.kernels.triton_prefill_attention import prefill_attention  # noqa: E402
from pagedllm.layers.kernels.triton_reshape_and_cache import (  # noqa: E402
    reshape_and_cache,
    reshape_and_cache_ref,
)
from pagedllm.layers.kernels.triton_rms_norm import rms_norm, rms_norm_ref  # noqa: E402
from pagedllm.layers.kernels.triton_rotary import (  # noqa: E402
    make_cos_sin_cache,
    rotary_embedding,
    rotary_embedding_ref,
)

BLOCK_SIZE = 16


def paged_cache(seq_lens: list[int], num_kv_heads: int, head_dim: int) -> tuple[torch.Tensor, ...]:
    """Random cache + shuffled block tables holding exactly these sequences."""
    blocks = [-(-s // BLOCK_SIZE) for s in seq_lens]
    perm = torch.randperm(sum(blocks), device="cuda", dtype=torch.int64).to(torch.int32)
    tables = torch.zeros(len(seq_lens), max(blocks), dtype=torch.int32, device="cuda")
    used = 0
    for b, n in enumerate(blocks):
        tables[b, :n] = perm[used : used + n]
        used += n
    cache = rand(2, sum(blocks), BLOCK_SIZE, num_kv_heads, head_dim)
    lens = torch.tensor(seq_lens, dtype=torch.int32, device="cuda")
    return cache, tables, lens


def dense_kv(cache: torch.Tensor, tables: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, ...]:
    """[B, num_kv_heads, seq_len, head_dim] K and V gathered from the paged cache (all seqs of seq_len)."""
    nb = -(-seq_len // BLOCK_SIZE)
    k = cache[0][tables[:, :nb].long()].flatten(1, 2)[:, :seq_len].transpose(1, 2).contiguous()
    v = cache[1][tables[:, :nb].long()].flatten(1, 2)[:, :seq_len].transpose(1, 2).contiguous()
    return k, v


def sdpa_ms(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> float | None:
    """q [B, H, Lq, D], k/v [B, Hkv, Lk, D]; GQA through enable_gqa."""
    try:
        F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
        return bench(
            lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
        )
    except RuntimeError as e:  # a backend may refuse a shape; the row then shows no SDPA time
        print(f"  sdpa skipped: {e}".splitlines()[0])
        return None


def bench_reshape_and_cache() -> list[Row]:
    num_tokens, nkv, hd = 8192, 8, 128
    key, value = rand(num_tokens, nkv, hd), rand(num_tokens, nkv, hd)
    nblocks = num_tokens // BLOCK_SIZE * 2
    cache = rand(2, nblocks, BLOCK_SIZE, nkv, hd)
    slots = torch.randperm(nblocks * BLOCK_SIZE, device="cuda")[:num_tokens]
    nbytes = 4 * key.numel() * key.element_size() + slots.numel() * 8
    return [
        Row(
            "reshape_and_cache",
            f"T={num_tokens} kv={nkv}x{hd}",
            bench(lambda: reshape_and_cache(key, value, cache, slots)),
            bench(lambda: reshape_and_cache_ref(key, value, cache, slots)),
            bytes_moved=nbytes,
        )
    ]


def _decode_row(
    name: str, batch: int, seq_len: int, hq: int, nkv: int, hd: int, splits: int | None
) -> Row:
    cache, tables, lens = paged_cache([seq_len] * batch, nkv, hd)
    q = rand(batch, hq, hd)
    scale = hd**-0.5
    n = splits or choose_num_splits(batch, nkv, seq_len, q.device)
    out = torch.empty_like(q)
    t = bench(lambda: decode_attention(q, cache, tables, lens, scale, num_splits=n, out=out))
    k, v = dense_kv(cache, tables, seq_len)
    nbytes = 2 * batch * seq_len * nkv * hd * 2 + 2 * q.numel() * 2
    return Row(
        name,
        f"B={batch} L={seq_len} h={hq}/{nkv}x{hd} splits={n}",
        t,
        sdpa_ms=sdpa_ms(q[:, :, None, :], k, v, causal=False),
        bytes_moved=nbytes,
    )


def bench_decode() -> list[Row]:
    rows = [
        _decode_row("decode (Qwen3-0.6B)", 256, 1024, 16, 8, 128, None),
        _decode_row("decode (Llama-8B)", 64, 2048, 32, 8, 128, None),
        _decode_row("decode batch 1, no split", 1, 32768, 32, 8, 128, 1),
        _decode_row("decode batch 1, split-K", 1, 32768, 32, 8, 128, None),
    ]
    rows.append(_decode_torch_ref_row())
    return rows


def _decode_torch_ref_row() -> Row:
    """The torch reference (the torch attention backend) at a small batch, for scale."""
    batch, seq_len, hq, nkv, hd = 16, 1024, 16, 8, 128
    cache, tables, lens = paged_cache([seq_len] * batch, nkv, hd)
    q = rand(batch, hq, hd)
    qsl = torch.arange(batch + 1, dtype=torch.int32, device="cuda")
    meta = AttentionMetadata(
        num_actual_tokens=batch,
        max_query_len=1,
        max_seq_len=seq_len,
        query_start_loc=qsl,
        seq_lens=lens,
        block_tables=tables,
        slot_mapping=torch.full((batch,), -1, dtype=torch.int64, device="cuda"),
    )
    torch_backend = TorchAttentionBackend()
    n = choose_num_splits(batch, nkv, seq_len, q.device)
    return Row(
        "decode vs torch ref",
        f"B={batch} L={seq_len} h={hq}/{nkv}x{hd} splits={n}",
        bench(lambda: decode_attention(q, cache, tables, lens, hd**-0.5, num_splits=n)),
        bench(lambda: torch_backend.forward(q, cache, meta, hd**-0.5), rep=50),
        bytes_moved=2 * batch * seq_len * nkv * hd * 2,
    )


def _prefill_row(name: str, batch: int, q_len: int, prefix: int, hq: int, nkv: int, hd: int) -> Row:
    seq_len = prefix + q_len
    cache, tables, lens = paged_cache([seq_len] * batch, nkv, hd)
    q = rand(batch * q_len, hq, hd)
    qsl = torch.arange(0, batch * q_len + 1, q_len, dtype=torch.int32, device="cuda")
    scale = hd**-0.5
    out = torch.empty_like(q)
    t = bench(lambda: prefill_attention(q, cache, tables, lens, qsl, q_len, scale, out=out))
    # Causal work: each query row sees prefix + its index + 1 keys; 2 matmuls of 2 flops.
    pairs = batch * (q_len * prefix + q_len * (q_len + 1) / 2)
    k, v = dense_kv(cache, tables, seq_len)
    q_dense = q.view(batch, q_len, hq, hd).transpose(1, 2)
    # SDPA's is_causal aligns the mask top-left, right for prefix == 0 only.
    peer = sdpa_ms(q_dense, k, v, causal=True) if prefix == 0 else None
    return Row(
        name,
        f"B={batch} q={q_len} prefix={prefix} h={hq}/{nkv}x{hd}",
        t,
        sdpa_ms=peer,
        flops=4 * pairs * hq * hd,
    )


def bench_prefill() -> list[Row]:
    return [
        _prefill_row("prefill (Qwen3-0.6B)", 4, 2048, 0, 16, 8, 128),
        _prefill_row("prefill (Llama-8B)", 4, 2048, 0, 32, 8, 128),
        _prefill_row("chunked prefill", 4, 512, 3584, 32, 8, 128),
    ]


def bench_sliding_window() -> list[Row]:
    """Gemma-style options against the plain kernels on the same data: a window of 1024
    over 8192-token contexts should cost about 1024/8192 of the plain time (key blocks
    left of the window are skipped), the soft-cap a few percent at most, and the plain
    rows must match bench_decode/bench_prefill's (the flags are constexpr)."""
    rows = []
    batch, seq_len, hq, nkv, hd = 32, 8192, 16, 8, 128
    cache, tables, lens = paged_cache([seq_len] * batch, nkv, hd)
    q = rand(batch, hq, hd)
    for window, cap in [(None, None), (1024, None), (1024, 50.0), (None, 50.0)]:
        n = choose_num_splits(batch, nkv, min(seq_len, window or seq_len), q.device)
        t = bench(
            partial(decode_attention, q, cache, tables, lens, 0.1, n, None, **_opts(window, cap))
        )
        rows.append(Row("decode window/cap", f"B={batch} L={seq_len} W={window} cap={cap}", t))
    batch, q_len = 2, 8192
    cache, tables, lens = paged_cache([q_len] * batch, nkv, hd)
    q = rand(batch * q_len, hq, hd)
    qsl = torch.arange(0, batch * q_len + 1, q_len, dtype=torch.int32, device="cuda")
    for window, cap in [(None, None), (1024, None), (1024, 50.0), (None, 50.0)]:
        args = (q, cache, tables, lens, qsl, q_len, 0.1)
        t = bench(partial(prefill_attention, *args, **_opts(window, cap)))
        rows.append(Row("prefill window/cap", f"B={batch} q={q_len} W={window} cap={cap}", t))
    return rows


def _opts(window: int | None, cap: float | None) -> dict[str, Any]:
    return {"sliding_window": window, "soft_cap": cap}


def bench_tuning() -> list[Row]:
    """Launch-config variants (block_n, num_warps, num_stages) of the attention kernels at
    the Qwen3-0.6B shapes, to choose the launchers' defaults."""
    rows = []
    batch, seq_len, hq, nkv, hd = 256, 1024, 16, 8, 128
    cache, tables, lens = paged_cache([seq_len] * batch, nkv, hd)
    q = rand(batch, hq, hd)
    nbytes = 2 * batch * seq_len * nkv * hd * 2
    for bn, warps, stages in [(64, 4, 2), (32, 4, 2), (64, 4, 3), (128, 4, 2), (64, 8, 2)]:
        t = bench(
            partial(decode_attention, q, cache, tables, lens, 0.1, 1, None, bn, warps, stages)
        )
        rows.append(Row("decode cfg", f"bn={bn} w={warps} st={stages}", t, bytes_moved=nbytes))
    batch, q_len = 4, 2048
    cache, tables, lens = paged_cache([q_len] * batch, nkv, hd)
    q = rand(batch * q_len, hq, hd)
    qsl = torch.arange(0, batch * q_len + 1, q_len, dtype=torch.int32, device="cuda")
    flops = 4 * batch * q_len * (q_len + 1) / 2 * hq * hd
    for bm, bn, warps, stages in [(64, 64, 4, 2), (128, 64, 8, 2), (128, 64, 8, 3), (64, 32, 4, 3)]:
        args = (q, cache, tables, lens, qsl, q_len, 0.1, True, None, bm, bn, warps, stages)
        t = bench(partial(prefill_attention, *args))
        rows.append(Row("prefill cfg", f"bm={bm} bn={bn} w={warps} st={stages}", t, flops=flops))
    return rows


def bench_rms_norm() -> list[Row]:
    num_tokens, hidden = 8192, 4096
    x, res, w = rand(num_tokens, hidden), rand(num_tokens, hidden), rand(hidden)
    return [
        Row(
            "fused_add_rms_norm",
            f"T={num_tokens} hidden={hidden}",
            bench(lambda: rms_norm(x, w, 1e-6, res)),
            bench(lambda: rms_norm_ref(x, w, 1e-6, res)),
            bytes_moved=4 * x.numel() * 2,
        )
    ]


def bench_rotary() -> list[Row]:
    num_tokens, hq, hk, hd = 8192, 32, 8, 128
    q, k = rand(num_tokens, hq, hd), rand(num_tokens, hk, hd)
    cache = make_cos_sin_cache(hd, 8192, 500000.0, "cuda")
    pos = torch.randint(0, 8192, (num_tokens,), device="cuda")
    nbytes = 2 * (q.numel() + k.numel()) * 2 + num_tokens * hd * 4
    return [
        Row(
            "rotary (in place)",
            f"T={num_tokens} q={hq} k={hk} x{hd}",
            bench(lambda: rotary_embedding(pos, q, k, cache)),
            bench(lambda: rotary_embedding_ref(pos, q, k, cache)),
            bytes_moved=nbytes,
        )
    ]


def bench_silu_and_mul() -> list[Row]:
    num_tokens, inter = 8192, 14336
    x = rand(num_tokens, 2 * inter)
    return [
        Row(
            "silu_and_mul",
            f"T={num_tokens} I={inter}",
            bench(lambda: silu_and_mul(x)),
            bench(lambda: silu_and_mul_ref(x)),
            bytes_moved=3 * num_tokens * inter * 2,
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    parser.add_argument(
        "--steps", default=None, help="comma-separated bench_* names (default: all)"
    )
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("kernel_bench.py needs a CUDA GPU")
    torch.manual_seed(0)
    rows: list[Row] = [copy_bandwidth_row()]
    steps = (
        bench_reshape_and_cache,
        bench_decode,
        bench_prefill,
        bench_sliding_window,
        bench_rms_norm,
        bench_rotary,
        bench_silu_and_mul,
        bench_gemv,
        bench_tuning,
        bench_skinny_gemm,
        bench_host_mm,
        bench_blas_choice,
    )
    if args.steps:
        wanted = set(args.steps.split(","))
        steps = tuple(s for s in steps if s.__name__ in wanted or s.__name__[6:] in wanted)
    for step in steps:
        print(f"-- {step.__name__}", flush=True)
        rows += step()
        torch.cuda.empty_cache()
    head = (
        f"Kernel micro-benchmarks, {datetime.date.today()}, {torch.cuda.get_device_name()}, "
        f"torch {torch.__version__}, triton {triton.__version__}, dtype {DTYPE}"
    )
    table = f"{head}\n\n{markdown(rows)}\n"
    print(table)
    if args.out:
        args.out.write_text(table)


if __name__ == "__main__":
    main()
