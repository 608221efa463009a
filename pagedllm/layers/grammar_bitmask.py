"""The structured-output token bitmask, applied to the logits before sampling.

Layout (llguidance's and xgrammar's): a row of W = ceil(V / 32) int32 words per
constrained request; bit j of word w set = token 32 * w + j allowed. Tokens at
32 * W and beyond (a logits width past the bitmask) are not allowed.

On a little-endian machine (x86, ARM, every CUDA device) the same row read as
4 * W bytes has token 8 * b + k in bit k of byte b, so the mask unpacks byte-wise
into [R, 32 * W] uint8 (a quarter of the memory an int32 unpack takes):

    int32 word w:  | byte 4w: tokens 32w..32w+7 | byte 4w+1: +8..+15 | ... |
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np
import torch

from pagedllm.layers.host_to_device import tensor_to_device

assert sys.byteorder == "little", "the byte-wise unpack reads int32 words as little-endian"


@dataclass
class GrammarBitmask:
    # [R] int64, the batch rows (into logits [N, V]) under a grammar; None when every
    # row is, in order (R == N): the mask then applies in place with no gather.
    rows: torch.Tensor | None
    bitmask: torch.Tensor  # [R, W] int32, W = ceil(V / 32)

    @classmethod
    def build(
        cls,
        rows: list[int],
        bitmask: np.ndarray,
        device: torch.device,
        num_logits_rows: int | None = None,
    ) -> GrammarBitmask:
        """Host rows and bitmask -> device tensors (pinned, non-blocking to a GPU).
        num_logits_rows: N, when known (lets a mask over every row skip the gather)."""
        on_device = tensor_to_device(host_tensor(bitmask), device)
        if num_logits_rows == len(rows) and rows == list(range(len(rows))):
            return cls(None, on_device)
        return cls(tensor_to_device(torch.tensor(rows, dtype=torch.int64), device), on_device)


def host_tensor(bitmask: np.ndarray) -> torch.Tensor:
    """The bitmask as an int32 tensor: the pinned torch tensor it is a view of when the
    engine filled one (StructuredOutputManager's new_bitmask; copied to a GPU as it is,
    its storage known to the caching host allocator), else a tensor sharing its memory."""
    base = bitmask.base
    if (
        isinstance(base, torch.Tensor)
        and base.dtype == torch.int32
        and tuple(base.shape) == bitmask.shape
        and base.data_ptr() == bitmask.ctypes.data
    ):
        return base
    return torch.from_numpy(np.ascontiguousarray(bitmask, dtype=np.int32))


def _disallowed(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[R, W] int32 -> [R, vocab_size] bool, True = not allowed."""
    num_rows, num_words = bitmask.shape
    as_bytes = bitmask.contiguous().view(torch.uint8)  # [R, 4W]
    if as_bytes.device.type == "cpu":  # numpy's unpack is several times faster there
        bits = torch.from_numpy(np.unpackbits(as_bytes.numpy(), axis=1, bitorder="little"))
    else:
        bits = unpack_bytes(as_bytes)
    banned = bits == 0  # [R, 32W]
    if banned.shape[1] >= vocab_size:
        return banned[:, :vocab_size]
    pad = torch.ones(num_rows, vocab_size - banned.shape[1], dtype=torch.bool)
    return torch.cat([banned, pad.to(banned.device)], dim=1)


def unpack_bytes(as_bytes: torch.Tensor) -> torch.Tensor:
    """[R, B] uint8 -> [R, 8B] uint8 bits, least significant first (on any device)."""
    shifts = torch.arange(8, dtype=torch.uint8, device=as_bytes.device)
    return ((as_bytes.unsqueeze(-1) >> shifts) & 1).view(as_bytes.shape[0], -1)


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[R, W] int32 -> [R, vocab_size] bool, True = allowed."""
    return ~_disallowed(bitmask, vocab_size)


def apply_grammar_bitmask_(logits: torch.Tensor, mask: GrammarBitmask) -> None:
    """Set the logits of tokens the rows' grammars do not allow to -inf, in place.
    logits [N, V] float; one vectorised unpack and one masked fill, no host sync.
    Rows under no grammar get an all-False row of the [N, V] bool mask (scattering
    the bool mask costs a quarter of gathering and scattering float logits)."""
    banned = _disallowed(mask.bitmask, logits.shape[1])
    if mask.rows is not None:
        full = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
        banned = full.index_copy_(0, mask.rows, banned)
    logits.masked_fill_(banned, float("-inf"))


# The one-pass Triton kernel is opt-in until its GPU test has run (it was written after
# the eighth session's device time ran out; it passes the interpreter tests).
_TRITON_BITMASK = os.environ.get("PAGEDLLM_TRITON_GRAMMAR_BITMASK") == "1"


def grammar_masked_logits(logits: torch.Tensor, mask: GrammarBitmask) -> torch.Tensor:
    """A copy of logits [N, V] float with the tokens the rows' grammars do not allow at
    -inf. With PAGEDLLM_TRITON_GRAMMAR_BITMASK=1 on a GPU, one Triton pass reads the
    packed words (triton_grammar_bitmask.py); otherwise a clone masked by
    `apply_grammar_bitmask_`."""
    if logits.is_cuda and _TRITON_BITMASK:
        from pagedllm.layers.kernels.triton_grammar_bitmask import masked_logits

        return masked_logits(logits, mask.bitmask, mask.rows)
    out = logits.clone()
    apply_grammar_bitmask_(out, mask)
    return out
