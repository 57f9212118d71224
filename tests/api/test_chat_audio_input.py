"""Audio input in chat (issue "speech tokenizer": any input audio, bad audio answered 400 in the envelope)."""

from __future__ import annotations

import base64

import numpy as np
import openai
import pytest

from glm4voice_api.audio.encode import encode_whole
from tests.api.conftest import RunningServer

pytestmark = [pytest.mark.engine, pytest.mark.xdist_group("server")]
MODEL = "glm-4-voice-9b"


def _tone(seconds: float, rate: int = 22050) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def _audio_message(data: str, fmt: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": data, "format": fmt}}]}]


@pytest.mark.parametrize("fmt", ["wav", "mp3", "flac", "opus"])
def test_audio_input_becomes_speech_tokens(server: RunningServer, fmt: str) -> None:
    data = base64.b64encode(encode_whole(fmt, _tone(2.0))).decode()
    reply = server.client().chat.completions.create(model=MODEL, messages=_audio_message(data, fmt), max_tokens=3)
    # 12.5 tokens per second of audio: 2 s -> 25 tokens (codec padding may add one frame).
    assert reply.usage.prompt_tokens_details.audio_tokens in (25, 26)


@pytest.mark.parametrize(
    ("data", "fmt", "code"),
    [
        ("not base64!!", "wav", "invalid_base64"),
        (base64.b64encode(b"RIFF\x00\x00\x00\x00garbage").decode(), "wav", "invalid_audio"),
        ("", "wav", "empty_audio"),
        (base64.b64encode(b"x" * 100).decode(), "midi", "unsupported_format"),
    ],
)
def test_bad_audio_is_a_400_naming_the_problem(server: RunningServer, data: str, fmt: str, code: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        server.client().chat.completions.create(model=MODEL, messages=_audio_message(data, fmt), max_tokens=3)
    body = err.value.body
    assert body["code"] == code
    assert body["param"] == "messages[0].content[0].input_audio"
