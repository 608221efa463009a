"""Incremental detokenization of one request's output, UTF-8 safe, with stop strings.

Decoding token by token is wrong for byte-level BPE (a Chinese character or an
emoji spans several tokens, each decoding to U+FFFD alone) and for SentencePiece
(a token's leading space depends on its left neighbour). So the detokenizer keeps
a small window of token ids and two offsets into it (vLLM's technique):

    window:  | context (already emitted) | pending (not yet emitted) |
             ^ prefix_offset             ^ read_offset                ^ len(window)

    new_text = decode(window[prefix_offset:]); prefix_text = decode(window[prefix_offset:read_offset])
    emit new_text[len(prefix_text):] once it is longer than prefix_text and does not
    end in U+FFFD (an incomplete character), then slide: prefix_offset <- read_offset,
    read_offset <- len(window), and drop the tokens before prefix_offset.

Invariants: the window holds the last emitted token run plus the pending tokens, so
each token costs O(window) decoding, not O(output); prefix_text never ends in an
incomplete character; skipped special tokens never enter the window (they decode to
nothing, and would only make it grow).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from pagedllm.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

# Prompt tokens kept as left context for the first output token (vLLM uses 5).
_INITIAL_CONTEXT_TOKENS = 5
_REPLACEMENT_CHAR = "\ufffd"


class _TextBuffer:
    """Append-only text stored as pieces, so appending and reading the tail cost
    O(piece) and O(tail) rather than O(total length); `text()` joins lazily."""

    def __init__(self) -> None:
        self._pieces: list[str] = []
        self._length = 0

    def __len__(self) -> int:
        return self._length

    def append(self, piece: str) -> None:
        if piece:
            self._pieces.append(piece)
            self._length += len(piece)

    def text(self) -> str:
        if len(self._pieces) > 1:
            self._pieces = ["".join(self._pieces)]
        return self._pieces[0] if self._pieces else ""

    def slice(self, start: int, end: int) -> str:
        """text()[start:end] for 0 <= start <= end <= len, walking back from the end."""
        parts: list[str] = []
        piece_end = self._length
        for piece in reversed(self._pieces):
            if piece_end <= start:
                break
            piece_start = piece_end - len(piece)
            lo, hi = max(start - piece_start, 0), min(end - piece_start, len(piece))
            if hi > lo:
                parts.append(piece[lo:hi])
            piece_end = piece_start
        return "".join(reversed(parts))

    def truncate(self, length: int) -> None:
        while self._length > length:
            last = self._pieces.pop()
            self._length -= len(last)
            if self._length < length:
                self.append(last[: length - self._length])


class IncrementalDetokenizer:
    """Per-request detokenizer; feed it every output token id once, in order."""

    def __init__(
        self,
        tokenizer: Any,
        prompt_token_ids: Sequence[int] | None,
        skip_special_tokens: bool = True,
        spaces_between_special_tokens: bool = True,
        stop: Sequence[str] | None = None,
        include_stop_str_in_output: bool = False,
        *,
        min_tokens: int = 0,
    ) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.spaces_between_special_tokens = spaces_between_special_tokens
        self.stop: list[str] = [s for s in (stop or []) if s]
        self.include_stop_str_in_output = include_stop_str_in_output
        self.min_tokens = min_tokens
        # Characters held back while running, so a partial stop string never leaks.
        self.stop_buffer_length = (
            max(len(s) for s in self.stop) - 1
            if self.stop and not include_stop_str_in_output
            else 0
        )
        self.stop_reason: str | None = None  # the stop string that matched, once one has
        self.num_output_tokens = 0
        self._skip_ids = _special_token_ids(tokenizer) if skip_special_tokens else frozenset()
        self._raw = _raw_tokenizer(tokenizer)
        self._text = _TextBuffer()
        self._last_output_offset = 0  # delta mode: chars of output_text already returned
        self._stop_check_offset = 0  # stop strings must end past this char (min_tokens)
        self._init_window(prompt_token_ids or [])

    @classmethod
    def from_sampling_params(
        cls, tokenizer: Any, prompt_token_ids: Sequence[int] | None, params: SamplingParams
    ) -> IncrementalDetokenizer:
        return cls(
            tokenizer,
            prompt_token_ids,
            skip_special_tokens=params.skip_special_tokens,
            spaces_between_special_tokens=params.spaces_between_special_tokens,
            stop=params.stop if isinstance(params.stop, list) else None,
            include_stop_str_in_output=params.include_stop_str_in_output,
            min_tokens=params.min_tokens,
        )

    @property
    def output_text(self) -> str:
        """The text of the output so far (pending incomplete characters excluded,
        truncated at a matched stop string)."""
        return self._text.text()

    def update(self, new_token_ids: Sequence[int], stop_terminated: bool = False) -> str | None:
        """Append new output tokens; return the stop string if one now matched.

        stop_terminated: the last token is a stop token (EOS / stop_token_ids); as in
        vLLM its text is left out unless include_stop_str_in_output."""
        if self.stop_reason is not None or not new_token_ids:
            return None
        token_ids = list(new_token_ids)
        if stop_terminated and not self.include_stop_str_in_output:
            token_ids = token_ids[:-1]
            self.num_output_tokens += 1
        old_length = len(self._text)
        for token_id in token_ids:
            self.num_output_tokens += 1
            self._append_token(token_id)
            if self.num_output_tokens <= self.min_tokens:
                self._stop_check_offset = len(self._text)
        return self._check_stop_strings(max(old_length, self._stop_check_offset))

    def get_next_output_text(self, finished: bool, delta: bool) -> str:
        """The text safe to emit now: all of it when finished; while running, all
        but the last stop_buffer_length characters. delta: only what is new since
        the previous delta call."""
        if finished:
            self._flush_pending()
        hold = 0 if finished else self.stop_buffer_length
        length = max(len(self._text) - hold, 0)
        if not delta:
            return self._text.text()[:length]
        start = self._last_output_offset
        if start >= length:
            return ""
        self._last_output_offset = length
        return self._text.slice(start, length)

    # ---- the decode window --------------------------------------------------
    def _init_window(self, prompt_token_ids: Sequence[int]) -> None:
        context = [
            t for t in prompt_token_ids[-2 * _INITIAL_CONTEXT_TOKENS :] if t not in self._skip_ids
        ]
        context = context[-_INITIAL_CONTEXT_TOKENS:]
        prefix_text = self._decode(context)
        # A prompt ending inside a character would break the prefix invariant: drop its tail.
        while context and prefix_text.endswith(_REPLACEMENT_CHAR):
            context.pop()
            prefix_text = self._decode(context)
        self._window: list[int] = context
        self._read_offset = len(context)  # prefix_offset is always 0: older tokens are dropped
        self._prefix_text = prefix_text

    def _append_token(self, token_id: int) -> None:
        if token_id in self._skip_ids:
            return
        self._window.append(token_id)
        new_text = self._decode(self._window)
        if len(new_text) <= len(self._prefix_text) or new_text.endswith(_REPLACEMENT_CHAR):
            return  # no visible text yet, or an incomplete character: wait for more
        self._emit(new_text)

    def _emit(self, new_text: str) -> None:
        self._text.append(new_text[len(self._prefix_text) :])
        # Slide: the pending tokens just emitted become the context.
        self._window = self._window[self._read_offset :]
        self._read_offset = len(self._window)
        self._prefix_text = self._decode(self._window)

    def _flush_pending(self) -> None:
        """At the end, emit the complete characters of the pending tokens. When the
        output ends inside a character (max_tokens cut it), its incomplete bytes are
        held back for good, as vLLM does: the text never ends in the U+FFFD they
        decode to (so a real U+FFFD at the very end is dropped too)."""
        if self.stop_reason is not None or self._read_offset == len(self._window):
            return
        new_text = self._decode(self._window).rstrip(_REPLACEMENT_CHAR)
        if len(new_text) > len(self._prefix_text):
            self._emit(new_text)

    def _decode(self, token_ids: list[int]) -> str:
        if not token_ids:
            return ""
        if self._raw is not None:  # the same text, without transformers' per-call overhead
            raw_text: str = self._raw.decode(
                token_ids, skip_special_tokens=self.skip_special_tokens
            )
            return raw_text
        text: str = self.tokenizer.decode(
            token_ids,
            skip_special_tokens=self.skip_special_tokens,
            spaces_between_special_tokens=self.spaces_between_special_tokens,
            clean_up_tokenization_spaces=False,
        )
        return text

    # ---- stop strings -------------------------------------------------------
    def _check_stop_strings(self, new_start: int) -> str | None:
        """Find the earliest stop string that ends after char new_start; truncate."""
        length = len(self._text)
        if not self.stop or length <= new_start:
            return None
        longest = max(len(s) for s in self.stop)
        tail_start = max(new_start - longest + 1, 0)
        tail = self._text.slice(tail_start, length)
        best: tuple[int, str] | None = None
        for stop_str in self.stop:
            # A match must end past new_start: older text was checked already.
            index = tail.find(stop_str, max(new_start - tail_start - len(stop_str) + 1, 0))
            if index != -1 and (best is None or index < best[0]):
                best = (index, stop_str)
        if best is None:
            return None
        index, stop_str = best
        end = tail_start + index + (len(stop_str) if self.include_stop_str_in_output else 0)
        self._text.truncate(end)
        self.stop_reason = stop_str
        logger.debug("stop string %r matched at char %d", stop_str, end)
        return stop_str


def _raw_tokenizer(tokenizer: Any) -> Any:
    """A fast tokenizer's Rust `tokenizers.Tokenizer`: its decode is what transformers'
    decode runs (clean_up_tokenization_spaces off; spaces_between_special_tokens only
    matters to slow tokenizers), at a quarter of the cost per call (2.7 us against
    10.5 us for a 6-token window of SmolLM2's tokenizer)."""
    if not getattr(tokenizer, "is_fast", False):
        return None
    return getattr(tokenizer, "_tokenizer", None)


def _special_token_ids(tokenizer: Any) -> frozenset[int]:
    """Ids that decode(skip_special_tokens=True) drops: special tokens and added
    tokens flagged special."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    ids.update(token_id for token_id, token in added.items() if getattr(token, "special", False))
    return frozenset(ids)


def decode_token(tokenizer: Any, token_id: int) -> str:
    """One token's text for Logprob.decoded_token: byte-level pieces render as text
    (e.g. 'Ġthe' -> ' the'; a lone byte of a multi-byte character -> U+FFFD)."""
    return decode_tokens(tokenizer, [token_id])[0]


def decode_tokens(tokenizer: Any, token_ids: Sequence[int]) -> list[str]:
    """decode_token for many ids with one convert_ids_to_tokens call."""
    tokens = tokenizer.convert_ids_to_tokens(list(token_ids))
    return [
        "" if token is None else tokenizer.convert_tokens_to_string([token]) for token in tokens
    ]
