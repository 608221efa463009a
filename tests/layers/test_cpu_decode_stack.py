"""The one-call CPU decode step (layers/cpu/decode_stack.py) against the Python layers
(PAGEDLLM_CPU_DECODE_STACK=0), on tiny random Llamas: GGUF-packed weights of every
block type (fused layers of several parts) and plain float32 weights."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

_TESTS = Path(__file__).resolve().parents[1]
for sub in ("models", "layers/quantization"):
    if str(_TESTS / sub) not in sys.path:
        sys.path.insert(0, str(_TESTS / sub))

from gguf_checkpoint import MIXED_TYPES, write_tiny_llama_gguf  # noqa: E402
from harness import PagedHarness, load_model  # noqa: E402

from pagedllm.layers.cpu import decode_stack  # noqa: E402
from pagedllm.models.llama import LlamaDecoderLayer  # noqa: E402

pytestmark = pytest.mark.skipif(
    decode_stack.decode_stack_extension() is None, reason="no AVX2 CPU or no compiler"
)
PROMPTS = [[1, 2, 3, 4, 5, 6, 7, 8], [100, 200, 300, 400, 500], [50, 60, 70]]
# Both paths call the same kernels in the same order: measured bit-identical; asserted
# to float32 rounding.
TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(write_tiny_llama_gguf(tmp_path_factory.mktemp("gguf") / "mixed.gguf", MIXED_TYPES))


class _LayerCalls:
    """Counts the Python decoder layers' forward calls."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.count = 0
        self.handles = [
            m.register_forward_hook(self._hook)
            for m in model.modules()
            if isinstance(m, LlamaDecoderLayer)
        ]

    def _hook(self, *args: object) -> None:
        self.count += 1

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _decode_logits(harness: PagedHarness, tokens: list[list[int]]) -> Iterator[torch.Tensor]:
    """Prefill the prompts, then decode the given tokens (one per sequence per step);
    yields each decode step's logits [3, V]."""
    for i, prompt in enumerate(PROMPTS):
        harness.add(i, prompt)
    harness.step({i: len(p) for i, p in enumerate(PROMPTS)})
    for step_tokens in tokens:
        for i, token in enumerate(step_tokens):
            harness.seqs[i].tokens.append(token)
        logits = harness.step({i: 1 for i in range(len(PROMPTS))})
        yield torch.stack([logits[i] for i in range(len(PROMPTS))])


def _compare(monkeypatch: pytest.MonkeyPatch, path: str, **kwargs: object) -> None:
    (fast, config), (slow, _) = load_model(path, **kwargs), load_model(path, **kwargs)
    calls_fast, calls_slow = _LayerCalls(fast), _LayerCalls(slow)
    rng = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 500, (8, len(PROMPTS)), generator=rng).tolist()
    got = list(_decode_logits(PagedHarness(fast, config), tokens))
    layers = config.num_layers
    # The prefill went through the Python layers, the 8 decode steps did not.
    assert calls_fast.count == layers
    monkeypatch.setenv("PAGEDLLM_CPU_DECODE_STACK", "0")  # read at the first decode step
    expected = list(_decode_logits(PagedHarness(slow, config), tokens))
    assert calls_slow.count == layers * 9  # switched off: the Python layers every step
    assert fast.model.__dict__["_cpu_decode_stack"] is not False
    assert slow.model.__dict__["_cpu_decode_stack"] is False
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, **TOL)
    calls_fast.close()
    calls_slow.close()


def test_gguf_packed_matches_python_layers(monkeypatch: pytest.MonkeyPatch, gguf_file: str) -> None:
    _compare(monkeypatch, gguf_file, quantization="gguf")


def test_float32_matches_python_layers(
    monkeypatch: pytest.MonkeyPatch, tiny_llama_dir: str
) -> None:
    _compare(monkeypatch, tiny_llama_dir)


def test_not_used_for_prefill_or_mixed_steps(gguf_file: str) -> None:
    model, config = load_model(gguf_file, quantization="gguf")
    calls = _LayerCalls(model)
    harness = PagedHarness(model, config)
    harness.add(0, PROMPTS[0])
    harness.add(1, PROMPTS[1])
    harness.step({0: len(PROMPTS[0])})
    harness.seqs[0].tokens.append(7)
    harness.step({0: 1, 1: 2})  # one decode and a chunk of prefill: Python layers
    assert calls.count == 2 * config.num_layers
    harness.seqs[0].tokens.append(8)
    harness.step({0: 1})
    assert calls.count == 2 * config.num_layers
    calls.close()
