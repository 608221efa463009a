"""SamplingParams: vLLM's fields, defaults and validation."""

from __future__ import annotations

import copy
import enum
from dataclasses import dataclass, field
from typing import Any

_SAMPLING_EPS = 1e-5


class RequestOutputKind(enum.Enum):
    CUMULATIVE = 0  # every output carries everything generated so far
    DELTA = 1  # every output carries only what is new since the last one
    FINAL_ONLY = 2  # one output, when the request finishes


class SamplingType(enum.IntEnum):
    GREEDY = 0
    RANDOM = 1
    RANDOM_SEED = 2


@dataclass
class SamplingParams:
    n: int = 1
    best_of: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: all tokens
    min_p: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    detokenize: bool = True
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    logit_bias: dict[int, float] | None = None
    allowed_token_ids: list[int] | None = None
    bad_words: list[str] | None = None
    truncate_prompt_tokens: int | None = None
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE
    # Filled by the engine: stop tokens of the model's generation config (EOS variants),
    # and the token sequences of bad_words.
    all_stop_token_ids: set[int] = field(default_factory=set, repr=False)
    bad_words_token_ids: list[list[int]] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        elif self.stop is None:
            self.stop = []
        else:
            self.stop = list(self.stop)
        self.stop_token_ids = list(self.stop_token_ids or [])
        if self.logit_bias is not None:
            self.logit_bias = {int(k): float(v) for k, v in self.logit_bias.items()}
        if self.top_k == -1:
            self.top_k = 0
        self._verify()
        if self.temperature < _SAMPLING_EPS:
            # Greedy: the other sampling knobs have no effect.
            self.top_p, self.top_k, self.min_p = 1.0, 0, 0.0
        # Kept when already resolved (a copy decoded from the front end's message).
        self.all_stop_token_ids = set(self.stop_token_ids) | set(self.all_stop_token_ids)

    def _verify(self) -> None:
        _require(
            isinstance(self.n, int) and self.n >= 1, "n", f"must be at least 1, got {self.n!r}"
        )
        if self.best_of is not None and self.best_of < self.n:
            raise ValueError(f"best_of must be >= n, got best_of={self.best_of} and n={self.n}")
        _require(-2.0 <= self.presence_penalty <= 2.0, "presence_penalty", "must be in [-2, 2]")
        _require(-2.0 <= self.frequency_penalty <= 2.0, "frequency_penalty", "must be in [-2, 2]")
        _require(0.0 < self.repetition_penalty <= 2.0, "repetition_penalty", "must be in (0, 2]")
        _require(
            self.temperature >= 0.0, "temperature", f"must be non-negative, got {self.temperature}"
        )
        _require(0.0 < self.top_p <= 1.0, "top_p", f"must be in (0, 1], got {self.top_p}")
        _require(
            isinstance(self.top_k, int) and self.top_k >= 0,
            "top_k",
            f"must be -1 (disable), 0 (disable) or at least 1, got {self.top_k}",
        )
        _require(0.0 <= self.min_p <= 1.0, "min_p", f"must be in [0, 1], got {self.min_p}")
        if self.max_tokens is not None:
            _require(
                self.max_tokens >= 1, "max_tokens", f"must be at least 1, got {self.max_tokens}"
            )
        _require(self.min_tokens >= 0, "min_tokens", f"must be non-negative, got {self.min_tokens}")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(
                f"min_tokens must be less than or equal to max_tokens={self.max_tokens}, "
                f"got {self.min_tokens}"
            )
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None:
                _require(value >= 0 or value == -1, name, f"must be non-negative, got {value}")
        if any(not s for s in self.stop or []):
            raise ValueError("stop cannot contain an empty string")
        if self.seed is not None:
            _require(isinstance(self.seed, int), "seed", f"must be an integer, got {self.seed!r}")
        if self.truncate_prompt_tokens is not None:
            _require(self.truncate_prompt_tokens >= 1, "truncate_prompt_tokens", "must be >= 1")
        for token_id in self.stop_token_ids or []:
            _require(token_id >= 0, "stop_token_ids", f"must be non-negative, got {token_id}")

    @property
    def sampling_type(self) -> SamplingType:
        if self.temperature < _SAMPLING_EPS:
            return SamplingType.GREEDY
        if self.seed is not None:
            return SamplingType.RANDOM_SEED
        return SamplingType.RANDOM

    def clone(self) -> SamplingParams:
        return copy.deepcopy(self)

    def update_from_generation_config(
        self, generation_config: dict[str, Any], eos_token_id: int | None
    ) -> None:
        """Add the model's EOS tokens to the stop set (unless ignore_eos)."""
        eos_ids: set[int] = set()
        if eos_token_id is not None:
            eos_ids.add(eos_token_id)
        gen_eos = generation_config.get("eos_token_id")
        if isinstance(gen_eos, int):
            eos_ids.add(gen_eos)
        elif isinstance(gen_eos, list):
            eos_ids.update(int(x) for x in gen_eos)
        self.all_stop_token_ids = set(self.stop_token_ids or [])
        if not self.ignore_eos:
            self.all_stop_token_ids |= eos_ids
        self._eos_token_ids = eos_ids

    @property
    def eos_token_ids(self) -> set[int]:
        return getattr(self, "_eos_token_ids", set())


def _require(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{name} {message}")


@dataclass
class PoolingParams:
    """Parameters of an embedding request (vLLM's PoolingParams)."""

    dimensions: int | None = None
    normalize: bool | None = None
    truncate_prompt_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.dimensions is not None and self.dimensions < 1:
            raise ValueError(f"dimensions must be at least 1, got {self.dimensions}")
