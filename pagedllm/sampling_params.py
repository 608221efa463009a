"""SamplingParams: vLLM's fields, defaults and validation."""

from __future__ import annotations

import copy
import enum
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

from pagedllm.exceptions import InvalidRequestError

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
class StructuredOutputsParams:
    """Constrain the output to a grammar (vLLM's names): exactly one of `json` (a JSON
    schema, as a dict or its text), `regex`, `choice` (one of these strings),
    `grammar` (Lark or GBNF/EBNF text) or `json_object` (any JSON object)."""

    json: str | dict[str, Any] | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None

    def __post_init__(self) -> None:
        kinds = [name for name in _STRUCTURED_KINDS if getattr(self, name) not in (None, False)]
        if len(kinds) != 1:
            found = ", ".join(kinds) or "none"
            raise ValueError(
                "structured_outputs must set exactly one of json, regex, choice, grammar, "
                f"json_object; got {found}"
            )
        if self.choice is not None:
            self.choice = _str_list(self.choice, "structured_outputs.choice")
            _require(bool(self.choice), "structured_outputs.choice", "cannot be empty")

    @property
    def kind(self) -> str:
        """Which constraint is set: json, regex, choice, grammar or json_object."""
        return next(n for n in _STRUCTURED_KINDS if getattr(self, n) not in (None, False))


_STRUCTURED_KINDS = ("json", "regex", "choice", "grammar", "json_object")


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
    structured_outputs: StructuredOutputsParams | None = None
    # Filled by the engine: stop tokens of the model's generation config (EOS variants),
    # and the token sequences of bad_words.
    all_stop_token_ids: set[int] = field(default_factory=set, repr=False)
    bad_words_token_ids: list[list[int]] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.verify()
        if self.temperature < _SAMPLING_EPS:
            # Greedy: the other sampling knobs have no effect.
            self.top_p, self.top_k, self.min_p = 1.0, 0, 0.0
        # Kept when already resolved (a copy decoded from the front end's message).
        self.all_stop_token_ids = set(self.stop_token_ids or []) | set(self.all_stop_token_ids)

    def verify(self) -> None:
        """Normalise and check every field (the one validation of sampling parameters).

        `__post_init__` calls it, and the engine calls it again on its private copy
        when it admits a request, so a field changed after construction (`sp.n = 0`)
        fails there with a ValueError naming the field, never inside a step. Idempotent.

        seed: any integer torch can seed a generator with, the range vLLM's server
        accepts: [-2**63, 2**63 - 1]; outside it a ValueError (the server: 400)."""
        _normalize(self)
        _verify_numbers(self)
        _verify_ranges(self)

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


def check_truncate_prompt_tokens(value: int | None) -> None:
    """None (keep the whole prompt), -1 (keep max_model_len tokens) or k >= 1."""
    if value is not None and value != -1 and value < 1:
        raise InvalidRequestError(
            f"truncate_prompt_tokens must be -1 or at least 1, got {value}",
            "truncate_prompt_tokens",
        )


def _require(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise InvalidRequestError(f"{name} {message}", name)


# Fields that must be integers (None allowed where the default is None) and real numbers.
_INT_FIELDS = ("n", "top_k", "min_tokens")
_OPTIONAL_INT_FIELDS = (
    "best_of",
    "seed",
    "max_tokens",
    "logprobs",
    "prompt_logprobs",
    "truncate_prompt_tokens",
)
_FLOAT_FIELDS = (
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "temperature",
    "top_p",
    "min_p",
)
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1  # torch.Generator.manual_seed's int64 range


def _as_int(value: object, name: str) -> int:
    # bool is an int subclass, but `n=True` is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidRequestError(f"{name} must be an integer, got {value!r}", name)
    return int(value)


def _as_float(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidRequestError(f"{name} must be a number, got {value!r}", name)
    return float(value)


def _int_list(values: object, name: str) -> list[int]:
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        raise InvalidRequestError(f"{name} must be a list of integers, got {values!r}", name)
    return [_as_int(v, name) for v in values]


def _str_list(values: object, name: str, hint: str = "") -> list[str]:
    if isinstance(values, str):
        return [values]
    if not isinstance(values, (list, tuple)) or not all(isinstance(v, str) for v in values):
        raise InvalidRequestError(
            f"{name} must be a string or a list of strings{hint}, got {values!r}", name
        )
    return list(values)


def _normalize(sp: SamplingParams) -> None:
    """Python types and containers of every field (numpy scalars, tuples, a single
    stop string); a value of the wrong type is a ValueError naming its field."""
    for name in _INT_FIELDS:
        setattr(sp, name, _as_int(getattr(sp, name), name))
    for name in _OPTIONAL_INT_FIELDS:
        if getattr(sp, name) is not None:
            setattr(sp, name, _as_int(getattr(sp, name), name))
    for name in _FLOAT_FIELDS:
        setattr(sp, name, _as_float(getattr(sp, name), name))
    sp.stop = [] if sp.stop is None else _str_list(sp.stop, "stop")
    sp.stop_token_ids = _int_list(sp.stop_token_ids or [], "stop_token_ids")
    if sp.allowed_token_ids is not None:
        sp.allowed_token_ids = _int_list(sp.allowed_token_ids, "allowed_token_ids")
    if sp.bad_words is not None:
        # vLLM's bad_words are words; token ids would be a type error there too.
        hint = " (words, not token ids)"
        sp.bad_words = _str_list(sp.bad_words, "bad_words", hint)
    if sp.logit_bias is not None:
        sp.logit_bias = _logit_bias(sp.logit_bias)
    if sp.top_k == -1:
        sp.top_k = 0
    if isinstance(sp.structured_outputs, dict):
        sp.structured_outputs = StructuredOutputsParams(**sp.structured_outputs)
    if not isinstance(sp.output_kind, RequestOutputKind):
        raise ValueError(f"output_kind must be a RequestOutputKind, got {sp.output_kind!r}")


def _logit_bias(bias: object) -> dict[int, float]:
    if not isinstance(bias, dict):
        raise InvalidRequestError(
            f"logit_bias must be a dict of token id -> bias, got {bias!r}", "logit_bias"
        )
    out: dict[int, float] = {}
    for key, value in bias.items():
        try:
            token_id = int(key)
        except (TypeError, ValueError):
            raise InvalidRequestError(
                f"logit_bias keys must be token ids, got {key!r}", "logit_bias"
            ) from None
        out[token_id] = _as_float(value, "logit_bias")
        _require(not math.isnan(out[token_id]), "logit_bias", "values must not be NaN")
    return out


def _verify_numbers(sp: SamplingParams) -> None:
    _require(sp.n >= 1, "n", f"must be at least 1, got {sp.n}")
    if sp.best_of is not None and sp.best_of < sp.n:
        raise InvalidRequestError(
            f"best_of must be >= n, got best_of={sp.best_of} and n={sp.n}", "best_of"
        )
    _require(-2.0 <= sp.presence_penalty <= 2.0, "presence_penalty", "must be in [-2, 2]")
    _require(-2.0 <= sp.frequency_penalty <= 2.0, "frequency_penalty", "must be in [-2, 2]")
    _require(0.0 < sp.repetition_penalty <= 2.0, "repetition_penalty", "must be in (0, 2]")
    _require(sp.temperature >= 0.0, "temperature", f"must be non-negative, got {sp.temperature}")
    _require(0.0 < sp.top_p <= 1.0, "top_p", f"must be in (0, 1], got {sp.top_p}")
    _require(
        sp.top_k >= 0, "top_k", f"must be -1 (disable), 0 (disable) or at least 1, got {sp.top_k}"
    )
    _require(0.0 <= sp.min_p <= 1.0, "min_p", f"must be in [0, 1], got {sp.min_p}")
    if sp.seed is not None:
        _require(
            SEED_MIN <= sp.seed <= SEED_MAX,
            "seed",
            f"must be in [-2**63, 2**63 - 1] (a 64-bit integer), got {sp.seed}",
        )


def _verify_ranges(sp: SamplingParams) -> None:
    if sp.max_tokens is not None:
        _require(sp.max_tokens >= 1, "max_tokens", f"must be at least 1, got {sp.max_tokens}")
    _require(sp.min_tokens >= 0, "min_tokens", f"must be non-negative, got {sp.min_tokens}")
    if sp.max_tokens is not None and sp.min_tokens > sp.max_tokens:
        raise InvalidRequestError(
            f"min_tokens must be less than or equal to max_tokens={sp.max_tokens}, "
            f"got {sp.min_tokens}",
            "min_tokens",
        )
    for name in ("logprobs", "prompt_logprobs"):
        value = getattr(sp, name)
        if value is not None:
            _require(value >= -1, name, f"must be non-negative or -1 (all), got {value}")
    _require(all(sp.stop or []), "stop", "cannot contain an empty string")
    check_truncate_prompt_tokens(sp.truncate_prompt_tokens)
    for token_id in sp.stop_token_ids or []:
        _require(token_id >= 0, "stop_token_ids", f"must be non-negative, got {token_id}")


@dataclass
class PoolingParams:
    """Parameters of an embedding request (vLLM's PoolingParams)."""

    dimensions: int | None = None
    normalize: bool | None = None
    truncate_prompt_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.dimensions is not None and self.dimensions < 1:
            raise ValueError(f"dimensions must be at least 1, got {self.dimensions}")
        check_truncate_prompt_tokens(self.truncate_prompt_tokens)
