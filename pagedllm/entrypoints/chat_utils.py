"""Chat messages -> prompt text through the model's (or a given) Jinja chat template.
Shared by the OpenAI server, /tokenize and `pagedllm chat`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2


def load_chat_template(value: str | None) -> str | None:
    """`--chat-template`: a file path or the template itself (vLLM's rule)."""
    if value is None:
        return None
    try:
        path = Path(value)
        if path.is_file():
            return path.read_text(encoding="utf-8")
    except OSError:
        pass  # too long or odd to be a path: treat it as a template
    if any(mark in value for mark in ("{{", "{%", "\n")):
        return value
    raise ValueError(f"The chat template {value!r} is neither a file nor a Jinja template")


def _content_text(content: str | list[dict[str, Any]] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for part in content:
        part_type = part.get("type")
        if part_type != "text":
            raise ValueError(f"Only text content parts are supported, got type {part_type!r}")
        texts.append(str(part.get("text", "")))
    return "\n".join(texts)


def to_conversation(messages: list[Any]) -> list[dict[str, Any]]:
    """Pydantic messages or dicts -> template input, content parts flattened to text."""
    conversation = []
    for message in messages:
        data = message if isinstance(message, dict) else message.model_dump(exclude_none=True)
        data = dict(data)
        data["content"] = _content_text(data.get("content"))
        conversation.append(data)
    return conversation


def render_chat(
    tokenizer: Any,
    messages: list[Any],
    chat_template: str | None = None,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    template_kwargs: dict[str, Any] | None = None,
) -> str:
    """The prompt text; ValueError (HTTP 400) for anything the template rejects."""
    if not messages:
        raise ValueError("messages must contain at least one message")
    if add_generation_prompt and continue_final_message:
        raise ValueError(
            "continue_final_message and add_generation_prompt cannot both be true; "
            "set add_generation_prompt to false to continue the final message"
        )
    template = chat_template or getattr(tokenizer, "chat_template", None)
    if not template:
        raise ValueError(
            "The model has no chat template: pass one with --chat-template (a file or a string)"
        )
    try:
        text = tokenizer.apply_chat_template(
            to_conversation(messages),
            chat_template=template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            **(template_kwargs or {}),
        )
    except jinja2.TemplateError as exc:
        raise ValueError(f"The chat template could not render these messages: {exc}") from exc
    return str(text)
