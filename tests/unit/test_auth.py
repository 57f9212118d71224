"""Auth middleware and key resolution, on the real app (create_app) without its lifespan: no engine is started,
so /v1 routes that pass auth answer 503 (starting up), and a test route reports the tenant the middleware set."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request

from glm4voice_api.app import create_app
from glm4voice_api.config import Settings
from glm4voice_api.store import SqliteStore, StoreUnavailable
from glm4voice_api.store.keys import create_key

STATIC = "sk-static-0123456789abcdefghij"


def _app(store: object = None, **auth: object) -> FastAPI:
    app = create_app(Settings(auth=auth))
    app.state.auth.bind(store)  # what the lifespan does once the store is open

    @app.get("/v1/test/whoami")
    async def whoami(request: Request) -> dict:
        return {"tenant": request.state.tenant}

    return app


def _client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    backend = SqliteStore(tmp_path / "store.sqlite3")
    yield backend
    await backend.close()


def _assert_401(response: httpx.Response, message: str) -> None:
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.headers["x-request-id"]
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "invalid_api_key", None)
    assert message in error["message"]


async def test_no_keys_means_auth_off(store: SqliteStore) -> None:
    async with _client(_app(store)) as client:
        assert (await client.get("/v1/test/whoami")).json() == {"tenant": "default"}
        assert (await client.get("/v1/models")).status_code == 503  # not started: no engine in this test


async def test_static_keys(store: SqliteStore) -> None:
    async with _client(_app(store, api_keys=[STATIC, "sk-second-key-0123456789"])) as client:
        _assert_401(await client.get("/v1/models"), "You didn't provide an API key")
        _assert_401(await client.get("/v1/models", headers={"Authorization": f"Basic {STATIC}"}), "didn't provide")
        wrong = await client.get("/v1/models", headers=_bearer("sk-wrong-0123456789abcdef"))
        _assert_401(wrong, "Incorrect API key provided: sk-wrong***cdef")
        assert (await client.get("/v1/models", headers=_bearer(STATIC))).status_code == 503
        whoami = await client.get("/v1/test/whoami", headers={"authorization": f"bearer {STATIC}"})
        assert whoami.json() == {"tenant": "default"}


def test_static_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLM4VOICE_AUTH__API_KEYS", f" {STATIC}, sk-two ,,")
    assert Settings().auth.api_keys == [STATIC, "sk-two"]


async def test_starting_up_is_a_503_for_keys_not_in_the_settings() -> None:
    async with _client(_app(None, api_keys=[STATIC])) as client:  # the lifespan has not bound the store yet
        response = await client.get("/v1/test/whoami", headers=_bearer("sk-stored-0123456789abcdef"))
        assert response.status_code == 503
        assert (await client.get("/v1/test/whoami", headers=_bearer(STATIC))).json() == {"tenant": "default"}


async def test_probes_and_web_demo_are_open_by_default() -> None:
    async with _client(_app(api_keys=[STATIC])) as client:
        assert (await client.get("/health")).status_code == 503  # reached the route: not started
        assert (await client.get("/health/ready")).status_code == 503
        assert (await client.get("/metrics")).status_code == 200
        assert (await client.get("/")).status_code == 200


async def test_probes_protected_when_asked() -> None:
    async with _client(_app(api_keys=[STATIC], protect_health_metrics=True)) as client:
        for path in ("/health", "/health/ready", "/metrics"):
            _assert_401(await client.get(path), "didn't provide")
        assert (await client.get("/metrics", headers=_bearer(STATIC))).status_code == 200
        assert (await client.get("/")).status_code == 200


async def test_auth_modes(store: SqliteStore) -> None:
    async with _client(_app(store, mode="on")) as client:  # on without any key: nobody gets in
        _assert_401(await client.get("/v1/test/whoami", headers=_bearer(STATIC)), "Incorrect API key")
    async with _client(_app(mode="off", api_keys=[STATIC])) as client:
        assert (await client.get("/v1/test/whoami")).json() == {"tenant": "default"}


async def test_stored_keys_map_to_their_tenant(store: SqliteStore) -> None:
    app = _app(store, cache_seconds=0)
    async with _client(app) as client:
        assert (await client.get("/v1/test/whoami")).json() == {"tenant": "default"}  # auto: no key stored yet
        record, acme = await create_key(store, "acme")
        _, beta = await create_key(store, "beta")
        _assert_401(await client.get("/v1/test/whoami"), "didn't provide")  # a key exists now: auth is on
        assert (await client.get("/v1/test/whoami", headers=_bearer(acme))).json() == {"tenant": "acme"}
        assert (await client.get("/v1/test/whoami", headers=_bearer(beta))).json() == {"tenant": "beta"}
        assert (await client.get("/v1/models", headers=_bearer(acme))).status_code == 503  # passed auth
        await store.revoke_key(record.id, 0)
        _assert_401(await client.get("/v1/test/whoami", headers=_bearer(acme)), "Incorrect API key")


async def test_lookups_are_cached_for_the_ttl(store: SqliteStore) -> None:
    app = _app(store, cache_seconds=3600)
    record, key = await create_key(store, "acme")
    async with _client(app) as client:
        assert (await client.get("/v1/test/whoami", headers=_bearer(key))).json() == {"tenant": "acme"}
        await store.revoke_key(record.id, 0)
        # Within the TTL the cached answer stands (documented: revocation takes effect within auth.cache_seconds).
        assert (await client.get("/v1/test/whoami", headers=_bearer(key))).json() == {"tenant": "acme"}
        app.state.auth.bind(store)  # a fresh cache, as after the TTL
        _assert_401(await client.get("/v1/test/whoami", headers=_bearer(key)), "Incorrect API key")


class _BrokenStore:
    async def has_keys(self) -> bool:
        return True

    async def find_key(self, key_hash: str) -> None:
        raise ConnectionError("store down")


class _UnreachableStore(_BrokenStore):
    async def find_key(self, key_hash: str) -> None:
        raise StoreUnavailable("the store at redis://127.0.0.1:1/0 is unavailable: connection refused")


@pytest.mark.parametrize(
    ("store", "code"), [(_BrokenStore(), "service_unavailable"), (_UnreachableStore(), "store_unavailable")]
)
async def test_a_failing_key_store_is_a_503(store: _BrokenStore, code: str) -> None:
    app = _app(store)
    async with _client(app) as client:
        response = await client.get("/v1/test/whoami", headers=_bearer("sk-any-0123456789abcdef"))
    assert response.status_code == 503
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", code)
    assert "redis" not in error["message"]  # the store's address is for the logs only
    assert int(response.headers["retry-after"]) >= 1


async def test_auth_stays_on_when_the_store_loses_its_keys(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """auto mode, keys only in Redis: a Redis restarted empty (or FLUSHDB) must not open the server."""
    from glm4voice_api.store import RedisStore
    from tests.redis_server import RedisServer

    redis = RedisServer(tmp_path).start()
    store = RedisStore(redis.url + "/0")
    try:
        _, key = await create_key(store, "acme")
        app = _app(store, cache_seconds=0)
        with caplog.at_level("INFO", logger="glm4voice_api.auth"):
            await app.state.auth.announce()
        assert "auth ON (--auth.mode auto, API keys found in the store)" in caplog.text
        async with _client(app) as client:
            assert (await client.get("/v1/test/whoami", headers=_bearer(key))).json() == {"tenant": "acme"}
            await store._redis.flushdb()
            _assert_401(await client.get("/v1/test/whoami"), "didn't provide")
            _assert_401(await client.get("/v1/test/whoami", headers=_bearer(key)), "Incorrect API key")
            assert "holds no API keys although it had some" in caplog.text
            redis.stop()  # down: a retryable 503, never an open door
            down = await client.get("/v1/test/whoami")
            assert down.status_code == 503 and down.json()["error"]["code"] == "store_unavailable"
            assert down.headers["retry-after"]
            redis.start()  # back, empty: still closed
            _assert_401(await client.get("/v1/test/whoami"), "didn't provide")
    finally:
        await store.close()
        redis.stop()


async def test_auth_on_without_any_key_refuses_everything(store: SqliteStore, caplog: pytest.LogCaptureFixture) -> None:
    app = _app(store, mode="on")
    with caplog.at_level("INFO", logger="glm4voice_api.auth"):
        await app.state.auth.announce()
    assert "no key is configured or stored: every /v1 request is refused" in caplog.text
    async with _client(app) as client:
        _assert_401(await client.get("/v1/test/whoami"), "didn't provide")
        _assert_401(await client.get("/v1/test/whoami", headers=_bearer("sk-anything-0123456789")), "Incorrect")


async def test_auth_off_is_announced(store: SqliteStore, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="glm4voice_api.auth"):
        await _app(store).state.auth.announce()
    assert "AUTH OFF (--auth.mode auto, no API key configured or stored)" in caplog.text
