"""ServingModels: what `/v1/models` reports, random weights labelled as such."""

from __future__ import annotations

import time
from pathlib import PurePath

from glm4voice_api.errors import model_not_found
from glm4voice_api.pipeline.runtime import ServedModel
from glm4voice_api.protocol.models import ModelCard, ModelList
from glm4voice_api.serving.model_names import ENDPOINTS, aliases

RANDOM_WEIGHTS_NOTE = (
    "RANDOM WEIGHTS: a tiny random-weight checkpoint set in the official formats (built-in default or "
    "load_format=dummy). Its speech and text are noise, not GLM-4-Voice."
)


class ServingModels:
    def __init__(self, model: ServedModel) -> None:
        self.model = model
        self.created = int(time.time())

    def card(self) -> ModelCard:
        return ModelCard(
            id=self.model.name,
            created=self.created,
            # The folder's name, not its path: /v1/models is open to every key holder, the filesystem is not theirs.
            root=PurePath(self.model.root).name or self.model.name,
            max_model_len=self.model.max_model_len,
            random_weights=self.model.random_weights,
            description=RANDOM_WEIGHTS_NOTE if self.model.random_weights else "GLM-4-Voice-9B",
        )

    def alias_card(self, name: str) -> ModelCard:
        routes = ", ".join(ENDPOINTS[r] for r in aliases(self.model)[name])
        return ModelCard(
            id=name,
            created=self.created,
            root=self.model.name,
            max_model_len=self.model.max_model_len,
            random_weights=self.model.random_weights,
            description=f"Alias of {self.model.name} on {routes} (OpenAI's model name, so OpenAI clients work).",
        )

    def list_models(self) -> ModelList:
        return ModelList(data=[self.card(), *(self.alias_card(name) for name in aliases(self.model))])

    def retrieve_model(self, model: str) -> ModelCard:
        if model == self.model.name:
            return self.card()
        if model in aliases(self.model):
            return self.alias_card(model)
        raise model_not_found(model)
