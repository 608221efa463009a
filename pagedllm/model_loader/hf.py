"""Weights of an HF model directory: *.safetensors (single or sharded) or *.bin/*.pt."""

from __future__ import annotations

import glob
import json
import logging
import os
from collections.abc import Iterator

import torch

logger = logging.getLogger(__name__)

# Files that sit beside the weights but are not weights.
_NOT_WEIGHTS = ("training_args.bin", "optimizer.bin", "scheduler.bin", "rng_state.pth")


def _index_files(model_dir: str, index_name: str) -> list[str] | None:
    index_path = os.path.join(model_dir, index_name)
    if not os.path.isfile(index_path):
        return None
    with open(index_path) as f:
        weight_map: dict[str, str] = json.load(f)["weight_map"]
    return [os.path.join(model_dir, name) for name in sorted(set(weight_map.values()))]


def safetensors_files(model_dir: str) -> list[str]:
    indexed = _index_files(model_dir, "model.safetensors.index.json")
    return (
        indexed
        if indexed is not None
        else sorted(glob.glob(os.path.join(model_dir, "*.safetensors")))
    )


def pt_files(model_dir: str) -> list[str]:
    indexed = _index_files(model_dir, "pytorch_model.bin.index.json")
    if indexed is not None:
        return indexed
    found = glob.glob(os.path.join(model_dir, "*.bin")) + glob.glob(os.path.join(model_dir, "*.pt"))
    return sorted(f for f in found if os.path.basename(f) not in _NOT_WEIGHTS)


def detect_hf_load_format(model_dir: str) -> str | None:
    """'safetensors' or 'pt' (whichever the directory holds, safetensors first), else None."""
    if safetensors_files(model_dir):
        return "safetensors"
    if pt_files(model_dir):
        return "pt"
    return None


def iterate_safetensors(files: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    for path in files:
        try:
            handle = safe_open(path, framework="pt", device="cpu")
        except Exception as exc:  # SafetensorError: a truncated or foreign file
            raise ValueError(f"{path}: not a valid safetensors file: {exc}") from exc
        with handle as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                yield name, f.get_tensor(name)


def iterate_pt(files: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
    for path in files:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        yield from state.items()
        del state


def iterate_hf_weights(model_dir: str, load_format: str) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, CPU tensor) for every tensor of the checkpoint in `model_dir`."""
    files = safetensors_files(model_dir) if load_format == "safetensors" else pt_files(model_dir)
    if not files:
        raise ValueError(f"no {load_format} weight files found in {model_dir}")
    logger.info("loading %d %s file(s) from %s", len(files), load_format, model_dir)
    if load_format == "safetensors":
        return iterate_safetensors(files)
    return iterate_pt(files)
