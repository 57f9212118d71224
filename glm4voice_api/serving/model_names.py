"""The model names a request may give: the served name, and (setting `model_aliases`, on by default) the names
OpenAI clients already send, each on the routes where it fits, so a client written for OpenAI works by changing
only `base_url`."""

from __future__ import annotations

from typing import Literal

from glm4voice_api.errors import APIError, model_not_found
from glm4voice_api.pipeline.runtime import ServedModel

Route = Literal["chat", "speech", "transcription", "translation", "realtime"]

ALIASES: dict[str, tuple[Route, ...]] = {
    "gpt-4o-audio-preview": ("chat",),
    "gpt-4o-mini-audio-preview": ("chat",),
    "gpt-4o-mini-tts": ("speech",),
    "tts-1": ("speech",),
    "tts-1-hd": ("speech",),
    "whisper-1": ("transcription", "translation"),
    "gpt-4o-transcribe": ("transcription", "translation"),
    "gpt-4o-mini-transcribe": ("transcription", "translation"),
    "gpt-realtime": ("realtime",),
}
ENDPOINTS: dict[Route, str] = {
    "chat": "/v1/chat/completions",
    "speech": "/v1/audio/speech",
    "transcription": "/v1/audio/transcriptions",
    "translation": "/v1/audio/translations",
    "realtime": "/v1/realtime",
}


def aliases(model: ServedModel) -> dict[str, tuple[Route, ...]]:
    return ALIASES if model.aliases else {}


def check_model(model: ServedModel, name: str, route: Route) -> None:
    """The served model answers `name` on `route`; else 404, naming the route when the alias is another route's."""
    if name == model.name:
        return
    routes = aliases(model).get(name)
    if routes is None:
        raise model_not_found(name)
    if route not in routes:
        raise APIError(
            f"The model '{name}' is not supported on {ENDPOINTS[route]} (it is an alias for {ENDPOINTS[routes[0]]}); "
            f"use '{model.name}'.",
            param="model",
            code="model_not_found",
            status=404,
        )
