"""Issue "Hardening" on one extra real server (real engine, a real redis-server it can lose, real sockets): a request's
audio bounded as a whole; voice creation admitted and limited like every route that does model work; what the open
routes reveal; the limits on connections; store failures answered before the work.

Small limits make each bound reachable with small requests: 20 s of input audio per request, one request at a time
per tenant, two voices per tenant, 24 connections, 5 s for a request's head and between parts of its body.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from glm4voice_api.store import RedisStore
from glm4voice_api.store.keys import create_key
from tests.api.conftest import RunningServer, start_server, stop_server
from tests.api.test_hardening import MODEL, _wav
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.engine, pytest.mark.xdist_group("server")]
STATIC_KEY = "sk-hardening-static"
MAX_AUDIO_S = 20
MAX_VOICES = 2
TENANT = "acme-secret-customer"
MAX_CONNECTIONS = 24


@dataclass
class Hardened:
    server: RunningServer
    redis: RedisServer
    tenant_key: str
    """A stored key of tenant TENANT."""

    def post(self, path: str, key: str | None = STATIC_KEY, **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.post(self.server.base_url + path, headers=headers, timeout=120, **kwargs)


@pytest.fixture(scope="module")
def hardened(default_set: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hardened]:
    redis = RedisServer(tmp_path_factory.mktemp("hardened-redis"), persistent=True).start()

    async def make_key() -> str:
        store = RedisStore(redis.url + "/0")
        try:
            return (await create_key(store, TENANT))[1]
        finally:
            await store.close()

    tenant_key = asyncio.run(make_key())
    server = start_server(
        cache_dir,
        tmp_path_factory.mktemp("hardened") / "server.log",
        "--request-limits.max-audio-seconds",
        str(MAX_AUDIO_S),
        "--tenant-limits.max-concurrent",
        "1",
        "--tenant-limits.max-voices",
        str(MAX_VOICES),
        "--request-limits.max-header-bytes",
        "16384",
        "--request-limits.max-connections",
        str(MAX_CONNECTIONS),
        # 5 s, not 2: on a loaded 2-core CI machine a test client once stalled between its connect and its head
        # for over 2 s, and the voice request was cut without an answer (clean-clone run, 2026-12-05).
        "--timeouts.header-s",
        "5",
        "--timeouts.body-idle-s",
        "5",
        env={"GLM4VOICE_STORE": redis.url + "/0", "GLM4VOICE_AUTH__API_KEYS": STATIC_KEY},
    )
    try:
        yield Hardened(server, redis, tenant_key)
    finally:
        stop_server(server)
        redis.stop()


def _audio_part(wav: bytes) -> dict:
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav).decode(), "format": "wav"}}


def test_all_of_a_request_s_audio_counts_against_its_limit(hardened: Hardened) -> None:
    # Each part fits the limit alone; together they do not. The third part's header says it does not fit what the
    # first two left: refused before it is decoded, naming that part.
    part = _audio_part(_wav(8, rate=16000, width=2))
    body = {"model": MODEL, "messages": [{"role": "user", "content": [part] * 3}], "max_tokens": 5}
    response = hardened.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("audio_too_long", "messages[0].content[2].input_audio")
    assert "header declares 8.0 s" in error["message"], error
    # Two parts fit.
    body["messages"][0]["content"] = [part] * 2
    assert hardened.post("/v1/chat/completions", json=body).status_code == 200


def _create_voice(hardened: Hardened, name: str) -> httpx.Response:
    files = {"audio_sample": ("me.wav", _wav(3, rate=16000, width=2), "audio/wav")}
    return hardened.post("/v1/audio/voices", data={"name": name, "consent": "cons_test"}, files=files)


def test_voice_creation_is_admitted_like_other_model_work(hardened: Hardened) -> None:
    # The tenant's one request slot is taken by a stream: creating a voice (audio decoding, the speech tokenizer)
    # waits its turn like chat and speech do; here the tenant limit refuses it at once. A spoken answer holds the
    # slot: a text-only one (small deltas, unread by this client) could all fit in the socket buffers and end, and
    # free the slot, before the voice request came (seen on a fast machine, 2026-12-04).
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 600,
        "stream": True,
        "modalities": ["text", "audio"],
        "audio": {"voice": "alloy", "format": "pcm16"},
    }
    headers = {"Authorization": f"Bearer {STATIC_KEY}"}
    url = hardened.server.base_url + "/v1/chat/completions"
    voices = hardened.server.base_url + "/v1/audio/voices"
    for _ in range(5):
        with httpx.stream("POST", url, json=body, headers=headers, timeout=300) as running:
            assert running.status_code == 200
            lines = running.iter_lines()
            next(lines)
            answer = _create_voice(hardened, "Busy")
            for _ in lines:
                pass
        if answer.status_code == 429:
            assert answer.json()["error"]["type"] == "rate_limit_error" and int(answer.headers["retry-after"]) >= 1
            break
        # Created: the stream had ended first (a random-weight reply may end at once, and a slow client, on a loaded
        # 2-core CI machine, clean-clone run 2026-12-05, then finds the slot free). That try proves nothing; a voice
        # route that skipped admission would be created every time, and fail below.
        assert answer.status_code == 200, answer.text
        assert httpx.delete(f"{voices}/{answer.json()['id']}", headers=headers, timeout=30).status_code == 200
    else:
        pytest.fail("5 voices were created while a spoken answer of the same tenant (limit 1) was streaming")
    assert _create_voice(hardened, "Free").status_code == 200


def test_a_tenant_keeps_at_most_its_voice_quota(hardened: Hardened) -> None:
    headers = {"Authorization": f"Bearer {STATIC_KEY}"}
    voices = hardened.server.base_url + "/v1/audio/voices"
    for voice in httpx.get(voices, headers=headers, timeout=30).json()["data"]:
        httpx.delete(f"{voices}/{voice['id']}", headers=headers, timeout=30)
    made = [_create_voice(hardened, f"Voice {i}") for i in range(MAX_VOICES)]
    assert all(r.status_code == 200 for r in made), [r.text for r in made]
    over = _create_voice(hardened, "One too many")
    assert over.status_code == 400, over.text
    assert (over.json()["error"]["code"], over.json()["error"]["param"]) == ("voice_quota_exceeded", "audio_sample")
    assert httpx.delete(f"{voices}/{made[0].json()['id']}", headers=headers, timeout=30).status_code == 200
    assert _create_voice(hardened, "In its place").status_code == 200


def test_open_routes_reveal_no_tenants_and_no_paths(hardened: Hardened) -> None:
    base = hardened.server.base_url
    # The API description is guarded like /v1 once auth is on; the probes stay open.
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert httpx.get(base + path, timeout=30).status_code == 401, path
        assert httpx.get(base + path, headers={"Authorization": f"Bearer {STATIC_KEY}"}, timeout=30).status_code == 200
    assert httpx.get(base + "/health/ready", timeout=30).status_code == 200
    # /v1/models names the model's folder, not where it lies on the server's disk.
    models = httpx.get(base + "/v1/models", headers={"Authorization": f"Bearer {STATIC_KEY}"}, timeout=30).json()
    root = models["data"][0]["root"]
    assert "/" not in root and str(hardened.server.base_url) not in root, root
    # A tenant's requests are counted on the open /metrics under a pseudonym, not its name.
    headers = {"Authorization": f"Bearer {hardened.tenant_key}"}
    assert httpx.get(base + "/v1/models", headers=headers, timeout=30).status_code == 200
    metrics = httpx.get(base + "/metrics", timeout=30).text
    assert TENANT not in metrics
    assert 'tenant="t-' in metrics


def _connect(server: RunningServer) -> socket.socket:
    host, port = server.base_url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def _read_all(sock: socket.socket) -> bytes:
    """What the server sent until it closed (a reset after an answer to a request it did not read whole included)."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def test_connection_limits(hardened: Hardened) -> None:
    server = hardened.server
    # A head larger than the cap is refused without being read whole (it was read into memory, then a 401).
    with _connect(server) as sock:
        head = f"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {'k' * 40_000}\r\n\r\n".encode()
        try:
            sock.sendall(head)
        except OSError:
            pass  # the server may close while we still send: refused all the same
        answer = _read_all(sock)
    # 431 when the head came whole in one read, h11's 400 (or a reset) when it grew past the cap while arriving.
    assert answer.split(b" ", 2)[1:2] in ([b"431"], [b"400"], []), answer[:200]
    # A head that never ends: the connection is closed after timeouts.header_s, not held open.
    with _connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        assert _read_all(sock) == b""
    # A body that stops arriving: 408 after timeouts.body_idle_s.
    with _connect(server) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {STATIC_KEY}\r\nContent-Length: 100\r\n\r\n".encode()
            + b'{"model": '
        )
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    assert b'"code":"request_timeout"' in answer and b'"type":"invalid_request_error"' in answer
    # Connections beyond request_limits.max_connections: new requests get 503, and the server serves again after.
    idle = [_connect(server) for _ in range(MAX_CONNECTIONS + 2)]
    try:
        with _connect(server) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert _read_all(sock).startswith(b"HTTP/1.1 503"), "over the connection limit"
    finally:
        for sock in idle:
            sock.close()
    time.sleep(1)
    assert httpx.get(server.base_url + "/health/ready", timeout=30).status_code == 200


def test_a_store_that_fails_stops_spoken_replies_before_the_work(hardened: Hardened) -> None:
    # Last in this module: Redis goes away, and comes back.
    base = hardened.server.base_url
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 60,
        "modalities": ["text", "audio"],
        "audio": {"voice": "alloy", "format": "wav"},
    }
    generated = hardened.server.metric("glm4voice_audio_output_seconds_total")
    hardened.redis.stop()
    try:
        ready = httpx.get(base + "/health/ready", timeout=30)
        assert ready.status_code == 503 and "store" in ready.json()["detail"], ready.text
        # A spoken reply's id could not be kept: refused before generating, retryable (never a 500 after the work).
        refused = hardened.post("/v1/chat/completions", json=body)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "store_unavailable" and int(refused.headers["retry-after"]) >= 1
        # A stream is refused before its first byte (no audio, no id that was never stored).
        stream_body = {**body, "stream": True, "audio": {"voice": "alloy", "format": "pcm16"}}
        streamed = hardened.post("/v1/chat/completions", json=stream_body)
        assert streamed.status_code == 503 and streamed.json()["error"]["code"] == "store_unavailable"
        assert hardened.server.metric("glm4voice_audio_output_seconds_total") == generated
    finally:
        hardened.redis.start()  # same folder and port
    # The first request after Redis returns succeeds, and its id is there for the next turn.
    first = hardened.post("/v1/chat/completions", json=body)
    assert first.status_code == 200, first.text
    audio_id = first.json()["choices"][0]["message"]["audio"]["id"]
    follow_up = {
        **body,
        "messages": [
            *body["messages"],
            {"role": "assistant", "audio": {"id": audio_id}},
            {"role": "user", "content": "And?"},
        ],
    }
    assert hardened.post("/v1/chat/completions", json=follow_up).status_code == 200
    assert httpx.get(base + "/health/ready", timeout=30).status_code == 200
