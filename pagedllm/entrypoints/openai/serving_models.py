"""The served model names: GET /v1/models and the request `model` check."""

from __future__ import annotations

from http import HTTPStatus

from pagedllm.entrypoints.openai.errors import APIError
from pagedllm.entrypoints.openai.protocol import ModelCard, ModelList, ModelPermission


class ServedModels:
    """Invariant: `names` is non-empty; names[0] is the default and the one the engine reports."""

    def __init__(self, names: list[str], root: str, max_model_len: int) -> None:
        if not names:
            raise ValueError("at least one served model name is needed")
        self.names = names
        self.root = root
        self.max_model_len = max_model_len

    @property
    def default_name(self) -> str:
        return self.names[0]

    def resolve(self, name: str | None) -> str:
        """The name to answer with: the requested one if served (None: the default)."""
        if name is None or name == "":
            return self.default_name
        if name in self.names:
            return name
        raise APIError(f"The model `{name}` does not exist.", HTTPStatus.NOT_FOUND, param="model")

    def list_models(self) -> ModelList:
        cards = [
            ModelCard(
                id=name,
                root=self.root,
                max_model_len=self.max_model_len,
                permission=[ModelPermission()],
            )
            for name in self.names
        ]
        return ModelList(data=cards)
