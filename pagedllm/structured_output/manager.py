"""StructuredOutputManager: the engine core's side of structured outputs.

    add_request        grammar_init: compile on a thread pool (the busy loop never
                       waits for it); the scheduler keeps the request waiting until
                       its grammar is ready
    each step          grammar_bitmask: one [R, ceil(V / 32)] int32 row per scheduled
                       request that samples under a grammar, filled from its matcher
    after the step     the scheduler advances each matcher with the accepted token;
                       a terminated grammar finishes the request

The backend (and with it the tokenizer, which the core otherwise never loads) is
built on first use, on the compile thread."""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from pagedllm.config import EngineConfig
from pagedllm.sampling_params import StructuredOutputsParams
from pagedllm.structured_output.backend_types import (
    StructuredOutputBackend,
    StructuredOutputGrammar,
    StructuredOutputKind,
    bitmask_words,
)
from pagedllm.structured_output.request import StructuredOutputRequest, grammar_spec
from pagedllm.structured_output.validate import backend_name

logger = logging.getLogger(__name__)


class StructuredOutputManager:
    def __init__(self, engine_config: EngineConfig) -> None:
        self.engine_config = engine_config
        self.config = engine_config.structured_outputs_config
        self.vocab_size = engine_config.model_config.vocab_size
        self._backend: StructuredOutputBackend | None = None
        self._backend_lock = threading.Lock()
        # Compilation is CPU-bound (llguidance and xgrammar drop the GIL): half the cores.
        workers = max(2, (os.cpu_count() or 2) // 2)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grammar")
        self.num_words = bitmask_words(self.vocab_size)

    def grammar_init(self, params: StructuredOutputsParams) -> StructuredOutputRequest:
        kind, spec = grammar_spec(params)
        return StructuredOutputRequest(params, self._executor.submit(self._compile, kind, spec))

    def _compile(self, kind: StructuredOutputKind, spec: str) -> StructuredOutputGrammar:
        return self._get_backend().compile_grammar(kind, spec)

    def _get_backend(self) -> StructuredOutputBackend:
        with self._backend_lock:
            if self._backend is None:
                self._backend = self._make_backend()
            return self._backend

    def _make_backend(self) -> StructuredOutputBackend:
        from pagedllm.model_loader.tokenizer import get_tokenizer

        mc = self.engine_config.model_config
        tokenizer = get_tokenizer(mc.tokenizer, mc.trust_remote_code, mc.revision)
        eos_ids = _eos_token_ids(tokenizer, mc.generation_config.get("eos_token_id"))
        name = backend_name(self.config)
        logger.info("Structured outputs: the %s backend (EOS ids %s)", name, eos_ids)
        args = (tokenizer, self.vocab_size, eos_ids, self.config.disable_any_whitespace)
        if name == "xgrammar":
            from pagedllm.structured_output.backend_xgrammar import XgrammarBackend

            return XgrammarBackend(*args)
        from pagedllm.structured_output.backend_guidance import GuidanceBackend

        return GuidanceBackend(*args)

    def grammar_bitmask(self, grammars: Sequence[StructuredOutputGrammar]) -> np.ndarray:
        """[len(grammars), ceil(V / 32)] int32: row i = what grammars[i] allows next
        (the backend writes every word of every row). A new array each step: it
        travels with the SchedulerOutput."""
        bitmask = new_bitmask(len(grammars), self.num_words)
        backend = self._backend
        assert backend is not None, "a grammar is ready, so its backend exists"
        backend.fill_bitmask([(g, i) for i, g in enumerate(grammars)], bitmask)
        return bitmask

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def new_bitmask(rows: int, words: int) -> np.ndarray:
    """An uninitialised [rows, words] int32 array. Where this process drives a GPU
    (the in-process executor) it is a view of a pinned torch tensor (torch's caching
    host allocator: free, and not reused before the copies that read it finish), which
    the runner copies to the device as it is (GrammarBitmask.build) instead of pinning
    a copy of 4.8 MB (T1) each step."""
    torch = sys.modules.get("torch")  # not imported: no GPU in this process
    if torch is not None and torch.cuda.is_initialized():
        return torch.empty((rows, words), dtype=torch.int32, pin_memory=True).numpy()
    return np.empty((rows, words), dtype=np.int32)


def _eos_token_ids(tokenizer: object, generation_eos: object) -> list[int]:
    """The tokenizer's EOS and the generation config's (an int or a list): the tokens
    a grammar allows once it is complete."""
    ids: list[int] = []
    eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos, int):
        ids.append(eos)
    extra = generation_eos if isinstance(generation_eos, list) else [generation_eos]
    ids += [int(t) for t in extra if isinstance(t, int) and t not in ids]
    return ids
