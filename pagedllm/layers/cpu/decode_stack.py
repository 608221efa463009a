"""A decode step of a Llama-family decoder stack on the CPU in one C++ call
(decode_stack.cpp): every layer's RMSNorm, qkv projection, rotary, KV write, attention,
o projection, MLP, and the final norm, through the same kernels the Python path calls
(decode_ops.cpp, the packed GGUF kernel, oneDNN), in the same order: the hidden states
are those of the Python path bit for bit. At one chat at a time the Python path spent
more time in module calls and wrappers than in the matrix products.

It applies where the Python path would run exactly those kernels: float32 CPU
activations and KV cache, a decode-only step (one new token per sequence, fewer rows
than the GGUF kernel's dequantizing threshold), no autograd, one tensor-parallel rank
and pipeline stage, and layers of models/llama.py without biases, q/k norms, sliding
windows or other rotary styles, whose linear layers are GGUF (packed or float32 parts)
or float32. Anything else runs the Python path. The layer weights are registered once,
at the first step that applies. `PAGEDLLM_CPU_DECODE_STACK=0` turns it off, as do
`PAGEDLLM_CPU_DECODE_OPS=0` and `PAGEDLLM_GGUF_KERNEL=reference`.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

import torch
from torch import nn

from pagedllm.layers import cpu_linear
from pagedllm.layers.attention.metadata import AttentionMetadata
from pagedllm.layers.cpu import decode_ops
from pagedllm.layers.quantization import gguf_kernels
from pagedllm.layers.quantization.gguf_repack import PackedGGUF

logger = logging.getLogger(__name__)

_HERE = os.path.dirname(__file__)
_SOURCES = [
    os.path.join(_HERE, "decode_stack.cpp"),
    os.path.join(_HERE, "decode_ops.cpp"),
    *gguf_kernels.SOURCES,
]
_HEADERS = [os.path.join(_HERE, "cpu_kernels.h"), gguf_kernels.HEADER]
# The union of the two kernels' own flags, so that their code here rounds as there.
_FLAGS = [*dict.fromkeys([*decode_ops.FLAGS, *gguf_kernels.FLAGS]), "-DPAGEDLLM_NO_PYBIND_MODULE"]
_EMPTY_MINS = torch.empty(0, dtype=torch.float16)
_ATTR = "_cpu_decode_stack"  # on the model: the DecodeStack, or False where it cannot apply


def enabled() -> bool:
    return os.environ.get("PAGEDLLM_CPU_DECODE_STACK", "1") != "0"


@functools.lru_cache(maxsize=1)
def decode_stack_extension() -> Any | None:
    """The compiled module, or None (logged once) where it cannot be had."""
    if decode_ops.decode_ops() is None or gguf_kernels.cpu_extension() is None:
        return None  # no AVX2 or compiler, or those kernels turned off
    try:
        from pagedllm.layers.cpu.extension import load_extension

        flags = [*_FLAGS, gguf_kernels.header_flag()]
        return load_extension("pagedllm_cpu_decode_stack", _SOURCES, flags, _HEADERS, [_HERE])
    except Exception as exc:  # no compiler, missing headers, ...
        logger.warning("cannot build the CPU decode stack (%s); using the Python layers", exc)
        return None


def decode_step(
    model: Any,  # models/llama.py's LlamaModel
    input_ids: torch.Tensor,
    positions: torch.Tensor,
    kv_caches: list[torch.Tensor],
    metadata: AttentionMetadata,
) -> torch.Tensor | None:
    """The final-normed hidden states of this step, or None where the stack does not
    apply (then the caller runs its layers)."""
    if not _step_applies(input_ids, positions, kv_caches, metadata):
        return None
    stack = model.__dict__.get(_ATTR)
    if stack is None:
        stack = _build(model) or False
        model.__dict__[_ATTR] = stack
    if stack is False:
        return None
    hidden = model.embed(input_ids)
    if hidden.dtype != torch.float32 or not hidden.is_contiguous():
        return None
    slots = metadata.slot_mapping
    out: torch.Tensor = stack.forward(
        hidden, positions, kv_caches, metadata.block_tables, metadata.seq_lens, slots
    )
    return out


def _step_applies(
    input_ids: torch.Tensor,
    positions: torch.Tensor,
    kv_caches: list[torch.Tensor],
    md: AttentionMetadata,
) -> bool:
    """The per-step conditions (cheap: this runs every step)."""
    n = input_ids.shape[0]
    return (
        n > 0
        and input_ids.is_cpu
        and md.max_query_len == 1
        and md.seq_lens.shape[0] == n
        and bool(kv_caches)
        and kv_caches[0].dtype == torch.float32
        and kv_caches[0].dim() == 5
        and not torch.is_grad_enabled()
        and positions.dtype == torch.int64
        and positions.is_contiguous()
        and md.seq_lens.dtype == torch.int32
        and md.block_tables.dtype == torch.int32
        and md.seq_lens.is_cpu
        and md.seq_lens.is_contiguous()
        and md.block_tables.is_contiguous()
        and md.slot_mapping.dtype == torch.int64
        and md.slot_mapping.is_contiguous()
    )


def _build(model: Any) -> Any | None:
    """The DecodeStack with the model's weights, or None (logged at debug level, why)."""
    if not enabled():
        return None
    reason = _static_reason(model)
    if reason is not None:
        logger.debug("CPU decode stack not used: %s", reason)
        return None
    ext = decode_stack_extension()
    if ext is None:
        return None
    layers = list(model.layers)
    attn = layers[0].self_attn
    rope = attn.rotary_emb
    norm = model.norm
    stack = ext.DecodeStack(
        attn.num_heads,
        attn.num_kv_heads,
        attn.head_dim,
        float(norm.variance_epsilon),
        float(attn.attn.scale),
        rope.cos_sin_cache,
        norm.weight,
    )
    for layer in layers:
        a, mlp = layer.self_attn, layer.mlp
        stack.add_layer(
            layer.input_layernorm.weight,
            layer.post_attention_layernorm.weight,
            *(_parts(lin, ext) for lin in (a.qkv_proj, a.o_proj, mlp.gate_up_proj, mlp.down_proj)),
        )
    logger.info("CPU decode steps run as one C++ call (%d layers)", len(layers))
    return stack


def _parts(linear: Any, ext: Any) -> list[tuple[Any, ...]]:
    """The (weight, scales, mins, kind, group) tuples decode_stack.cpp takes."""
    from pagedllm.layers.quantization.gguf import GGUFLinearMethod

    gguf = isinstance(linear.quant_method, GGUFLinearMethod)
    weights: list[Any] = linear.gguf_parts if gguf else [linear.weight]
    out: list[tuple[Any, ...]] = []
    for w in weights:
        if isinstance(w, PackedGGUF):
            mins = w.mins if w.mins is not None else _EMPTY_MINS
            out.append((w.qweight, w.scales, mins, w.bits, w.group))
        elif cpu_linear._ENABLED:  # what cpu_linear.linear multiplies with
            out.append((cpu_linear._packed(w), _EMPTY_MINS, _EMPTY_MINS, ext.ONEDNN, 0))
        else:
            out.append((w, _EMPTY_MINS, _EMPTY_MINS, ext.FLOAT, 0))
    return out


def _static_reason(model: Any) -> str | None:
    """Why the model's layers cannot run as the stack (None: they can)."""
    from pagedllm.layers.activation import SiluAndMul
    from pagedllm.layers.attention.torch_backend import TorchAttentionBackend

    layer_type, mlp_type = model.decode_stack_types  # models/llama.py's, not imported here
    if model.start_layer != 0 or model.end_layer != len(model.layers):
        return "pipeline stages"
    if not model.is_last_stage or not model.layers:
        return "not the last pipeline stage"
    eps = model.norm.variance_epsilon
    for layer in model.layers:
        if not isinstance(layer, layer_type) or type(layer.mlp) is not mlp_type:
            return f"layer type {type(layer).__name__} / {type(layer.mlp).__name__}"
        a, mlp = layer.self_attn, layer.mlp
        if not isinstance(mlp.act_fn, SiluAndMul):
            return "activation"
        if a.qk_norm_rotary is not None or type(a.attn.backend) is not TorchAttentionBackend:
            return "q/k norms or attention backend"
        if a.attn.has_window_or_soft_cap or not a.attn.causal:
            return "sliding window, soft cap or non-causal attention"
        rope = a.rotary_emb
        if not rope.is_neox_style or rope.rotary_dim != rope.head_size:
            return "rotary style"
        if (
            rope.cos_sin_cache.dtype != torch.float32
            or rope is not model.layers[0].self_attn.rotary_emb
        ):
            return "rotary cache"
        norms = (layer.input_layernorm, layer.post_attention_layernorm, model.norm)
        if any(
            n.weight_offset or n.weight.dtype != torch.float32 or n.variance_epsilon != eps
            for n in norms
        ):
            return "norms"
        for lin in (a.qkv_proj, a.o_proj, mlp.gate_up_proj, mlp.down_proj):
            reason = _linear_reason(lin)
            if reason is not None:
                return f"{lin.prefix}: {reason}"
    return None


def _linear_reason(linear: nn.Module) -> str | None:
    from pagedllm.layers.quantization.gguf import GGUFLinearMethod
    from pagedllm.layers.quantization.unquantized import UnquantizedLinearMethod

    if linear.bias is not None or getattr(linear, "tp_size", 1) != 1:
        return "bias or tensor parallelism"
    if getattr(linear, "gather_output", False):
        return "gathered output"
    method = linear.quant_method
    if isinstance(method, GGUFLinearMethod):
        parts = linear.gguf_parts
        if not parts:
            return "GGUF weights not loaded"
        if any(isinstance(p, torch.Tensor) and p.dtype != torch.float32 for p in parts):
            return "a GGUF part neither packed nor float32"
        return None
    if type(method) is UnquantizedLinearMethod and linear.weight.dtype == torch.float32:
        return None
    return f"quantization method {type(method).__name__}"
