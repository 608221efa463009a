"""OutputRouter: each request's outputs go to the client that sent it, stats to every
client, a utility answer to its caller, and an aborted request's late output nowhere."""

from __future__ import annotations

from pagedllm.core.messages import EngineCoreOutput, EngineCoreOutputs, UtilityOutput
from pagedllm.core.output_router import OutputRouter
from pagedllm.outputs import SchedulerStats


def _ids(part: EngineCoreOutputs) -> list[str]:
    return [o.request_id for o in part.outputs]


def test_outputs_go_to_their_sender_and_stats_to_everyone() -> None:
    router = OutputRouter(3)
    router.add("a", 0)
    router.add("b", 1)
    router.add("c", 0)
    stats = SchedulerStats(num_running_reqs=3)
    step = EngineCoreOutputs(
        outputs=[
            EngineCoreOutput("a", [1]),
            EngineCoreOutput("b", [2]),
            EngineCoreOutput("c", [3]),
        ],
        scheduler_stats=stats,
    )
    parts = router.split(step)
    assert [(client, _ids(part)) for client, part in parts] == [
        (0, ["a", "c"]),
        (1, ["b"]),
        (2, []),
    ]
    assert all(part.scheduler_stats is stats for _, part in parts)


def test_a_finished_request_is_forgotten_after_its_last_output() -> None:
    router = OutputRouter(2)
    router.add("a", 1)
    final = EngineCoreOutput("a", [5], finish_status=3)
    assert [(c, _ids(p)) for c, p in router.split(EngineCoreOutputs(outputs=[final]))] == [
        (1, ["a"])
    ]
    assert router.owner == {}


def test_an_aborted_request_gets_nothing_more() -> None:
    router = OutputRouter(2)
    router.add("a", 1)
    router.forget(["a"])
    late = EngineCoreOutputs(outputs=[EngineCoreOutput("a", [5])])
    assert router.split(late) == []


def test_utility_answers_go_to_the_caller_and_death_to_everyone() -> None:
    router = OutputRouter(2)
    answer = EngineCoreOutputs(utility_output=UtilityOutput(7, result=1, client_index=1))
    assert router.split(answer) == [(1, answer)]
    idle = EngineCoreOutputs(scheduler_stats=SchedulerStats())
    assert router.split(idle) == [(0, idle), (1, idle)]
    dead = EngineCoreOutputs(outputs=[EngineCoreOutput("x", [])], engine_dead="boom")
    assert router.split(dead) == [(0, dead), (1, dead)]
