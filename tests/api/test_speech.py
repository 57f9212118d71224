"""POST /v1/audio/speech through the openai SDK on the real server (tiny random-weight default).

With random weights the reply length is deterministic (serving/speech.py `trailing_audio_bounds`): the text tokens
are forced to `input` and exactly 2 audio tokens follow per text token, so the speech lasts 2 * 80 ms per text
token at speed 1. Durations are checked within 0.12 s plus 3 % (codec priming and padding, atempo's edges).
"""

from __future__ import annotations

import base64
import io
import json
import time
from pathlib import Path

import av
import numpy as np
import openai
import pytest

from glm4voice_api.text.tokenizer import GLM4Tokenizer
from tests.api.conftest import RunningServer

pytestmark = [pytest.mark.engine, pytest.mark.xdist_group("server")]
MODEL = "glm-4-voice-9b"
TOKEN_SECONDS = 0.08  # one speech token is 80 ms
TEXT = "The quick brown fox jumps over the lazy dog, then naps in the warm afternoon sun."


@pytest.fixture(scope="module")
def tok(tiny_llm_dir: Path) -> GLM4Tokenizer:
    return GLM4Tokenizer.from_dir(tiny_llm_dir)


def expected_seconds(tok: GLM4Tokenizer, text: str, speed: float = 1.0) -> float:
    return 2 * len(tok.encode(text)) * TOKEN_SECONDS / speed


def close_to(seconds: float, expected: float) -> bool:
    return abs(seconds - expected) <= 0.12 + 0.03 * expected


def decode(data: bytes, fmt: str) -> tuple[int, float]:
    """(sample rate, seconds) of a speech file, decoded with PyAV as the asked format."""
    if fmt == "pcm":  # headerless 24 kHz mono s16le
        return 24000, len(data) / 2 / 24000
    demuxer = {"opus": "ogg", "aac": "aac"}.get(fmt, fmt)
    container = av.open(io.BytesIO(data), format=demuxer)
    assert container.format.name.split(",")[0] == demuxer
    stream = container.streams.audio[0]
    samples = [f.to_ndarray() for f in container.decode(stream)]
    assert np.abs(np.concatenate(samples, axis=1)).max() > 0  # not silence
    return stream.rate, sum(s.shape[1] for s in samples) / stream.rate


def sse_events(response: openai._response.BinaryAPIResponse) -> list[dict]:
    return [json.loads(line[len("data:") :]) for line in response.iter_lines() if line.startswith("data:")]


@pytest.mark.parametrize(
    ("fmt", "rate", "media_type"),
    [
        (None, 24000, "audio/mpeg"),
        ("opus", 48000, "audio/opus"),
        ("aac", 24000, "audio/aac"),
        ("flac", 24000, "audio/flac"),
        ("wav", 24000, "audio/wav"),
        ("pcm", 24000, "audio/pcm"),
    ],
)
def test_every_format_decodes_with_the_expected_duration(
    server: RunningServer, tok: GLM4Tokenizer, fmt: str | None, rate: int, media_type: str
) -> None:
    extra = {"response_format": fmt} if fmt else {}  # None: the default must be mp3
    response = server.client().audio.speech.create(model=MODEL, voice="alloy", input=TEXT, **extra)
    assert response.response.headers["content-type"] == media_type
    got_rate, seconds = decode(response.content, fmt or "mp3")
    assert got_rate == rate
    assert close_to(seconds, expected_seconds(tok, TEXT)), seconds


@pytest.mark.parametrize("speed", [2.0, 0.5])
def test_speed_changes_the_duration(server: RunningServer, tok: GLM4Tokenizer, speed: float) -> None:
    response = server.client().audio.speech.create(
        model=MODEL, voice="nova", input=TEXT, response_format="wav", speed=speed
    )
    _, seconds = decode(response.content, "wav")
    assert close_to(seconds, expected_seconds(tok, TEXT, speed)), seconds


def test_audio_stream_sends_the_first_bytes_before_the_end(server: RunningServer, tok: GLM4Tokenizer) -> None:
    text = " ".join([TEXT] * 3)
    arrivals: list[tuple[float, int]] = []
    first_audio = "glm4voice_first_audio_seconds"
    count, total_first = server.metric(first_audio + "_count"), server.metric(first_audio + "_sum")
    start = time.monotonic()
    with server.client().audio.speech.with_streaming_response.create(
        model=MODEL, voice="echo", input=text, response_format="pcm", instructions="Calm, slow."
    ) as response:
        assert response.headers["content-type"] == "audio/pcm"
        assert response.headers["transfer-encoding"] == "chunked"
        arrivals = [(time.monotonic() - start, len(chunk)) for chunk in response.iter_bytes()]
    total = arrivals[-1][0]
    assert len(arrivals) >= 3  # the body comes in pieces as the decoder produces them
    # The server sent its first audio bytes long before the end. Timed by the server (its first-audio histogram):
    # on a loaded 2-core machine six chunks once reached the client together 4.2 s into a reply that took the
    # server its usual 5 s, so a stalled client alone could fail a check on the client's clock.
    assert server.metric(first_audio + "_count") == count + 1
    sent_first = server.metric(first_audio + "_sum") - total_first
    assert sent_first < 0.7 * total, (sent_first, arrivals)
    assert close_to(sum(n for _, n in arrivals) / 2 / 24000, expected_seconds(tok, text))


@pytest.mark.parametrize(("text", "fmt"), [("Grüße, 你好! <|user|> done.", "wav"), (TEXT, "mp3")])
def test_sse_streams_deltas_then_done_with_usage_and_the_exact_transcript(
    server: RunningServer, tok: GLM4Tokenizer, text: str, fmt: str
) -> None:
    with server.client().audio.speech.with_streaming_response.create(
        model=MODEL,
        voice="shimmer",
        input=text,
        response_format=fmt,
        stream_format="sse",
        instructions="Excited, with a Berlin accent",
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "speech.audio.done"
    assert set(kinds[:-1]) == {"speech.audio.delta"} and len(kinds) >= 2
    done = events[-1]
    assert done["transcript"] == text  # the forced text, byte for byte (a typed special token stays text)
    n_text = len(tok.encode(text))
    usage = done["usage"]
    assert usage["output_tokens"] == 3 * n_text + 1  # text + 2 audio per text token + end of turn
    assert usage["input_tokens"] > n_text
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    audio = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    _, seconds = decode(audio, fmt)
    assert close_to(seconds, expected_seconds(tok, text))


LONG_TEXT = " ".join(f"word{i}" for i in range(900))[:4096]  # fits 4096 chars, not the test server's 1024 context


@pytest.mark.parametrize(
    ("change", "status", "param", "code"),
    [
        ({"input": ""}, 400, "input", None),
        ({"input": "x" * 4097}, 400, "input", None),
        ({"speed": 5}, 400, "speed", None),
        ({"response_format": "ogg"}, 400, "response_format", None),
        ({"stream_format": "json"}, 400, "stream_format", None),
        ({"voice": {"id": "voice_nope"}}, 404, "voice", "voice_not_found"),
        ({"model": "tts-nope"}, 404, "model", "model_not_found"),
        ({"input": LONG_TEXT}, 400, "input", "context_length_exceeded"),
    ],
)
def test_bad_requests_get_the_openai_envelope(
    server: RunningServer, change: dict, status: int, param: str, code: str | None
) -> None:
    params = {"model": MODEL, "voice": "alloy", "input": "Hello.", **change}
    with pytest.raises(openai.APIStatusError) as err:
        server.client().audio.speech.create(**params)
    assert err.value.status_code == status
    body = err.value.body
    assert set(body) == {"message", "type", "param", "code"}
    assert body["type"] == "invalid_request_error"
    assert body["param"] == param
    if code:
        assert body["code"] == code
