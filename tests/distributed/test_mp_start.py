"""Start-up and exit of the mp executor as a user's plain script meets them: no
`if __name__ == "__main__":` guard (workers are forked), forced spawn (a warning and an
error that name the guard), exit without shutdown() and a killed parent (no worker
left behind, no traceback). Each script runs in its own interpreter."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import pid_alive

from pagedllm.executor.mp_start import main_script_is_unguarded

GUARD = 'if __name__ == "__main__":'

# An unguarded script: one process, then tp=3 (shut down), then pp=2 (left running:
# the interpreter's exit must stop its workers). The one-process runs come first, so
# the driver has used torch's threads before it forks.
SCRIPT = """
import json
from pagedllm import LLM, SamplingParams

PROMPTS = [{"prompt_token_ids": [(7 * i + 3 * j) % 500 + 1 for j in range(n)]}
           for i, n in enumerate((3, 11, 1, 23))]
PARAMS = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)

def run(model, **parallel):
    llm = LLM(model=model, device="cpu", dtype="float32", skip_tokenizer_init=True,
              block_size=4, max_num_batched_tokens=16, max_num_seqs=4, max_model_len=64,
              **parallel)
    outputs = llm.generate(PROMPTS, PARAMS, use_tqdm=False)
    return llm, [list(o.outputs[0].token_ids) for o in outputs]

_, one_tp = run(TP_MODEL)
tp3, three = run(TP_MODEL, tensor_parallel_size=3)
pids = tp3.llm_engine.executor.worker_pids
tp3.shutdown()
_, one_pp = run(PP_MODEL)
pp2, two = run(PP_MODEL, pipeline_parallel_size=2)
pids += pp2.llm_engine.executor.worker_pids
print(json.dumps(dict(one_tp=one_tp, three=three, one_pp=one_pp, two=two, pids=pids)))
"""

# Starts tp=2 workers, reports their pids, then waits to be killed.
IDLE_SCRIPT = """
import sys, time
from pagedllm import LLM

llm = LLM(model=MODEL, device="cpu", dtype="float32", skip_tokenizer_init=True,
          max_model_len=64, tensor_parallel_size=2)
print(*llm.llm_engine.executor.worker_pids, flush=True)
time.sleep(600)
"""


@pytest.fixture(scope="module")
def tp3_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """6 heads, 3 kv heads, intermediate 192: a split into 3 works."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tp3-llama")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512,
        hidden_size=96,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=3,
        initializer_range=0.5,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    return str(path)


def script_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("WORKER_MULTIPROC_METHOD")}
    env.pop("TOKENIZERS_PARALLELISM", None)  # as a user's shell has it
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    env.update(extra)
    return env


def run_script(tmp_path: Path, code: str, **env: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env=script_env(**env),
        cwd=tmp_path,
    )


def wait_gone(pids: list[int], within_s: float = 10.0) -> list[int]:
    deadline = time.monotonic() + within_s
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [p for p in pids if pid_alive(p)]


def test_unguarded_script_forks_workers_and_exits_cleanly(
    tmp_path: Path, tp3_llama_dir: str, tiny_llama_dir: str
) -> None:
    proc = run_script(
        tmp_path,
        SCRIPT.replace("TP_MODEL", repr(tp3_llama_dir)).replace("PP_MODEL", repr(tiny_llama_dir)),
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "Traceback" not in output and "Error" not in output, output
    assert "huggingface/tokenizers" not in output, output  # no fork warning from tokenizers
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["three"] == result["one_tp"]
    assert result["two"] == result["one_pp"]
    assert len(result["pids"]) == 5
    # pp=2 was never shut down: the exit stopped its workers.
    assert wait_gone(result["pids"], within_s=2.0) == []


def test_forced_spawn_names_the_guard(tmp_path: Path, tiny_llama_dir: str) -> None:
    """Spawned workers re-import the unguarded script: the driver warns before it
    spawns, each worker stops at its LLM, and the driver's error names the guard."""
    code = IDLE_SCRIPT.replace("MODEL", repr(tiny_llama_dir))
    proc = run_script(tmp_path, code, VLLM_WORKER_MULTIPROC_METHOD="spawn")
    assert proc.returncode != 0
    stderr = proc.stderr
    warning = next(line for line in stderr.splitlines() if "no `if __name__" in line)
    assert GUARD in warning
    error = next(line for line in stderr.splitlines() if "ExecutorDeadError" in line)
    assert "during start" in error and GUARD in error and "spawn" in error
    assert "an LLM was created while a worker started" in stderr


def test_killed_driver_takes_forked_workers_with_it(tmp_path: Path, tiny_llama_dir: str) -> None:
    script = tmp_path / "idle.py"
    script.write_text(textwrap.dedent(IDLE_SCRIPT.replace("MODEL", repr(tiny_llama_dir))))
    driver = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=script_env()
    )
    try:
        assert driver.stdout is not None
        pids = [int(p) for p in driver.stdout.readline().split()]
        assert len(pids) == 2 and all(pid_alive(p) for p in pids)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    assert wait_gone(pids) == [], "workers outlived their driver"


def test_guard_detection(tmp_path: Path) -> None:
    """main_script_is_unguarded reads the main script: a call at its top level (also
    through a function) is unguarded, a call under the guard is not."""
    assert not main_script_is_unguarded()  # pytest's own __main__ is guarded
    code = f"""
    from pagedllm.executor.mp_start import main_script_is_unguarded as unguarded
    def main():
        return unguarded()
    results = [unguarded(), main()]
    {GUARD}
        results += [unguarded(), main()]
    if "__main__" == __name__:
        results.append(main())
    print(results)
    """
    proc = run_script(tmp_path, code)
    assert proc.stdout.strip() == "[True, True, False, False, False]", proc.stderr
