"""The pure parts of OpenAI parity: base64 pieces, stop strings, validation messages, transcript formats."""

from __future__ import annotations

import base64
import itertools

import pytest
from pydantic import BaseModel, ValidationError

from glm4voice_api.audio.b64 import Base64Pieces
from glm4voice_api.protocol.chat import ChatCompletionRequest
from glm4voice_api.protocol.validation import describe, openai_param
from glm4voice_api.serving.chat_text import StopText
from glm4voice_api.serving.transcript_formats import SegmentText, detect_language, join_texts, subtitles


@pytest.mark.parametrize("frame_bytes", [1, 2])
def test_base64_pieces_join_to_the_stream(frame_bytes: int) -> None:
    pieces = Base64Pieces(frame_bytes)
    data = bytes(range(256)) * 3
    cuts = [0, 1, 7, 8, 100, 101, 500, len(data)]
    out = [pieces.feed(data[a:b]) for a, b in itertools.pairwise(cuts)] + [pieces.finish()]
    assert all(len(base64.b64decode(p)) % pieces.unit == 0 for p in out[:-1])
    assert base64.b64decode("".join(out), validate=True) == data


@pytest.mark.parametrize(
    ("pieces", "stops", "text", "stopped"),
    [
        (["Hel", "lo wo", "rld"], ("o w",), "Hell", True),
        (["ab", "c"], ("cd",), "abc", False),
        (["a", "b", "c", "d"], ("bc", "d"), "a", True),
        (["xyz"], (), "xyz", False),
    ],
)
def test_stop_text(pieces: list[str], stops: tuple[str, ...], text: str, stopped: bool) -> None:
    stop = StopText(stops)
    out = "".join(stop.feed(p) for p in pieces)
    if not stop.stopped:
        out += stop.flush()
    assert (out, stop.stopped, stop.text) == (text, stopped, text)


def test_openai_param_paths() -> None:
    loc = ("body", "messages", 0, "user", "content", "list[x]", 1, "input_audio", "input_audio", "format")
    assert openai_param(loc) == "messages[0].content[1].input_audio.format"
    assert openai_param(("body", "messages", 0, "user", "content", "list[x]", 0, "text", "text")) == (
        "messages[0].content[0].text"
    )
    assert openai_param(("body",)) is None


def _errors(model: type[BaseModel], data: dict) -> list[dict]:
    with pytest.raises(ValidationError) as err:
        model.model_validate(data)
    return [{**e, "loc": ("body", *e["loc"])} for e in err.value.errors()]


def test_describe_picks_the_member_the_client_meant() -> None:
    data = {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}
    error = describe(_errors(ChatCompletionRequest, data))
    assert (error.param, error.code) == ("messages[0].content[0].text", "invalid_type")
    assert (
        error.message
        == "Invalid type for 'messages[0].content[0].text': expected a string, but got an integer instead."
    )


def test_transcript_formats() -> None:
    segments = [
        SegmentText(0.5, 2.25, 0.9, " Hello there. "),
        SegmentText(4.0, 5.5, 0.8, ""),
        SegmentText(6, 7, 1, "你好"),
    ]
    assert join_texts([s.text for s in segments]) == "Hello there. 你好"
    assert join_texts(["你好", "世界"]) == "你好世界"
    assert subtitles("srt", segments) == (
        "1\n00:00:00,500 --> 00:00:02,250\nHello there.\n\n2\n00:00:06,000 --> 00:00:07,000\n你好\n\n"
    )
    assert subtitles("vtt", segments[:1]) == "WEBVTT\n\n00:00:00.500 --> 00:00:02.250\nHello there.\n\n"
    assert (detect_language("Hello"), detect_language("你好"), detect_language("...")) == (
        "english",
        "chinese",
        "unknown",
    )
