"""GPU check of the quantized linear layers (issue 16), about 6-8 minutes on an H200.

(a) correctness on CUDA with real shapes: the Triton dequantize-in-tile GEMM (4-bit
    affine = AWQ/GPTQ after repacking, 8-bit GPTQ, act-order g_idx, SqueezeLLM's
    table) against the torch reference, and FP8 (weight-only GEMV for few rows, else
    per-tensor activation scales and tensor-wise torch._scaled_mm) against the
    dequantized weight; plus kernel timings at the
    Llama-3.1-8B gate_up shape against bf16 F.linear.
(b) benchmarks (dummy weights, Llama-3.1-8B shape): L1 with quantization=awq and fp8,
    T2 with fp8, each in its own process.

    PYTHONPATH=$PWD python scripts/gpu_quant_check.py [--skip-bench] [--skip-kernels]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

from pagedllm.layers.quantization.int_packing import dequantize_ref, pack_rows

K, N = 4096, 28672 // 2  # a gate_up half: big enough to be bandwidth bound


def _packed(bits: int, group: int, mode: str, k: int, n: int) -> dict[str, object]:
    codes = torch.randint(0, 2**bits, (k, n), dtype=torch.int32, device="cuda")
    args: dict[str, object] = {"qweight": pack_rows(codes, bits), "bits": bits, "group_size": group}
    groups = k // group
    if mode == "lut":
        args["lookup_table"] = torch.randn(n, 16, device="cuda").half() / 50
    else:
        args["scales"] = torch.rand(groups, n, device="cuda").half() / 500
        args["zeros"] = torch.randint(0, 2**bits, (groups, n), device="cuda").half()
    if mode == "g_idx":
        args["g_idx"] = (torch.arange(k, device="cuda") // group).int()
    return args


def _time(fn: object, iters: int = 50) -> float:
    for _ in range(5):
        fn()  # type: ignore[operator]
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()  # type: ignore[operator]
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters * 1e3


def check_kernels() -> list[str]:
    from pagedllm.layers.kernels.triton_quant_gemm import quant_gemm

    rows = []
    for bits, group, mode in [
        (4, 128, "affine"),
        (4, 64, "affine"),
        (8, 128, "affine"),
        (4, 128, "g_idx"),
        (4, 128, "lut"),
    ]:
        args = _packed(bits, group, mode, K, N)
        w = dequantize_ref(
            args["qweight"],
            bits,
            args.get("scales"),
            args.get("zeros"),  # type: ignore[arg-type]
            args.get("g_idx"),
            group,
            args.get("lookup_table"),
        ).half()  # type: ignore[arg-type]
        for m in (1, 8, 64, 512):
            x = torch.randn(m, K, device="cuda").half()
            out = quant_gemm(x, **args)  # type: ignore[arg-type]
            ref = (x.float() @ w.float()).half()
            rel = float((out.float() - ref.float()).norm() / ref.float().norm())
            ms = _time(lambda x=x, a=args: quant_gemm(x, **a))  # type: ignore[arg-type]
            wt = w.t().contiguous()
            base = _time(lambda x=x, wt=wt: F.linear(x, wt))
            status = "ok" if rel < 4e-3 else "FAIL"
            rows.append(
                f"{bits}-bit {mode:6s} g{group:<4d} M={m:<4d} rel_err={rel:.2e} {status}  "
                f"{ms * 1e3:8.1f} us (fp16 F.linear {base * 1e3:8.1f} us)"
            )
    rows += check_fp8()
    return rows


def check_fp8() -> list[str]:
    from pagedllm.layers.linear import ReplicatedLinear
    from pagedllm.layers.quantization import set_current_quant_config
    from pagedllm.layers.quantization.fp8 import Fp8Config

    rows = []
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"), set_current_quant_config(Fp8Config.from_config({})):
        layer = ReplicatedLinear(K, N, bias=False)
    torch.set_default_dtype(torch.float32)
    layer.weight.data.copy_(torch.randn(N, K, device="cuda") / 64)
    layer.quant_method.process_weights_after_loading(layer)
    w = (layer.weight.float() * layer.weight_scale.reshape(-1, 1)).bfloat16()
    assert layer.use_scaled_mm, "torch._scaled_mm path not taken (needs compute capability 8.9+)"
    for m in (1, 8, 64, 512):
        x = torch.randn(m, K, device="cuda").bfloat16()
        out = layer(x)
        ref = F.linear(x.float(), w.float())
        rel = float((out.float() - ref).norm() / ref.norm())  # activations quantized too
        ms = _time(lambda x=x: layer(x))
        base = _time(lambda x=x: F.linear(x, w))
        status = "ok" if rel < 5e-2 else "FAIL"
        rows.append(
            f"fp8 dynamic M={m:<4d} rel_err={rel:.2e} {status}  {ms * 1e3:8.1f} us "
            f"(bf16 F.linear {base * 1e3:8.1f} us)"
        )
    return rows


def _bench(module: str, extra: list[str], timeout: int = 200) -> dict[str, object]:
    out = os.path.join(tempfile.mkdtemp(), "result.json")
    cmd = [sys.executable, "-m", f"pagedllm.benchmarks.{module}", *extra, "--output-json", out]
    try:
        proc = subprocess.run(cmd, timeout=timeout, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout}s"}
    if proc.returncode != 0:
        return {"error": proc.stderr[-1500:]}
    with open(out) as f:
        data = json.load(f)
    return data[0] if isinstance(data, list) else data


def run_benchmarks() -> list[str]:
    rows = []
    for q in ("awq", "fp8"):
        r = _bench("latency", ["--quantization", q])
        rows.append(f"L1 {q:4s}: {r.get('tokens_per_s', r)} tok/s   (vLLM: awq 254.3, fp8 284.0)")
    r = _bench("throughput", ["--workload", "T2", "--quantization", "fp8"], timeout=260)
    tput = r.get("output_tokens_per_s", r.get("output_throughput", r))
    rows.append(f"T2 fp8 : {tput} output tok/s   (vLLM: 11,965)")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-bench", action="store_true")
    parser.add_argument("--skip-kernels", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = [] if args.skip_kernels else check_kernels()
    if not args.skip_bench:
        rows += run_benchmarks()
    print("\n".join(rows))  # noqa: T201 (a script's report)


if __name__ == "__main__":
    main()
