"""Tiny random Llama GGUF files in each block type, written with gguf-py's GGUFWriter.

The tokenizer (and vocabulary size) is copied from the packaged SmolLM2 file, so that
transformers can build the config and tokenizer from the file as for real ones. The
weights are random: the plain types go through gguf-py's quantizers; gguf-py cannot
quantize K-quants, so their blocks are random bytes with small super-block scales
(every bit pattern is a valid block), which exercises the whole layout.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

HIDDEN, INTERMEDIATE, LAYERS, HEADS, KV_HEADS = 256, 512, 2, 4, 2
K_QUANT_BYTES = {"Q4_K": 144, "Q5_K": 176, "Q6_K": 210}


@functools.lru_cache(maxsize=1)
def _tokenizer_fields() -> list[tuple[str, Any, Any, Any]]:
    """(key, value, value type, array element type) of the SmolLM2 file's tokenizer."""
    import gguf

    from pagedllm.model_loader.resolve import _SMOLLM2_PACKAGE, _packaged_model_path

    reader = gguf.GGUFReader(_packaged_model_path(*_SMOLLM2_PACKAGE))
    out = []
    for key, field in reader.fields.items():
        if key.startswith("tokenizer."):
            sub = field.types[1] if len(field.types) > 1 else None
            out.append((key, field.contents(), field.types[0], sub))
    return out


def _k_quant_blocks(rng: np.random.Generator, rows: int, cols: int, name: str) -> np.ndarray:
    """Random K-quant blocks with small scales (|w| <~ 0.05, mean near 0)."""
    nbytes = K_QUANT_BYTES[name]
    raw = rng.integers(0, 256, (rows, cols // 256, nbytes), dtype=np.uint8)
    if name == "Q6_K":  # int8 sub-block scales in 1..8, d = 2e-4
        raw[..., 192:208] = rng.integers(1, 9, (rows, cols // 256, 16), dtype=np.uint8)
        scales = [(208, 2e-4)]
    else:  # six-bit scales and mins (any byte pattern), d and dmin
        scales = [(0, 5e-5), (2, 4e-4)]
    for offset, value in scales:
        d = np.full((rows, cols // 256, 1), value, dtype=np.float16)
        raw[..., offset : offset + 2] = d.view(np.uint8)
    return raw.reshape(rows, -1)


def _tensor(rng: np.random.Generator, rows: int, cols: int, qtype_name: str) -> np.ndarray:
    from gguf import GGMLQuantizationType, quants

    if qtype_name in K_QUANT_BYTES:
        return _k_quant_blocks(rng, rows, cols, qtype_name)
    w = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
    if qtype_name == "F32":
        return w
    return quants.quantize(w, GGMLQuantizationType[qtype_name])


def _shapes(vocab: int) -> dict[str, tuple[int, int]]:
    head_dim = HIDDEN // HEADS
    shapes = {"token_embd.weight": (vocab, HIDDEN)}
    for i in range(LAYERS):
        shapes |= {
            f"blk.{i}.attn_q.weight": (HIDDEN, HIDDEN),
            f"blk.{i}.attn_k.weight": (KV_HEADS * head_dim, HIDDEN),
            f"blk.{i}.attn_v.weight": (KV_HEADS * head_dim, HIDDEN),
            f"blk.{i}.attn_output.weight": (HIDDEN, HIDDEN),
            f"blk.{i}.ffn_gate.weight": (INTERMEDIATE, HIDDEN),
            f"blk.{i}.ffn_up.weight": (INTERMEDIATE, HIDDEN),
            f"blk.{i}.ffn_down.weight": (HIDDEN, INTERMEDIATE),
        }
    return shapes


# Every block type, and fused layers whose parts differ (q/k/v, gate/up).
MIXED_TYPES = {
    "token_embd": "Q6_K",
    "blk.0.attn_q": "Q4_0",
    "blk.0.attn_k": "Q4_1",
    "blk.0.attn_v": "Q5_0",
    "blk.0.attn_output": "Q5_1",
    "blk.0.ffn_gate": "Q8_0",
    "blk.0.ffn_up": "Q4_K",
    "blk.0.ffn_down": "Q5_K",
    "blk.1.attn_q": "Q6_K",
    "blk.1.attn_k": "Q6_K",
    "blk.1.attn_v": "Q4_K",
    "blk.1.attn_output": "Q8_0",
    "blk.1.ffn_gate": "Q5_1",
    "blk.1.ffn_up": "Q5_1",
    "blk.1.ffn_down": "Q6_K",
}


def write_tiny_llama_gguf(path: Path, types: dict[str, str], seed: int = 0) -> Path:
    """A 2-layer Llama (hidden 256); `types` maps a tensor ("blk.0.attn_q") to its
    GGUF type name; norms are F32."""
    import gguf

    fields = _tokenizer_fields()
    vocab = len(next(v for k, v, _, _ in fields if k == "tokenizer.ggml.tokens"))
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(512)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(INTERMEDIATE)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(vocab)
    for key, value, vtype, sub in fields:
        writer.add_key_value(key, value, vtype, sub_type=sub)
    for name, (rows, cols) in _shapes(vocab).items():
        type_name = types[name.removesuffix(".weight")]
        data = _tensor(rng, rows, cols, type_name)
        raw_dtype = None if type_name == "F32" else gguf.GGMLQuantizationType[type_name]
        writer.add_tensor(name, data, raw_dtype=raw_dtype)
    for i in range(LAYERS):
        for norm in ("attn_norm", "ffn_norm"):
            writer.add_tensor(f"blk.{i}.{norm}.weight", rng.uniform(0.8, 1.2, HIDDEN).astype("f4"))
    writer.add_tensor("output_norm.weight", np.ones(HIDDEN, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
