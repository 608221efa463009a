"""Chat templates are user code (from a model, `--chat-template` or a request's
`chat_template`): render them with limits, so that no template can stall the server.

- A jinja2 sandbox (the one transformers uses, with its filters and globals) that refuses
  `include`/`import`/`extends`, and caps what `*` and `**` may build (a C-level
  `"x" * 10**12` or `10**10**10` could not be stopped).
- The output is produced chunk by chunk (`Template.generate`) and capped in characters.
- Each render runs in a thread of its own; past the deadline that thread gets a
  `RenderTimeout` raised inside it (`PyThreadState_SetAsyncExc`), which stops any
  pure-Python loop at its next bytecode, so a stuck template cannot pin a CPU.
Every failure is a `ChatTemplateError` (a ValueError: HTTP 400).
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import threading
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any, TypeVar

import jinja2
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

T = TypeVar("T")
_MAX_POWER_BITS = 1 << 16  # `a ** b` may build an integer of at most 64 Kbit
_FORBIDDEN_NODES = (
    (nodes.Include, "include"),
    (nodes.Import, "import"),
    (nodes.FromImport, "import"),
    (nodes.Extends, "extends"),
)
_GRACE_S = 1.0  # how long a caller waits past the deadline for the thread to stop


class ChatTemplateError(ValueError):
    """The template is invalid, failed, took too long or produced too much."""


class RenderTimeout(Exception):
    """Raised inside a render thread that passed its deadline."""


@dataclass(frozen=True)
class RenderLimits:
    timeout_s: float = 10.0  # wall-clock seconds per render
    max_chars: int = 64 * 2**20  # characters of rendered output


class _LimitedEnvironment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})
    max_repeat = RenderLimits.max_chars

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            _check_repeat(left, right, self.max_repeat)
        elif operator == "**":
            _check_power(left, right)
        return super().call_binop(context, operator, left, right)


def _check_repeat(left: Any, right: Any, limit: int) -> None:
    for seq, count in ((left, right), (right, left)):
        if isinstance(seq, (str, list, tuple)) and isinstance(count, int):
            if len(seq) * count > limit:
                raise ChatTemplateError(f"The chat template builds a sequence over {limit} items")


def _check_power(base: Any, exponent: Any) -> None:
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0:
        if max(base.bit_length(), 1) * exponent > _MAX_POWER_BITS:
            raise ChatTemplateError("The chat template computes a number that is too large")


@functools.lru_cache(maxsize=1)
def _environment() -> _LimitedEnvironment:
    """transformers' chat-template environment (its extensions, filters and globals),
    rebuilt on the limited sandbox."""
    from transformers.utils.chat_template_utils import _compile_jinja_template

    hf_env = _compile_jinja_template("").environment
    extensions = [type(ext) for ext in hf_env.extensions.values()]
    env = _LimitedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=extensions)
    env.filters["tojson"] = hf_env.filters["tojson"]
    for name in ("raise_exception", "strftime_now", "dict", "namespace"):
        if name in hf_env.globals:
            env.globals[name] = hf_env.globals[name]
    return env


@functools.lru_cache(maxsize=64)
def compile_template(source: str) -> jinja2.Template:
    env = _environment()
    try:
        tree = env.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ChatTemplateError(f"The chat template has a syntax error: {exc}") from None
    for node_type, word in _FORBIDDEN_NODES:
        if tree.find(node_type) is not None:
            raise ChatTemplateError(f"Chat templates may not use `{word}`")
    return env.from_string(tree)


def render_template(source: str, context: dict[str, Any], max_chars: int) -> str:
    """Render with the output capped at `max_chars`; any failure is a ChatTemplateError."""
    template = compile_template(source)
    parts: list[str] = []
    total = 0
    try:
        for chunk in template.generate(**context):
            total += len(chunk)
            if total > max_chars:
                raise ChatTemplateError(
                    f"The chat template's output exceeds {max_chars} characters"
                )
            parts.append(chunk)
    except (ChatTemplateError, RenderTimeout):
        raise
    except Exception as exc:  # the template's own error ({{ 1/0 }}, raise_exception, ...)
        raise ChatTemplateError(f"The chat template failed: {type(exc).__name__}: {exc}") from None
    return "".join(parts)


class _DeadlineRun:
    """One call in a thread of its own, stopped with RenderTimeout past its deadline."""

    def __init__(self, fn: Callable[[], T], timeout_s: float) -> None:
        self.fn = fn
        self.timeout_s = timeout_s
        self.future: Future[Any] = Future()
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._target, name="pagedllm-template", daemon=True)
        self._timer = threading.Timer(timeout_s, self._stop)
        self._timer.daemon = True

    def start(self) -> Future[Any]:
        self.thread.start()
        self._timer.start()
        return self.future

    def _target(self) -> None:
        try:
            try:
                result = self.fn()
            except BaseException as exc:
                self._settle(exc=exc)
            else:
                self._settle(result=result)
        except RenderTimeout as exc:  # delivered while settling
            self._settle(exc=exc)

    def _settle(self, result: Any = None, exc: BaseException | None = None) -> None:
        self._timer.cancel()
        with self._lock:
            try:
                if exc is None:
                    self.future.set_result(result)
                else:
                    self.future.set_exception(exc)
            except InvalidStateError:
                pass

    def _stop(self) -> None:
        with self._lock:  # only while the thread has not settled: it is still rendering
            if not self.future.done() and self.thread.ident is not None:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(self.thread.ident), ctypes.py_object(RenderTimeout)
                )


def _timeout_error(timeout_s: float) -> ChatTemplateError:
    return ChatTemplateError(f"Rendering the chat template took longer than {timeout_s:g} s")


def run_with_deadline(fn: Callable[[], T], timeout_s: float) -> T:
    future = _DeadlineRun(fn, timeout_s).start()
    try:
        return future.result(timeout_s + _GRACE_S)  # type: ignore[no-any-return]
    except (RenderTimeout, TimeoutError):
        raise _timeout_error(timeout_s) from None


async def run_with_deadline_async(fn: Callable[[], T], timeout_s: float) -> T:
    future = _DeadlineRun(fn, timeout_s).start()
    try:
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout_s + _GRACE_S)  # type: ignore[no-any-return]
    except (RenderTimeout, TimeoutError):
        raise _timeout_error(timeout_s) from None
