"""What every route sends, checked against the official OpenAPI description (`../shared/openai/openapi.json.gz`):
the bodies, stream chunks and SSE events the other API tests do not already check, and the error envelope of
each route."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.api.conftest import RunningServer
from tests.api.realtime_schema import check_object
from tests.api.test_transcription import WAV
from tests.api.test_voices import _sample

pytestmark = [pytest.mark.engine, pytest.mark.xdist_group("server")]
MODEL = "glm-4-voice-9b"


def _events(response: httpx.Response) -> list[dict]:
    return [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]


@pytest.mark.parametrize("fmt", ["json", "text", "srt", "vtt", "verbose_json"])
def test_transcription_bodies(server: RunningServer, fmt: str) -> None:
    r = httpx.post(
        server.base_url + "/v1/audio/transcriptions",
        files={"file": ("a.wav", WAV)},
        data={"model": MODEL, "response_format": fmt},
        timeout=300,
    )
    assert r.status_code == 200
    if fmt == "json":
        check_object("CreateTranscriptionResponseJson", r.json())
    elif fmt == "verbose_json":
        check_object("CreateTranscriptionResponseVerboseJson", r.json())
    else:
        assert r.headers["content-type"].startswith("text/plain")


def test_transcription_stream_events(server: RunningServer) -> None:
    with httpx.stream(
        "POST",
        server.base_url + "/v1/audio/transcriptions",
        files={"file": ("a.wav", WAV)},
        data={"model": MODEL, "stream": "true"},
        timeout=300,
    ) as r:
        events = _events(r)
    assert events[-1]["type"] == "transcript.text.done"
    for event in events:
        check_object("CreateTranscriptionResponseStreamEvent", event)


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav", "pcm"])
def test_speech_sse_events_in_every_format(server: RunningServer, fmt: str) -> None:
    body = {"model": MODEL, "input": "Hi.", "voice": "alloy", "response_format": fmt, "stream_format": "sse"}
    with httpx.stream("POST", server.base_url + "/v1/audio/speech", json=body, timeout=300) as r:
        events = _events(r)
    assert events[-1]["type"] == "speech.audio.done"
    for event in events:
        check_object("CreateSpeechResponseStreamEvent", event)


def test_voice_and_models_objects(server: RunningServer) -> None:
    r = httpx.post(
        server.base_url + "/v1/audio/voices",
        data={"name": "Schema", "consent": "cons_1"},
        files={"audio_sample": ("me.wav", _sample(), "audio/wav")},
        timeout=120,
    )
    assert r.status_code == 200
    check_object("VoiceResource", r.json())
    httpx.delete(f"{server.base_url}/v1/audio/voices/{r.json()['id']}", timeout=30)
    check_object("ListModelsResponse", httpx.get(server.base_url + "/v1/models", timeout=30).json())
    check_object("Model", httpx.get(server.base_url + f"/v1/models/{MODEL}", timeout=30).json())


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        (
            "POST",
            "/v1/chat/completions",
            {"json": {"model": "nope", "messages": [{"role": "user", "content": "x"}]}},
            404,
        ),
        ("POST", "/v1/audio/speech", {"json": {"model": MODEL, "input": "", "voice": "alloy"}}, 400),
        ("POST", "/v1/audio/transcriptions", {"data": {"model": MODEL}}, 400),
        ("POST", "/v1/audio/translations", {"files": {"file": ("a.wav", b"")}, "data": {"model": MODEL}}, 400),
        ("POST", "/v1/audio/voices", {"data": {"name": "x"}}, 400),
        ("DELETE", "/v1/audio/voices/voice_nope", {}, 404),
        ("GET", "/v1/models/nope", {}, 404),
    ],
)
def test_errors_are_the_openai_envelope(
    server: RunningServer, method: str, path: str, kwargs: dict, status: int
) -> None:
    r = httpx.request(method, server.base_url + path, timeout=60, **kwargs)
    assert r.status_code == status, r.text
    check_object("ErrorResponse", r.json())


def test_sdk_helpers_as_users_use_them(server: RunningServer, tmp_path) -> None:
    """`with_streaming_response.create(...).stream_to_file` and `transcriptions.create(file=open(...))`."""
    client = server.client()
    out = tmp_path / "hello.wav"
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input="Hello.", response_format="wav"
    ) as response:
        response.stream_to_file(out)
    assert out.read_bytes()[:4] == b"RIFF" and out.stat().st_size > 44
    upload = tmp_path / "question.wav"
    upload.write_bytes(WAV)
    for fmt in ("json", "text", "srt", "vtt", "verbose_json"):
        with upload.open("rb") as f:
            result = client.audio.transcriptions.create(model="whisper-1", file=f, response_format=fmt)
        assert isinstance(result, str) or isinstance(result.text, str)
