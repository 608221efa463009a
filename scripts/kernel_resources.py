"""The compiler's resource report of the hot Triton kernels for the H200 (sm_90a),
without a GPU: each kernel is compiled offline for that target at its launch
configuration (Llama-3.1-8B shapes, bf16), then Triton's bundled ptxas reports
registers and spills. For each argument marked `do_not_specialize` the kernel is
compiled a second time with that argument known divisible by 16, and the PTX
instruction counts are compared: equal counts mean the mark costs nothing.

    python scripts/kernel_resources.py
    python scripts/kernel_resources.py --moe-grouped [--workers N]

--moe-grouped: every tile scripts/gpu_moe_grouped_sweep.py may time for the fused MoE
grouped GEMM (both projections, Qwen3-30B-A3B shape) compiled for sm_90a, with its
shared memory against the 227 KB limit, registers and spills.

Pointers and the model-fixed strides are given as divisible by 16, as they are at
run time (that is what makes 16-byte vector loads possible).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from pagedllm.layers.kernels import triton_decode_attention as decode
from pagedllm.layers.kernels import triton_gumbel_sample as gumbel
from pagedllm.layers.kernels import triton_prefill_attention as prefill

TARGET = GPUTarget("cuda", 90, 32)
PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
ATTENTION_PTRS = {
    "q_ptr": "*bf16",
    "k_cache_ptr": "*bf16",
    "v_cache_ptr": "*bf16",
    "block_tables_ptr": "*i32",
    "seq_lens_ptr": "*i32",
}
DECODE_SIG = {
    **ATTENTION_PTRS,
    "out_ptr": "*bf16",
    "lse_ptr": "*fp32",
    "scale_log2": "fp32",
    **{n: "i32" for n in ("stride_qb", "stride_qh", "stride_bt", "stride_ob", "stride_oh")},
}
PREFILL_SIG = {
    **ATTENTION_PTRS,
    "query_start_loc_ptr": "*i32",
    "out_ptr": "*bf16",
    "scale_log2": "fp32",
    **{n: "i32" for n in ("stride_qt", "stride_qh", "stride_bt", "stride_ot", "stride_oh")},
}
GUMBEL_SIG = {
    "logits_ptr": "*fp32",
    "temperature_ptr": "*fp32",
    "part_val_ptr": "*fp32",
    "part_idx_ptr": "*i32",
    **{n: "i32" for n in ("seed", "vocab_size", "stride_row", "chunks_per_split", "num_splits")},
}
REDUCE_SIG = {
    "part_val_ptr": "*fp32",
    "part_idx_ptr": "*i32",
    "out_ptr": "*i64",
    "num_splits": "i32",
    "no_index": "i32",
}
ATTN = dict(NUM_KV_HEADS=8, GROUP=4, HEAD_DIM=128, BLOCK_SIZE=16, BLOCK_D=128)
CASES: list[tuple[str, Any, dict[str, str], dict[str, Any], int, int]] = [
    (
        "decode, 1 split",
        decode._decode_partial_kernel,
        DECODE_SIG,
        dict(ATTN, BLOCK_H=16, BLOCK_N=64, NUM_SPLITS=1, DOT_PRECISION="ieee"),
        4,
        3,
    ),
    (
        "decode, 4 splits",
        decode._decode_partial_kernel,
        DECODE_SIG,
        dict(ATTN, BLOCK_H=16, BLOCK_N=64, NUM_SPLITS=4, DOT_PRECISION="ieee"),
        4,
        3,
    ),
    (
        "prefill, causal",
        prefill._prefill_attention_kernel,
        PREFILL_SIG,
        dict(ATTN, GROUP_PAD=4, BLOCK_Q=16, BLOCK_M=64, BLOCK_N=64, CAUSAL=True)
        | dict(DOT_PRECISION="ieee"),
        4,
        2,
    ),
    (
        "gumbel partial",
        gumbel._gumbel_partial_kernel,
        GUMBEL_SIG,
        dict(BLOCK_V=1024, WRITE_VAL=True),
        gumbel.PARTIAL_NUM_WARPS,
        3,
    ),
    ("gumbel reduce", gumbel._gumbel_reduce_kernel, REDUCE_SIG, dict(BLOCK_S=32), 4, 3),
]


def compile_report(
    kernel: Any,
    sig: dict[str, str],
    const: dict[str, Any],
    warps: int,
    stages: int,
    plain: set[str],
) -> tuple[int, str]:
    """(PTX instruction count, ptxas's register/spill lines); args in `plain` are
    compiled without divisibility, every other non-float one with it."""
    signature = dict(sig) | {name: "constexpr" for name in const}
    attrs = {
        (kernel.arg_names.index(n),): [["tt.divisibility", 16]]
        for n, t in sig.items()
        if t != "fp32" and n not in plain
    }
    src = ASTSource(fn=kernel, signature=signature, constexprs=const, attrs=attrs)
    ptx = triton.compile(src, target=TARGET, options={"num_warps": warps, "num_stages": stages})
    text = ptx.asm["ptx"]
    count = sum(
        1 for line in text.splitlines() if line.startswith("\t") and line.strip()[:1].isalpha()
    )
    return count, ptxas_info(text)


def ptxas_info(ptx: str) -> str:
    """ptxas's register and spill lines for this PTX (sm_90a)."""
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    out = subprocess.run(
        [PTXAS, "-arch=sm_90a", "-v", f.name, "-o", os.devnull], capture_output=True, text=True
    )
    os.unlink(f.name)
    return "; ".join(
        line.split(":", 1)[-1].strip()
        for line in out.stderr.splitlines()
        if "registers" in line or "spill" in line
    )


def moe_grouped_one(job: tuple[str, tuple[int, ...]]) -> tuple[int, str]:
    """(shared bytes, ptxas info) of the grouped MoE GEMM at one sweep tile."""
    import gpu_moe_grouped_sweep as sweep

    from pagedllm.layers.kernels.triton_fused_moe import _fused_moe_kernel as kernel

    gemm, tile = job
    gated = gemm == sweep.GATE_UP
    sig = {"a_ptr": "*bf16", "b_ptr": "*bf16", "c_ptr": "*bf16"}
    sig["topk_weights_ptr"] = "*bf16" if gated else "*fp32"  # gate/up: unread (act)
    sig |= dict.fromkeys(("sorted_token_ids_ptr", "expert_ids_ptr"), "*i32")
    sig["num_tokens_post_padded_ptr"] = "*i32"
    ints = ("N", "K", "P", "num_valid", "stride_am", "stride_be", "stride_bn", "stride_cm")
    sig |= dict.fromkeys(ints, "i32")
    const: dict[str, Any] = dict(A_ROW_DIV=sweep.TOP_K if gated else 1, GATED=gated)
    const |= dict(MUL_ROUTED_WEIGHT=not gated, DOT_PRECISION="ieee")
    const |= dict(zip(("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M"), tile[:4], strict=True))
    attrs = {
        (kernel.arg_names.index(n),): [["tt.divisibility", 16]]
        for n in sig
        if n not in ("P", "num_valid")
    }
    signature = sig | dict.fromkeys(const, "constexpr")
    src = ASTSource(fn=kernel, signature=signature, constexprs=const, attrs=attrs)
    options = {"num_warps": tile[4], "num_stages": tile[5]}
    compiled = triton.compile(src, target=TARGET, options=options)
    return int(compiled.metadata.shared), ptxas_info(compiled.asm["ptx"])


def moe_grouped(workers: int) -> None:
    import gpu_moe_grouped_sweep as sweep

    jobs = [(g, t) for g in (sweep.GATE_UP, sweep.DOWN) for t in sweep.all_candidates(g)]
    print(f"{len(jobs)} kernels in {workers} processes", flush=True)
    with ProcessPoolExecutor(workers) as pool:
        results = list(pool.map(moe_grouped_one, jobs, chunksize=4))
    print("| GEMM | tile (BM, BN, BK, GM, warps, stages) | shared bytes | estimate | ptxas |")
    print("|---|---|---|---|---|")
    for (gemm, tile), (shared, info) in zip(jobs, results, strict=True):
        estimate = sweep.smem_bytes(tile, gemm == sweep.GATE_UP)
        print(f"| {gemm} | {tile} | {shared} | {estimate} | {info} |")
    over = [
        job for job, (shared, _) in zip(jobs, results, strict=True) if shared > sweep.SMEM_LIMIT
    ]
    worst = max(shared for shared, _ in results)
    print(f"largest shared memory {worst} bytes; over {sweep.SMEM_LIMIT}: {over or 'none'}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--moe-grouped", action="store_true")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    if args.moe_grouped:
        moe_grouped(args.workers)
        return
    print("| kernel | PTX instructions | ptxas | unspecialized args: instructions if divisible |")
    print("|---|---|---|---|")
    for name, kernel, sig, const, warps, stages in CASES:
        unspecialized = {
            a if isinstance(a, str) else kernel.arg_names[a] for a in kernel.do_not_specialize
        }
        count, info = compile_report(kernel, sig, const, warps, stages, unspecialized)
        checks = []
        for arg in sorted(unspecialized):
            divisible, _ = compile_report(kernel, sig, const, warps, stages, unspecialized - {arg})
            checks.append(f"{arg}: {divisible}" + (" (same)" if divisible == count else ""))
        print(f"| {name} | {count} | {info} | {', '.join(checks)} |")


if __name__ == "__main__":
    main()
