"""Voice resolution: OpenAI voice names map to the model's native voice; `{"id": ...}` is a tenant's custom voice."""

from __future__ import annotations

import numpy as np

from glm4voice_api.errors import APIError, not_found
from glm4voice_api.models.speech_decoder.chunks import Voice
from glm4voice_api.protocol.chat import OPENAI_VOICES, VoiceId
from glm4voice_api.store import Store


class VoiceResolver:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def resolve(self, voice: str | VoiceId | dict, tenant: str, *, param: str) -> Voice | None:
        """None means the native voice (GLM-4-Voice has one; every named voice maps to it)."""
        voice_id = voice.id if isinstance(voice, VoiceId) else voice.get("id") if isinstance(voice, dict) else None
        if voice_id is None:
            if isinstance(voice, str) and voice.lower() not in OPENAI_VOICES:
                # A typo must not silently become the native voice: name the accepted values, as OpenAI does.
                names = ", ".join(f"'{v}'" for v in OPENAI_VOICES)
                shown = voice if len(voice) <= 100 else voice[:100] + "..."
                raise APIError(
                    f'Invalid value: \'{shown}\'. Supported values are: {names}, or {{"id": "voice_..."}} of a '
                    "custom voice.",
                    param=param,
                    code="invalid_value",
                )
            return None
        stored = await self.store.get_voice(tenant, voice_id)
        if stored is None:  # another tenant's voice reads exactly as a nonexistent one
            raise not_found(f"Voice with id '{voice_id}' was not found.", param, code="voice_not_found")
        mel = np.frombuffer(stored.prompt_mel, dtype=np.float32).reshape(80, stored.mel_frames).copy()
        return Voice(prompt_tokens=list(stored.prompt_tokens), prompt_mel=mel)
