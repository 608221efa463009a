"""The README's table of supported models, generated from the registry
(model_loader/registry.py) so that it cannot drift from it:

    python -m pagedllm.models.supported_models            # print the markdown table
    python -m pagedllm.models.supported_models --write README.md   # update it in place

tests/models/test_supported_models.py asserts that the README holds exactly this table
and that every registered architecture is described here.
"""

from __future__ import annotations

import argparse
import sys

from pagedllm.model_loader.registry import (
    get_model_class,
    is_pooling_architecture,
    supported_architectures,
)

BEGIN = "<!-- supported-models:begin (generated: python -m pagedllm.models.supported_models) -->"
END = "<!-- supported-models:end -->"

_CHATGLM = (
    "ChatGLM2, ChatGLM3, GLM-4-9B-chat in THUDM's layout (`trust_remote_code`)",
    "`THUDM/chatglm2-6b`, `THUDM/chatglm3-6b`, `THUDM/glm-4-9b-chat`",
)

# Registered architecture -> (models, example HF checkpoints).
MODEL_INFO: dict[str, tuple[str, str]] = {
    "BertModel": ("BERT, sentence-transformers", "`sentence-transformers/all-MiniLM-L6-v2`"),
    "ChatGLMForConditionalGeneration": _CHATGLM,
    "ChatGLMModel": _CHATGLM,
    "GPT2LMHeadModel": ("GPT-2", "`openai-community/gpt2`"),
    "Gemma2ForCausalLM": ("Gemma 2", "`google/gemma-2-9b-it`"),
    "Gemma3ForCausalLM": ("Gemma 3 (text)", "`google/gemma-3-1b-it`"),
    "GemmaForCausalLM": ("Gemma", "`google/gemma-2b-it`"),
    "Glm4ForCausalLM": ("GLM-4-0414", "`THUDM/GLM-4-9B-0414`"),
    "GlmForCausalLM": ("GLM-4", "`THUDM/glm-4-9b-chat-hf`"),
    "LlamaForCausalLM": (
        "Llama 2, Llama 3.x, SmolLM2",
        "`meta-llama/Llama-3.1-8B-Instruct`, `HuggingFaceTB/SmolLM2-135M-Instruct`",
    ),
    "MistralForCausalLM": ("Mistral", "`mistralai/Mistral-7B-Instruct-v0.3`"),
    "MixtralForCausalLM": ("Mixtral (MoE)", "`mistralai/Mixtral-8x7B-Instruct-v0.1`"),
    "OPTForCausalLM": ("OPT", "`facebook/opt-125m`"),
    "Phi3ForCausalLM": ("Phi-3 (4k context)", "`microsoft/Phi-3-mini-4k-instruct`"),
    "Qwen2ForCausalLM": ("Qwen2, Qwen2.5", "`Qwen/Qwen2.5-7B-Instruct`"),
    "Qwen2MoeForCausalLM": ("Qwen1.5-MoE, Qwen2-MoE", "`Qwen/Qwen1.5-MoE-A2.7B`"),
    "Qwen3ForCausalLM": ("Qwen3", "`Qwen/Qwen3-8B`"),
    "Qwen3MoeForCausalLM": ("Qwen3-MoE", "`Qwen/Qwen3-30B-A3B`"),
}

_HEADER = (
    "| Architecture | Models | Example HF models | Runner | Pipeline parallel |\n"
    "|---|---|---|---|---|\n"
)


def _row(arch: str) -> str:
    if arch not in MODEL_INFO:
        raise KeyError(f"{arch} is registered but has no MODEL_INFO entry in {__name__}")
    models, examples = MODEL_INFO[arch]
    runner = "pooling" if is_pooling_architecture(arch) else "generate"
    pp = "yes" if getattr(get_model_class(arch), "supports_pp", False) else "no"
    return f"| `{arch}` | {models} | {examples} | {runner} | {pp} |\n"


def markdown_table() -> str:
    """One row per registered architecture, sorted by name."""
    return _HEADER + "".join(_row(arch) for arch in supported_architectures())


def replace_table(text: str, table: str) -> str:
    """`text` with the lines between the BEGIN and END markers replaced by `table`."""
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[:start] + "\n" + table + text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", metavar="FILE", help="replace the table between the markers")
    args = parser.parse_args(argv)
    table = markdown_table()
    if args.write is None:
        sys.stdout.write(table)
        return 0
    with open(args.write, encoding="utf-8") as f:
        text = f.read()
    with open(args.write, "w", encoding="utf-8") as f:
        f.write(replace_table(text, table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
