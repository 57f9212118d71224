"""The set of services the routes use, built once per app from the runtime."""

from __future__ import annotations

from dataclasses import dataclass

from glm4voice_api.pipeline.runtime import Runtime
from glm4voice_api.serving.chat import ServingChat
from glm4voice_api.serving.models import ServingModels


@dataclass
class Services:
    runtime: Runtime
    chat: ServingChat
    models: ServingModels

    @classmethod
    def from_runtime(cls, runtime: Runtime) -> Services:
        return cls(runtime=runtime, chat=ServingChat(runtime), models=ServingModels(runtime))
