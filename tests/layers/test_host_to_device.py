"""pack_to_device: the arrays of a step in one copy; each comes back equal, with its
dtype and shape (also empty ones and odd byte counts that need padding). tensor_to_device:
one host tensor (itself on the CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pagedllm.layers.host_to_device import pack_to_device, tensor_to_device


def _arrays() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [
        rng.integers(0, 1000, 7).astype(np.int32),  # 28 bytes: padded to 32
        rng.integers(-5, 5, (3, 5)).astype(np.int32),
        np.empty(0, dtype=np.int64),
        rng.integers(0, 2**40, 9).astype(np.int64),
        rng.random(3).astype(np.float32),
        np.arange(12, dtype=np.int64).reshape(3, 4)[:, ::2],  # not contiguous
    ]


def _check(tensors: list[torch.Tensor], arrays: list[np.ndarray]) -> None:
    for tensor, array in zip(tensors, arrays):
        assert tuple(tensor.shape) == array.shape
        assert tensor.dtype == torch.from_numpy(np.ascontiguousarray(array)).dtype
        assert np.array_equal(tensor.cpu().numpy(), array)


def test_cpu_returns_the_arrays() -> None:
    arrays = _arrays()
    _check(pack_to_device(arrays, torch.device("cpu")), arrays)


def test_unsupported_dtype_is_refused_on_the_device_path() -> None:
    with pytest.raises(TypeError, match="unsupported dtype"):
        from pagedllm.layers.host_to_device import _layout

        _layout([np.zeros(3, dtype=np.float16)])


@pytest.mark.gpu
def test_cuda_views_of_one_copy() -> None:
    arrays = _arrays()
    tensors = pack_to_device(arrays, torch.device("cuda"))
    torch.cuda.synchronize()
    _check(tensors, arrays)
    storages = {t.untyped_storage().data_ptr() for t in tensors if t.numel()}
    assert len(storages) == 1  # all of them views of the one device buffer


def test_tensor_to_device_on_cpu_is_the_tensor() -> None:
    tensor = torch.arange(5, dtype=torch.int64)
    assert tensor_to_device(tensor, torch.device("cpu")) is tensor


@pytest.mark.gpu
def test_tensor_to_device_cuda_copy() -> None:
    tensor = torch.arange(5, dtype=torch.int64)
    on_device = tensor_to_device(tensor, torch.device("cuda"))
    torch.cuda.synchronize()
    assert on_device.is_cuda and torch.equal(on_device.cpu(), tensor)
