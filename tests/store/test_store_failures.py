"""Store failures are `StoreUnavailable` (a retryable 503 upstream), never driver errors; the store's calls do not
queue behind other blocking work. Real SQLite files and a real redis-server that is stopped and restarted."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from glm4voice_api.store import RedisStore, SqliteStore, StoredAudio, StoreUnavailable
from tests.redis_server import RedisServer

NOW = 1_900_000_000


def _audio(audio_id: str) -> StoredAudio:
    return StoredAudio(audio_id, "acme", list(range(2000)), "hello " * 50, NOW, NOW + 60)


async def test_sqlite_disk_full_is_store_unavailable(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.sqlite3")
    await store.check_writable()
    # SQLite's own cap on the file's pages: the same SQLITE_FULL ("database or disk is full") as a full disk.
    pages = (await store._run("PRAGMA page_count"))[0][0]
    await store._run(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(StoreUnavailable, match="full"):
        for i in range(50):
            await store.put_audio(_audio(f"audio_{i}"))
    await store.close()


async def test_sqlite_locked_past_its_timeout_is_store_unavailable(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.sqlite3")
    store._db.execute("PRAGMA busy_timeout = 100")
    other = sqlite3.connect(str(tmp_path / "s.sqlite3"), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        with pytest.raises(StoreUnavailable, match="locked"):
            await store.check_writable()
    finally:
        other.execute("ROLLBACK")
        other.close()
    await store.check_writable()
    await store.close()


async def test_redis_down_is_store_unavailable_and_back_up_works(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path).start()
    store = RedisStore(redis.url + "/0")
    try:
        await store.check_writable()
        await store.put_audio(_audio("audio_1"))
        redis.stop()
        for call in (
            store.check_writable(),
            store.get_audio("acme", "audio_1", NOW),
            store.has_keys(),
            store.ping(),
            store.put_audio(_audio("audio_2")),
        ):
            with pytest.raises(StoreUnavailable):
                await call
        redis.start()  # same port, empty
        await store.check_writable()
        assert await store.get_audio("acme", "audio_1", NOW) is None
    finally:
        await store.close()
        redis.stop()


async def test_sqlite_calls_do_not_wait_behind_the_default_executor(tmp_path: Path) -> None:
    """Audio decoding runs in asyncio's default executor; a burst of it must not hold up key or voice lookups."""
    store = SqliteStore(tmp_path / "s.sqlite3")
    await store.ping()
    loop = asyncio.get_running_loop()
    release = threading.Event()
    workers = getattr(loop, "_default_executor", None)
    count = workers._max_workers if workers is not None else 64
    busy = [loop.run_in_executor(None, release.wait, 30) for _ in range(count + 4)]
    try:
        started = time.monotonic()
        assert await asyncio.wait_for(store.list_voices("acme"), 10) == []
        assert time.monotonic() - started < 2
    finally:
        release.set()
        await asyncio.gather(*busy)
        await store.close()
