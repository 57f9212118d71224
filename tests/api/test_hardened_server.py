"""Issue "Hardening" on one extra real server (real engine, a real redis-server it can lose, real sockets): a request's
audio bounded as a whole.

Small limits make each bound reachable with small requests: 20 s of input audio per request.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import RunningServer, start_server, stop_server
from tests.api.test_hardening import MODEL, _wav
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.engine, pytest.mark.xdist_group("server")]
STATIC_KEY = "sk-hardening-static"
MAX_AUDIO_S = 20


@dataclass
class Hardened:
    server: RunningServer
    redis: RedisServer

    def post(self, path: str, key: str | None = STATIC_KEY, **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.post(self.server.base_url + path, headers=headers, timeout=120, **kwargs)


@pytest.fixture(scope="module")
def hardened(default_set: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hardened]:
    redis = RedisServer(tmp_path_factory.mktemp("hardened-redis"), persistent=True).start()
    server = start_server(
        cache_dir,
        tmp_path_factory.mktemp("hardened") / "server.log",
        "--request-limits.max-audio-seconds",
        str(MAX_AUDIO_S),
        env={"GLM4VOICE_STORE": redis.url + "/0", "GLM4VOICE_AUTH__API_KEYS": STATIC_KEY},
    )
    try:
        yield Hardened(server, redis)
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
