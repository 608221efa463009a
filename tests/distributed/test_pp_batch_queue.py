"""Pipeline parallelism with a batch per stage in flight (mp executor, gloo, CPU).

With pipeline_parallel_size=2 the engine core launches batch k+1 while batch k is
still in the pipeline (stage 0 runs k+1 while stage 1 runs k). The tokens must be
those of one process, and those of the old one-batch-at-a-time path
(PAGEDLLM_PP_BATCH_QUEUE=0): many requests of varied lengths (more than
max_num_seqs), chunked prefill, preemption, stop tokens and aborts in flight."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import make_llm, spy_in_flight

from pagedllm import LLM, SamplingParams
from pagedllm.distributed import parallel_state as ps
from pagedllm.models.llama import LlamaForCausalLM

LENGTHS = (3, 11, 1, 23, 7, 2, 30, 5, 17, 9, 4, 13, 26, 6)
PROMPTS = [
    {"prompt_token_ids": [(11 * i + 5 * j) % 500 + 1 for j in range(n)]}
    for i, n in enumerate(LENGTHS)
]
STOP_IDS = list(range(0, 512, 7))


def sampling_params() -> list[SamplingParams]:
    params = []
    for i in range(len(PROMPTS)):
        sp = SamplingParams(temperature=0.0, max_tokens=4 + i % 6, ignore_eos=True)
        if i % 4 == 3:  # stops early on a stop token
            sp.stop_token_ids = STOP_IDS
            sp.all_stop_token_ids = set(STOP_IDS)
        params.append(sp)
    params[5] = SamplingParams(temperature=0.9, seed=3, max_tokens=8, ignore_eos=True)
    return params


Result = tuple[list[list[int]], list[str | None]]


def spy_preempted_in_flight(llm: LLM) -> list[int]:
    """For each preemption: how many steps of the victim were in flight."""
    scheduler = llm.llm_engine.scheduler
    in_flight: list[int] = []
    original = scheduler._preempt

    def spy(request: Any) -> None:
        in_flight.append(request.num_steps_in_flight)
        original(request)

    scheduler._preempt = spy
    return in_flight


@dataclass
class Run:
    result: Result  # (tokens, finish reasons) per prompt
    unread_at_launch: list[int]  # per launched step: earlier steps still unread
    preempted_in_flight: list[int]  # per preemption: the victim's steps in flight
    max_batches: int
    async_scheduling: bool
    num_preemptions: int


def run(path: str, **kwargs: Any) -> Run:
    llm = make_llm(path, max_num_seqs=6, **kwargs)
    try:
        preempted = spy_preempted_in_flight(llm)
        unread = spy_in_flight(llm) if kwargs.get("pipeline_parallel_size", 1) > 1 else []
        outputs = llm.generate(PROMPTS, sampling_params(), use_tqdm=False)
        engine = llm.llm_engine
        engine.check_integrity()
        assert engine.get_num_free_blocks() == engine.kv_cache_manager.num_blocks
        core = engine.engine_core
        assert not core.batch_queue
        tokens = [list(o.outputs[0].token_ids) for o in outputs]
        reasons = [o.outputs[0].finish_reason for o in outputs]
        stats = engine.get_stats()
        return Run(
            (tokens, reasons),
            unread,
            preempted,
            core.max_batches,
            core.async_scheduling,
            stats.num_preemptions,
        )
    finally:
        llm.llm_engine.shutdown()


@pytest.fixture(scope="module")
def expected(tiny_llama_dir: str) -> Result:
    result = run(tiny_llama_dir).result
    assert "stop" in result[1] and "length" in result[1]
    return result


def test_pp2_batches_in_flight_match_one_process(tiny_llama_dir: str, expected: Result) -> None:
    got = run(tiny_llama_dir, pipeline_parallel_size=2)
    assert got.result == expected
    assert got.max_batches == 2
    # Batch k+1 went out while batch k was unread, and never a third.
    unread = got.unread_at_launch
    assert max(unread) == 1
    assert sum(u == 1 for u in unread) >= len(unread) // 3


def test_pp2_one_batch_at_a_time_matches(
    tiny_llama_dir: str, expected: Result, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAGEDLLM_PP_BATCH_QUEUE", "0")
    got = run(tiny_llama_dir, pipeline_parallel_size=2)
    assert got.result == expected
    assert got.max_batches == 1
    assert max(got.unread_at_launch) == 0


def test_pp2_in_flight_with_preemption_matches(tiny_llama_dir: str, expected: Result) -> None:
    # 10 blocks of 4 tokens for ~250 tokens of work: requests are preempted (some
    # with a step in flight) and recomputed. async_scheduling=True is accepted with
    # pipeline stages: the batch queue is their way of overlapping steps.
    llm_kwargs = dict(num_gpu_blocks_override=10, max_model_len=40, async_scheduling=True)
    got = run(tiny_llama_dir, pipeline_parallel_size=2, **llm_kwargs)
    assert got.result == expected
    assert got.num_preemptions > 0
    assert max(got.preempted_in_flight) == 1  # victims with their step in flight
    assert max(got.unread_at_launch) == 1
    assert not got.async_scheduling  # no placeholders across stages


def test_pp2_gpt2_in_flight_matches_one_process(tiny_gpt2_dir: str) -> None:
    reference = run(tiny_gpt2_dir).result
    got = run(tiny_gpt2_dir, pipeline_parallel_size=2)
    assert got.result == reference
    assert max(got.unread_at_launch) == 1


def test_core_process_busy_loop_keeps_batches_in_flight(
    tiny_llama_dir: str, expected: Result, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The core in its own process (the server's layout): its busy loop steps the
    batch queue; the utility calls are answered between steps."""
    monkeypatch.setenv("PAGEDLLM_ENABLE_MULTIPROCESSING", "1")
    llm = make_llm(tiny_llama_dir, max_num_seqs=6, pipeline_parallel_size=2)
    try:
        outputs = llm.generate(PROMPTS, sampling_params(), use_tqdm=False)
        tokens = [list(o.outputs[0].token_ids) for o in outputs]
        assert (tokens, [o.outputs[0].finish_reason for o in outputs]) == expected
        engine = llm.llm_engine
        engine.check_integrity()
        assert engine.get_num_free_blocks() == engine.get_stats().num_gpu_blocks
    finally:
        llm.llm_engine.shutdown()


def test_abort_with_a_batch_in_flight(tiny_llama_dir: str, expected: Result) -> None:
    llm = make_llm(tiny_llama_dir, max_num_seqs=6, pipeline_parallel_size=2)
    try:
        engine = llm.llm_engine
        core = engine.engine_core
        for i, (prompt, sp) in enumerate(zip(PROMPTS, sampling_params())):
            engine.add_request(str(i), prompt, sp)
        aborted: list[str] = []
        finished: dict[str, list[int]] = {}
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.finished:
                    finished[out.request_id] = list(out.outputs[0].token_ids)
            if len(aborted) < 3 and core.batch_queue:
                aborted.append(abort_one_in_flight(llm))
        assert len(aborted) == 3
        assert not core.batch_queue and not core.scheduler._free_after_flight
        engine.check_integrity()
        assert engine.get_num_free_blocks() == engine.kv_cache_manager.num_blocks
        # Every other request finished with the tokens of one process.
        assert set(finished) == {str(i) for i in range(len(PROMPTS))} - set(aborted)
        for req_id, tokens in finished.items():
            assert tokens == expected[0][int(req_id)]
    finally:
        llm.llm_engine.shutdown()


def abort_one_in_flight(llm: LLM) -> str:
    """Abort a request of the oldest batch in flight; its blocks stay taken until
    that batch is over (the stages may still write its KV cache)."""
    core = llm.llm_engine.engine_core
    scheduler_output = core.batch_queue[0][0]
    req_id = scheduler_output.scheduled[-1].req_id
    block_ids = list(core.kv_cache_manager.get_block_ids(req_id))
    free = core.kv_cache_manager.get_num_free_blocks()
    llm.llm_engine.abort_request(req_id)
    assert req_id in core.scheduler._free_after_flight
    assert core.kv_cache_manager.get_block_ids(req_id) == block_ids != []
    assert core.kv_cache_manager.get_num_free_blocks() == free
    return req_id


# ---- the stages overlap in time ------------------------------------------------------------


def timed_forward(log: Path, delay_s: float) -> Any:
    """LlamaForCausalLM.forward that takes `delay_s` longer and logs (stage, start,
    end). Installed before the workers fork, so every stage runs it."""
    original = LlamaForCausalLM.forward

    def forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.monotonic()
        time.sleep(delay_s)
        out = original(self, *args, **kwargs)
        with open(log, "a") as f:
            f.write(f"{ps.get_pipeline_model_parallel_rank()} {start} {time.monotonic()}\n")
        return out

    return forward


def stage_overlaps(log: Path) -> tuple[int, int]:
    """(pairs of a stage-0 and a stage-1 forward that ran at the same time, forwards)."""
    spans: dict[int, list[tuple[float, float]]] = {0: [], 1: []}
    for line in log.read_text().splitlines():
        stage, start, end = line.split()
        spans[int(stage)].append((float(start), float(end)))
    overlaps = sum(a0 < b1 and b0 < a1 for a0, a1 in spans[0] for b0, b1 in spans[1])
    return overlaps, len(spans[0]) + len(spans[1])


@pytest.mark.parametrize("batch_queue", ["1", "0"])
def test_stages_run_at_the_same_time(
    batch_queue: str, tiny_llama_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "forwards.log"
    monkeypatch.setenv("PAGEDLLM_WORKER_MULTIPROC_METHOD", "fork")
    monkeypatch.setenv("PAGEDLLM_PP_BATCH_QUEUE", batch_queue)
    monkeypatch.setattr(LlamaForCausalLM, "forward", timed_forward(log, 0.02))
    llm = make_llm(tiny_llama_dir, max_num_seqs=6, pipeline_parallel_size=2)
    try:
        log.write_text("")  # forget the start-up's profiling forwards
        start = time.monotonic()
        llm.generate(PROMPTS, sampling_params(), use_tqdm=False)
        elapsed = time.monotonic() - start
    finally:
        llm.llm_engine.shutdown()
    overlaps, forwards = stage_overlaps(log)
    print(f"batch queue {batch_queue}: {forwards} forwards, {overlaps} overlaps, {elapsed:.2f} s")
    if batch_queue == "1":
        assert overlaps >= forwards // 4  # stage 0 runs batch k+1 while stage 1 runs k
    else:
        assert overlaps == 0  # one batch at a time: a stage waits for the other


@pytest.mark.slow
def test_pp3_three_batches_in_flight(tiny_gpt2_dir: str) -> None:
    """Three stages (gpt2's 3 layers, one each), up to three batches in flight (3
    processes: slow on a 2-core machine)."""
    reference = run(tiny_gpt2_dir).result
    got = run(tiny_gpt2_dir, pipeline_parallel_size=3)
    assert got.result == reference
    assert got.max_batches == 3
    assert max(got.unread_at_launch) == 2
