"""Vocabulary-parallel embedding and LM head.

The vocabulary is padded up to a multiple of tp_size and split in equal ranges:

    rank r holds token ids [r * V_pad/tp, (r+1) * V_pad/tp)   (rows past V are zero)

Embedding: each rank looks up the ids it owns (others give zero rows) and the
partial results are summed (all-reduce). LM head: each rank computes the logits of
its range and the ranges are all-gathered, then trimmed back to V.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.distributed.parallel_state import (
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_world_size,
    tensor_model_parallel_all_gather,
    tensor_model_parallel_all_reduce,
)
from pagedllm.layers.cpu_linear import linear


class VocabParallelEmbedding(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        self.tp_rank = get_tensor_model_parallel_rank()
        self.tp_size = get_tensor_model_parallel_world_size()
        self.num_embeddings = num_embeddings  # V, the real vocabulary size
        self.embedding_dim = embedding_dim
        self.num_embeddings_per_partition = -(-num_embeddings // self.tp_size)
        # Ranks past the end of a tiny vocabulary own an empty range (all padding).
        self.vocab_start_index = min(
            self.tp_rank * self.num_embeddings_per_partition, num_embeddings
        )
        self.vocab_end_index = min(
            self.vocab_start_index + self.num_embeddings_per_partition, num_embeddings
        )
        self.weight = nn.Parameter(
            torch.empty(self.num_embeddings_per_partition, embedding_dim), requires_grad=False
        )
        self.weight.weight_loader = self.weight_loader  # type: ignore[attr-defined]

    def weight_loader(
        self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: Any = None
    ) -> None:
        if getattr(loaded_weight, "gguf_qtype", None) is not None:
            loaded_weight = self._load_gguf(param, loaded_weight)
        if (
            loaded_weight.shape[1:] != param.shape[1:]
            or loaded_weight.shape[0] < self.vocab_end_index
        ):
            raise ValueError(
                f"embedding weight of shape {tuple(loaded_weight.shape)} does not fit vocab "
                f"size {self.num_embeddings} x {self.embedding_dim}"
            )
        num = self.vocab_end_index - self.vocab_start_index
        with torch.no_grad():
            param[:num].copy_(loaded_weight[self.vocab_start_index : self.vocab_end_index])
            param[num:].zero_()

    def _load_gguf(self, param: nn.Parameter, raw: torch.Tensor) -> torch.Tensor:
        """GGUF blocks (quantization="gguf"): the lookup table is dequantized; with one
        rank the packed blocks are kept on the parameter too (`gguf_packed`, shared by
        a tied LM head), for LogitsProcessor's packed matmul."""
        from pagedllm.layers.quantization.gguf_repack import dequantize, repack

        packed = repack(raw, int(raw.gguf_qtype))  # type: ignore[attr-defined]
        if self.tp_size == 1 and param.device.type == "cpu":
            param.gguf_packed = packed  # type: ignore[attr-defined]
        return dequantize(packed)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return F.embedding(input_ids, self.weight)
        owned = (input_ids >= self.vocab_start_index) & (input_ids < self.vocab_end_index)
        local_ids = torch.where(owned, input_ids - self.vocab_start_index, 0)
        out = F.embedding(local_ids, self.weight) * owned.unsqueeze(-1).to(self.weight.dtype)
        return tensor_model_parallel_all_reduce(out)


class ParallelLMHead(VocabParallelEmbedding):
    """The output projection, sharded like the embedding (so tying is a weight share)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, bias: bool = False) -> None:
        super().__init__(num_embeddings, embedding_dim)
        if bias:
            self.bias: nn.Parameter | None = nn.Parameter(
                torch.empty(self.num_embeddings_per_partition), requires_grad=False
            )
            self.bias.weight_loader = self._bias_loader  # type: ignore[attr-defined]
        else:
            self.register_parameter("bias", None)

    def _bias_loader(
        self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: Any = None
    ) -> None:
        num = self.vocab_end_index - self.vocab_start_index
        with torch.no_grad():
            param[:num].copy_(loaded_weight[self.vocab_start_index : self.vocab_end_index])
            param[num:].zero_()

    def tie_weights(self, embed: VocabParallelEmbedding) -> None:
        self.weight = embed.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("ParallelLMHead is not an embedding; use LogitsProcessor")


class LogitsProcessor(nn.Module):
    """hidden [N, H] -> logits [N, V] float32 through a (possibly tied) vocab-parallel head.

    `scale` multiplies the logits; `soft_cap` applies cap * tanh(logits / cap) (Gemma 2).
    """

    def __init__(self, vocab_size: int, scale: float = 1.0, soft_cap: float | None = None) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.scale = scale
        self.soft_cap = soft_cap

    def forward(
        self,
        head: VocabParallelEmbedding,
        hidden_states: torch.Tensor,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`out`: a float32 [N, V] tensor to write the logits into (CUDA graphs share
        one such buffer across their batch sizes); a new tensor otherwise."""
        bias = getattr(head, "bias", None)
        packed = getattr(head.weight, "gguf_packed", None)
        if packed is not None and hidden_states.dtype == torch.float32:
            from pagedllm.layers.quantization.gguf_kernels import gguf_linear

            logits = gguf_linear(hidden_states, packed, bias)
        else:
            logits = linear(hidden_states, head.weight, bias)
        logits = tensor_model_parallel_all_gather(logits, dim=-1)[..., : self.vocab_size]
        if out is None:
            out = logits.float()
        else:
            out.copy_(logits)
        if self.scale != 1.0:
            out.mul_(self.scale)
        if self.soft_cap is not None:
            out.div_(self.soft_cap).tanh_().mul_(self.soft_cap)
        return out
