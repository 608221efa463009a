"""The engine core in its own process (MPClient), on a tiny random Llama: the same
tokens as in process, utility calls, a killed core turns into errors (never a hang),
a dead front end takes its core with it, start-up errors keep their type, and
shutdown leaves no process behind."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pagedllm.config import EngineArgs
from pagedllm.engine.async_engine import AsyncLLM, EngineDeadError
from pagedllm.engine.core_process import MPClient
from pagedllm.engine.llm_engine import LLMEngine
from pagedllm.sampling_params import RequestOutputKind, SamplingParams

PROMPTS = [[1, 5, 9, 13], [7, 7, 7], [100, 3, 42, 8, 9, 10]]


def _args(model: str) -> EngineArgs:
    return EngineArgs(
        model=model, skip_tokenizer_init=True, max_model_len=256, kv_cache_memory_bytes=8 << 20
    )


def _run(engine: LLMEngine, params: SamplingParams) -> dict[str, list[list[int]]]:
    for i, prompt in enumerate(PROMPTS):
        engine.add_request(str(i), {"prompt_token_ids": prompt}, params)
    results: dict[str, list[list[int]]] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                results[out.request_id] = [list(c.token_ids) for c in out.outputs]
    return results


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split()[2] != "Z"


def _wait_gone(pid: int, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def mp_engine(tiny_llama_dir: str) -> Iterator[LLMEngine]:
    engine = LLMEngine(_args(tiny_llama_dir).create_engine_config(), True, multiprocess=True)
    yield engine
    engine.shutdown()


def test_same_tokens_as_in_process(mp_engine: LLMEngine, tiny_llama_dir: str) -> None:
    inproc = LLMEngine(_args(tiny_llama_dir).create_engine_config(), True, multiprocess=False)
    for params in (
        SamplingParams(max_tokens=12, temperature=0.0),
        SamplingParams(max_tokens=9, temperature=1.0, seed=7, n=2),
    ):
        assert _run(mp_engine, params) == _run(inproc, params)
    assert mp_engine.get_num_free_blocks() == mp_engine.core_client.num_gpu_blocks
    mp_engine.check_integrity()
    inproc.shutdown()


def test_core_is_a_child_process(mp_engine: LLMEngine) -> None:
    client = mp_engine.core_client
    assert isinstance(client, MPClient) and client.pid != os.getpid()
    cmdline = Path(f"/proc/{client.pid}/cmdline").read_bytes().replace(b"\0", b" ")
    assert b"pagedllm.core.engine_core_proc" in cmdline
    stat = Path(f"/proc/{client.pid}/stat").read_text().split()
    assert int(stat[3]) == os.getpid()  # its parent is this process


def test_abort_frees_blocks_in_the_core(mp_engine: LLMEngine) -> None:
    params = SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True)
    mp_engine.add_request("long", {"prompt_token_ids": PROMPTS[0]}, params)
    mp_engine.step()
    mp_engine.abort_request("long")
    deadline = time.monotonic() + 10
    while mp_engine.get_num_free_blocks() != mp_engine.core_client.num_gpu_blocks:
        assert time.monotonic() < deadline, "the aborted request kept its blocks"
        time.sleep(0.05)
    assert not mp_engine.has_unfinished_requests()


def test_killed_core_fails_requests_and_health(tiny_llama_dir: str) -> None:
    engine = AsyncLLM.from_engine_args(_args(tiny_llama_dir))
    assert isinstance(engine.core_client, MPClient)
    pid = engine.core_client.pid
    assert pid is not None
    params = SamplingParams(
        max_tokens=10_000 // 64,
        temperature=0.0,
        ignore_eos=True,
        output_kind=RequestOutputKind.DELTA,
    )

    async def main() -> None:
        stream = engine.generate({"prompt_token_ids": PROMPTS[0]}, params, "victim")
        await stream.__anext__()  # running
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(EngineDeadError, match="exit code -9"):
            async with asyncio.timeout(20):
                async for _ in stream:
                    pass
        with pytest.raises(EngineDeadError):
            await engine.check_health()
        with pytest.raises(EngineDeadError):
            async for _ in engine.generate({"prompt_token_ids": [1]}, params, "after"):
                pass

    try:
        asyncio.run(main())
        assert engine.errored
    finally:
        engine.shutdown()


FRONT_END = textwrap.dedent(
    """
    import sys, time
    from pagedllm.config import EngineArgs
    from pagedllm.engine.llm_engine import LLMEngine
    args = EngineArgs(model=sys.argv[1], skip_tokenizer_init=True, max_model_len=256,
                      kv_cache_memory_bytes=8 << 20)
    engine = LLMEngine(args.create_engine_config(), True, multiprocess=True)
    print(engine.core_client.pid, flush=True)
    time.sleep(600)
    """
)


def test_core_exits_when_the_front_end_dies(tiny_llama_dir: str) -> None:
    """No `if __name__ == "__main__":` guard needed, and no orphan left behind."""
    front = subprocess.Popen(
        [sys.executable, "-c", FRONT_END, tiny_llama_dir], stdout=subprocess.PIPE, text=True
    )
    try:
        assert front.stdout is not None
        core_pid = int(front.stdout.readline())
        assert _alive(core_pid)
        front.kill()
        front.wait(timeout=10)
        assert _wait_gone(core_pid), "the engine core outlived its front end"
    finally:
        front.kill()


def test_core_still_starting_exits_when_the_front_end_dies(
    tiny_llama_dir: str, tmp_path: Path
) -> None:
    """A core stuck in its start-up (here: its weights file is a FIFO nobody writes, so
    opening it blocks) leaves as soon as the front end's process is gone, not when the
    start finishes (which here would be never)."""
    (tmp_path / "config.json").write_text((Path(tiny_llama_dir) / "config.json").read_text())
    os.mkfifo(tmp_path / "model.safetensors")
    front = subprocess.Popen([sys.executable, "-c", FRONT_END, str(tmp_path)])
    try:
        core_pid = _wait_child_core(front.pid)
        time.sleep(1.0)  # into the blocking open
        assert _alive(core_pid), "the core should still be starting"
        front.kill()
        front.wait(timeout=10)
        assert _wait_gone(core_pid, timeout_s=10), "a starting core outlived its front end"
    finally:
        front.kill()


def _wait_child_core(parent: int, timeout_s: float = 60.0) -> int:
    """The pid of `parent`'s engine-core child process, once it has started."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent and b"engine_core_proc" in cmdline:
                return int(pid)
        time.sleep(0.1)
    raise AssertionError("no engine core process started")


def test_start_up_error_reaches_the_caller_and_leaves_no_process(
    tiny_llama_dir: str, tmp_path: Path
) -> None:
    """The weights are read in the core process: their error comes back, named."""
    (tmp_path / "config.json").write_text((Path(tiny_llama_dir) / "config.json").read_text())
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00garbage!")
    config = _args(str(tmp_path)).create_engine_config()
    before = set(os.listdir("/proc"))
    with pytest.raises(Exception, match="safetensors|header|deserializ") as info:
        LLMEngine(config, True, multiprocess=True)
    assert "model.safetensors" in str(info.value) or "header" in str(info.value).lower()
    time.sleep(0.5)
    children = [p for p in set(os.listdir("/proc")) - before if p.isdigit() and _our_core(p)]
    assert children == []


def _our_core(pid: str) -> bool:
    """An engine core started by this process (not by a test running alongside in
    another pytest-xdist worker)."""
    try:
        ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        return (
            ppid == os.getpid() and b"engine_core_proc" in Path(f"/proc/{pid}/cmdline").read_bytes()
        )
    except OSError:  # gone meanwhile
        return False
