"""Custom voices: create (multipart), list, delete, the limits, and chat replies spoken in a custom voice."""

from __future__ import annotations

import base64
import io

import av
import httpx
import numpy as np
import openai
import pytest

from glm4voice_api.audio.encode import encode_whole
from tests.api.conftest import RunningServer

pytestmark = [pytest.mark.engine, pytest.mark.xdist_group("server")]
MODEL = "glm-4-voice-9b"


def _sample(seconds: float = 3.0, hz: float = 180.0, rate: int = 22050) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(0)
    wave = 0.3 * np.sin(2 * np.pi * hz * t) * (1 + 0.5 * np.sin(2 * np.pi * 4 * t)) + 0.02 * rng.standard_normal(t.size)
    return encode_whole("wav", wave.astype(np.float32))


def _create(
    server: RunningServer, name: str = "Narrator", sample: bytes | None = None, filename: str = "me.wav"
) -> httpx.Response:
    return httpx.post(
        server.base_url + "/v1/audio/voices",
        timeout=120,
        data={"name": name, "consent": "cons_123"},
        files={"audio_sample": (filename, sample or _sample(), "audio/wav")},
    )


def _list(server: RunningServer) -> list[dict]:
    response = httpx.get(server.base_url + "/v1/audio/voices", timeout=30)
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    return body["data"]


def _delete(server: RunningServer, voice_id: str) -> httpx.Response:
    return httpx.delete(f"{server.base_url}/v1/audio/voices/{voice_id}", timeout=30)


def test_create_list_delete(server: RunningServer) -> None:
    response = _create(server, name="Narrator")
    assert response.status_code == 200, response.text
    voice = response.json()
    assert voice["id"].startswith("voice_")
    assert (voice["object"], voice["name"]) == ("audio.voice", "Narrator")
    assert set(voice) == {"object", "id", "name", "created_at"}  # OpenAI's VoiceResource allows nothing else
    assert isinstance(voice["created_at"], int)
    assert voice in _list(server)
    deleted = _delete(server, voice["id"])
    assert deleted.status_code == 200
    assert deleted.json() == {"id": voice["id"], "object": "audio.voice.deleted", "deleted": True}
    assert voice["id"] not in [v["id"] for v in _list(server)]
    again = _delete(server, voice["id"])
    assert again.status_code == 404
    assert again.json()["error"]["code"] == "voice_not_found"


def test_openai_sdk_creates_and_deletes(server: RunningServer) -> None:
    client = server.client()
    voice = client.audio.voices.create(
        name="SDK voice",
        audio_sample=("s.flac", encode_whole("flac", np.zeros(22050 * 2, np.float32) + 0.1)),
        consent="cons_x",
    )
    assert voice.object == "audio.voice"
    assert voice.id.startswith("voice_")
    assert client.audio.voices.delete(voice.id).deleted is True


def test_unknown_voice_delete_is_404_envelope(server: RunningServer) -> None:
    response = _delete(server, "voice_doesnotexist")
    assert response.status_code == 404
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "voice_not_found")
    assert "voice_doesnotexist" in error["message"]


def test_sample_over_10_mib_is_413(server: RunningServer) -> None:
    response = _create(server, sample=bytes(11 * 1024 * 1024))
    assert response.status_code == 413
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("audio_too_large", "audio_sample")


@pytest.mark.parametrize(
    ("kwargs", "param", "code"),
    [
        ({"sample": b"not audio at all" * 20}, "audio_sample", "invalid_audio"),
        ({"sample": _sample(seconds=0.5)}, "audio_sample", "audio_too_short"),
        ({"name": "   "}, "name", "invalid_value"),
    ],
)
def test_bad_create_is_400(server: RunningServer, kwargs: dict, param: str, code: str) -> None:
    response = _create(server, **kwargs)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, code)


def test_missing_name_is_400(server: RunningServer) -> None:
    response = httpx.post(
        server.base_url + "/v1/audio/voices", files={"audio_sample": ("a.wav", _sample())}, timeout=30
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "name"


def _wav_samples(data: bytes) -> np.ndarray:
    container = av.open(io.BytesIO(data))
    return np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])


def _spoken(server: RunningServer, voice: str | dict):
    return server.client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Read me a story"}],
        max_tokens=39,
        seed=7,
        modalities=["text", "audio"],
        audio={"voice": voice, "format": "wav"},
        extra_body={"return_token_ids": True},
    )


def test_chat_reply_in_a_custom_voice(server: RunningServer) -> None:
    voice_id = _create(server, name="Storyteller", sample=_sample(seconds=4.0, hz=300.0)).json()["id"]
    native = _spoken(server, "alloy")
    custom = _spoken(server, {"id": voice_id})
    # Same seed, same words and speech tokens: only the decoder's speaker prompt differs.
    assert custom.choices[0].model_extra["token_ids"] == native.choices[0].model_extra["token_ids"]
    assert custom.choices[0].message.audio.transcript == native.choices[0].message.audio.transcript
    a = _wav_samples(base64.b64decode(native.choices[0].message.audio.data))
    b = _wav_samples(base64.b64decode(custom.choices[0].message.audio.data))
    assert a.size == pytest.approx(b.size, abs=0.05 * a.size)  # 26 speech tokens either way (~2.08 s)
    n = min(a.size, b.size)
    assert not np.array_equal(a[:n], b[:n])
    assert np.abs(b).max() > 0
    assert _delete(server, voice_id).status_code == 200
    with pytest.raises(openai.NotFoundError) as err:
        _spoken(server, {"id": voice_id})
    assert (err.value.body["code"], err.value.body["param"]) == ("voice_not_found", "audio.voice")


def test_speech_in_a_custom_voice(server: RunningServer) -> None:
    voice_id = _create(server, name="Reader").json()["id"]
    client = server.client()
    native = client.audio.speech.create(model=MODEL, input="Hello there", voice="alloy", response_format="wav")
    custom = client.audio.speech.create(model=MODEL, input="Hello there", voice={"id": voice_id}, response_format="wav")
    a, b = _wav_samples(native.content), _wav_samples(custom.content)
    # Same words, same length rule; the mel length is floored over prompt + new tokens, so one frame (256 samples
    # at 22.05 kHz, 279 at 24 kHz) may differ.
    assert abs(len(a) - len(b)) <= 279 and len(a) > 0
    assert not np.array_equal(a, b)  # the decoder was conditioned on the custom prompt
    assert _delete(server, voice_id).status_code == 200
