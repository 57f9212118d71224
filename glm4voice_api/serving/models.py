"""ServingModels: what `/v1/models` reports, random weights labelled as such."""

from __future__ import annotations

import time
from pathlib import PurePath

from glm4voice_api.errors import model_not_found
from glm4voice_api.pipeline.runtime import ServedModel
from glm4voice_api.protocol.models import ModelCard, ModelList

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

    def list_models(self) -> ModelList:
        return ModelList(data=[self.card()])

    def retrieve_model(self, model: str) -> ModelCard:
        if model != self.model.name:
            raise model_not_found(model)
        return self.card()
