"""Workload S1's model (../shared/BENCHMARKS.md): the Qwen3-0.6B shape, served with
`load_format="dummy"`, with a word-level fast tokenizer so that prompts travel as text
and a prompt of N random words is exactly N tokens.

    id:     0        1      2       3     4          vocab_size-1
    token:  <unk>    <s>    </s>    t3    t4   ...   t{vocab_size-1}

Ids 0-2 are special (<unk> also serves as the pad token, <s> is bos, </s> is eos);
every other id is the word "t{id}". Words split on whitespace only, no post-processor
adds a BOS, and decoding joins the words with single spaces, so encode(decode(ids)) ==
ids for any ids >= 3. The chat template joins the messages' contents with spaces.
"""

from __future__ import annotations

import json
import os
import tempfile

from pagedllm.benchmarks.workload import SHAPES

NUM_SPECIAL = 3
# The messages' contents joined by spaces: a chat request of N words is N tokens too.
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
UNK, BOS, EOS = "<unk>", "<s>", "</s>"
S1_SHAPE = "qwen3-0.6b"


def word(token_id: int) -> str:
    """The word of a non-special id."""
    return f"t{token_id}"


def build_word_tokenizer(vocab_size: int) -> object:
    """A transformers fast tokenizer over the words t3..t{vocab_size-1}."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if vocab_size <= NUM_SPECIAL:
        raise ValueError(f"vocab_size must exceed {NUM_SPECIAL}, got {vocab_size}")
    vocab = {UNK: 0, BOS: 1, EOS: 2}
    vocab.update({word(i): i for i in range(NUM_SPECIAL, vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # WordPiece without "##" pieces and without cleanup: the words joined by spaces.
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token=UNK, pad_token=UNK, bos_token=BOS, eos_token=EOS
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _write_json(path: str, data: dict[str, object]) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2)


def write_word_model(path: str | None = None, shape: str = S1_SHAPE, **overrides: object) -> str:
    """Write config.json (the shape's, with `overrides`: tests shrink it),
    generation_config.json and the word tokenizer to `path` (a new temp dir by default)
    and return the directory. No weights: serve it with load_format="dummy"."""
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {sorted(SHAPES)}, got {shape!r}")
    path = path or os.path.join(tempfile.mkdtemp(prefix="pagedllm-s1-"), f"{shape}-words")
    os.makedirs(path, exist_ok=True)
    config = {**SHAPES[shape], **overrides, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    _write_json(os.path.join(path, "config.json"), config)
    _write_json(
        os.path.join(path, "generation_config.json"),
        {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0},
    )
    vocab_size = config["vocab_size"]
    assert isinstance(vocab_size, int)
    build_word_tokenizer(vocab_size).save_pretrained(path)  # type: ignore[attr-defined]
    _portable_tokenizer_class(os.path.join(path, "tokenizer_config.json"))
    return path


def _portable_tokenizer_class(config_path: str) -> None:
    """transformers 5 writes its own class name (TokenizersBackend); the older name
    PreTrainedTokenizerFast loads with every version."""
    with open(config_path) as f:
        config = json.load(f)
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config.pop("backend", None)
    _write_json(config_path, config)
