"""The CPU extensions' loader (layers/cpu/extension.py): a built extension whose stamp
matches is imported without torch's build lock, so a lock file left behind by a process
killed inside `torch.utils.cpp_extension.load` no longer hangs every later process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pagedllm.layers.cpu import decode_ops
from pagedllm.layers.cpu.extension import _digest

NAME = "pagedllm_cpu_decode_ops"
LOAD = (
    "from pagedllm.layers.cpu import decode_ops as d\n"
    "from pagedllm.layers.cpu.extension import load_extension\n"
    f"m = load_extension({NAME!r}, [d.SOURCE], d.FLAGS)\n"
    "print(m.__file__, hasattr(m, 'rms_norm'))\n"
)


def _built_copy(root: Path, stamp: str) -> Path:
    """The extension's built module copied into a build directory under `root`, with a
    stamp and a stale lock (as a killed process leaves it)."""
    module = decode_ops.decode_ops()
    if module is None:
        pytest.skip("the CPU decode ops cannot be built here")
    build = root / NAME
    build.mkdir()
    shutil.copy(module.__file__, build / f"{NAME}.so")
    (build / f"{NAME}.pagedllm-stamp").write_text(stamp)
    (build / "lock").touch()
    return build


def _load_in_child(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(root)}
    return subprocess.run(
        [sys.executable, "-c", LOAD], env=env, capture_output=True, text=True, timeout=120
    )


def test_a_built_extension_loads_despite_a_stale_lock(tmp_path: Path) -> None:
    build = _built_copy(tmp_path, _digest([decode_ops.SOURCE], decode_ops.FLAGS))
    done = _load_in_child(tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [str(build / f"{NAME}.so"), "True"]


def test_a_stale_stamp_goes_through_torch_and_its_lock(tmp_path: Path) -> None:
    """A stamp that does not match (changed sources or flags) is not trusted: the load
    goes through torch's `load`, which waits on the lock (here: until the timeout)."""
    _built_copy(tmp_path, "not the digest")
    with pytest.raises(subprocess.TimeoutExpired):
        env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path)}
        subprocess.run([sys.executable, "-c", LOAD], env=env, capture_output=True, timeout=15)


@pytest.mark.parametrize("which", ["gguf", "decode_stack"])
def test_kernels_run_on_torchs_threads(which: str) -> None:
    """torch's extension builder does not pass -fopenmp: without it at::parallel_for
    (an inline header around `#pragma omp parallel`) ran every loop on one thread."""
    from pagedllm.layers.cpu import decode_stack
    from pagedllm.layers.quantization import gguf_kernels

    module = (
        gguf_kernels.cpu_extension() if which == "gguf" else decode_stack.decode_stack_extension()
    )
    if module is None:
        pytest.skip("the CPU extension cannot be built here")
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert module.parallel_threads(64) == 2
    finally:
        torch.set_num_threads(saved)
