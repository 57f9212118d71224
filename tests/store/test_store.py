"""The Store protocol on both backends: SQLite (the default) and a real redis-server (tests/conftest.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from glm4voice_api.store import (
    RedisStore,
    SqliteStore,
    Store,
    StoredAudio,
    StoredClientSecret,
    StoredVoice,
    StoreError,
    hash_api_key,
    open_store,
)
from glm4voice_api.store.keys import create_key, match_keys

NOW = 1_900_000_000


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        backend: Store = SqliteStore(tmp_path / "store.sqlite3")
    else:
        # A fresh namespace per test: the session's one redis-server is shared, its keys are not.
        backend = RedisStore(request.getfixturevalue("redis_url") + "/0", namespace=f"t{uuid.uuid4().hex}")
    await backend.ping()
    yield backend
    await backend.close()


def _audio(audio_id: str, tenant: str, expires_at: int = NOW + 60) -> StoredAudio:
    return StoredAudio(audio_id, tenant, [1, 2, 152353, 168959], "hello", NOW, expires_at)


def _voice(voice_id: str, tenant: str, created_at: int, name: str = "v") -> StoredVoice:
    return StoredVoice(voice_id, tenant, name, [5, 6, 7], b"\x00\x00\x80?" * 160, 2, created_at)


async def test_audio_round_trip_scoped_to_its_tenant(store: Store) -> None:
    await store.put_audio(_audio("audio_1", "acme"))
    got = await store.get_audio("acme", "audio_1", NOW)
    assert got == _audio("audio_1", "acme")
    assert await store.get_audio("other", "audio_1", NOW) is None
    assert await store.get_audio("acme", "audio_missing", NOW) is None


async def test_client_secret_round_trip_and_expiry(store: Store) -> None:
    import time

    # Redis drops the key at its real expiry time: keep it in the future on the wall clock.
    now = int(time.time())
    secret = StoredClientSecret(hash_api_key("ek_abc"), "acme", '{"instructions": "hi"}', now, now + 60)
    await store.put_client_secret(secret)
    assert await store.get_client_secret(hash_api_key("ek_abc"), now) == secret
    assert await store.get_client_secret(hash_api_key("ek_abc"), now + 60) == secret  # valid through expires_at
    assert await store.get_client_secret(hash_api_key("ek_abc"), now + 61) is None
    assert await store.get_client_secret(hash_api_key("ek_other"), now) is None


async def test_audio_expires(store: Store) -> None:
    await store.put_audio(_audio("audio_2", "acme", expires_at=NOW + 10))
    assert await store.get_audio("acme", "audio_2", NOW + 10) is not None  # valid through its expires_at second
    assert await store.get_audio("acme", "audio_2", NOW + 11) is None


async def test_redis_lets_redis_expire_audio(redis_url: str) -> None:
    import time

    store = RedisStore(redis_url + "/0", namespace=f"t{uuid.uuid4().hex}")
    now = int(time.time())
    await store.put_audio(StoredAudio("audio_3", "acme", [1], "x", now, now + 100))
    ttl = await store._redis.ttl(store._k("audio", "acme", "audio_3"))
    assert 90 <= ttl <= 101
    await store.put_audio(StoredAudio("audio_4", "acme", [1], "x", now - 100, now - 50))  # already past
    assert not await store._redis.exists(store._k("audio", "acme", "audio_4"))
    await store.close()


async def test_voices_are_per_tenant(store: Store) -> None:
    await store.put_voice(_voice("voice_b", "acme", NOW + 2, "second"))
    await store.put_voice(_voice("voice_a", "acme", NOW + 1, "first"))
    await store.put_voice(_voice("voice_c", "beta", NOW + 3))
    assert [v.id for v in await store.list_voices("acme")] == ["voice_a", "voice_b"]
    assert [v.id for v in await store.list_voices("beta")] == ["voice_c"]
    assert await store.list_voices("nobody") == []
    assert await store.get_voice("acme", "voice_a") == _voice("voice_a", "acme", NOW + 1, "first")
    assert await store.get_voice("acme", "voice_c") is None
    assert await store.delete_voice("acme", "voice_c") is False
    assert await store.get_voice("beta", "voice_c") is not None
    assert await store.delete_voice("acme", "voice_a") is True
    assert await store.delete_voice("acme", "voice_a") is False
    assert [v.id for v in await store.list_voices("acme")] == ["voice_b"]


async def test_keys_create_find_list_revoke(store: Store) -> None:
    assert await store.has_keys() is False
    record, secret = await create_key(store, "acme")
    other, _ = await create_key(store, "beta")
    assert secret.startswith("sk-g4v-") and len(secret) > 40
    assert secret.startswith(record.prefix) and len(record.prefix) < 16
    assert record.key_hash == hash_api_key(secret) and secret not in repr(record)
    assert await store.has_keys() is True
    assert await store.find_key(hash_api_key(secret)) == record
    assert await store.find_key(hash_api_key(secret + "x")) is None
    assert {k.id for k in await store.list_keys()} == {record.id, other.id}
    assert await match_keys(store, record.id) == [record]
    assert await match_keys(store, secret) == [record]
    assert await match_keys(store, record.prefix) == [record]
    assert await match_keys(store, "sk-g4v-") == []  # the fixed part alone matches nothing
    assert await store.revoke_key(record.id, NOW) is True
    assert await store.revoke_key(record.id, NOW + 1) is False
    assert await store.revoke_key("key_missing", NOW) is False
    assert await store.find_key(hash_api_key(secret)) is None
    listed = {k.id: k for k in await store.list_keys()}
    assert (listed[record.id].revoked_at, listed[other.id].revoked_at) == (NOW, None)
    assert await store.has_keys() is True  # revoking every key must not switch auth off


async def test_bad_tenant_names_are_refused(store: Store) -> None:
    for name in ("", "a:b", "a b", "-x", "x" * 65):
        with pytest.raises(ValueError, match="tenant"):
            await create_key(store, name)


async def test_count_request_windows(store: Store) -> None:
    assert [await store.count_request("acme", 1000, 120) for _ in range(3)] == [1, 2, 3]
    assert await store.count_request("beta", 1000, 120) == 1
    assert await store.count_request("acme", 1060, 120) == 1
    assert await store.count_request("acme", 1000, 120) == 4
    # Concurrent callers each get a distinct count: the increment is atomic.
    counts = await asyncio.gather(*(store.count_request("gamma", 2000, 120) for _ in range(20)))
    assert sorted(counts) == list(range(1, 21))


async def test_sqlite_prunes_old_windows(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.sqlite3")
    await store.count_request("acme", 1000, 60)
    await store.count_request("acme", 2000, 60)
    assert await store._run("SELECT window_start FROM rate_windows") == [(2000,)]
    await store.close()


async def test_redis_windows_expire(redis_url: str) -> None:
    store = RedisStore(redis_url + "/0", namespace=f"t{uuid.uuid4().hex}")
    await store.count_request("acme", 1000, 60)
    assert 0 < await store._redis.ttl(store._k("rate", "acme", 1000)) <= 60
    await store.close()


def test_open_store_picks_the_backend_by_scheme(tmp_path: Path) -> None:
    assert isinstance(open_store(None, tmp_path), SqliteStore)
    assert (tmp_path / "store.sqlite3").is_file()
    assert isinstance(open_store(f"sqlite:///{tmp_path}/x.sqlite3", tmp_path), SqliteStore)
    assert isinstance(open_store("redis://127.0.0.1:1/0", tmp_path), RedisStore)
    for bad in ("postgres://x/y", "store.sqlite3", "sqlite://relative.db", "sqlite:///", "redis://h:notaport/0"):
        with pytest.raises(ValueError, match="store URL"):
            open_store(bad, tmp_path)


async def test_unreachable_redis_is_a_clear_startup_error(tmp_path: Path) -> None:
    store = open_store("redis://:secret@127.0.0.1:1/0", tmp_path)
    with pytest.raises(StoreError, match=r"cannot reach the store at redis://:\*\*\*@127\.0\.0\.1:1/0") as err:
        await store.ping()
    assert "secret" not in str(err.value)
    await store.close()
