"""How the mp executor starts its worker processes: `fork` or `spawn`.

As vLLM: `fork` when this process has not initialised CUDA (a forked child cannot use
the parent's CUDA context), `spawn` otherwise. `PAGEDLLM_WORKER_MULTIPROC_METHOD` (or
vLLM's `VLLM_WORKER_MULTIPROC_METHOD`) chooses, `fork` or `spawn`.

`fork` runs no user code in the children, so a plain script with no
`if __name__ == "__main__":` guard works. `spawn` starts fresh interpreters that
re-import the main script; an unguarded script would build an LLM again in every
worker. The driver warns before it spawns (`main_script_is_unguarded` reads the
script's syntax tree), and a worker that finds itself inside that re-import
(`in_spawn_bootstrap`) stops with an error that names the guard.
"""

from __future__ import annotations

import ast
import logging
import multiprocessing
import os
import sys
from types import FrameType

import torch

logger = logging.getLogger(__name__)

METHOD_ENV_VARS = ("PAGEDLLM_WORKER_MULTIPROC_METHOD", "VLLM_WORKER_MULTIPROC_METHOD")
GUARD_HINT = (
    'workers started with "spawn" re-import the main script; put the code that creates '
    'the LLM under `if __name__ == "__main__":` (or let workers start with "fork": '
    "PAGEDLLM_WORKER_MULTIPROC_METHOD=fork, before CUDA is initialised)"
)


def requested_method() -> str | None:
    """The method named by the environment (the first variable set), or None."""
    for name in METHOD_ENV_VARS:
        value = os.environ.get(name, "").strip().lower()
        if not value:
            continue
        if value not in ("fork", "spawn"):
            raise ValueError(f"{name}={value!r}: expected 'fork' or 'spawn'")
        return value
    return None


def worker_start_method() -> str:
    """`fork` unless CUDA is initialised here (or fork is unavailable); the environment
    may ask for either, but a forked child of a CUDA process cannot use CUDA."""
    requested = requested_method()
    fork_ok = "fork" in multiprocessing.get_all_start_methods()
    if requested == "spawn" or not fork_ok:
        return "spawn"
    if torch.cuda.is_initialized():
        if requested == "fork":
            logger.warning("CUDA is initialised in this process: starting workers with spawn")
        return "spawn"
    return "fork"


def in_spawn_bootstrap() -> bool:
    """True inside a spawned child while it re-imports the parent's main module."""
    return bool(getattr(multiprocessing.current_process(), "_inheriting", False))


def warn_if_unguarded() -> None:
    """Before spawning: the warning an unguarded main script needs."""
    if main_script_is_unguarded():
        logger.warning('The main script has no `if __name__ == "__main__":` guard: %s', GUARD_HINT)


def main_script_is_unguarded() -> bool:
    """Whether this call runs from the top level of the main script, outside an
    `if __name__ == "__main__":` block (the code spawn's re-import would run again)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    frame = _main_module_frame(main)
    if main is None or path is None or frame is None:
        return False  # interactive, `python -c`, or not called from the script's top level
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
    except (OSError, SyntaxError, ValueError):
        return False
    line = frame.f_lineno
    return not any(
        _is_main_guard(node) and node.lineno <= line <= (node.end_lineno or node.lineno)
        for node in tree.body
    )


def _main_module_frame(main: object) -> FrameType | None:
    frame = sys._getframe(1)
    namespace = getattr(main, "__dict__", None)
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals is namespace:
            return frame
        frame = frame.f_back  # type: ignore[assignment]
    return None


def _is_main_guard(node: ast.stmt) -> bool:
    """`if __name__ == "__main__":` (either operand order)."""
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    test = node.test
    if len(test.ops) != 1 or not isinstance(test.ops[0], ast.Eq):
        return False
    operands = [test.left, test.comparators[0]]
    names = [o.id for o in operands if isinstance(o, ast.Name)]
    strings = [o.value for o in operands if isinstance(o, ast.Constant)]
    return names == ["__name__"] and strings == ["__main__"]
