"""The package's imports flow one way: entrypoints -> engine (front end) -> core ->
executor -> worker -> models and model_loader -> layers -> distributed. A module may
import its own layer and the layers below it, and the leaf modules every layer shares
(config, sampling_params, outputs, scheduler_output, exceptions, triton_utils, gc_utils); lazy imports inside functions
count too."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pagedllm"
RANKS = {
    "entrypoints": 0,
    "benchmarks": 0,
    "__init__": 0,
    "llm": 1,
    "scoring": 1,  # LLM.score and the Score/Re-rank APIs: cosine similarity of embeddings
    "engine": 1,
    "core": 2,
    "structured_output": 2,
    "executor": 3,
    "worker": 4,
    "models": 5,
    "model_loader": 5,
    "layers": 6,
    "distributed": 7,
}
LEAVES = {
    "config",
    "config_builder",
    "config_parallel",
    "engine_config",
    "sampling_params",
    "outputs",
    "scheduler_output",
    "exceptions",  # InvalidRequestError (a ValueError naming the request field)
    "triton_utils",  # the Triton launch helpers of every kernel (layers' and distributed's)
    "gc_utils",  # the serving processes' garbage-collector set-up (core, servers, workers)
}


def _layer(module: str) -> str:
    """pagedllm.core.scheduler -> core; pagedllm.outputs -> outputs."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
    return [name for name in found if name == "pagedllm" or name.startswith("pagedllm.")]


def test_imports_flow_one_way() -> None:
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = "pagedllm." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        layer = _layer(module)
        if layer in LEAVES:
            continue
        for imported in _imports(path):
            target = _layer(imported)
            if target in LEAVES or target == layer:
                continue
            if RANKS[target] < RANKS[layer]:
                upward.append(f"{module} imports {imported}")
    assert upward == []


def test_every_package_has_a_rank() -> None:
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("_")}
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    assert packages - set(RANKS) == set()
    assert modules - set(RANKS) - LEAVES == set()
