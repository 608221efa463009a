"""The request fields that constrain the output, mapped to StructuredOutputsParams:
vLLM's `structured_outputs`, the older `guided_json` / `guided_regex` /
`guided_choice` / `guided_grammar`, and OpenAI's `response_format`
(`json_object`, `json_schema`). Checked here, in the front end: an invalid schema,
regex or grammar is a 400 naming the field, before the engine core sees it."""

from __future__ import annotations

from typing import Any

from pagedllm.config import StructuredOutputsConfig
from pagedllm.entrypoints.openai.errors import APIError
from pagedllm.sampling_params import StructuredOutputsParams
from pagedllm.structured_output import validate_structured_outputs

_GUIDED_FIELDS = {
    "guided_json": "json",
    "guided_regex": "regex",
    "guided_choice": "choice",
    "guided_grammar": "grammar",
}


def structured_outputs_params(
    request: Any, config: StructuredOutputsConfig
) -> StructuredOutputsParams | None:
    """The request's constraint (at most one field may set one), validated."""
    found = _candidates(request)
    if not found:
        return None
    if len(found) > 1:
        names = ", ".join(name for name, _ in found)
        raise APIError(f"only one structured output constraint is allowed, got {names}")
    param, kwargs = found[0]
    try:
        params = StructuredOutputsParams(**kwargs)
        validate_structured_outputs(params, config)
    except (TypeError, ValueError) as exc:
        raise APIError(f"{param}: {exc}", param=param) from None
    return params


def _candidates(request: Any) -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    so = getattr(request, "structured_outputs", None)
    if so is not None:
        if not isinstance(so, dict):
            raise APIError("structured_outputs must be an object", param="structured_outputs")
        found.append(("structured_outputs", _known(so)))
    for name, kind in _GUIDED_FIELDS.items():
        value = getattr(request, name, None)
        if value is not None:
            found.append((name, {kind: value}))
    fmt = _response_format(getattr(request, "response_format", None))
    if fmt is not None:
        found.append(("response_format", fmt))
    return found


def _known(so: dict[str, Any]) -> dict[str, Any]:
    allowed = {"json", "regex", "choice", "grammar", "json_object"}
    unknown = sorted(set(so) - allowed)
    if unknown:
        raise APIError(
            f"structured_outputs: unsupported field(s) {', '.join(unknown)}",
            param="structured_outputs",
        )
    return {k: v for k, v in so.items() if v is not None}


def _response_format(fmt: Any) -> dict[str, Any] | None:
    if fmt is None:
        return None
    kind = fmt.get("type", "text") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"json_object": True}
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if schema is None:
            raise APIError(
                "response_format.json_schema.schema is required", param="response_format"
            )
        return {"json": schema}
    raise APIError(
        f"response_format type must be text, json_object or json_schema, got {kind!r}",
        param="response_format",
    )
