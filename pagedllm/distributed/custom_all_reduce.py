"""The custom all-reduce of tensor-parallel groups on one host: small and medium
messages (decode steps) summed through buffers that every rank maps, one kernel
launch and no NCCL; larger ones are left to NCCL (`should_custom_ar` says which).

Each rank allocates three buffers and maps its peers' (`SharedBuffer`):
staging (two halves of `max_size` bytes: the inputs), results (`max_size` bytes:
two-shot's reduced slices) and signals (one int64 flag per program and rank). A
fourth, the per-program call counter, stays private. The kernels and why their
barriers are safe are in `triton_custom_all_reduce.py`; the launch captures into
CUDA graphs, since every address is fixed and the counters live on the device.

On GPUs the buffers are CUDA IPC mappings (`torch`'s own handles, as
torch.multiprocessing shares CUDA tensors); on the CPU they are files under
/dev/shm that every rank maps, which runs the same kernels under Triton's
interpreter in tests.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import uuid
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

DEFAULT_MAX_SIZE = 8 * 1024 * 1024
# One-shot reads every rank's whole message; two-shot reads 1/world of it twice
# but waits at two barriers. Below these sizes (bytes) one-shot is faster.
_ONE_SHOT_MAX = {2: DEFAULT_MAX_SIZE, 4: 512 * 1024}
_ONE_SHOT_MAX_DEFAULT = 256 * 1024
SUPPORTED_WORLD_SIZES = (2, 4, 6, 8)
DEFAULT_NUM_PROGRAMS = 36


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value is None else int(value)


@dataclass
class SharedBuffer:
    """One rank's buffer and every rank's copy of it as mapped in this process."""

    local: torch.Tensor
    peers: list[torch.Tensor]  # peers[rank] is `local`
    _keep: list[Any]  # mappings that must outlive the addresses

    def address_table(self) -> torch.Tensor:
        addresses = [t.data_ptr() for t in self.peers]
        return torch.tensor(addresses, dtype=torch.int64, device=self.local.device)


def _share(local: torch.Tensor, group: dist.ProcessGroup, rank: int) -> SharedBuffer:
    """Map every rank's `local` (same size on each) into this process."""
    if local.device.type == "cuda":
        handle: Any = local.untyped_storage()._share_cuda_()
        offset = local.storage_offset() * local.element_size()
    else:
        handle, offset = local._pagedllm_path, 0  # type: ignore[attr-defined]
    gathered: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, (handle, offset), group=group)
    peers, keep = [], []
    for p, (peer_handle, peer_offset) in enumerate(gathered):
        if p == rank:
            peers.append(local)
            continue
        mapped = _open(peer_handle, local)
        keep.append(mapped)
        flat = torch.empty(0, dtype=local.dtype, device=local.device)
        flat.set_(mapped, peer_offset // local.element_size(), local.shape, local.stride())
        peers.append(flat)
    return SharedBuffer(local, peers, keep)


def _open(handle: Any, like: torch.Tensor) -> torch.UntypedStorage:
    if like.device.type == "cuda":
        return torch.UntypedStorage._new_shared_cuda(*handle)  # type: ignore[attr-defined]
    nbytes = like.numel() * like.element_size()
    return torch.from_file(handle, shared=True, size=nbytes, dtype=torch.uint8).untyped_storage()


def _allocate(numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Zeroed memory another process can map: a CUDA allocation, or a /dev/shm file."""
    if device.type == "cuda":
        return torch.zeros(numel, dtype=dtype, device=device)
    directory = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    path = os.path.join(directory, f"pagedllm_car_{uuid.uuid4().hex}")
    nbytes = numel * torch.empty(0, dtype=dtype).element_size()
    t = torch.from_file(path, shared=True, size=nbytes, dtype=torch.uint8).view(dtype)
    t.zero_()
    t._pagedllm_path = path  # type: ignore[attr-defined]
    return t


class CustomAllreduce:
    """Sums tensors over `group` (every rank of it on this host) with
    `triton_custom_all_reduce`'s kernels. Every rank must build it, and call
    `all_reduce` with the same shapes in the same order, as for NCCL."""

    def __init__(
        self,
        group: dist.ProcessGroup,
        device: torch.device,
        max_size: int = DEFAULT_MAX_SIZE,
        num_programs: int = DEFAULT_NUM_PROGRAMS,
    ) -> None:
        self.group = group
        self.world_size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.device = device
        self.max_size = _env_int("PAGEDLLM_CUSTOM_AR_MAX_BYTES", max_size)
        default_one_shot = _ONE_SHOT_MAX.get(self.world_size, _ONE_SHOT_MAX_DEFAULT)
        self.one_shot_max = _env_int("PAGEDLLM_CUSTOM_AR_ONE_SHOT_MAX", default_one_shot)
        buffers = self._map_buffers(num_programs)
        self._buffers = buffers
        staging, signals, results = (b.address_table() for b in buffers)
        self.tables = (staging, signals, results)  # the order launch_all_reduce takes
        self.counter = torch.zeros(num_programs, dtype=torch.int64, device=device)
        self._unlink_files(buffers)  # its barrier: every rank has mapped every buffer

    def _map_buffers(self, num_programs: int) -> list[SharedBuffer]:
        sizes = [
            (2 * self.max_size, torch.uint8),  # staging, two halves
            (num_programs * self.world_size, torch.int64),  # signals
            (self.max_size, torch.uint8),  # results
        ]
        buffers = []
        for numel, dtype in sizes:
            local = _allocate(numel, dtype, self.device)
            buffers.append(_share(local, self.group, self.rank))
        return buffers

    def _unlink_files(self, buffers: list[SharedBuffer]) -> None:
        """CPU buffers: every rank has mapped the files once all passed `_share`."""
        dist.barrier(self.group)
        for b in buffers:
            path = getattr(b.local, "_pagedllm_path", None)
            if path is not None and os.path.exists(path):
                os.unlink(path)

    def should_custom_ar(self, x: torch.Tensor) -> bool:
        nbytes = x.numel() * x.element_size()
        return (
            x.device == self.device
            and x.dtype in (torch.float16, torch.bfloat16, torch.float32)
            and x.is_contiguous()
            and 0 < nbytes <= self.max_size
        )

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """The sum over the group, in a new tensor (`x` is left as it was)."""
        from pagedllm.distributed.triton_custom_all_reduce import launch_all_reduce

        out = torch.empty_like(x)
        half = self.max_size // x.element_size()
        two_shot = x.numel() * x.element_size() > self.one_shot_max
        launch_all_reduce(x, out, self.tables, self.counter, self.rank, half, two_shot)
        return out


def custom_all_reduce_unavailable(group: dist.ProcessGroup, device: torch.device) -> str | None:
    """Why this group cannot use the custom all-reduce (None: it can). Collective:
    every rank of `group` must call it."""
    world = dist.get_world_size(group)
    hosts: list[Any] = [None] * world
    dist.all_gather_object(hosts, (socket.gethostname(), device.index), group=group)
    if world not in SUPPORTED_WORLD_SIZES:
        return f"tensor-parallel size {world} is not one of {SUPPORTED_WORLD_SIZES}"
    if len({h for h, _ in hosts}) > 1:
        return "the tensor-parallel group spans several hosts"
    if device.type != "cuda":
        return "the devices are not GPUs"
    others = [i for _, i in hosts if i != device.index]
    if not all(torch.cuda.can_device_access_peer(device.index, i) for i in others):
        return "some GPUs of the group cannot reach each other's memory (no P2P)"
    return None
