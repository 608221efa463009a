"""Tile sweep of the packed-integer decode kernel (triton_quant_gemv) and the FP8
pieces, on CUDA, at the Llama-3.1-8B linear shapes. Prints microseconds per call.

    PYTHONPATH=$PWD python scripts/gpu_quant_sweep.py
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from pagedllm.layers.quantization.int_packing import dequantize_ref, pack_rows
from pagedllm.layers.quantization.triton_quant_gemm import quant_gemm
from pagedllm.layers.quantization.triton_quant_gemv import quant_gemv

SHAPES = {"qkv": (4096, 6144), "o": (4096, 4096), "gate_up": (4096, 28672), "down": (14336, 4096)}
FP8 = torch.float8_e4m3fn


def _time(fn: Callable[[], object], iters: int = 100) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()  # graphs: kernel time without launch overhead
    with torch.cuda.graph(graph):
        for _ in range(10):
            fn()
    start = time.perf_counter()
    for _ in range(iters // 10):
        graph.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters * 1e6


def _int4(k: int, n: int, group: int = 128) -> dict[str, torch.Tensor]:
    codes = torch.randint(0, 16, (k, n), dtype=torch.int32, device="cuda")
    return {
        "qweight": pack_rows(codes, 4),
        "scales": torch.rand(k // group, n, device="cuda").half() / 500,
        "zeros": torch.randint(0, 16, (k // group, n), device="cuda").half(),
    }


def sweep_gemv() -> None:
    k, n = SHAPES["gate_up"]
    w = _int4(k, n)
    x = torch.randn(1, k, device="cuda").half()
    ref = x.float() @ dequantize_ref(w["qweight"], 4, w["scales"], w["zeros"], None, 128)
    rows = []
    for bn, bk, warps, per_sm in itertools.product(
        (64, 128, 256), (128, 256), (2, 4, 8), (2, 4, 8)
    ):
        splits = max(1, min(-(-per_sm * 132 // -(-n // bn)), k // bk // 2))

        def call(bn: int = bn, bk: int = bk, warps: int = warps, splits: int = splits) -> object:
            return quant_gemv(
                x, w["qweight"], 4, 128, w["scales"], w["zeros"], splits, (1, bn, bk, warps)
            )

        try:
            err = (call().float() - ref).abs().max().item() / ref.abs().max().item()
            rows.append((_time(call), bn, bk, warps, splits, err))
        except Exception as exc:  # a config that does not compile: listed, not fatal
            print(f"BN={bn} BK={bk} warps={warps}: {type(exc).__name__}: {str(exc)[:80]}")
    rows.sort()
    print("gate_up M=1 int4 g128, best configs (us, BN, BK, warps, splits, rel err):")
    for r in rows[:8]:
        print(f"  {r[0]:7.1f} us  BN={r[1]} BK={r[2]} warps={r[3]} splits={r[4]} err={r[5]:.1e}")
    print(f"  worst {rows[-1][0]:.1f} us")


def compare_shapes() -> None:
    print("shape      M  gemv(default)  gemm(old)  fp16 F.linear   (us)")
    for name, (k, n) in SHAPES.items():
        w = _int4(k, n)
        dense = torch.randn(n, k, device="cuda").half()
        for m in (1, 4, 8):
            x = torch.randn(m, k, device="cuda").half()
            t_new = _time(lambda: quant_gemv(x, w["qweight"], 4, 128, w["scales"], w["zeros"]))
            t_old = _time(lambda: quant_gemm(x, w["qweight"], 4, 128, w["scales"], w["zeros"]))
            t_fp16 = _time(lambda: F.linear(x, dense))
            print(f"{name:8s} {m:3d}  {t_new:9.1f}  {t_old:9.1f}  {t_fp16:9.1f}")


def fp8_pieces() -> None:
    k, n = SHAPES["gate_up"]
    w = torch.randn(n, k, device="cuda").to(FP8)
    w_scale = torch.rand(1, n, device="cuda") / 100
    dense = torch.randn(n, k, device="cuda").bfloat16()
    one = torch.ones((), device="cuda")
    print("fp8 gate_up       M   quant-x   rowwise_mm  tensorwise_mm  bf16 F.linear  (us)")
    for m in (1, 8, 64, 512):
        x = torch.randn(m, k, device="cuda").bfloat16()
        x_scale = torch.rand(m, 1, device="cuda") / 100
        x_q = x.to(FP8)

        def quant() -> object:
            s = x.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / 448.0
            return (x.float() / s).clamp(-448.0, 448.0).to(FP8)

        def rowwise() -> object:
            return torch._scaled_mm(
                x_q, w.t(), scale_a=x_scale, scale_b=w_scale, out_dtype=torch.bfloat16
            )

        def tensorwise() -> object:
            return torch._scaled_mm(x_q, w.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)

        times = [_time(f) for f in (quant, rowwise, tensorwise, lambda: F.linear(x, dense))]
        print(f"{'':16s} {m:4d}  " + "  ".join(f"{t:10.1f}" for t in times))


if __name__ == "__main__":
    print(torch.cuda.get_device_name(), torch.__version__)
    fp8_pieces()
    sweep_gemv()
    compare_shapes()
