"""Chat messages -> prompt text through the model's (or a given) Jinja chat template.
Shared by the OpenAI server, /tokenize and `pagedllm chat`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pagedllm.entrypoints.chat_render import (
    ChatTemplateError,
    RenderLimits,
    render_template,
    run_with_deadline,
    run_with_deadline_async,
)

# Names the template call sets itself: chat_template_kwargs may not override them.
_RESERVED_KWARGS = frozenset(
    {
        "messages",
        "conversation",
        "tools",
        "documents",
        "chat_template",
        "add_generation_prompt",
        "continue_final_message",
        "tokenize",
        "return_dict",
        "return_tensors",
        "return_assistant_tokens_mask",
        "padding",
        "truncation",
        "max_length",
        "tokenizer_kwargs",
    }
)
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "  # transformers' tag


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


def check_text(value: str, param: str) -> None:
    """A lone surrogate ("\\ud800") is valid JSON but not text: a 400 naming the field."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise APIInputError(
            f"{param} contains a lone surrogate (U+{ord(value[exc.start]):04X}) at position "
            f"{exc.start}: it is not valid Unicode text",
            param,
        ) from None


class APIInputError(ValueError):
    """A ValueError that names the request field it is about (HTTP 400)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def to_conversation(messages: list[Any]) -> list[dict[str, Any]]:
    """Pydantic messages or dicts -> template input, content parts flattened to text."""
    conversation = []
    for message in messages:
        data = message if isinstance(message, dict) else message.model_dump(exclude_none=True)
        data = dict(data)
        data["content"] = _content_text(data.get("content"))
        for value in data.values():
            if isinstance(value, str):
                check_text(value, "messages")
        conversation.append(data)
    return conversation


def _check_request(
    messages: list[Any], add_generation_prompt: bool, continue_final_message: bool
) -> None:
    if not messages:
        raise ValueError("messages must contain at least one message")
    if add_generation_prompt and continue_final_message:
        raise ValueError(
            "continue_final_message and add_generation_prompt cannot both be true; "
            "set add_generation_prompt to false to continue the final message"
        )


def _check_kwargs(template_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    kwargs = dict(template_kwargs or {})
    clashes = sorted(set(kwargs) & _RESERVED_KWARGS)
    if clashes:
        raise APIInputError(
            f"chat_template_kwargs may not set {', '.join(map(repr, clashes))}: "
            "these are arguments of the chat template call itself",
            "chat_template_kwargs",
        )
    return kwargs


def _render(
    source: str,
    context: dict[str, Any],
    continue_final_message: bool,
    max_chars: int,
) -> str:
    """transformers' rule for continue_final_message: tag the final message, render,
    and cut the text where the tag is (so that the model continues that message)."""
    if not continue_final_message:
        return render_template(source, context, max_chars)
    final = context["messages"][-1]
    final["content"] = final["content"] + _CONTINUE_TAG
    rendered = render_template(source, context, max_chars)
    at = rendered.rfind(_CONTINUE_TAG.strip())
    if at < 0:
        raise ChatTemplateError(
            "continue_final_message is set but the chat template drops the final message"
        )
    if rendered[at : at + len(_CONTINUE_TAG)] == _CONTINUE_TAG:
        return rendered[:at]
    return rendered[:at].rstrip()


def _prepare(
    tokenizer: Any,
    messages: list[Any],
    chat_template: str | None,
    add_generation_prompt: bool,
    continue_final_message: bool,
    template_kwargs: dict[str, Any] | None,
    tools: list[dict[str, Any]] | None = None,
) -> tuple[str, dict[str, Any]]:
    """(the template source, the variables it sees), validated."""
    _check_request(messages, add_generation_prompt, continue_final_message)
    kwargs = _check_kwargs(template_kwargs)
    template = chat_template or getattr(tokenizer, "chat_template", None)
    if not template:
        raise ValueError(
            "The model has no chat template: pass one with --chat-template (a file or a string)"
        )
    context: dict[str, Any] = dict(getattr(tokenizer, "special_tokens_map", None) or {})
    context.update(kwargs)
    context.update(
        messages=to_conversation(messages),
        tools=tools,
        documents=None,
        add_generation_prompt=add_generation_prompt,
    )
    return str(template), context


def render_chat(
    tokenizer: Any,
    messages: list[Any],
    chat_template: str | None = None,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    template_kwargs: dict[str, Any] | None = None,
    limits: RenderLimits | None = None,
) -> str:
    """The prompt text; ValueError (HTTP 400) for anything the template rejects, and
    for a render past `limits` (time or output size)."""
    limits = limits or RenderLimits()
    render = _renderer(
        tokenizer,
        messages,
        chat_template,
        add_generation_prompt,
        continue_final_message,
        template_kwargs,
        limits,
    )
    return run_with_deadline(render, limits.timeout_s)


async def render_chat_async(
    tokenizer: Any,
    messages: list[Any],
    chat_template: str | None = None,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    template_kwargs: dict[str, Any] | None = None,
    limits: RenderLimits | None = None,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    """render_chat for the server: the event loop only waits. `tools`: the request's
    tools, as the template's `tools` variable (transformers' apply_chat_template(tools=))."""
    limits = limits or RenderLimits()
    render = _renderer(
        tokenizer,
        messages,
        chat_template,
        add_generation_prompt,
        continue_final_message,
        template_kwargs,
        limits,
        tools,
    )
    return await run_with_deadline_async(render, limits.timeout_s)


def _renderer(
    tokenizer: Any,
    messages: list[Any],
    chat_template: str | None,
    add_generation_prompt: bool,
    continue_final_message: bool,
    template_kwargs: dict[str, Any] | None,
    limits: RenderLimits,
    tools: list[dict[str, Any]] | None = None,
) -> Callable[[], str]:
    """The whole render as one call for the render thread: the checks, the flattening
    of huge messages and the template all run under its deadline."""

    def render() -> str:
        source, context = _prepare(
            tokenizer,
            messages,
            chat_template,
            add_generation_prompt,
            continue_final_message,
            template_kwargs,
            tools,
        )
        return _render(source, context, continue_final_message, limits.max_chars)

    return render
