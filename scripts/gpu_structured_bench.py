"""Structured outputs' cost on T1 (docs/benchmarks.md): the same 256 requests with
every request constrained by a small JSON schema, against none constrained.

T1's model is a dummy-weight Qwen3-0.6B shape with no tokenizer, so this script
writes a synthetic byte-level tokenizer of T1's vocabulary size beside it (the 94
printable ASCII characters, a few JSON pieces, then random 2-6 character strings):
llguidance/xgrammar see a real 151,936-token vocabulary, and the random-weight model
samples whatever the grammar allows. A constrained request may end early (its grammar
completes and it samples EOS), so both runs report output tokens per second over the
tokens actually produced.

    python scripts/gpu_structured_bench.py                       # llguidance (default)
    python scripts/gpu_structured_bench.py --backend xgrammar    # needs xgrammar
    python scripts/gpu_structured_bench.py --num-prompts 8 --device cpu --shape tiny --max-len 32  # a CPU smoke run
    python scripts/gpu_structured_bench.py --profile             # + a profile of 20 constrained steps
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import time
from typing import Any

# Long enough that a random-weight model rarely completes it before max_tokens.
SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "kind": {"enum": ["a", "b", "c"]},
    },
    "required": ["id", "tags", "kind"],
}
TINY_SHAPE = dict(
    architectures=["Qwen3ForCausalLM"], model_type="qwen3", hidden_size=64, intermediate_size=128,
    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
    max_position_embeddings=4096, rms_norm_eps=1e-6, rope_theta=1e6, vocab_size=151936,
    tie_word_embeddings=True, torch_dtype="bfloat16",
)  # fmt: skip


def write_synthetic_tokenizer(path: str, vocab_size: int, seed: int = 0) -> None:
    """A byte-level BPE tokenizer of vocab_size tokens: the 256 bytes, then random
    merges of two tokens into one of at most 6 characters. Real BPE, so any text
    tokenizes (the grammar backends re-tokenize forced text)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(seed)
    alphabet = sorted(ByteLevel.alphabet())
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for ch in alphabet:
        vocab[ch] = len(vocab)
    tokens = [t for t in alphabet if 0x21 <= ord(t) < 0x7F or t == "\u0120"]  # printable
    merges: list[tuple[str, str]] = []
    while len(vocab) < vocab_size:
        a, b = rng.choice(tokens), rng.choice(tokens)
        if len(a) + len(b) <= 6 and a + b not in vocab:
            vocab[a + b] = len(vocab)
            merges.append((a, b))
            tokens.append(a + b)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    fast.save_pretrained(path)


def model_dir(shape: str) -> str:
    from pagedllm.benchmarks.workload import shape_dir

    if shape != "tiny":
        path = shape_dir(shape)
    else:
        import tempfile

        path = tempfile.mkdtemp(prefix="pagedllm-tiny-")
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(TINY_SHAPE, f)
    with open(os.path.join(path, "config.json")) as f:
        vocab_size = int(json.load(f)["vocab_size"])
    write_synthetic_tokenizer(path, vocab_size)
    return path


def inputs(requests: list[Any], constrained: bool) -> tuple[list[Any], list[Any]]:
    from pagedllm import SamplingParams
    from pagedllm.sampling_params import StructuredOutputsParams

    so = StructuredOutputsParams(json=SCHEMA) if constrained else None
    prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in requests]
    params = [
        SamplingParams(temperature=1.0, max_tokens=r.output_len, detokenize=False,
                       ignore_eos=not constrained, structured_outputs=so)
        for r in requests
    ]  # fmt: skip
    return prompts, params


def run(llm: Any, requests: list[Any], constrained: bool) -> dict[str, Any]:
    prompts, params = inputs(requests, constrained)
    llm.generate(prompts[:8], params[:8], use_tqdm=False)  # warm-up (grammar backend too)
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    produced = sum(len(o.outputs[0].token_ids) for o in outputs)
    return dict(constrained=constrained, elapsed_s=round(elapsed, 2), output_tokens=produced,
                output_tokens_per_s=round(produced / elapsed, 1))  # fmt: skip


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    p = argparse.ArgumentParser()
    p.add_argument("--backend", default="auto", choices=["auto", "guidance", "xgrammar"])
    p.add_argument("--shape", default="qwen3-0.6b")
    p.add_argument("--num-prompts", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--max-len", type=int, default=None, help="cap prompt/output lengths (smoke)")
    p.add_argument("--output-json", default=None)
    p.add_argument(
        "--profile",
        action="store_true",
        help="then profile constrained decode steps (structured_profile.py; CUDA)",
    )
    p.add_argument("--profile-steps", type=int, default=20)
    args = p.parse_args()
    from pagedllm import LLM
    from pagedllm.benchmarks.workload import WORKLOADS, make_requests

    _, num, in_range, out_range = WORKLOADS["T1"]
    if args.max_len:
        in_range = out_range = (min(in_range[0], args.max_len), args.max_len)
    requests = make_requests(args.num_prompts or num, in_range, out_range)
    llm = LLM(model=model_dir(args.shape), load_format="dummy", device=args.device,
              max_model_len=4096, max_num_seqs=256,
              structured_outputs_config={"backend": args.backend})  # fmt: skip
    results = [run(llm, requests, constrained=False), run(llm, requests, constrained=True)]
    free, guided = results[0]["output_tokens_per_s"], results[1]["output_tokens_per_s"]
    summary = dict(backend=args.backend, results=results, loss=round(1 - guided / free, 4))
    print(json.dumps(summary, indent=2))  # noqa: T201 (a script's result)
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(summary, f, indent=2)
    if args.profile:
        from structured_profile import profile_constrained

        profile_constrained(llm, *inputs(requests, constrained=True), args.profile_steps)


if __name__ == "__main__":
    main()
