"""`/v1/audio/voices` wire types (openai-python `types/audio/voice*.py`); the GET list is the peers' extension.

https://platform.openai.com/docs/api-reference/audio/createVoice
"""

from __future__ import annotations

from typing import Literal

from fastapi import UploadFile
from pydantic import BaseModel

from glm4voice_api.protocol.common import OpenAIBaseModel


class VoiceCreateRequest(OpenAIBaseModel):
    """The multipart form of `POST /v1/audio/voices`."""

    name: str
    """A display name (1-256 characters)."""
    audio_sample: UploadFile
    """At most 10 MiB of speech; the first seconds (see serving/voices_api.py) become the voice prompt."""
    consent: str
    """Required, as OpenAI requires it: the id of the speaker's consent (OpenAI's `cons_...`). Stored nowhere and
    not checked against a consent store (there is none here); asking for it keeps clients' calls the same and
    makes cloning someone's voice a deliberate act."""
    type: str | None = None
    """Only `audio_sample` (the default); `prompt` (a voice designed from text) is not supported."""


class VoiceObject(BaseModel):
    id: str
    object: Literal["audio.voice"] = "audio.voice"
    name: str
    created_at: int


class VoiceList(BaseModel):
    object: Literal["list"] = "list"
    data: list[VoiceObject]


class VoiceDeleted(BaseModel):
    id: str
    object: Literal["audio.voice.deleted"] = "audio.voice.deleted"
    deleted: bool = True
