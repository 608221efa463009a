"""Which front end gets what, when several API servers share one engine core
(`--api-server-count N`).

Each request carries the index of the client that sent it (`client_index`); the
core's input thread records the owner when the request arrives and forgets it when
the client aborts it; the output thread splits each step's `EngineCoreOutputs` by
owner and forgets a request with its final output.

    step outputs [a0 b1 c0 ...] + stats  ->  client 0: [a0 c0] + stats
                                             client 1: [b1] + stats
                                             client 2: [] + stats
    stats only (idle, every 0.5 s)       ->  every client
    utility answer                       ->  its caller (UtilityOutput.client_index)
    engine dead                          ->  every client

Every client gets every step's stats (each server's /health, dashboard and gauges
stay current whichever server has the traffic; a stats-only message costs a client
tens of microseconds per step). An output whose owner is unknown (its request was
aborted after the step that produced it) is dropped: its client stopped listening.

Owners are written by the input thread and read by the output thread: single dict
operations, atomic under the GIL.
"""

from __future__ import annotations

from pagedllm.core.messages import EngineCoreOutput, EngineCoreOutputs


class OutputRouter:
    def __init__(self, num_clients: int) -> None:
        self.num_clients = num_clients
        self.owner: dict[str, int] = {}

    def add(self, request_id: str, client_index: int) -> None:
        self.owner[request_id] = client_index

    def forget(self, request_ids: list[str]) -> None:
        for request_id in request_ids:
            self.owner.pop(request_id, None)

    def split(self, outputs: EngineCoreOutputs) -> list[tuple[int, EngineCoreOutputs]]:
        """(client index, what it gets) for each client that gets something."""
        if outputs.utility_output is not None:
            return [(outputs.utility_output.client_index, outputs)]
        if outputs.engine_dead is not None or not outputs.outputs:
            return [(client, outputs) for client in range(self.num_clients)]
        by_client: dict[int, list[EngineCoreOutput]] = {}
        for output in outputs.outputs:
            client = self._owner_of(output)
            if client is not None:
                by_client.setdefault(client, []).append(output)
        if outputs.scheduler_stats is not None:
            for client in range(self.num_clients):
                by_client.setdefault(client, [])
        stats = outputs.scheduler_stats
        return [
            (client, EngineCoreOutputs(outputs=items, scheduler_stats=stats))
            for client, items in sorted(by_client.items())
        ]

    def _owner_of(self, output: EngineCoreOutput) -> int | None:
        if output.finished:
            return self.owner.pop(output.request_id, None)
        return self.owner.get(output.request_id)
