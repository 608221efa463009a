"""Kernel tests run the Triton kernels on CPU tensors through Triton's interpreter.

TRITON_INTERPRET must be in the environment before triton is first imported (the
decorators of triton.language itself read it then), so it is set here at import time,
and no pagedllm module outside the `triton_*` files may import triton at import time.
On a machine with CUDA it is left alone so that the `gpu` tests compile real kernels.
"""

import os
import sys

import torch

if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    if "triton" in sys.modules:
        raise RuntimeError(
            "triton was imported before tests/kernels/conftest.py could set TRITON_INTERPRET=1; "
            "import triton lazily (inside functions or triton_* modules), or run the tests "
            "with TRITON_INTERPRET=1 in the environment"
        )
    os.environ["TRITON_INTERPRET"] = "1"
