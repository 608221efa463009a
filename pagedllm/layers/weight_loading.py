"""Weight loaders' building blocks: copy this rank's shard of a full checkpoint tensor
into a parameter, along the dims the parameter names (see
layers/quantization/base_config.py for the attributes)."""

from __future__ import annotations

from typing import Any

import torch


def default_weight_loader(param: torch.Tensor, loaded_weight: torch.Tensor) -> None:
    """Copy a whole (unsharded) tensor into `param`, checking the shape."""
    if loaded_weight.numel() == 1 and param.numel() == 1:
        loaded_weight = loaded_weight.reshape(param.shape)  # scalars saved as [] or [1]
    if param.shape != loaded_weight.shape:
        raise ValueError(
            f"weight shape {tuple(loaded_weight.shape)} does not match the parameter "
            f"shape {tuple(param.shape)}"
        )
    with torch.no_grad():
        param.copy_(loaded_weight)


def copy_shard(param: torch.Tensor, loaded: torch.Tensor, dim: int, start: int) -> None:
    shard = loaded.narrow(dim, start, param.shape[dim]) if loaded.dim() > dim else loaded
    default_weight_loader(param, shard)


def packed_size(param: torch.Tensor, dim: int, value: int) -> int:
    """`value` counted in unpacked entries -> entries of `param` along `dim`."""
    if getattr(param, "packed_dim", None) == dim:
        return value // int(param.packed_factor)  # type: ignore[attr-defined]
    return value


def load_part(
    param: torch.Tensor, loaded: torch.Tensor, offset: int, size: int, start: int
) -> None:
    """Copy loaded[start:start+size] (unpacked units, along the output dim) into
    param[offset:offset+size]; per-channel loaded tensors of numel 1 broadcast."""
    dim = int(param.output_dim)  # type: ignore[attr-defined]
    offset, size, start = (packed_size(param, dim, v) for v in (offset, size, start))
    target = param.data.narrow(dim, offset, size)
    if loaded.numel() == 1 and getattr(param, "broadcast_scalar", False):
        target.fill_(loaded.reshape(()).item())  # per-tensor scale, per-channel param
        return
    default_weight_loader(target, loaded.narrow(dim, start, size))


def load_whole(param: torch.Tensor, loaded: torch.Tensor) -> None:
    """An unsharded parameter (replicated layers; row-parallel params without input_dim)."""
    if getattr(param, "shard_indexed", False):
        load_shard_indexed(param, loaded, 0)
    elif loaded.numel() == 1 and getattr(param, "broadcast_scalar", False):
        param.data.fill_(loaded.reshape(()).item())
    else:
        default_weight_loader(param, loaded)


def load_shard_indexed(param: torch.Tensor, loaded: torch.Tensor, index: int) -> None:
    with torch.no_grad():
        param.data[index] = loaded.reshape(()).to(param.dtype)


def load_fused(
    load: Any, param: torch.Tensor, loaded: torch.Tensor, parts: list[tuple[Any, int]]
) -> None:
    """Split a checkpoint tensor that fuses `parts` [(shard_id, full size)] along the
    output dim and load each part as its own shard."""
    dim = getattr(param, "output_dim", None)
    if dim is None or loaded.numel() == 1:
        for shard_id, _ in parts:
            load(param, loaded, shard_id)
        return
    offset = 0
    for shard_id, size in parts:
        start, width = packed_size(param, dim, offset), packed_size(param, dim, size)
        load(param, loaded.narrow(dim, start, width), shard_id)
        offset += size
