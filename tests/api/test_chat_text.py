"""Issue "Foundation": the real server on the built-in default, driven with the official openai SDK."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.api.conftest import RunningServer

pytestmark = [pytest.mark.engine, pytest.mark.xdist_group("server")]
MODEL = "glm-4-voice-9b"


def test_models_lists_the_default_labelled_as_random(server: RunningServer) -> None:
    models = server.client().models.list()
    # The served model first; OpenAI's names for it follow (tests/api/test_model_names.py).
    assert models.data[0].id == MODEL
    card = models.data[0].model_dump()
    assert card["random_weights"] is True
    assert "RANDOM WEIGHTS" in card["description"]


def test_non_streaming_chat(server: RunningServer) -> None:
    client = server.client()
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello there"}], max_tokens=39, seed=1
    )
    assert raw.headers["x-request-id"]
    reply = raw.parse()
    choice = reply.choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.content  # the 13 + (short) text tokens of the random reply
    usage = reply.usage
    assert usage.completion_tokens == 39
    # The interleave constraint makes the random model speak like the real one: 13 text, then 26 audio.
    assert usage.completion_tokens_details.text_tokens == 13
    assert usage.completion_tokens_details.audio_tokens == 26
    assert usage.prompt_tokens_details.audio_tokens == 0
    assert usage.prompt_tokens == usage.prompt_tokens_details.text_tokens


def test_streaming_chat_with_usage(server: RunningServer) -> None:
    stream = server.client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Tell me a story"}],
        max_tokens=78,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert text
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 78
    assert chunks[-1].usage.completion_tokens_details.audio_tokens == 52


def test_client_disconnect_aborts_the_engine_request(server: RunningServer) -> None:
    aborted_before = server.metric("glm4voice_engine_aborted_requests_total")
    client = server.client(timeout=60)
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Talk for a long time"}], max_tokens=800, stream=True
    )
    for seen, _ in enumerate(stream, start=1):
        if seen >= 3:  # a few chunks in, then the client goes away
            break
    stream.close()
    deadline = time.monotonic() + 15  # 800 tokens would take far longer than this on the CPU
    while time.monotonic() < deadline:
        if server.metric("glm4voice_engine_active_requests") == 0 and server.metric("vllm:num_requests_running") == 0:
            break
        time.sleep(0.2)
    assert server.metric("glm4voice_engine_active_requests") == 0
    assert server.metric("vllm:num_requests_running") == 0
    assert server.metric("glm4voice_engine_aborted_requests_total") == aborted_before + 1


def test_over_long_prompt_is_a_400_in_the_envelope(server: RunningServer) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        server.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "word " * 3000}])
    body = err.value.body
    assert body["code"] == "context_length_exceeded"
    assert "maximum context length is 1024 tokens" in body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        server.client().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=1020
        )
    assert err.value.body["param"] == "max_tokens"


@pytest.mark.parametrize(
    ("content", "status", "param"),
    [
        (b"{not json", 400, None),
        (b'{"model": "glm-4-voice-9b"}', 400, "messages"),
        (
            b'{"model": "glm-4-voice-9b", "messages": [{"role": "user", "content": "x"}], "temperature": 9}',
            400,
            "temperature",
        ),
        (b'{"model": "nope", "messages": [{"role": "user", "content": "x"}]}', 404, "model"),
        (b'{"model": "glm-4-voice-9b", "messages": [{"role": "wizard", "content": "x"}]}', 400, "messages[0].role"),
    ],
)
def test_malformed_bodies_get_the_envelope(server: RunningServer, content: bytes, status: int, param) -> None:
    response = httpx.post(
        server.base_url + "/v1/chat/completions",
        content=content,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert (error["param"] or "").startswith(param)
    assert response.headers["x-request-id"]


def test_unknown_route_and_health(server: RunningServer) -> None:
    response = httpx.get(server.base_url + "/v1/nope", timeout=10)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert httpx.get(server.base_url + "/health", timeout=10).status_code == 200
    assert httpx.get(server.base_url + "/health/ready", timeout=10).json()["status"] == "ready"


def test_engine_survives_all_of_the_above(server: RunningServer) -> None:
    reply = server.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "still there?"}], max_tokens=5
    )
    assert reply.choices[0].finish_reason == "length"
