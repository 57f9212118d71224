"""The set of services the routes use, built once per app from the runtime."""

from __future__ import annotations

from dataclasses import dataclass

from glm4voice_api.pipeline.runtime import Runtime
from glm4voice_api.serving.admission import Admission
from glm4voice_api.serving.chat import ServingChat
from glm4voice_api.serving.models import ServingModels
from glm4voice_api.serving.speech import ServingSpeech
from glm4voice_api.serving.transcription import ServingTranscription
from glm4voice_api.serving.voices_api import ServingVoices


@dataclass
class Services:
    runtime: Runtime
    chat: ServingChat
    models: ServingModels
    speech: ServingSpeech
    transcription: ServingTranscription
    voices: ServingVoices
    admission: Admission

    @classmethod
    def from_runtime(cls, runtime: Runtime) -> Services:
        return cls(
            runtime=runtime,
            chat=ServingChat(runtime),
            models=ServingModels(runtime),
            speech=ServingSpeech(runtime),
            transcription=ServingTranscription(runtime),
            voices=ServingVoices(runtime),
            admission=Admission.from_settings(
                runtime.settings.admission, runtime.settings.tenant_limits, runtime.store
            ),
        )
