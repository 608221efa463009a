"""The structured-output token bitmask, applied to the logits before sampling.

Layout (llguidance's and xgrammar's): a row of W = ceil(V / 32) int32 words per
constrained request; bit j of word w set = token 32 * w + j allowed. Tokens at
32 * W and beyond (a logits width past the bitmask) are not allowed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pagedllm.layers.host_to_device import tensor_to_device


@dataclass
class GrammarBitmask:
    rows: torch.Tensor  # [R] int64, batch rows (into logits [N, V]) under a grammar
    bitmask: torch.Tensor  # [R, W] int32, W = ceil(V / 32)

    @classmethod
    def build(cls, rows: list[int], bitmask: np.ndarray, device: torch.device) -> GrammarBitmask:
        """Host rows and bitmask -> device tensors (pinned, non-blocking to a GPU)."""
        row_tensor = torch.tensor(rows, dtype=torch.int64)
        mask_tensor = torch.from_numpy(np.ascontiguousarray(bitmask, dtype=np.int32))
        return cls(tensor_to_device(row_tensor, device), tensor_to_device(mask_tensor, device))


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[R, W] int32 -> [R, vocab_size] bool, True = allowed."""
    num_rows, num_words = bitmask.shape
    shifts = torch.arange(32, dtype=torch.int32, device=bitmask.device)
    bits = (bitmask.unsqueeze(-1) >> shifts) & 1  # [R, W, 32]; >> sign-extends, & 1 drops it
    allowed = bits.view(num_rows, num_words * 32).bool()
    if allowed.shape[1] >= vocab_size:
        return allowed[:, :vocab_size]
    pad = torch.zeros(num_rows, vocab_size - allowed.shape[1], dtype=torch.bool)
    return torch.cat([allowed, pad.to(allowed.device)], dim=1)


def apply_grammar_bitmask_(logits: torch.Tensor, mask: GrammarBitmask) -> None:
    """Set the logits of tokens the rows' grammars do not allow to -inf, in place.
    logits [N, V] float; one vectorised unpack, no host sync."""
    allowed = unpack_bitmask(mask.bitmask, logits.shape[1])
    sub = logits.index_select(0, mask.rows).masked_fill_(~allowed, float("-inf"))
    logits.index_copy_(0, mask.rows, sub)
