"""Offline sm_90a compile report of the wide int4 GEMV (triton_quant_gemv_wide) for every
config that scripts/gpu_quant_sweep.py times: registers, spills, shared memory and the
PTX instruction mix, without a GPU (Triton compiles for GPUTarget("cuda", 90, 32), its
bundled ptxas reports). Called by `gpu_quant_sweep.py --resources`.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from typing import Any

import triton
from triton.compiler import ASTSource

from pagedllm.layers.kernels.triton_quant_gemv_wide import _quant_gemv_wide_kernel, k_tiles
from scripts.kernel_resources import PTXAS, TARGET

SIG = {
    "x_ptr": "*bf16",
    "qw_ptr": "*i32",
    "s_ptr": "*bf16",
    "z_ptr": "*bf16",
    "part_ptr": "*fp32",
    "out_ptr": "*bf16",
    "cnt_ptr": "*i32",
    **{n: "i32" for n in ("M", "N", "K", "stride_xm", "group_size", "chunks_per_split")},
}
PLAIN = {"M", "chunks_per_split"}  # do_not_specialize: no divisibility known


def compile_one(tile: tuple[int, ...], partial: bool, group: int = 128) -> dict[str, Any]:
    block_m, block_n, block_k, warps, _, stages = tile
    ks = k_tiles(block_k, group, 4)
    assert ks is not None
    const = dict(
        BITS=4, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=ks[0], SUB_K=ks[1],
        PARTIAL=partial, NUM_STAGES=stages,
    )  # fmt: skip
    kernel = _quant_gemv_wide_kernel
    attrs = {(kernel.arg_names.index(n),): [["tt.divisibility", 16]] for n in SIG if n not in PLAIN}
    src = ASTSource(
        fn=kernel, signature=SIG | {n: "constexpr" for n in const}, constexprs=const, attrs=attrs
    )
    compiled = triton.compile(
        src, target=TARGET, options={"num_warps": warps, "num_stages": stages}
    )
    ptx = compiled.asm["ptx"]
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    out = subprocess.run(
        [PTXAS, "-arch=sm_90a", "-v", f.name, "-o", os.devnull], capture_output=True, text=True
    )
    os.unlink(f.name)
    regs = re.search(r"Used (\d+) registers", out.stderr)
    spill = re.search(r"(\d+) bytes spill stores", out.stderr)
    return {
        "registers": int(regs.group(1)) if regs else -1,
        "spill_bytes": int(spill.group(1)) if spill else -1,
        "shared": compiled.metadata.shared,
        "ld_v4": len(re.findall(r"ld\.global[.\w]*\.v4\.b32", ptx)),
        "fma": ptx.count("fma.rn.f32"),
        "convert_layout": compiled.asm["ttgir"].count("convert_layout"),
    }


def report(tables: dict[int, list[tuple[int, ...]]]) -> None:
    """One line per distinct compile (per_sm is a run-time value)."""
    seen = set()
    print(
        "| tile (BM, BN, BK, warps, stages) | split | registers | spill B | shared B | v4 loads | FMA |"
    )
    print("|---|---|---|---|---|---|---|")
    for tiles in tables.values():
        for tile in tiles:
            for partial in (True, False):
                key = (*tile[:4], tile[5], partial)
                if key in seen:
                    continue
                seen.add(key)
                r = compile_one(tile, partial)
                print(
                    f"| {key[:5]} | {partial} | {r['registers']} | {r['spill_bytes']} | "
                    f"{r['shared']} | {r['ld_v4']} | {r['fma']} |",
                    flush=True,
                )
