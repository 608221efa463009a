"""Tensor- and pipeline-parallel process groups and the collectives layers use.

Ranks are laid out tensor-parallel first: global rank r is tensor-parallel rank
`r % tp_size` of pipeline stage `r // tp_size`.

    pp stage 0: ranks [0, tp)        pp stage 1: ranks [tp, 2 tp)   ...

Before `init_model_parallel` (or with tp_size == 1) every collective is the
identity, so single-process code never touches torch.distributed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class _ParallelState:
    tp_size: int = 1
    tp_rank: int = 0
    pp_size: int = 1
    pp_rank: int = 0
    tp_group: dist.ProcessGroup | None = None
    pp_group: dist.ProcessGroup | None = None


# Set once per process by init_model_parallel; read by layers at build time.
_STATE = _ParallelState()


def init_model_parallel(
    tp_size: int,
    pp_size: int = 1,
    rank: int | None = None,
    backend: str | None = None,
) -> None:
    """Create the tensor/pipeline groups. torch.distributed must be initialized
    already when tp_size * pp_size > 1 (every rank calls this with the same sizes)."""
    global _STATE
    world = tp_size * pp_size
    if world == 1:
        _STATE = _ParallelState()
        return
    if not dist.is_initialized():
        raise RuntimeError("init_model_parallel needs torch.distributed to be initialized first")
    if dist.get_world_size() != world:
        raise ValueError(
            f"tensor_parallel_size * pipeline_parallel_size = {world} but the "
            f"torch.distributed world size is {dist.get_world_size()}"
        )
    rank = dist.get_rank() if rank is None else rank
    state = _ParallelState(tp_size, rank % tp_size, pp_size, rank // tp_size)
    # new_group must be called by every rank for every group, in the same order.
    for stage in range(pp_size):
        ranks = list(range(stage * tp_size, (stage + 1) * tp_size))
        group = dist.new_group(ranks, backend=backend)
        if rank in ranks:
            state.tp_group = group
    for tp_rank in range(tp_size):
        ranks = list(range(tp_rank, world, tp_size))
        group = dist.new_group(ranks, backend=backend)
        if rank in ranks:
            state.pp_group = group
    _STATE = state


def destroy_model_parallel() -> None:
    global _STATE
    _STATE = _ParallelState()


def model_parallel_is_initialized() -> bool:
    return _STATE.tp_group is not None or _STATE.pp_group is not None


def get_tensor_model_parallel_rank() -> int:
    return _STATE.tp_rank


def get_tensor_model_parallel_world_size() -> int:
    return _STATE.tp_size


def get_pipeline_model_parallel_rank() -> int:
    return _STATE.pp_rank


def get_pipeline_model_parallel_world_size() -> int:
    return _STATE.pp_size


def get_tp_group() -> dist.ProcessGroup | None:
    return _STATE.tp_group


def get_pp_group() -> dist.ProcessGroup | None:
    return _STATE.pp_group


def tensor_model_parallel_all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum `x` over the tensor-parallel group (in place when tp > 1)."""
    if _STATE.tp_size == 1:
        return x
    dist.all_reduce(x, group=_STATE.tp_group)
    return x


def tensor_model_parallel_all_gather(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Concatenate every tensor-parallel rank's `x` along `dim`, in rank order."""
    if _STATE.tp_size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(_STATE.tp_size)]
    dist.all_gather(parts, x.contiguous(), group=_STATE.tp_group)
    return torch.cat(parts, dim=dim)
