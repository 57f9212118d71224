"""Tenants end to end: one extra real server on the Redis store with two tenants' stored keys and a static key.

Proves through the openai SDK: 401 envelopes for no, wrong and revoked keys; one tenant can never read, use or
delete another's audio ids or voices (404, worded exactly as for an id that does not exist); the static key is
tenant `default`; the probes stay open.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from openai.types.chat import ChatCompletion

from glm4voice_api.audio.encode import encode_whole
from glm4voice_api.store import RedisStore
from glm4voice_api.store.keys import create_key
from tests.api.conftest import RunningServer, start_server, stop_server

pytestmark = [pytest.mark.engine, pytest.mark.xdist_group("server")]
MODEL = "glm-4-voice-9b"
STATIC_KEY = "sk-static-tenant-default-0123456789"


@dataclass
class Tenants:
    server: RunningServer
    store_url: str
    keys: dict[str, str]

    def client(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.server.base_url + "/v1", api_key=key, max_retries=0)

    def voice_ids(self, key: str) -> list[str]:
        response = httpx.get(
            self.server.base_url + "/v1/audio/voices", headers={"Authorization": f"Bearer {key}"}, timeout=30
        )
        assert response.status_code == 200, response.text
        return [v["id"] for v in response.json()["data"]]


@pytest.fixture(scope="module")
def tenants(
    default_set: Path, cache_dir: Path, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Tenants]:
    import redis

    store_url = redis_url + "/2"
    redis.Redis.from_url(store_url).flushdb()

    async def make_keys() -> dict[str, str]:
        store = RedisStore(store_url)
        try:
            return {tenant: (await create_key(store, tenant))[1] for tenant in ("acme", "beta", "gamma")}
        finally:
            await store.close()

    keys = asyncio.run(make_keys())
    # auth.cache_seconds 0: a revocation shows at once (the default, a few seconds, is for throughput).
    server = start_server(
        cache_dir,
        tmp_path_factory.mktemp("tenants") / "server.log",
        "--auth.cache-seconds",
        "0",
        env={"GLM4VOICE_STORE": store_url, "GLM4VOICE_AUTH__API_KEYS": STATIC_KEY},
    )
    yield Tenants(server, store_url, keys)
    stop_server(server)


def _assert_401(response: httpx.Response, words: str) -> None:
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_api_key")
    assert words in error["message"]


def test_no_wrong_or_revoked_key_is_401(tenants: Tenants) -> None:
    base = tenants.server.base_url
    _assert_401(httpx.get(base + "/v1/models", timeout=30), "You didn't provide an API key")
    with pytest.raises(openai.AuthenticationError) as err:
        tenants.client("sk-g4v-not-a-real-key-0123456789abcdef").models.list()
    assert err.value.status_code == 401
    assert err.value.body["code"] == "invalid_api_key"
    assert err.value.body["message"].startswith("Incorrect API key provided")
    assert err.value.response.headers["www-authenticate"] == "Bearer"

    gamma = tenants.keys["gamma"]
    assert tenants.client(gamma).models.list().data[0].id == MODEL
    revoke = subprocess.run(
        [sys.executable, "-m", "glm4voice_api", "keys", "revoke", gamma[:13]],
        check=False,
        env={**os.environ, "GLM4VOICE_STORE": tenants.store_url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert revoke.returncode == 0, revoke.stderr
    with pytest.raises(openai.AuthenticationError):
        tenants.client(gamma).models.list()
    assert tenants.client(tenants.keys["acme"]).models.list().data[0].id == MODEL


def test_static_key_is_tenant_default_and_probes_are_open(tenants: Tenants) -> None:
    assert tenants.client(STATIC_KEY).models.list().data[0].id == MODEL
    assert tenants.voice_ids(STATIC_KEY) == []
    assert httpx.get(tenants.server.base_url + "/health", timeout=30).status_code == 200
    assert httpx.get(tenants.server.base_url + "/metrics", timeout=30).status_code == 200
    assert httpx.get(tenants.server.base_url + "/", timeout=30).status_code == 200  # the demo page itself


def _sample() -> bytes:
    t = np.arange(3 * 22050) / 22050
    return encode_whole("wav", (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32))


def _same_wording(
    foreign: openai.APIStatusError, missing: openai.APIStatusError, foreign_id: str, missing_id: str
) -> None:
    assert foreign.status_code == missing.status_code == 404
    a, b = foreign.body, missing.body
    assert (a["type"], a["code"], a["param"]) == (b["type"], b["code"], b["param"])
    assert a["message"].replace(foreign_id, "ID") == b["message"].replace(missing_id, "ID")


def _follow_up(client: openai.OpenAI, audio_id: str) -> ChatCompletion:
    return client.chat.completions.create(
        model=MODEL,
        max_tokens=5,
        messages=[
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "audio": {"id": audio_id}},
            {"role": "user", "content": "And then?"},
        ],
    )


def _errors(call: Callable[..., object], *args: object) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as err:
        call(*args)
    return err.value


def test_tenants_are_isolated(tenants: Tenants) -> None:
    acme, beta = tenants.client(tenants.keys["acme"]), tenants.client(tenants.keys["beta"])
    voice = acme.audio.voices.create(name="Acme voice", audio_sample=("me.wav", _sample()), consent="cons_1")
    reply = acme.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=39,
        modalities=["text", "audio"],
        audio={"voice": {"id": voice.id}, "format": "wav"},
    )
    audio_id = reply.choices[0].message.audio.id

    # Audio ids: beta cannot continue acme's conversation; acme can.
    _same_wording(
        _errors(_follow_up, beta, audio_id), _errors(_follow_up, beta, "audio_missing"), audio_id, "audio_missing"
    )
    assert _follow_up(acme, audio_id).choices[0].finish_reason == "length"

    # Voices: beta can neither see, use nor delete acme's; acme can do all three.
    assert voice.id in tenants.voice_ids(tenants.keys["acme"])
    assert voice.id not in tenants.voice_ids(tenants.keys["beta"])
    assert voice.id not in tenants.voice_ids(STATIC_KEY)
    _same_wording(
        _errors(beta.audio.voices.delete, voice.id),
        _errors(beta.audio.voices.delete, "voice_missing"),
        voice.id,
        "voice_missing",
    )

    def speak(client: openai.OpenAI, voice_id: str) -> bytes:
        return client.audio.speech.create(
            model=MODEL, input="Hi.", voice={"id": voice_id}, response_format="wav"
        ).read()

    _same_wording(_errors(speak, beta, voice.id), _errors(speak, beta, "voice_missing"), voice.id, "voice_missing")

    def chat_in(client: openai.OpenAI, voice_id: str) -> None:
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=39,
            modalities=["text", "audio"],
            audio={"voice": {"id": voice_id}, "format": "wav"},
        )

    _same_wording(_errors(chat_in, beta, voice.id), _errors(chat_in, beta, "voice_missing"), voice.id, "voice_missing")
    assert speak(acme, voice.id)[:4] == b"RIFF"
    assert acme.audio.voices.delete(voice.id).deleted is True
    assert voice.id not in tenants.voice_ids(tenants.keys["acme"])


def test_realtime_keys_and_client_secrets(tenants: Tenants) -> None:
    """The Realtime WebSocket takes the same keys (header), and client secrets in the browser's subprotocol slot:
    tenant-scoped (a secret carries its tenant and session settings), valid for /v1/realtime only."""
    import websockets

    base = tenants.server.base_url
    url = base.replace("http://", "ws://") + f"/v1/realtime?model={MODEL}"
    acme = tenants.keys["acme"]

    async def scenario() -> None:
        async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {acme}"}) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
        for headers, protocols in (
            ({}, None),
            ({"Authorization": "Bearer sk-wrong-0123456789abcdef"}, None),
            ({}, ["realtime", "openai-insecure-api-key.ek_made_up_0123456789"]),
        ):
            with pytest.raises(websockets.InvalidStatus) as err:
                await websockets.connect(url, additional_headers=headers, subprotocols=protocols)
            assert err.value.response.status_code == 401
            assert json.loads(err.value.response.body)["error"]["code"] == "invalid_api_key"
        # A voice of acme's, and a client secret carrying it.
        voice = tenants.client(acme).audio.voices.create(name="rt", audio_sample=("me.wav", _sample()), consent="c")
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            made = await http.post(
                "/v1/realtime/client_secrets",
                headers={"Authorization": f"Bearer {acme}"},
                json={"session": {"type": "realtime", "audio": {"output": {"voice": {"id": voice.id}}}}},
            )
            assert made.status_code == 200, made.text
            secret = made.json()["value"]
            # A secret is no API key: not for other routes, nor for minting more secrets.
            for path, method in (("/v1/models", "GET"), ("/v1/realtime/client_secrets", "POST")):
                response = await http.request(method, path, headers={"Authorization": f"Bearer {secret}"}, json={})
                assert response.status_code == 401, (path, response.text)
            # Another tenant cannot put acme's voice into a secret of its own.
            foreign = await http.post(
                "/v1/realtime/client_secrets",
                headers={"Authorization": f"Bearer {tenants.keys['beta']}"},
                json={"session": {"audio": {"output": {"voice": {"id": voice.id}}}}},
            )
            assert foreign.status_code == 404
        protocols = ["realtime", "openai-insecure-api-key." + secret]
        async with websockets.connect(url, subprotocols=protocols) as ws:
            assert ws.subprotocol == "realtime"
            session = json.loads(await ws.recv())["session"]
            assert session["audio"]["output"]["voice"] == {"id": voice.id}

    asyncio.run(scenario())
