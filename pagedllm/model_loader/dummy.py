"""Random weights of the real shapes (load_format="dummy"), made on the target device."""

from __future__ import annotations

import torch
from torch import nn

# Small enough that activations stay finite in bf16 through dozens of layers.
_LOW, _HIGH = -1e-3, 1e-3


@torch.no_grad()
def initialize_dummy_weights(model: nn.Module, seed: int = 0) -> None:
    """Fill every floating-point parameter in place, uniform in [-1e-3, 1e-3] (or the
    parameter's `dummy_range`); integer (packed) parameters get random bits.
    Norm weights get 1 + that noise so that normalized activations keep their scale."""
    for name, param in model.named_parameters():
        generator = torch.Generator(device=param.device)
        generator.manual_seed(seed + _stable_hash(name))
        if not torch.is_floating_point(param):
            _fill_integer(param, generator)
            continue
        # Uniform sampling in half precision is coarse; draw in float32 and cast.
        values = torch.empty(param.shape, dtype=torch.float32, device=param.device)
        low, high = getattr(param, "dummy_range", (_LOW, _HIGH))
        values.uniform_(low, high, generator=generator)
        if _is_norm_weight(name, param):
            values += 1.0
        param.copy_(values)
        del values


def _fill_integer(param: torch.Tensor, generator: torch.Generator) -> None:
    """Packed quantized weights: random bits are valid codes. A parameter with a
    `dummy_fill(param, generator)` attribute (e.g. GPTQ's g_idx) fills itself."""
    fill = getattr(param, "dummy_fill", None)
    if fill is not None:
        fill(param, generator)
        return
    info = torch.iinfo(param.dtype)
    param.copy_(
        torch.randint(info.min, info.max, param.shape, generator=generator, device=param.device).to(
            param.dtype
        )
    )


def _is_norm_weight(name: str, param: torch.Tensor) -> bool:
    parts = name.lower().split(".")
    if param.dim() != 1 or parts[-1] != "weight" or len(parts) < 2:
        return False
    module = parts[-2]
    return "norm" in module or module.startswith("ln")


def _stable_hash(name: str) -> int:
    value = 0
    for char in name.encode():
        value = (value * 131 + char) % (2**31)
    return value
