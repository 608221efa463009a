"""Host->device copies: one copy for all the small index arrays of a step
(`pack_to_device`), and one host tensor at a time (`tensor_to_device`).

Each `pin_memory().to(device, non_blocking=True)` costs a pinned allocation and a
copy launch (tens of microseconds of host time). A step has seven such arrays, so
they are laid out in one pinned byte buffer and copied at once; the device tensors
are views into the one device buffer:

    pinned bytes:  | qsl (int32) |pad| seq_lens |pad| block table | ... | positions |
                   ^ every array starts on a 16-byte boundary (so .view(dtype) is legal)

The pinned buffer comes from torch's caching host allocator, which does not reuse a
block before the copies that read it have finished.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

_ALIGN = 16
_TORCH_DTYPES = {
    np.dtype(np.int32): torch.int32,
    np.dtype(np.int64): torch.int64,
    np.dtype(np.float32): torch.float32,
}


def pack_to_device(arrays: Sequence[np.ndarray], device: torch.device) -> list[torch.Tensor]:
    """The arrays as tensors on `device` (on the CPU: the arrays themselves, shared)."""
    if device.type == "cpu":
        return [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
    offsets, total = _layout(arrays)
    pinned = torch.empty(total, dtype=torch.uint8, pin_memory=True)
    host = pinned.numpy()
    for array, offset in zip(arrays, offsets):
        host[offset : offset + array.nbytes] = (
            np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        )
    on_device = pinned.to(device, non_blocking=True)
    return [
        on_device[offset : offset + array.nbytes].view(_TORCH_DTYPES[array.dtype]).view(array.shape)
        for array, offset in zip(arrays, offsets)
    ]


def tensor_to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device`: on the CPU the tensor itself, towards a GPU pinned and
    copied without blocking (the host may reuse `tensor` at once)."""
    if device.type == "cpu":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


def _layout(arrays: Sequence[np.ndarray]) -> tuple[list[int], int]:
    offsets: list[int] = []
    total = 0
    for array in arrays:
        if array.dtype not in _TORCH_DTYPES:
            raise TypeError(f"pack_to_device: unsupported dtype {array.dtype}")
        offsets.append(total)
        total += -(-array.nbytes // _ALIGN) * _ALIGN
    return offsets, max(total, _ALIGN)
