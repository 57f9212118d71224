"""Redis store (`redis://host:port/db`): the shared store when several replicas serve the same tenants.

Key layout under one namespace (`glm4voice:`):
  audio:{tenant}:{id}      hash, EXPIREAT at the item's expiry (Redis drops it, no sweeping)
  voice:{tenant}:{id}      hash;  voices:{tenant}  sorted set of voice ids by creation time
  key:{sha256}             hash of one API key;  keyids  hash key id -> sha256 (listing, revoking by id)
  rate:{tenant}:{window}   counter, EXPIRE ttl_s
Tenant names never contain ':' (the CLI checks), and every read also compares the stored tenant, so an id a client
makes up can never reach another tenant's key.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from glm4voice_api.store.base import StoredAudio, StoredKey, StoredVoice, StoreError, pack_ids, unpack_ids

NAMESPACE = "glm4voice"


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
            self._redis = aioredis.Redis.from_url(url)
        except ValueError as exc:
            raise ValueError(f"bad store URL {self.url!r}: {exc}") from exc
        self._ns = namespace

    def _k(self, *parts: str | int) -> str:
        return ":".join((self._ns, *map(str, parts)))

    async def ping(self) -> None:
        try:
            await self._redis.ping()
        except (RedisError, OSError) as exc:
            raise StoreError(f"cannot reach the store at {self.url}: {exc}") from exc

    async def close(self) -> None:
        await self._redis.aclose()

    async def put_audio(self, item: StoredAudio) -> None:
        key = self._k("audio", item.tenant, item.id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"tenant": item.tenant, "token_ids": pack_ids(item.token_ids),
                                    "transcript": item.transcript, "created_at": item.created_at,
                                    "expires_at": item.expires_at})  # fmt: skip
            # get_audio accepts the item up to and including expires_at, so Redis keeps it one second longer.
            pipe.expireat(key, item.expires_at + 1)
            await pipe.execute()

    async def get_audio(self, tenant: str, audio_id: str, now: int) -> StoredAudio | None:
        h = await self._redis.hgetall(self._k("audio", tenant, audio_id))
        if not h or _str(h[b"tenant"]) != tenant or int(h[b"expires_at"]) < now:
            return None
        return StoredAudio(audio_id, tenant, unpack_ids(h[b"token_ids"]), _str(h[b"transcript"]),
                           int(h[b"created_at"]), int(h[b"expires_at"]))  # fmt: skip

    async def put_voice(self, voice: StoredVoice) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._k("voice", voice.tenant, voice.id),
                      mapping={"tenant": voice.tenant, "name": voice.name, "prompt_tokens": pack_ids(voice.prompt_tokens),
                               "prompt_mel": voice.prompt_mel, "mel_frames": voice.mel_frames,
                               "created_at": voice.created_at})  # fmt: skip
            pipe.zadd(self._k("voices", voice.tenant), {voice.id: voice.created_at})
            await pipe.execute()

    @staticmethod
    def _voice(voice_id: str, tenant: str, h: dict[bytes, bytes]) -> StoredVoice | None:
        if not h or _str(h[b"tenant"]) != tenant:
            return None
        return StoredVoice(voice_id, tenant, _str(h[b"name"]), unpack_ids(h[b"prompt_tokens"]), h[b"prompt_mel"],
                           int(h[b"mel_frames"]), int(h[b"created_at"]))  # fmt: skip

    async def get_voice(self, tenant: str, voice_id: str) -> StoredVoice | None:
        return self._voice(voice_id, tenant, await self._redis.hgetall(self._k("voice", tenant, voice_id)))

    async def list_voices(self, tenant: str) -> list[StoredVoice]:
        ids = [_str(v) for v in await self._redis.zrange(self._k("voices", tenant), 0, -1)]
        async with self._redis.pipeline(transaction=False) as pipe:
            for voice_id in ids:
                pipe.hgetall(self._k("voice", tenant, voice_id))
            hashes = await pipe.execute()
        voices = (self._voice(voice_id, tenant, h) for voice_id, h in zip(ids, hashes, strict=True))
        return [v for v in voices if v is not None]

    async def delete_voice(self, tenant: str, voice_id: str) -> bool:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._k("voice", tenant, voice_id))
            pipe.zrem(self._k("voices", tenant), voice_id)
            deleted, _ = await pipe.execute()
        return deleted > 0

    async def put_key(self, key: StoredKey) -> None:
        fields: dict[str, str | int] = {"id": key.id, "tenant": key.tenant, "prefix": key.prefix,
                                        "created_at": key.created_at}  # fmt: skip
        if key.revoked_at is not None:
            fields["revoked_at"] = key.revoked_at
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._k("key", key.key_hash), mapping=fields)
            pipe.hset(self._k("keyids"), key.id, key.key_hash)
            await pipe.execute()

    @staticmethod
    def _key(key_hash: str, h: dict[bytes, bytes]) -> StoredKey:
        revoked = h.get(b"revoked_at")
        return StoredKey(_str(h[b"id"]), _str(h[b"tenant"]), _str(h[b"prefix"]), key_hash, int(h[b"created_at"]),
                         int(revoked) if revoked is not None else None)  # fmt: skip

    async def find_key(self, key_hash: str) -> StoredKey | None:
        h = await self._redis.hgetall(self._k("key", key_hash))
        if not h or b"revoked_at" in h:
            return None
        return self._key(key_hash, h)

    async def list_keys(self) -> list[StoredKey]:
        hashes = [_str(v) for v in (await self._redis.hgetall(self._k("keyids"))).values()]
        async with self._redis.pipeline(transaction=False) as pipe:
            for key_hash in hashes:
                pipe.hgetall(self._k("key", key_hash))
            rows = await pipe.execute()
        keys = [self._key(key_hash, h) for key_hash, h in zip(hashes, rows, strict=True) if h]
        return sorted(keys, key=lambda k: (k.created_at, k.id))

    async def revoke_key(self, key_id: str, now: int) -> bool:
        key_hash = await self._redis.hget(self._k("keyids"), key_id)
        if key_hash is None:
            return False
        # HSETNX: of two concurrent revocations exactly one reports success.
        return bool(await self._redis.hsetnx(self._k("key", _str(key_hash)), "revoked_at", now))

    async def has_keys(self) -> bool:
        return bool(await self._redis.exists(self._k("keyids")))

    async def count_request(self, tenant: str, window_start: int, ttl_s: int) -> int:
        key = self._k("rate", tenant, window_start)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, ttl_s)
            count, _ = await pipe.execute()
        return int(count)
