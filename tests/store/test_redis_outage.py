"""The Redis store when Redis goes away: a real redis-server (persistence on) stopped, paused and restarted.

Every operation must fail fast with `StoreUnavailable` (never hang, never leak redis-py's own errors), and the same
store object must work again by itself once Redis is back, with what was written before the outage still there.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from glm4voice_api.store import RedisStore, StoredAudio, StoreUnavailable
from glm4voice_api.store.redis_store import COMMAND_TIMEOUT_S
from tests.redis_server import RedisServer

NOW = 1_900_000_000


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path, persistent=True).start()
    yield server
    server.stop()


def _operations(store: RedisStore) -> dict[str, Callable[[], Awaitable[object]]]:
    return {
        "get_audio": lambda: store.get_audio("t", "audio_1", NOW),
        "put_audio": lambda: store.put_audio(StoredAudio("audio_2", "t", [1, 2], "x", NOW, NOW + 60)),
        "find_key": lambda: store.find_key("0" * 64),
        "has_keys": store.has_keys,
        "list_voices": lambda: store.list_voices("t"),
        "count_request": lambda: store.count_request("t", NOW, 120),
        "ping": store.ping,
    }


async def _fails_within(operation: Callable[[], Awaitable[object]], bound_s: float) -> float:
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await asyncio.wait_for(operation(), timeout=bound_s + 5)  # wait_for only turns a hang into a failure
    elapsed = time.monotonic() - started
    assert elapsed < bound_s, elapsed
    return elapsed


async def test_stopped_paused_and_restarted_redis(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url + "/0")
    try:
        await store.put_audio(StoredAudio("audio_1", "t", [7, 8, 9], "hello", NOW, NOW + 3600))
        assert await store.count_request("t", NOW, 120) == 1

        # Stopped: the port is closed, so every operation fails at once (connection refused), retry included.
        redis_server.stop()
        for operation in _operations(store).values():
            await _fails_within(operation, 2.0)

        # Back on the same port and folder: the store reconnects by itself; nothing written before is lost.
        redis_server.start()
        stored = await store.get_audio("t", "audio_1", NOW)
        assert stored is not None and stored.token_ids == [7, 8, 9]
        assert await store.count_request("t", NOW, 120) == 2

        # Paused (port open, no answers: a hung or partitioned Redis): each operation is bounded by the timeout.
        redis_server.pause()
        try:
            await _fails_within(lambda: store.get_audio("t", "audio_1", NOW), COMMAND_TIMEOUT_S + 2)
            await _fails_within(lambda: store.count_request("t", NOW, 120), COMMAND_TIMEOUT_S + 2)
        finally:
            redis_server.resume()
        stored = await store.get_audio("t", "audio_1", NOW)
        assert stored is not None and stored.transcript == "hello"
    finally:
        await store.close()


async def test_unreachable_at_start_is_a_store_error(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)  # a free port, never started
    store = RedisStore(server.url)
    try:
        await _fails_within(store.ping, 2.0)
    finally:
        await store.close()
