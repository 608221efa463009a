"""The Ray executor: one Ray actor per rank, across the machines of a Ray cluster.

It joins the cluster named by RAY_ADDRESS (or one started with `ray start` on this
machine), else starts a local one. A placement group reserves one bundle per rank
({"GPU": 1} or {"CPU": 1}); rank r's actor runs in bundle r, so ranks are packed
onto as few nodes as possible and the tensor-parallel groups (consecutive ranks)
share a node where they fit. Rank 0's node hosts the torch.distributed rendezvous.

The driver logic (broadcast, output rank, failure handling) is DistributedExecutorBase's;
this file is only the transport: a call becomes one actor method call per rank, the
SchedulerOutput is put in the object store once and passed by reference.

A step (`execute_model`) returns a `RayStepFuture` at once, holding the step's
ObjectRefs (one per rank): the engine schedules and sends step N+1 while the actors
run step N (async scheduling), or keeps a batch per pipeline stage in flight. The
actors are plain (not threaded, not async) actors, so Ray runs the calls one driver
makes on one actor one at a time, in the order they were made: every rank sees every
SchedulerOutput, and so its deltas, in order. Each actor finishes a step (its tokens
on the host) before it starts the next; `get()` fetches the output rank's result,
after every rank's call is done, so a dead or failed rank ends the wait.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import weakref
from typing import Any

from pagedllm.config import EngineConfig
from pagedllm.executor.base import ExecutorDeadError
from pagedllm.executor.distributed import (
    DistributedExecutorBase,
    checked_output,
    rpc_timeout_s,
)
from pagedllm.scheduler_output import ModelRunnerOutput, SchedulerOutput

logger = logging.getLogger(__name__)

_POLL_S = 1.0
_PLACEMENT_TIMEOUT_S = float(os.environ.get("PAGEDLLM_RAY_PLACEMENT_TIMEOUT_S", 120))


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ImportError(
            "distributed_executor_backend='ray' needs Ray: pip install 'pagedllm[ray]'"
        ) from exc
    return ray


class RayWorkerWrapper:
    """The actor body: a Worker built once the rendezvous address is known. It must stay
    a plain actor (no async methods, max_concurrency 1): the steps' order relies on it."""

    def __init__(self) -> None:
        self.worker: Any = None

    def node_ip_and_free_port(self) -> tuple[str, int]:
        import ray

        ip = ray.util.get_node_ip_address()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("", 0))
            return ip, int(s.getsockname()[1])

    def init_worker(self, config: EngineConfig, rank: int, init_method: str) -> int:
        from pagedllm.worker.worker import Worker

        # Ray shows each actor only its own GPU, so its device is cuda:0.
        self.worker = Worker(config, rank=rank, local_rank=0, distributed_init_method=init_method)
        return os.getpid()

    def execute_method(self, method: str, *args: Any) -> Any:
        return getattr(self.worker, method)(*args)


def _release(actors: list[Any], placement_groups: list[Any], owns_ray: bool) -> None:
    """Kill the actors, free their bundles, stop Ray if this executor started it.
    (A module function, so the finalizer holds no reference to the executor.)"""
    ray = _import_ray()
    if not ray.is_initialized():
        return
    for actor in actors:
        try:
            ray.kill(actor)
        except Exception:  # already dead
            pass
    for pg in placement_groups:
        try:
            ray.util.remove_placement_group(pg)
        except Exception:
            pass
    if owns_ray:
        ray.shutdown()


class RayExecutor(DistributedExecutorBase):
    def _start_workers(self) -> None:
        ray = _import_ray()
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            ray.init(ignore_reinit_error=True)  # RAY_ADDRESS / `ray start` cluster / local
        self._actors: list[Any] = []
        self._placement_groups: list[Any] = []
        self._finalizer = weakref.finalize(
            self, _release, self._actors, self._placement_groups, self._owns_ray
        )
        self._placement_group = self._reserve_bundles(ray)
        self._placement_groups.append(self._placement_group)
        self._actors.extend(self._make_actor(ray, rank) for rank in range(self.world_size))
        ip, port = ray.get(self._actors[0].node_ip_and_free_port.remote())
        init_method = f"tcp://{ip}:{port}"
        refs = [
            actor.init_worker.remote(self.config, rank, init_method)
            for rank, actor in enumerate(self._actors)
        ]
        self._pids: list[int] = self._wait(refs, "start")
        logger.info("started %d Ray workers (pids %s)", self.world_size, self._pids)

    def _reserve_bundles(self, ray: Any) -> Any:
        gpu = self.config.device_config.device.type == "cuda"
        bundle = {"GPU": 1.0} if gpu else {"CPU": 1.0}
        pg = ray.util.placement_group(
            [dict(bundle) for _ in range(self.world_size)], strategy="PACK"
        )
        ready, _ = ray.wait([pg.ready()], timeout=_PLACEMENT_TIMEOUT_S)
        if not ready:
            ray.util.remove_placement_group(pg)
            raise ValueError(
                f"the Ray cluster cannot place {self.world_size} workers of {bundle} within "
                f"{_PLACEMENT_TIMEOUT_S:.0f} s (available: {ray.available_resources()})"
            )
        return pg

    def _make_actor(self, ray: Any, rank: int) -> Any:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        gpu = self.config.device_config.device.type == "cuda"
        strategy = PlacementGroupSchedulingStrategy(
            placement_group=self._placement_group, placement_group_bundle_index=rank
        )
        return (
            ray.remote(RayWorkerWrapper)
            .options(
                num_cpus=0 if gpu else 1,
                num_gpus=1 if gpu else 0,
                scheduling_strategy=strategy,
                runtime_env={"env_vars": {"NCCL_NVLS_ENABLE": "0"}},
                name=None,
            )
            .remote()
        )

    @property
    def worker_pids(self) -> list[int]:
        return list(self._pids)

    def _run_on_workers(self, method: str, args: tuple[Any, ...]) -> list[Any]:
        return self._wait(self._submit(method, args), method)

    def _submit(self, method: str, args: tuple[Any, ...]) -> list[Any]:
        """Call `method` on every rank; the ObjectRefs of their results, in rank order."""
        ray = _import_ray()
        # Put big arguments (the SchedulerOutput) in the object store once, not per rank.
        shared = tuple(ray.put(a) if not isinstance(a, (int, str)) else a for a in args)
        return [actor.execute_method.remote(method, *shared) for actor in self._actors]

    # ---- steps: sent at once, awaited later ----------------------------------------------

    def execute_model(self, scheduler_output: SchedulerOutput) -> RayStepFuture:  # type: ignore[override]
        with self._lock:  # steps are submitted in call order
            self._raise_if_unusable()
            return RayStepFuture(self, self._submit("execute_model", (scheduler_output,)))

    def _wait_for_step(self, refs: list[Any]) -> ModelRunnerOutput:
        self._raise_if_unusable()  # a later step's refs die with the executor
        try:
            results = self._wait(refs, "execute_model")
            return checked_output(results[self.output_rank], self.output_rank)
        except ExecutorDeadError as exc:
            self._die(exc)
            raise

    def _all_ready(self, refs: list[Any]) -> bool:
        if self._dead is not None or self._is_shut_down:
            return True  # get() raises at once
        ready, _ = _import_ray().wait(refs, num_returns=len(refs), timeout=0)
        return len(ready) == len(refs)

    def _wait(self, refs: list[Any], method: str) -> list[Any]:
        """Results in rank order (the others' are None for a step: only the output rank
        ships its tokens); the first failed rank ends the wait."""
        ray = _import_ray()
        results: list[Any] = [None] * len(refs)
        pending = {ref: rank for rank, ref in enumerate(refs)}
        timeout = rpc_timeout_s()
        deadline = None if timeout is None else time.monotonic() + timeout
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=_POLL_S)
            for ref in ready:
                rank = pending.pop(ref)
                results[rank] = self._get(ray, ref, rank, method)
            if deadline is not None and time.monotonic() > deadline:
                raise ExecutorDeadError(
                    f"Ray worker rank(s) {sorted(pending.values())} did not answer {method} "
                    f"within {timeout:.0f} s (PAGEDLLM_RPC_TIMEOUT_S)"
                )
        return results

    def _get(self, ray: Any, ref: Any, rank: int, method: str) -> Any:
        try:
            return ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            raise ExecutorDeadError(
                f"the Ray actor of worker rank {rank} died during {method}: {exc}"
            ) from exc
        except ray.exceptions.RayTaskError as exc:
            raise ExecutorDeadError(
                f"worker rank {rank} failed in {method}:\n{exc}", getattr(exc, "cause", None)
            ) from exc

    def _check_workers_alive(self) -> None:
        """A dead actor surfaces at the next call (a ping would queue behind a running step)."""

    def _stop_workers(self) -> None:
        finalizer = getattr(self, "_finalizer", None)
        if finalizer is not None:
            finalizer()


class RayStepFuture:
    """A step sent to every rank's actor; `get()` waits for its ModelRunnerOutput."""

    def __init__(self, executor: RayExecutor, refs: list[Any]) -> None:
        self._executor = executor
        self._refs = refs
        self.output: ModelRunnerOutput | None = None

    def get(self) -> ModelRunnerOutput:
        if self.output is None:
            self.output = self._executor._wait_for_step(self._refs)
            self._refs = []
        return self.output

    def done(self) -> bool:
        """Whether `get()` would return at once (an error shows only in `get()`)."""
        return self.output is not None or self._executor._all_ready(self._refs)
