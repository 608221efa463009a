"""A small paged-KV-cache driver for model tests: it plays the scheduler and the
model runner (block assignment, slot_mapping, AttentionMetadata) so that a model can
be run through prefill, chunked prefill and batched decode without the engine."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
from torch import nn

from pagedllm.config import EngineArgs, ModelConfig
from pagedllm.layers.attention import Attention, AttentionMetadata
from pagedllm.model_loader import get_model


def load_model(
    path: str, dtype: str = "float32", **kwargs: object
) -> tuple[nn.Module, ModelConfig]:
    args = EngineArgs(model=path, device="cpu", dtype=dtype, **kwargs)  # type: ignore[arg-type]
    model_config = args.create_engine_config().model_config
    return get_model(model_config, torch.device("cpu")), model_config


@dataclass
class _Seq:
    tokens: list[int]
    num_computed: int = 0
    blocks: list[int] = field(default_factory=list)


class PagedHarness:
    def __init__(
        self,
        model: nn.Module,
        model_config: ModelConfig,
        block_size: int = 4,
        num_blocks: int = 256,
        seed: int = 0,
    ) -> None:
        self.model = model
        self.block_size = block_size
        # This rank's kv heads (fewer than the config's under tensor parallelism).
        attn = next(m for m in model.modules() if isinstance(m, Attention))
        shape = (2, num_blocks, block_size, attn.num_kv_heads, attn.head_dim)
        self.kv_caches = [
            torch.zeros(shape, dtype=model_config.dtype) for _ in range(model_config.num_layers)
        ]
        # Shuffled so that block tables are not contiguous.
        self.free_blocks = list(range(num_blocks))
        random.Random(seed).shuffle(self.free_blocks)
        self.seqs: dict[int, _Seq] = {}

    def add(self, seq_id: int, prompt: list[int]) -> None:
        self.seqs[seq_id] = _Seq(list(prompt))

    def _slot(self, seq: _Seq, pos: int) -> int:
        while pos // self.block_size >= len(seq.blocks):
            seq.blocks.append(self.free_blocks.pop())
        return seq.blocks[pos // self.block_size] * self.block_size + pos % self.block_size

    def _metadata(
        self, work: list[tuple[_Seq, int]]
    ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        ids, positions, slots, qsl, seq_lens = [], [], [], [0], []
        for seq, n in work:
            start = seq.num_computed
            for pos in range(start, start + n):
                ids.append(seq.tokens[pos])
                positions.append(pos)
                slots.append(self._slot(seq, pos))
            qsl.append(qsl[-1] + n)
            seq_lens.append(start + n)
        width = max(len(seq.blocks) for seq, _ in work)
        tables = [seq.blocks + [0] * (width - len(seq.blocks)) for seq, _ in work]
        meta = AttentionMetadata(
            num_actual_tokens=len(ids),
            max_query_len=max(n for _, n in work),
            max_seq_len=max(seq_lens),
            query_start_loc=torch.tensor(qsl, dtype=torch.int32),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
            block_tables=torch.tensor(tables, dtype=torch.int32),
            slot_mapping=torch.tensor(slots, dtype=torch.int64),
            query_start_loc_cpu=torch.tensor(qsl, dtype=torch.int32),
            seq_lens_cpu=torch.tensor(seq_lens, dtype=torch.int32),
        )
        return torch.tensor(ids), torch.tensor(positions), meta

    @torch.no_grad()
    def step(self, work: dict[int, int], all_logits: bool = False) -> dict[int, torch.Tensor]:
        """Compute the next `n` tokens of each seq id; returns the logits of the last
        one ([V]) or, with all_logits, of every computed token ([n, V])."""
        items = [(self.seqs[sid], n) for sid, n in work.items()]
        input_ids, positions, meta = self._metadata(items)
        hidden = self.model(input_ids, positions, self.kv_caches, meta)
        logits = self.model.compute_logits(hidden)
        out, start = {}, 0
        for (sid, n), (seq, _) in zip(work.items(), items):
            out[sid] = logits[start : start + n] if all_logits else logits[start + n - 1]
            seq.num_computed += n
            start += n
        return out

    def prompt_logits(self, prompts: list[list[int]]) -> list[torch.Tensor]:
        """One batched prefill; logits of every prompt position, [len, V] each."""
        base = len(self.seqs)
        for i, prompt in enumerate(prompts):
            self.add(base + i, prompt)
        out = self.step({base + i: len(p) for i, p in enumerate(prompts)}, all_logits=True)
        return [out[base + i] for i in range(len(prompts))]

    def greedy(
        self, prompts: list[list[int]], max_tokens: int, chunk: int | None = None
    ) -> list[list[int]]:
        """Batched greedy decoding (EOS ignored). With `chunk`, each step computes at
        most `chunk` tokens of a sequence, so prompts are prefilled in pieces while
        other sequences already decode."""
        base = len(self.seqs)
        ids = [base + i for i in range(len(prompts))]
        for sid, prompt in zip(ids, prompts):
            self.add(sid, prompt)
        outputs: dict[int, list[int]] = {sid: [] for sid in ids}
        while any(len(outputs[sid]) < max_tokens for sid in ids):
            work = {}
            for sid in ids:
                seq = self.seqs[sid]
                if len(outputs[sid]) < max_tokens:
                    todo = len(seq.tokens) - seq.num_computed
                    work[sid] = min(todo, chunk) if chunk else todo
            logits = self.step(work)
            for sid in work:
                seq = self.seqs[sid]
                if seq.num_computed == len(seq.tokens):
                    token = int(logits[sid].argmax())
                    outputs[sid].append(token)
                    seq.tokens.append(token)
        return [outputs[sid] for sid in ids]
