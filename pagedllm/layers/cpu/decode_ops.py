"""Fused float32 CPU ops for decoding (decode_ops.cpp): RMSNorm with the residual add,
neox rotary in place, SiLU-and-mul, and one-token-per-sequence attention over the paged
KV cache with the cache write. At one chat at a time a decode step of a small model is
mostly ~25 torch ops per layer around the matrix products, each costing more in dispatch
and allocation than in arithmetic; these are one call each.

Built once per machine with torch's C++ extension builder, like the GGUF kernel
(quantization/gguf_kernels.py). `PAGEDLLM_CPU_DECODE_OPS=0` turns them off (the torch
ops run instead); without AVX2 or a compiler they are off.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

import torch

from pagedllm.layers.quantization.gguf_kernels import _supported_cpu

logger = logging.getLogger(__name__)

SOURCE = os.path.join(os.path.dirname(__file__), "decode_ops.cpp")
# No contraction into FMA: the rotary then rounds as the torch ops do (bit for bit).
# -fopenmp: at::parallel_for runs on torch's threads only when compiled with it.
FLAGS = ["-O3", "-mavx2", "-mfma", "-ffp-contract=off", "-fopenmp"]


@functools.lru_cache(maxsize=1)
def decode_ops() -> Any | None:
    """The compiled module, or None (logged once) where it cannot be had."""
    if os.environ.get("PAGEDLLM_CPU_DECODE_OPS", "1") == "0" or not _supported_cpu():
        return None
    try:
        from pagedllm.layers.cpu.extension import load_extension

        return load_extension("pagedllm_cpu_decode_ops", [SOURCE], FLAGS)
    except Exception as exc:  # no compiler, missing headers, ...
        logger.warning("cannot build the CPU decode ops (%s); using torch ops", exc)
        return None


def usable(x: torch.Tensor) -> Any | None:
    """The module if x (float32, CPU, 2-D rows of unit stride) can go through it."""
    if x.is_cpu and x.dtype == torch.float32 and x.dim() == 2 and x.stride(-1) == 1:
        return decode_ops()
    return None
