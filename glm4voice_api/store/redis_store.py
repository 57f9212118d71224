"""Redis store (`redis://host:port/db`): the shared store when several replicas serve the same tenants.

Key layout under one namespace (`glm4voice:`):
  audio:{tenant}:{id}      hash, EXPIREAT at the item's expiry (Redis drops it, no sweeping)
  voice:{tenant}:{id}      hash;  voices:{tenant}  sorted set of voice ids by creation time
  key:{sha256}             hash of one API key;  keyids  hash key id -> sha256 (listing, revoking by id)
  rate:{tenant}:{window}   counter, EXPIRE ttl_s
  heartbeat                the time of the last write check (readiness, before generating a stored reply)
  secret:{sha256}          hash of one Realtime client secret, EXPIREAT at its expiry
Tenant names never contain ':' (the CLI checks), and every read also compares the stored tenant, so an id a client
makes up can never reach another tenant's key.

Failure behaviour: a Redis that is down, restarting or unreachable must cost a request seconds, never a hang, and
the server must reconnect by itself. Every command is bounded (connect and socket timeouts), a connection that
broke (a restarted Redis closes them all) is reconnected and the command retried once, and anything still failing
is raised as `StoreUnavailable` (serving answers 503 `store_unavailable`; the rate limiter lets the request pass).
A timed-out command is not retried: it may have run (an INCR counted twice), and waiting again doubles the delay.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from glm4voice_api.store.base import (
    StoredAudio,
    StoredClientSecret,
    StoredKey,
    StoredVoice,
    StoreUnavailable,
    pack_ids,
    unpack_ids,
)

NAMESPACE = "glm4voice"

CONNECT_TIMEOUT_S = 2.0
"""Opening a connection: an unreachable host (packets dropped) fails after this, not after the OS's minutes."""
COMMAND_TIMEOUT_S = 2.0
"""One command's reply: a hung or partitioned Redis fails the request after this (Redis answers in < 1 ms)."""
HEALTH_CHECK_INTERVAL_S = 10
"""A pooled connection idle for longer is PINGed before use, so one a restart killed is replaced before a command
is sent on it."""

P = ParamSpec("P")
R = TypeVar("R")
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)  # BusyLoadingError (AOF replay) is a ConnectionError


def _reachable(method: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Raise the store's own `StoreUnavailable` for a Redis that cannot be reached (callers never see redis-py)."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(*args, **kwargs)
        except _UNREACHABLE as exc:
            store = args[0]
            raise StoreUnavailable(f"the store at {store.url} is unavailable: {exc}") from exc  # type: ignore[attr-defined]

    return wrapper


def redact_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _str(value: bytes) -> str:
    return value.decode()


class RedisStore:
    def __init__(self, url: str, namespace: str = NAMESPACE) -> None:
        self.url = redact_url(url)
        try:
            self._redis = aioredis.Redis.from_url(
                url,
                socket_connect_timeout=CONNECT_TIMEOUT_S,
                socket_timeout=COMMAND_TIMEOUT_S,
                health_check_interval=HEALTH_CHECK_INTERVAL_S,
                retry=Retry(
                    ExponentialBackoff(cap=0.2, base=0.05), retries=1, supported_errors=(RedisConnectionError,)
                ),
            )
        except ValueError as exc:
            raise ValueError(f"bad store URL {self.url!r}: {exc}") from exc
        self._ns = namespace

    def _k(self, *parts: str | int) -> str:
        return ":".join((self._ns, *map(str, parts)))

    async def ping(self) -> None:
        try:
            await self._redis.ping()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"cannot reach the store at {self.url}: {exc}") from exc

    async def check_writable(self) -> None:
        try:
            await self._redis.set(self._k("heartbeat"), int(time.time()))
        except (RedisError, OSError) as exc:  # down, or up and refusing writes (OOM, MISCONF on a failing disk)
            raise StoreUnavailable(f"the store at {self.url} does not take writes: {exc}") from exc

    async def close(self) -> None:
        await self._redis.aclose()

    @_reachable
    async def put_audio(self, item: StoredAudio) -> None:
        key = self._k("audio", item.tenant, item.id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                key,
                mapping={
                    "tenant": item.tenant,
                    "token_ids": pack_ids(item.token_ids),
                    "transcript": item.transcript,
                    "created_at": item.created_at,
                    "expires_at": item.expires_at,
                },
            )
            # get_audio accepts the item up to and including expires_at, so Redis keeps it one second longer.
            pipe.expireat(key, item.expires_at + 1)
            await pipe.execute()

    @_reachable
    async def get_audio(self, tenant: str, audio_id: str, now: int) -> StoredAudio | None:
        h = await self._redis.hgetall(self._k("audio", tenant, audio_id))
        if not h or _str(h[b"tenant"]) != tenant or int(h[b"expires_at"]) < now:
            return None
        return StoredAudio(
            audio_id,
            tenant,
            unpack_ids(h[b"token_ids"]),
            _str(h[b"transcript"]),
            int(h[b"created_at"]),
            int(h[b"expires_at"]),
        )

    @_reachable
    async def put_voice(self, voice: StoredVoice) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                self._k("voice", voice.tenant, voice.id),
                mapping={
                    "tenant": voice.tenant,
                    "name": voice.name,
                    "prompt_tokens": pack_ids(voice.prompt_tokens),
                    "prompt_mel": voice.prompt_mel,
                    "mel_frames": voice.mel_frames,
                    "created_at": voice.created_at,
                },
            )
            pipe.zadd(self._k("voices", voice.tenant), {voice.id: voice.created_at})
            await pipe.execute()

    @staticmethod
    def _voice(voice_id: str, tenant: str, h: dict[bytes, bytes]) -> StoredVoice | None:
        if not h or _str(h[b"tenant"]) != tenant:
            return None
        return StoredVoice(
            voice_id,
            tenant,
            _str(h[b"name"]),
            unpack_ids(h[b"prompt_tokens"]),
            h[b"prompt_mel"],
            int(h[b"mel_frames"]),
            int(h[b"created_at"]),
        )

    @_reachable
    async def get_voice(self, tenant: str, voice_id: str) -> StoredVoice | None:
        return self._voice(voice_id, tenant, await self._redis.hgetall(self._k("voice", tenant, voice_id)))

    @_reachable
    async def list_voices(self, tenant: str) -> list[StoredVoice]:
        ids = [_str(v) for v in await self._redis.zrange(self._k("voices", tenant), 0, -1)]
        async with self._redis.pipeline(transaction=False) as pipe:
            for voice_id in ids:
                pipe.hgetall(self._k("voice", tenant, voice_id))
            hashes = await pipe.execute()
        voices = (self._voice(voice_id, tenant, h) for voice_id, h in zip(ids, hashes, strict=True))
        return [v for v in voices if v is not None]

    @_reachable
    async def count_voices(self, tenant: str) -> int:
        return int(await self._redis.zcard(self._k("voices", tenant)))

    @_reachable
    async def delete_voice(self, tenant: str, voice_id: str) -> bool:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._k("voice", tenant, voice_id))
            pipe.zrem(self._k("voices", tenant), voice_id)
            deleted, _ = await pipe.execute()
        return deleted > 0

    @_reachable
    async def put_key(self, key: StoredKey) -> None:
        fields: dict[str, str | int] = {
            "id": key.id,
            "tenant": key.tenant,
            "prefix": key.prefix,
            "created_at": key.created_at,
        }
        if key.revoked_at is not None:
            fields["revoked_at"] = key.revoked_at
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._k("key", key.key_hash), mapping=fields)
            pipe.hset(self._k("keyids"), key.id, key.key_hash)
            await pipe.execute()

    @staticmethod
    def _key(key_hash: str, h: dict[bytes, bytes]) -> StoredKey:
        revoked = h.get(b"revoked_at")
        return StoredKey(
            _str(h[b"id"]),
            _str(h[b"tenant"]),
            _str(h[b"prefix"]),
            key_hash,
            int(h[b"created_at"]),
            int(revoked) if revoked is not None else None,
        )

    @_reachable
    async def find_key(self, key_hash: str) -> StoredKey | None:
        h = await self._redis.hgetall(self._k("key", key_hash))
        if not h or b"revoked_at" in h:
            return None
        return self._key(key_hash, h)

    @_reachable
    async def list_keys(self) -> list[StoredKey]:
        hashes = [_str(v) for v in (await self._redis.hgetall(self._k("keyids"))).values()]
        async with self._redis.pipeline(transaction=False) as pipe:
            for key_hash in hashes:
                pipe.hgetall(self._k("key", key_hash))
            rows = await pipe.execute()
        keys = [self._key(key_hash, h) for key_hash, h in zip(hashes, rows, strict=True) if h]
        return sorted(keys, key=lambda k: (k.created_at, k.id))

    @_reachable
    async def revoke_key(self, key_id: str, now: int) -> bool:
        key_hash = await self._redis.hget(self._k("keyids"), key_id)
        if key_hash is None:
            return False
        # HSETNX: of two concurrent revocations exactly one reports success.
        return bool(await self._redis.hsetnx(self._k("key", _str(key_hash)), "revoked_at", now))

    @_reachable
    async def has_keys(self) -> bool:
        return bool(await self._redis.exists(self._k("keyids")))

    @_reachable
    async def put_client_secret(self, secret: StoredClientSecret) -> None:
        key = self._k("secret", secret.secret_hash)
        mapping = {
            "tenant": secret.tenant,
            "session": secret.session,
            "created_at": secret.created_at,
            "expires_at": secret.expires_at,
        }
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=mapping)
            pipe.expireat(key, secret.expires_at + 1)
            await pipe.execute()

    @_reachable
    async def get_client_secret(self, secret_hash: str, now: int) -> StoredClientSecret | None:
        h = await self._redis.hgetall(self._k("secret", secret_hash))
        if not h or int(h[b"expires_at"]) < now:
            return None
        return StoredClientSecret(
            secret_hash, _str(h[b"tenant"]), _str(h[b"session"]), int(h[b"created_at"]), int(h[b"expires_at"])
        )

    @_reachable
    async def count_request(self, tenant: str, window_start: int, ttl_s: int) -> int:
        key = self._k("rate", tenant, window_start)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, ttl_s)
            count, _ = await pipe.execute()
        return int(count)
