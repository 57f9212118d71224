"""What the server keeps between requests: earlier replies' token ids (by audio id), custom voices, API keys and
per-tenant request counters.

Everything is scoped to a tenant: a lookup with another tenant's id finds nothing (404/400, never 403), so ids
leak nothing about other tenants. API keys are stored only as their SHA-256 (keys are long random tokens, so a
plain hash is enough; no salt or slow KDF is needed) plus a short non-secret prefix for listing.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

DEFAULT_TENANT = "default"
"""The tenant of requests that need no key, and of the static keys in the settings."""


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


@dataclass
class StoredKey:
    id: str
    tenant: str
    prefix: str
    """The key's first characters: enough to recognise it in a list, useless to authenticate."""
    key_hash: str
    """sha256 hex of the whole key."""
    created_at: int
    revoked_at: int | None = None


@dataclass
class StoredClientSecret:
    """A short-lived Realtime client secret (`ek_...`): its tenant and the session settings it carries."""

    secret_hash: str
    """sha256 hex of the secret (the secret itself is shown once, to its creator)."""
    tenant: str
    session: str
    """JSON of the session settings given at creation (applied to every session opened with it)."""
    created_at: int
    expires_at: int


class StoreError(RuntimeError):
    """The store cannot be reached or used (a startup error, not a client's fault)."""


class StoreUnavailable(StoreError):
    """The store cannot be reached or cannot take a write right now (down, restarting, timed out, disk full,
    database locked). Retryable: serving answers 503
    `store_unavailable` with Retry-After, and the backend reconnects by itself once the store is back."""


_C = TypeVar("_C", bound=type)


def unavailable_on(*errors: type[BaseException]) -> Callable[[_C], _C]:
    """Class decorator for a backend: its public coroutine methods raise `StoreUnavailable` for `errors`."""

    def wrap(method: Callable) -> Callable:
        @functools.wraps(method)
        async def guarded(*args, **kwargs):
            try:
                return await method(*args, **kwargs)
            except StoreUnavailable:
                raise
            except errors as exc:
                raise StoreUnavailable(f"the store is unavailable: {exc}") from exc

        return guarded

    def decorate(cls: _C) -> _C:
        for name, member in list(vars(cls).items()):
            if not name.startswith("_") and name != "close" and inspect.iscoroutinefunction(member):
                setattr(cls, name, wrap(member))
        return cls

    return decorate


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Store(Protocol):
    async def put_audio(self, item: StoredAudio) -> None: ...

    async def get_audio(self, tenant: str, audio_id: str, now: int) -> StoredAudio | None:
        """The item if it exists, belongs to `tenant` and has not expired."""
        ...

    async def put_voice(self, voice: StoredVoice) -> None: ...

    async def get_voice(self, tenant: str, voice_id: str) -> StoredVoice | None: ...

    async def list_voices(self, tenant: str) -> list[StoredVoice]: ...

    async def count_voices(self, tenant: str) -> int:
        """How many voices `tenant` keeps (the per-tenant quota), without reading them."""
        ...

    async def delete_voice(self, tenant: str, voice_id: str) -> bool: ...

    async def put_key(self, key: StoredKey) -> None: ...

    async def find_key(self, key_hash: str) -> StoredKey | None:
        """The key with this hash if it exists and is not revoked."""
        ...

    async def list_keys(self) -> list[StoredKey]:
        """Every key of every tenant, revoked ones included, oldest first."""
        ...

    async def revoke_key(self, key_id: str, now: int) -> bool:
        """Mark the key revoked; False when there is no such key or it was already revoked."""
        ...

    async def has_keys(self) -> bool:
        """Whether any key was ever stored (revoked ones count: revoking the last key must not open the server)."""
        ...

    async def put_client_secret(self, secret: StoredClientSecret) -> None: ...

    async def get_client_secret(self, secret_hash: str, now: int) -> StoredClientSecret | None:
        """The secret if it exists and has not expired."""
        ...

    async def count_request(self, tenant: str, window_start: int, ttl_s: int) -> int:
        """Add one request to `tenant`'s fixed window starting at `window_start` (epoch s); return the window's
        count including this one. Windows older than ttl_s may be dropped."""
        ...

    async def ping(self) -> None:
        """Raise if the store cannot be reached (checked once at startup, so a bad URL fails fast)."""
        ...

    async def check_writable(self) -> None:
        """Raise `StoreUnavailable` unless the store takes a write now (one small real write: a full disk, a
        read-only replica or a Redis refusing writes all fail it). Checked before work whose result must be stored,
        and by readiness."""
        ...

    async def close(self) -> None: ...


def pack_ids(ids: list[int]) -> bytes:
    """Token ids as int32 bytes: what both backends store for an audio reply (compact, exact)."""
    return array("i", ids).tobytes()


def unpack_ids(blob: bytes) -> list[int]:
    out = array("i")
    out.frombytes(blob)
    return out.tolist()
