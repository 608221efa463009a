"""cpu_offload_gb: the weights of the first decoder layers live in pinned CPU memory
and are streamed to the device layer by layer.

Two device staging buffers, each the size of the largest offloaded layer. A
forward pre-hook on each offloaded layer waits for its weights' copy (an event),
points the layer's parameters at the staging buffer holding them, and starts the
copy of the next offloaded layer into the other buffer on a side stream, after the
work already queued (the layer that last used that buffer) is done. So the copy of
layer i+1 overlaps the compute of layer i, and a step runs at the speed of the
PCIe link when the copies are the longer part. The parameters' addresses change
from step to step: CUDA graphs are off with offloading (model_runner.py).

The model is loaded on the device first and then offloaded (the freed memory goes
to the KV cache): loading a model larger than the device straight to the CPU is
the model loader's part, not done yet. Elsewhere than CUDA the same code runs with
plain copies (tests); the engine ignores the flag on the CPU device.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)

_ALIGN = 256


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The model's longest nn.ModuleList (its decoder layers)."""
    best: list[nn.Module] = []
    for m in model.modules():
        if isinstance(m, nn.ModuleList) and len(m) > len(best):
            best = list(m)
    return best


def _param_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


class CpuOffloader:
    def __init__(self, layers: list[nn.Module], device: torch.device) -> None:
        self.layers = layers
        self.device = device
        self.params = [list(layer.parameters()) for layer in layers]
        self.on_cuda = device.type == "cuda"
        # The weights' home: pinned CPU copies; the device copies are dropped.
        self.cpu_params = [[self._to_host(p) for p in ps] for ps in self.params]
        size = max(self._layout(k)[1] for k in range(len(layers)))
        self.buffers = [torch.empty(size, dtype=torch.uint8, device=device) for _ in range(2)]
        self.views = [[self._views(buf, k) for k in range(len(layers))] for buf in self.buffers]
        self.stream = torch.cuda.Stream(device) if self.on_cuda else None
        self.pending: dict[int, tuple[int, torch.cuda.Event | None]] = {}  # layer -> slot, done
        for k, layer in enumerate(layers):
            layer.register_forward_pre_hook(self._make_hook(k))
        self._fetch(0, 0)

    @classmethod
    def apply(cls, model: nn.Module, offload_bytes: int, device: torch.device) -> CpuOffloader:
        """Offload whole layers from the first until `offload_bytes` are covered."""
        chosen, total = [], 0
        for layer in decoder_layers(model):
            if total >= offload_bytes:
                break
            size = _param_bytes(layer)
            if size:
                chosen.append(layer)
                total += size
        if not chosen:
            raise ValueError("cpu_offload_gb: the model has no decoder layers to offload")
        offloader = cls(chosen, device)
        logger.info(
            "cpu_offload_gb: %d layers (%.2f GiB of weights) in pinned CPU memory, streamed "
            "through 2 x %.0f MiB device buffers; CUDA graphs off",
            len(chosen),
            total / (1 << 30),
            offloader.buffers[0].numel() / (1 << 20),
        )
        return offloader

    def _to_host(self, param: nn.Parameter) -> torch.Tensor:
        host = param.data.to("cpu", copy=True)
        if self.on_cuda:
            host = host.pin_memory()
        param.data = host  # until the first fetch points it at a staging buffer
        return host

    def _layout(self, k: int) -> tuple[list[int], int]:
        offsets, total = [], 0
        for p in self.cpu_params[k]:
            offsets.append(total)
            total += -(-p.numel() * p.element_size() // _ALIGN) * _ALIGN
        return offsets, total

    def _views(self, buf: torch.Tensor, k: int) -> list[torch.Tensor]:
        offsets, _ = self._layout(k)
        out = []
        for p, off in zip(self.cpu_params[k], offsets):
            nbytes = p.numel() * p.element_size()
            out.append(buf[off : off + nbytes].view(p.dtype).view(p.shape))
        return out

    def _make_hook(self, k: int):  # type: ignore[no-untyped-def]
        def hook(module: nn.Module, args: object) -> None:
            self._before(k)

        return hook

    def _before(self, k: int) -> None:
        if k not in self.pending:  # not the one prefetched: take its buffer
            stale_slot = self.pending.popitem()[1][0] if self.pending else 0
            self._fetch(k, stale_slot)
        slot, done = self.pending.pop(k)
        if done is not None:
            torch.cuda.current_stream(self.device).wait_event(done)
        for param, view in zip(self.params[k], self.views[slot][k]):
            param.data = view
        self._fetch((k + 1) % len(self.layers), 1 - slot)

    def _fetch(self, k: int, slot: int) -> None:
        """Copy layer k's weights into buffer `slot`, after the work queued so far."""
        if self.stream is None:
            for view, host in zip(self.views[slot][k], self.cpu_params[k]):
                view.copy_(host)
            self.pending[k] = (slot, None)
            return
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            for view, host in zip(self.views[slot][k], self.cpu_params[k]):
                view.copy_(host, non_blocking=True)
        done = torch.cuda.Event()
        done.record(self.stream)
        self.pending[k] = (slot, done)
