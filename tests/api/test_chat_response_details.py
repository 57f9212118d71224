"""Chat responses as OpenAI sends them: a string `system_fingerprint`, `usage` in stream chunks only with
`include_usage`, token ids only with `return_token_ids`, and validation errors whose `param` and message read like
OpenAI's. Every body and chunk is checked against the official OpenAPI description."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.api.conftest import RunningServer
from tests.api.realtime_schema import check_object

pytestmark = [pytest.mark.engine, pytest.mark.xdist_group("server")]
MODEL = "glm-4-voice-9b"
URL = "/v1/chat/completions"


def _post(server: RunningServer, body: dict) -> httpx.Response:
    return httpx.post(server.base_url + URL, json={"model": MODEL, **body}, timeout=300)


def _sse(server: RunningServer, body: dict) -> list[dict]:
    with httpx.stream("POST", server.base_url + URL, json={"model": MODEL, "stream": True, **body}, timeout=300) as r:
        assert r.status_code == 200, r.read()
        lines = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_non_streaming_reply_has_a_fingerprint_and_no_token_ids_unless_asked(server: RunningServer) -> None:
    messages = [{"role": "user", "content": "Hello"}]
    plain = _post(server, {"messages": messages, "max_tokens": 5}).json()
    check_object("CreateChatCompletionResponse", plain)
    assert isinstance(plain["system_fingerprint"], str) and plain["system_fingerprint"].startswith("fp_")
    assert "prompt_token_ids" not in plain and "token_ids" not in plain["choices"][0]
    asked = _post(server, {"messages": messages, "max_tokens": 5, "return_token_ids": True}).json()
    assert asked["prompt_token_ids"] and len(asked["choices"][0]["token_ids"]) == 5
    assert asked["system_fingerprint"] == plain["system_fingerprint"]


@pytest.mark.parametrize("audio", [False, True])
def test_stream_chunks_carry_usage_only_with_include_usage(server: RunningServer, audio: bool) -> None:
    body: dict = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 45}
    if audio:
        body |= {"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "pcm16"}}
    chunks = _sse(server, body)
    for chunk in chunks:
        check_object("CreateChatCompletionStreamResponse", chunk)
        assert "usage" not in chunk
        assert isinstance(chunk["system_fingerprint"], str)
    with_usage = _sse(server, body | {"stream_options": {"include_usage": True}})
    for chunk in with_usage:
        check_object("CreateChatCompletionStreamResponse", chunk)
    assert all("usage" in c for c in with_usage)
    assert all(c["usage"] is None for c in with_usage[:-1])
    last = with_usage[-1]
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 45


def test_stream_options_without_stream_is_400(server: RunningServer) -> None:
    r = _post(server, {"messages": [{"role": "user", "content": "Hi"}], "stream_options": {"include_usage": True}})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == "stream_options" and "'stream' is enabled" in error["message"]
    check_object("ErrorResponse", r.json())


AUDIO_PART = {"type": "input_audio", "input_audio": {"data": "AAAA"}}


@pytest.mark.parametrize(
    ("body", "param", "code", "message"),
    [
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, AUDIO_PART]}]},
            "messages[0].content[1].input_audio.format",
            "missing_required_parameter",
            "Missing required parameter: 'messages[0].content[1].input_audio.format'.",
        ),
        (
            {"messages": [{"role": "robot", "content": "a"}]},
            "messages[0].role",
            "invalid_value",
            (
                "Invalid value: 'robot'. Supported values are: 'system', 'developer', 'user', 'assistant', 'tool', "
                "'function'."
            ),
        ),
        (
            {"messages": [{"role": "user", "content": "a"}], "temperature": "hot"},
            "temperature",
            "invalid_type",
            "Invalid type for 'temperature': expected a decimal, but got a string instead.",
        ),
        (
            {"messages": [{"role": "user", "content": "a"}], "top_p": 2},
            "top_p",
            "integer_above_max_value",
            "Invalid 'top_p': integer above max value. Expected a value <= 1, but got 2 instead.",
        ),
        (
            {"messages": []},
            "messages",
            "empty_array",
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
        ),
        (
            {"messages": [{"role": "user", "content": "a"}], "audio": {"voice": "alloy", "format": "ogg"}},
            "audio.format",
            "invalid_value",
            "Invalid value: 'ogg'. Supported values are: 'wav', 'aac', 'mp3', 'flac', 'opus' or 'pcm16'.",
        ),
    ],
)
def test_validation_errors_read_like_openai(
    server: RunningServer, body: dict, param: str, code: str, message: str
) -> None:
    r = _post(server, body)
    assert r.status_code == 400
    check_object("ErrorResponse", r.json())
    assert r.json()["error"] == {"message": message, "type": "invalid_request_error", "param": param, "code": code}
