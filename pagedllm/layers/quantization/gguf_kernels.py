"""y = x W^T with W a PackedGGUF, on the CPU.

The fast path is gguf_cpu_kernel.cpp (x86 AVX2, llama.cpp's scheme: x quantized per
32 columns to int8, integer dot products with the packed weight; from 3 rows of x
gguf_cpu_panel.cpp, the same numerics with each weight block unpacked once), built once per
machine with torch's C++ extension builder and cached by torch
($TORCH_EXTENSIONS_DIR, default ~/.cache/torch_extensions). Torch's own int4 CPU op
(`_weight_int4pack_mm_for_cpu`) was measured slower than float32 oneDNN on this AVX2
machine (docs/benchmarks.md), so it is not used. Where the extension cannot be
built (no compiler, no AVX2, not x86) or for other dtypes/devices, the weight is
dequantized for the call and multiplied in float (`reference_linear`: slow, exact).
`PAGEDLLM_GGUF_KERNEL=reference` forces that path.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import zlib
from typing import Any

import torch
import torch.nn.functional as F

from pagedllm.layers.quantization.gguf_repack import PackedGGUF, dequantize

logger = logging.getLogger(__name__)

_HERE = os.path.dirname(__file__)
SOURCES = [os.path.join(_HERE, f) for f in ("gguf_cpu_kernel.cpp", "gguf_cpu_panel.cpp")]
HEADER = os.path.join(_HERE, "gguf_cpu_common.h")
# No FMA contraction of scalar code: the CPU decode stack (layers/cpu/decode_stack.py)
# compiles these sources again beside decode_ops.cpp, which needs it, and must round
# as this build does (its hidden states equal the Python layers' bit for bit).
# -fopenmp: without it at::parallel_for's pragma is ignored and the kernel runs on one
# thread (torch's extension builder does not add it).
FLAGS = ["-O3", "-mavx2", "-mfma", "-mf16c", "-ffp-contract=off", "-fopenmp"]


def header_flag() -> str:
    """The header's hash as a flag. Across processes ninja's dependency files already
    rebuild after a header change, but a process that loaded the module once gets it
    back from torch unrebuilt (and the loader would then stamp the stale build as
    current); a changed flag makes torch rebuild there too."""
    with open(HEADER, "rb") as f:
        return f"-DPAGEDLLM_GGUF_HEADER={zlib.crc32(f.read())}"


def _supported_cpu() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


@functools.lru_cache(maxsize=1)
def cpu_extension() -> Any | None:
    """The compiled kernel module, or None (logged once) where it cannot be had."""
    if os.environ.get("PAGEDLLM_GGUF_KERNEL", "") == "reference":
        return None
    if not _supported_cpu():
        logger.warning("no AVX2 CPU: GGUF weights are dequantized per call (slow)")
        return None
    try:
        from pagedllm.layers.cpu.extension import load_extension

        return load_extension("pagedllm_gguf_cpu", SOURCES, [*FLAGS, header_flag()], [HEADER])
    except Exception as exc:  # no compiler, missing headers, ...
        logger.warning("cannot build the GGUF CPU kernel (%s); dequantizing per call", exc)
        return None


def reference_linear(
    x: torch.Tensor, weight: PackedGGUF, bias: torch.Tensor | None = None
) -> torch.Tensor:
    w = dequantize(weight).to(device=x.device, dtype=x.dtype)
    return F.linear(x, w, bias)


def gguf_linear(
    x: torch.Tensor, weight: PackedGGUF, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x [.., K] -> [.., N] through the packed kernel where it applies."""
    ext = cpu_extension() if x.is_cpu else None
    if ext is None or x.dtype != torch.float32 or x.numel() == 0:
        return reference_linear(x, weight, bias)
    # Batch-1 decode spends a few microseconds per torch call: 2-D x (what the model
    # passes) is not reshaped.
    flat = x.dim() == 2
    x2 = x if flat else x.reshape(-1, x.shape[-1])
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    mins = weight.mins if weight.mins is not None else _EMPTY
    y = ext.gguf_linear(x2, weight.qweight, weight.scales, mins, weight.bits, weight.group)
    if bias is not None:
        y += bias
    return y if flat else y.reshape(*x.shape[:-1], y.shape[-1])


# Every row count runs the packed kernels (x quantized to int8 per 32 values), never a
# dequantized weight and a float GEMM: a row's result is then the same bits whatever
# the batch it is computed in (the tiles of 1-2 rows and the panels of 3+ sum in one
# order), so greedy tokens do not depend on what else runs. Dequantizing from 512 rows
# would make those GEMMs up to ~30% faster (2 threads, SmolLM2's shapes, one of them
# 4% slower; the panel is faster at 128).
_EMPTY = torch.empty(0, dtype=torch.float16)
