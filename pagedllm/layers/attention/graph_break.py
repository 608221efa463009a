"""Attention as the break between CUDA graphs (piecewise capture, see
pagedllm/worker/piecewise_graphs.py).

While a handler is installed, `Attention.forward` does not attend: it hands its
query/key/value to the handler and returns what the handler gives back. The
piecewise capture ends one graph there and begins the next, so that everything
between two attention calls is one graph and attention itself runs eagerly (its
kernels depend on the step's sequence lengths, which a graph cannot follow).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

# handler(layer, q [T, nh*hd], k [T, nkv*hd], v [T, nkv*hd], kv_cache) -> out [T, nh*hd]
BreakHandler = Callable[[Any, torch.Tensor, torch.Tensor, torch.Tensor, Any], torch.Tensor]

_handlers: list[BreakHandler] = []


@contextmanager
def break_at_attention(handler: BreakHandler) -> Iterator[None]:
    _handlers.append(handler)
    try:
        yield
    finally:
        _handlers.pop()


def active_handler() -> BreakHandler | None:
    return _handlers[-1] if _handlers else None
