"""What the server keeps between requests: earlier replies' token ids (by audio id) and custom voices.

Everything is scoped to a tenant: a lookup with another tenant's id finds nothing (404/400, never 403), so ids
leak nothing about other tenants.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass
class StoredAudio:
    id: str
    tenant: str
    token_ids: list[int]
    """The reply's exact generated ids (text and audio, without the end-of-turn id)."""
    transcript: str
    created_at: int
    expires_at: int


@dataclass
class StoredVoice:
    id: str
    tenant: str
    name: str
    prompt_tokens: list[int]
    prompt_mel: bytes
    """float32 [80, F] mel frames, C order."""
    mel_frames: int
    created_at: int


class Store(Protocol):
    async def put_audio(self, item: StoredAudio) -> None: ...

    async def get_audio(self, tenant: str, audio_id: str, now: int) -> StoredAudio | None:
        """The item if it exists, belongs to `tenant` and has not expired."""
        ...

    async def put_voice(self, voice: StoredVoice) -> None: ...

    async def get_voice(self, tenant: str, voice_id: str) -> StoredVoice | None: ...

    async def list_voices(self, tenant: str) -> list[StoredVoice]: ...

    async def delete_voice(self, tenant: str, voice_id: str) -> bool: ...

    async def close(self) -> None: ...
