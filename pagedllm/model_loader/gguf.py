"""GGUF checkpoints: the HF config, the tokenizer (with the chat template stored in
the file) and the weights under HF names.

Config and tokenizer come from transformers' own GGUF support. Parsing a GGUF's
metadata takes seconds, so the result is saved once as a plain HF directory
(config.json, tokenizer.json, chat_template.jinja) under
$PAGEDLLM_CACHE_DIR (default ~/.cache/pagedllm)/gguf/<name>-<key>, keyed by the file's
path, size and mtime and the transformers version; later loads read that directory.
Weights of Llama/Qwen2/Qwen3 GGUFs stream through gguf_reader (one tensor at a time,
llama.cpp's q/k row permutation undone), dequantized or, with quantization="gguf"
(the default for GGUF files), as raw blocks that the linear layers keep packed;
other architectures use transformers' load_gguf_checkpoint (dequantized).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import torch
from transformers import PretrainedConfig

from pagedllm.layers.quantization.gguf import mark_gguf
from pagedllm.layers.quantization.gguf_types import QUANTIZED_TYPES
from pagedllm.model_loader.gguf_reader import dequantize_tensor, raw_tensor, read_layout
from pagedllm.model_loader.registry import architecture_for_model_type

logger = logging.getLogger(__name__)

_STREAMING_ARCHS = ("llama", "qwen2", "qwen3")  # GGUF general.architecture values
_COMPLETE = ".complete"


def _split(gguf_path: str) -> tuple[str, str]:
    return os.path.dirname(gguf_path), os.path.basename(gguf_path)


def _cache_dir(gguf_path: str) -> str:
    import transformers

    stat = os.stat(gguf_path)
    ident = f"{gguf_path}|{stat.st_size}|{stat.st_mtime_ns}|{transformers.__version__}"
    key = hashlib.sha256(ident.encode()).hexdigest()[:16]
    root = os.environ.get("PAGEDLLM_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "pagedllm"
    )
    return os.path.join(root, "gguf", f"{os.path.splitext(os.path.basename(gguf_path))[0]}-{key}")


def _parse_gguf(gguf_path: str) -> tuple[PretrainedConfig, Any]:
    from transformers import AutoConfig, AutoTokenizer

    directory, name = _split(gguf_path)
    logger.info("parsing GGUF metadata of %s (cached afterwards)", gguf_path)
    try:
        return (
            AutoConfig.from_pretrained(directory, gguf_file=name),
            AutoTokenizer.from_pretrained(directory, gguf_file=name),
        )
    except Exception as exc:  # struct.error, "cannot reshape array", EOFError, ...
        raise ValueError(
            f"{gguf_path}: not a valid GGUF file (truncated or corrupt?): "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _save_cache(target: str, config: PretrainedConfig, tokenizer: Any) -> None:
    """Write atomically (temp dir + rename); a concurrent writer's result is as good."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=os.path.dirname(target), prefix=".tmp-")
    try:
        config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        open(os.path.join(tmp, _COMPLETE), "w").close()
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.isfile(os.path.join(target, _COMPLETE)):
            raise


@functools.lru_cache(maxsize=4)
def _load(gguf_path: str) -> tuple[PretrainedConfig, Any]:
    """(config, tokenizer) of a GGUF file (a real path), through the disk cache."""
    from transformers import AutoConfig, AutoTokenizer

    target = _cache_dir(gguf_path)
    if not os.path.isfile(os.path.join(target, _COMPLETE)):
        config, tokenizer = _parse_gguf(gguf_path)
        try:
            _save_cache(target, config, tokenizer)
        except OSError as err:
            logger.warning("cannot cache GGUF metadata in %s (%s); parsing each time", target, err)
            return config, tokenizer
    return AutoConfig.from_pretrained(target), AutoTokenizer.from_pretrained(target)


def load_gguf_config(gguf_path: str) -> PretrainedConfig:
    """The HF config stored in a GGUF file (`architectures` filled in from model_type).
    Each call returns a fresh copy."""
    config = copy.deepcopy(_load(os.path.realpath(gguf_path))[0])
    if not getattr(config, "architectures", None):
        arch = architecture_for_model_type(getattr(config, "model_type", None))
        config.architectures = [arch] if arch else []
    return config


def load_gguf_tokenizer(gguf_path: str) -> Any:
    """The tokenizer (with its chat template) stored in a GGUF file. Built once per
    process and shared: callers must not mutate it."""
    return _load(os.path.realpath(gguf_path))[1]


def _hf_reference_model(config: PretrainedConfig) -> torch.nn.Module:
    """An HF model on the meta device: its parameter names are the targets."""
    from transformers import AutoModel, AutoModelForCausalLM

    with torch.device("meta"):
        try:
            return AutoModelForCausalLM.from_config(config)
        except ValueError:
            return AutoModel.from_config(config)


def _gguf_to_hf_names(config: PretrainedConfig, gguf_arch: str) -> dict[str, str]:
    import gguf

    arch = next(key for key, value in gguf.MODEL_ARCH_NAMES.items() if value == gguf_arch)
    name_map = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    mapping = {}
    for hf_name in _hf_reference_model(config).state_dict():
        base, _, suffix = hf_name.rpartition(".")
        gguf_name = name_map.get_name(base)
        if gguf_name is not None:
            mapping[f"{gguf_name}.{suffix}"] = hf_name
    return mapping


def _unpermute(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row permutation (interleaved -> half-split rotary pairs).
    The permutation moves whole rows, so it applies as well to raw blocks [rows, bytes]."""
    half = weight.shape[0] // num_heads // 2
    return (
        weight.reshape(num_heads, half, 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)
    )


def _stream_weights(
    gguf_path: str, config: PretrainedConfig, keep_quantized: bool
) -> Iterator[tuple[str, torch.Tensor]]:
    layout = read_layout(gguf_path)
    gguf_arch = str(layout.metadata.get("general.architecture"))
    names = _gguf_to_hf_names(config, gguf_arch)
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    for info in layout.tensors:
        hf_name = names.get(info.name)
        if hf_name is None:
            logger.debug("GGUF tensor %s has no HF counterpart; skipped", info.name)
            continue
        tensor = (
            raw_tensor(layout, info)
            if keep_quantized and info.qtype in QUANTIZED_TYPES
            else dequantize_tensor(layout, info)
        )
        if gguf_arch == "llama" and ".attn_q." in info.name:
            tensor = _unpermute(tensor, config.num_attention_heads)
        elif gguf_arch == "llama" and ".attn_k." in info.name:
            tensor = _unpermute(tensor, kv_heads)
        if keep_quantized and info.qtype in QUANTIZED_TYPES:
            tensor = mark_gguf(tensor.contiguous(), info.qtype)
        yield hf_name, tensor


def _transformers_weights(
    gguf_path: str, config: PretrainedConfig
) -> Iterator[tuple[str, torch.Tensor]]:
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    parsed = load_gguf_checkpoint(
        gguf_path, return_tensors=True, model_to_load=_hf_reference_model(config)
    )
    tensors: dict[str, torch.Tensor] = parsed["tensors"]
    while tensors:
        name = next(iter(tensors))
        yield name, tensors.pop(name)  # drop each tensor once it has been copied


def iterate_gguf_weights(
    gguf_path: str, config: PretrainedConfig | None = None, keep_quantized: bool = False
) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, CPU tensor) for every weight of the GGUF file: dequantized float32,
    or with `keep_quantized` the raw blocks of quantized tensors (uint8 [rows, bytes]
    marked with `gguf_qtype`, see layers/quantization/gguf.py; Llama/Qwen/Mistral
    files only, other architectures are dequantized)."""
    config = config if config is not None else load_gguf_config(gguf_path)
    model_type = getattr(config, "model_type", "")
    if model_type in _STREAMING_ARCHS or model_type == "mistral":
        logger.info(
            "reading GGUF weights from %s (%s)",
            gguf_path,
            "kept quantized" if keep_quantized else "dequantized",
        )
        weights = _stream_weights(gguf_path, config, keep_quantized)
    else:
        logger.info("dequantizing GGUF weights from %s", gguf_path)
        weights = _transformers_weights(gguf_path, config)
    return _naming_file(weights, gguf_path)


def _naming_file(
    weights: Iterator[tuple[str, torch.Tensor]], path: str
) -> Iterator[tuple[str, torch.Tensor]]:
    """The weights; an error while reading them names the file."""
    try:
        yield from weights
    except Exception as exc:
        raise ValueError(
            f"{path}: cannot read the weights (truncated or corrupt?): {type(exc).__name__}: {exc}"
        ) from exc
