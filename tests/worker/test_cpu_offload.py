"""The layer offloader with CPU "device" buffers: which weights each layer uses."""

from __future__ import annotations

import torch
from torch import nn

from pagedllm.worker.cpu_offload import CpuOffloader, decoder_layers


class Stack(nn.Module):
    def __init__(self, n: int = 5, width: int = 16) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(width, width)
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return x


def test_offloads_leading_layers_and_gives_the_same_outputs() -> None:
    model = Stack()
    x = torch.randn(3, 16)
    expected = model(x)
    layer_bytes = 16 * 17 * 4
    off = CpuOffloader.apply(model, 2 * layer_bytes + 1, torch.device("cpu"))
    assert off.layers == decoder_layers(model)[:3]
    for _ in range(3):  # steps after the first reuse the prefetched buffers
        assert torch.equal(model(x), expected)


def test_layers_use_the_host_copies_not_stale_weights() -> None:
    model = Stack()
    x = torch.randn(3, 16)
    off = CpuOffloader.apply(model, 1 << 30, torch.device("cpu"))  # every layer
    assert len(off.layers) == 5
    model(x)
    off.cpu_params[1][0].mul_(2.0)  # layer 1's weight, at home on the host
    reference = Stack()
    with torch.no_grad():
        reference.layers[1].weight.mul_(2.0)
    assert torch.equal(model(x), reference(x))


def test_one_offloaded_layer_alternates_buffers() -> None:
    model = Stack(n=2)
    x = torch.randn(2, 16)
    expected = model(x)
    off = CpuOffloader.apply(model, 1, torch.device("cpu"))
    assert len(off.layers) == 1
    ptrs = set()
    for _ in range(3):
        assert torch.equal(model(x), expected)
        ptrs.add(model.layers[0].weight.data_ptr())
    assert len(ptrs) == 2
