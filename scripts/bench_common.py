"""What the GPU micro-benchmark scripts share: one table row per measurement, the
timer (median of triton.testing.do_bench), random bf16 inputs, the device-copy
ceiling and the markdown table."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import triton

PEAK_BYTES_PER_S = 4.3e12
DTYPE = torch.bfloat16
Fn = Callable[[], object]
HEADER = ["kernel", "shape", "triton ms", "torch ms", "sdpa ms", "GB/s", "of 4.3TB/s", "TFLOP/s"]


@dataclass
class Row:
    kernel: str
    shape: str
    triton_ms: float
    torch_ms: float | None = None
    sdpa_ms: float | None = None
    bytes_moved: float = 0.0
    flops: float = 0.0

    def cells(self) -> list[str]:
        gbs = self.bytes_moved / self.triton_ms / 1e6 if self.bytes_moved else None
        tflops = self.flops / self.triton_ms / 1e9 if self.flops else None
        return [
            self.kernel,
            self.shape,
            f"{self.triton_ms:.4f}",
            _fmt(self.torch_ms),
            _fmt(self.sdpa_ms),
            "" if gbs is None else f"{gbs:,.0f}",
            "" if gbs is None else f"{100 * gbs * 1e9 / PEAK_BYTES_PER_S:.0f}%",
            "" if tflops is None else f"{tflops:.0f}",
        ]


def _fmt(ms: float | None) -> str:
    return "" if ms is None else f"{ms:.4f}"


def bench(fn: Fn, rep: int = 200) -> float:
    return float(triton.testing.do_bench(fn, warmup=25, rep=rep, return_mode="median"))


def rand(*shape: int, dtype: torch.dtype = DTYPE) -> torch.Tensor:
    return torch.randn(*shape, device="cuda", dtype=dtype)


def copy_bandwidth_row() -> Row:
    src = torch.empty(2 * 1024**3, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return Row(
        "device copy (ceiling)", "2 GiB", bench(lambda: dst.copy_(src)), bytes_moved=2 * src.numel()
    )


def markdown(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    return "\n".join(lines)
