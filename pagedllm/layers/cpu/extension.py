"""The CPU C++ extensions: built once per machine, then imported without torch's lock.

torch's `cpp_extension.load` takes a lock file in the build directory and runs ninja on
every call, also when the module is built and current. A process killed inside that
window (an engine core stopped during its first step: the tests kill some on purpose)
leaves the lock behind, and every later process that loads the extension then waits on
it forever. So after a build this writes a stamp beside the module (a hash of the
sources, headers and flags), and a later load whose stamp matches imports the module
file directly; only a missing or stale stamp goes through `load` (and its lock).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Sequence
from types import ModuleType


def load_extension(
    name: str,
    sources: Sequence[str],
    flags: Sequence[str],
    headers: Sequence[str] = (),
    include_paths: Sequence[str] = (),
) -> ModuleType:
    """The compiled module `name` (raises where it cannot be built)."""
    from torch.utils.cpp_extension import _get_build_directory, load

    build_dir = _get_build_directory(name, verbose=False)
    path = os.path.join(build_dir, f"{name}.so")
    stamp = os.path.join(build_dir, f"{name}.pagedllm-stamp")
    digest = _digest([*sources, *headers], [*flags, *include_paths])
    if os.path.exists(path) and _read(stamp) == digest:
        return _import(name, path)
    module = load(
        name=name,
        sources=list(sources),
        extra_cflags=list(flags),
        # torch compiles without -fopenmp: at::parallel_for's `#pragma omp parallel`
        # (an inline header) was then ignored and every kernel ran on one thread. The
        # module links libgomp.so.1, which resolves to the copy torch has loaded.
        extra_ldflags=["-fopenmp"] if "-fopenmp" in flags else None,
        extra_include_paths=list(include_paths) or None,
    )
    if os.path.abspath(getattr(module, "__file__", "")) == os.path.abspath(path):
        _write(stamp, digest)  # not when torch built a renamed copy (name_v1)
    return module


def _digest(files: Sequence[str], options: Sequence[str]) -> str:
    h = hashlib.sha256()
    for file in files:
        with open(file, "rb") as f:
            h.update(f.read())
    h.update("\0".join(options).encode())
    return h.hexdigest()


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _write(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)  # atomic: a reader sees the old stamp or the new one


def _import(name: str, path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
