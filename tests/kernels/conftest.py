"""Kernel tests run the Triton kernels on CPU tensors through Triton's interpreter.

TRITON_INTERPRET must be in the environment before triton is first imported (the
decorators of triton.language itself read it then), so it is set here at import time,
and no pagedllm module outside the `triton_*` files may import triton at import time.
On a machine with CUDA it is left alone so that the `gpu` tests compile real kernels;
there the CPU-tensor tests of this folder are skipped (they need the interpreter)
unless TRITON_INTERPRET=1 is set for the whole run.
"""

import os
import sys
from pathlib import Path

import pytest
import torch

_HERE = Path(__file__).resolve().parent

if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    if "triton" in sys.modules:
        raise RuntimeError(
            "triton was imported before tests/kernels/conftest.py could set TRITON_INTERPRET=1; "
            "import triton lazily (inside functions or triton_* modules), or run the tests "
            "with TRITON_INTERPRET=1 in the environment"
        )
    os.environ["TRITON_INTERPRET"] = "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("TRITON_INTERPRET") == "1":
        return
    skip = pytest.mark.skip(
        reason="CPU-tensor kernel tests need Triton's interpreter: run them with "
        "TRITON_INTERPRET=1 (the gpu tests need it unset), or on a machine without CUDA"
    )
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents and "gpu" not in item.keywords:
            item.add_marker(skip)
