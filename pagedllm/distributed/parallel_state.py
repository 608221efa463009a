"""Tensor- and pipeline-parallel process groups and the collectives layers use.

Ranks are laid out tensor-parallel first: global rank r is tensor-parallel rank
`r % tp_size` of pipeline stage `r // tp_size`.

    pp stage 0: ranks [0, tp)        pp stage 1: ranks [tp, 2 tp)   ...
    tp group of stage s: [s*tp, (s+1)*tp)     pp group of tp rank t: [t, t+tp, t+2tp, ...]

Activations flow between stages inside one pp group: rank r sends to r + tp and
receives from r - tp (each tp rank holds a full copy of the activations).

Before `initialize_model_parallel` (or with world size 1) every collective is the
identity and every rank query answers "the only rank", so single-process code never
touches torch.distributed.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from pagedllm.distributed.custom_all_reduce import CustomAllreduce

logger = logging.getLogger(__name__)

# Collectives that wait longer than this raise instead of hanging forever (a peer
# that died mid-step). Long enough for the slowest first step (Triton compiles).
DEFAULT_TIMEOUT = datetime.timedelta(seconds=float(os.environ.get("PAGEDLLM_DIST_TIMEOUT_S", 600)))


@dataclass
class _ParallelState:
    tp_size: int = 1
    tp_rank: int = 0
    pp_size: int = 1
    pp_rank: int = 0
    rank: int = 0  # global rank
    tp_group: dist.ProcessGroup | None = None
    pp_group: dist.ProcessGroup | None = None
    custom_ar: CustomAllreduce | None = None  # small tp all-reduces on one host's GPUs


# Set once per process by initialize_model_parallel; read by layers at build time.
_STATE = _ParallelState()


def disable_nvlink_multicast() -> None:
    """NVLink multicast (NVLS) must stay off on the GPU machines; NCCL reads this at init."""
    os.environ["NCCL_NVLS_ENABLE"] = "0"


def default_backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def init_distributed_environment(
    world_size: int,
    rank: int,
    init_method: str,
    backend: str = "gloo",
    timeout: datetime.timedelta = DEFAULT_TIMEOUT,
) -> None:
    """Join the default process group (every rank calls this once, same arguments
    but `rank`). `init_method` is e.g. "tcp://127.0.0.1:29500"."""
    disable_nvlink_multicast()
    if dist.is_initialized():
        if dist.get_world_size() != world_size or dist.get_rank() != rank:
            raise RuntimeError(
                f"torch.distributed is already initialized as rank {dist.get_rank()} of "
                f"{dist.get_world_size()}, not rank {rank} of {world_size}"
            )
        return
    dist.init_process_group(
        backend=backend,
        init_method=init_method,
        world_size=world_size,
        rank=rank,
        timeout=timeout,
    )
    logger.debug("rank %d of %d joined the %s process group", rank, world_size, backend)


def initialize_model_parallel(
    tp_size: int,
    pp_size: int = 1,
    backend: str | None = None,
    custom_all_reduce: bool = False,
) -> None:
    """Create the tensor/pipeline groups. torch.distributed must be initialized
    already when tp_size * pp_size > 1 (every rank calls this with the same sizes).
    `custom_all_reduce`: sum small tensor-parallel messages with `CustomAllreduce`
    where the group's GPUs allow it (NCCL otherwise, and for large messages)."""
    global _STATE
    world = tp_size * pp_size
    if world == 1:
        _STATE = _ParallelState()
        return
    if not dist.is_initialized():
        raise RuntimeError("initialize_model_parallel needs torch.distributed to be initialized")
    if dist.get_world_size() != world:
        raise ValueError(
            f"tensor_parallel_size * pipeline_parallel_size = {world} but the "
            f"torch.distributed world size is {dist.get_world_size()}"
        )
    rank = dist.get_rank()
    state = _ParallelState(tp_size, rank % tp_size, pp_size, rank // tp_size, rank)
    # new_group must be called by every rank for every group, in the same order.
    for stage in range(pp_size):
        ranks = list(range(stage * tp_size, (stage + 1) * tp_size))
        group = dist.new_group(ranks, backend=backend, timeout=DEFAULT_TIMEOUT)
        if rank in ranks:
            state.tp_group = group
    for tp_rank in range(tp_size):
        ranks = list(range(tp_rank, world, tp_size))
        group = dist.new_group(ranks, backend=backend, timeout=DEFAULT_TIMEOUT)
        if rank in ranks:
            state.pp_group = group
    if custom_all_reduce and tp_size > 1 and state.tp_group is not None:
        state.custom_ar = _build_custom_all_reduce(state.tp_group)
    _STATE = state


def _build_custom_all_reduce(group: dist.ProcessGroup) -> CustomAllreduce | None:
    """Every rank of `group` calls this; None where the custom all-reduce cannot run."""
    from pagedllm.distributed import custom_all_reduce as car

    device = (
        torch.device("cuda", torch.cuda.current_device())
        if torch.cuda.is_available()
        else torch.device("cpu")
    )
    why_not = car.custom_all_reduce_unavailable(group, device)
    if why_not is not None:
        logger.info("custom all-reduce off: %s; NCCL sums every message", why_not)
        return None
    ar = car.CustomAllreduce(group, device)
    logger.info(
        "custom all-reduce on: one-shot up to %d bytes, two-shot up to %d, NCCL above",
        ar.one_shot_max,
        ar.max_size,
    )
    return ar


def init_model_parallel(
    tp_size: int, pp_size: int = 1, rank: int | None = None, backend: str | None = None
) -> None:
    """The first name of `initialize_model_parallel` (tests use it); `rank`, if given,
    must be this process's torch.distributed rank."""
    if rank is not None and dist.is_initialized() and rank != dist.get_rank():
        raise ValueError(f"rank {rank} is not this process's rank ({dist.get_rank()})")
    initialize_model_parallel(tp_size, pp_size, backend)


def destroy_model_parallel() -> None:
    global _STATE
    _STATE = _ParallelState()


def destroy_distributed_environment() -> None:
    destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def model_parallel_is_initialized() -> bool:
    return _STATE.tp_group is not None or _STATE.pp_group is not None


# ---- rank queries -----------------------------------------------------------------


def get_tensor_model_parallel_rank() -> int:
    return _STATE.tp_rank


def get_tensor_model_parallel_world_size() -> int:
    return _STATE.tp_size


def get_pipeline_model_parallel_rank() -> int:
    return _STATE.pp_rank


def get_pipeline_model_parallel_world_size() -> int:
    return _STATE.pp_size


def is_pipeline_first_stage() -> bool:
    return _STATE.pp_rank == 0


def is_pipeline_last_stage() -> bool:
    return _STATE.pp_rank == _STATE.pp_size - 1


def get_tp_group() -> dist.ProcessGroup | None:
    return _STATE.tp_group


def get_pp_group() -> dist.ProcessGroup | None:
    return _STATE.pp_group


# ---- tensor-parallel collectives ------------------------------------------------------


def tensor_model_parallel_all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum `x` over the tensor-parallel group: the custom all-reduce's new tensor
    for small messages, else NCCL's in place (use the returned tensor)."""
    if _STATE.tp_size == 1:
        return x
    custom = _STATE.custom_ar
    if custom is not None and custom.should_custom_ar(x):
        return custom.all_reduce(x)
    dist.all_reduce(x, group=_STATE.tp_group)
    return x


def tensor_model_parallel_all_gather(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Concatenate every tensor-parallel rank's `x` along `dim`, in rank order."""
    if _STATE.tp_size == 1:
        return x
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(_STATE.tp_size)]
    dist.all_gather(parts, x, group=_STATE.tp_group)
    return torch.cat(parts, dim=dim)


# ---- pipeline-parallel point to point ---------------------------------------------------


def pipeline_send(tensors: list[torch.Tensor]) -> None:
    """Send `tensors` to the same tp rank of the next stage (in order, blocking)."""
    if is_pipeline_last_stage():
        raise RuntimeError("the last pipeline stage has no next stage to send to")
    dst = _STATE.rank + _STATE.tp_size
    for tensor in tensors:
        dist.send(tensor.contiguous(), dst=dst, group=_STATE.pp_group)


def pipeline_isend(tensors: list[torch.Tensor]) -> list[dist.Work]:
    """Start sending `tensors` (contiguous) to the same tp rank of the next stage and
    return at once: the stage can take its next batch while they travel. The caller
    keeps the tensors alive and waits on the works before it sends again (messages
    between two ranks arrive in the order they were posted)."""
    if is_pipeline_last_stage():
        raise RuntimeError("the last pipeline stage has no next stage to send to")
    dst = _STATE.rank + _STATE.tp_size
    works = [dist.isend(tensor, dst=dst, group=_STATE.pp_group) for tensor in tensors]
    return [work for work in works if work is not None]


def pipeline_recv(tensors: list[torch.Tensor]) -> None:
    """Fill `tensors` (pre-allocated, the sender's shapes/dtypes) from the previous stage."""
    if is_pipeline_first_stage():
        raise RuntimeError("the first pipeline stage has no previous stage to receive from")
    src = _STATE.rank - _STATE.tp_size
    for tensor in tensors:
        dist.recv(tensor, src=src, group=_STATE.pp_group)


def get_pp_indices(num_layers: int, pp_rank: int, pp_size: int) -> tuple[int, int]:
    """The [start, end) layer range of stage `pp_rank`: equal shares, the first
    `num_layers % pp_size` stages take one layer more."""
    if pp_size > num_layers:
        raise ValueError(
            f"pipeline_parallel_size ({pp_size}) is larger than the number of layers ({num_layers})"
        )
    base, extra = divmod(num_layers, pp_size)
    start = pp_rank * base + min(pp_rank, extra)
    return start, start + base + (1 if pp_rank < extra else 0)


def output_rank(tp_size: int, pp_size: int) -> int:
    """The rank whose sampled tokens the engine uses: tp rank 0 of the last stage."""
    return (pp_size - 1) * tp_size
