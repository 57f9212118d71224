"""POST /v1/audio/transcriptions through the openai SDK: every response format, streaming, input formats, bad input.

The built-in default has random weights, so the transcript is noise; the tests check the shapes, the budget, the
usage and that every format carries the same (greedy, temperature 0) transcript.
"""

from __future__ import annotations

import json
import math

import httpx
import numpy as np
import openai
import pytest

from glm4voice_api.audio.encode import encode_whole
from glm4voice_api.serving.transcription import TextEndDetector
from tests.api.conftest import RunningServer

pytestmark = [pytest.mark.engine, pytest.mark.xdist_group("server")]
MODEL = "glm-4-voice-9b"
SECONDS = 2.0
AUDIO_TOKENS = (25, 26)  # 12.5 tokens per second of audio (codec padding may add one frame)
BUDGET = 3 * (math.ceil(5 * SECONDS) + 13)  # the reply budget of a 2 s file (serving/transcription.py)


def _tone(seconds: float = SECONDS, rate: int = 22050) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


WAV = encode_whole("wav", _tone())


def _transcribe(server: RunningServer, file: tuple = ("speech.wav", WAV), **kwargs):
    return server.client().audio.transcriptions.create(file=file, model=MODEL, **kwargs)


def test_json_is_the_default_with_token_usage(server: RunningServer) -> None:
    result = _transcribe(server)
    assert isinstance(result.text, str)
    usage = result.usage
    assert usage.type == "tokens"
    assert usage.input_token_details.audio_tokens in AUDIO_TOKENS
    assert usage.input_token_details.text_tokens == usage.input_tokens - usage.input_token_details.audio_tokens
    assert 0 < usage.output_tokens <= BUDGET  # bounded by the audio's duration, not the context
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens


def test_every_format_carries_the_same_transcript(server: RunningServer) -> None:
    text = _transcribe(server, response_format="json", language="en").text
    assert _transcribe(server, response_format="text", language="en") == text
    srt = _transcribe(server, response_format="srt", language="en")
    vtt = _transcribe(server, response_format="vtt", language="en")
    if text:
        assert srt == f"1\n00:00:00,000 --> 00:00:02,000\n{text}\n\n"
        assert vtt == f"WEBVTT\n\n00:00:00.000 --> 00:00:02.000\n{text}\n\n"
    else:
        assert (srt, vtt) == ("", "WEBVTT\n\n")
    verbose = _transcribe(server, response_format="verbose_json", language="en", timestamp_granularities=["segment"])
    assert verbose.model_extra["task"] == "transcribe"
    assert (verbose.language, verbose.duration, verbose.text) == ("english", SECONDS, text)
    assert verbose.usage.type == "duration"
    assert verbose.usage.seconds == SECONDS
    if text:
        (segment,) = verbose.segments
        assert (segment.id, segment.start, segment.end, segment.text) == (0, 0.0, SECONDS, text)
        assert segment.tokens


def test_stream_sends_deltas_then_done_with_usage(server: RunningServer) -> None:
    events = list(_transcribe(server, stream=True))
    assert events[-1].type == "transcript.text.done"
    assert all(e.type == "transcript.text.delta" for e in events[:-1])
    assert "".join(e.delta for e in events[:-1]).strip() == events[-1].text
    assert events[-1].text == _transcribe(server).text
    usage = events[-1].usage
    assert usage.input_token_details.audio_tokens in AUDIO_TOKENS
    assert 0 < usage.output_tokens <= BUDGET


def test_stream_has_no_done_marker(server: RunningServer) -> None:
    with httpx.stream(
        "POST",
        server.base_url + "/v1/audio/transcriptions",
        timeout=120,
        files={"file": ("a.wav", WAV)},
        data={"model": MODEL, "stream": "true"},
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        data = [line[5:].strip() for line in response.iter_lines() if line.startswith("data:")]
    assert "[DONE]" not in data
    assert json.loads(data[-1])["type"] == "transcript.text.done"


@pytest.mark.parametrize(("fmt", "ext"), [("wav", "wav"), ("mp3", "mp3"), ("flac", "flac"), ("opus", "ogg")])
def test_input_formats(server: RunningServer, fmt: str, ext: str) -> None:
    result = _transcribe(server, file=(f"speech.{ext}", encode_whole(fmt, _tone())), prompt="GLM", language="zh")
    assert result.usage.input_token_details.audio_tokens in AUDIO_TOKENS


def test_content_is_probed_whatever_the_name(server: RunningServer) -> None:
    result = _transcribe(server, file=("recording.bin", encode_whole("flac", _tone())))
    assert result.usage.input_token_details.audio_tokens in AUDIO_TOKENS


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "empty_audio"),
        (b"RIFF\x00\x00\x00\x00WAVEgarbage" * 10, "invalid_audio"),  # corrupt
        (WAV[:30], "invalid_audio"),  # truncated inside the header
        (b"\x89PNG\r\n\x1a\n" + bytes(200), "invalid_audio"),  # not audio
    ],
)
def test_bad_audio_is_a_400_naming_file(server: RunningServer, data: bytes, code: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        _transcribe(server, file=("speech.wav", data))
    assert (err.value.body["code"], err.value.body["param"]) == (code, "file")


def test_audio_over_the_limit_is_413(server: RunningServer) -> None:
    big = WAV + bytes(25 * 1024 * 1024)  # the default max_audio_bytes is 25 MiB, the body cap 32 MiB
    with pytest.raises(openai.APIStatusError) as err:
        _transcribe(server, file=("big.wav", big))
    assert err.value.status_code == 413
    assert (err.value.body["code"], err.value.body["param"]) == ("audio_too_large", "file")


def test_unknown_model_is_404(server: RunningServer) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        server.client().audio.transcriptions.create(file=("a.wav", WAV), model="whisper-9")
    assert err.value.body["code"] == "model_not_found"


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"stream": True, "response_format": "srt"}, "response_format"),
        ({"response_format": "verbose_json", "timestamp_granularities": ["word"]}, "timestamp_granularities"),
        ({"response_format": "json", "timestamp_granularities": ["segment"]}, "timestamp_granularities"),
        ({"language": "english!"}, "language"),
        ({"temperature": 1.5}, "temperature"),
        ({"response_format": "diarized_json"}, "response_format"),
    ],
)
def test_invalid_parameters_are_400(server: RunningServer, kwargs: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        _transcribe(server, **kwargs)
    assert err.value.body["param"] == param


def test_missing_file_is_400(server: RunningServer) -> None:
    response = httpx.post(server.base_url + "/v1/audio/transcriptions", data={"model": MODEL}, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "file"


def _ids(layout: str) -> list[int]:
    """'t' = a text id (1), 'a' = an audio id (1000)."""
    return [1000 if c == "a" else 1 for c in layout]


def _stop_at(ids: list[int]) -> int | None:
    detector = TextEndDetector(lambda t: t >= 1000)
    return next((i for i, t in enumerate(ids) if detector.text_over(t)), None)


def test_text_end_is_the_first_audio_id_at_a_text_slot() -> None:
    assert _stop_at(_ids("t" * 13 + "a" * 26 + "t" * 13 + "a" * 26)) is None  # full groups: text may go on
    assert _stop_at(_ids("t" * 13 + "a" * 26 + "ttttt" + "a" * 30)) == 39 + 5  # a short group ends the text
    assert _stop_at(_ids("t" * 13 + "a" * 27)) == 39  # audio where the next group's text belongs
    assert _stop_at(_ids("a" * 5)) == 0  # no text at all (silence)
    assert _stop_at(_ids("t" * 13 + "t" + "a" * 25)) is None  # text at an audio slot is kept, not an end
