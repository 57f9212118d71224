"""Chat parameters honoured (`n`, `stop`, `seed`, `logprobs`/`top_logprobs`, an assistant message to continue, a
system message alone) or refused with a 400 naming them (`response_format` json, `tools`, `stop` with audio, ...).
Every body and chunk is checked against the official OpenAPI description."""

from __future__ import annotations

import json

import httpx
import pytest

from glm4voice_api.text.prompt import ASSISTANT_METADATA
from glm4voice_api.text.tokenizer import GLM4Tokenizer
from tests.api.conftest import RunningServer
from tests.api.realtime_schema import check_object

pytestmark = [pytest.mark.engine, pytest.mark.xdist_group("server")]
MODEL = "glm-4-voice-9b"
URL = "/v1/chat/completions"
HI = [{"role": "user", "content": "Hi"}]
SPOKEN = {"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}}


def _post(server: RunningServer, **body) -> dict:
    r = httpx.post(server.base_url + URL, json={"model": MODEL, "messages": HI, **body}, timeout=300)
    assert r.status_code == 200, r.text
    check_object("CreateChatCompletionResponse", r.json())
    return r.json()


def _refused(server: RunningServer, **body) -> dict:
    r = httpx.post(server.base_url + URL, json={"model": MODEL, "messages": HI, **body}, timeout=300)
    assert r.status_code == 400, r.text
    check_object("ErrorResponse", r.json())
    return r.json()["error"]


def _sse(server: RunningServer, **body) -> list[dict]:
    payload = {"model": MODEL, "messages": HI, "stream": True, **body}
    with httpx.stream("POST", server.base_url + URL, json=payload, timeout=300) as r:
        assert r.status_code == 200, r.read()
        lines = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(line) for line in lines[:-1]]
    for chunk in chunks:
        check_object("CreateChatCompletionStreamResponse", chunk)
    return chunks


def test_n_text_choices_and_seed(server: RunningServer) -> None:
    reply = _post(server, n=2, max_tokens=13, seed=7, temperature=1.0)
    assert [c["index"] for c in reply["choices"]] == [0, 1]
    assert reply["usage"]["completion_tokens"] == 26
    again = _post(server, n=2, max_tokens=13, seed=7, temperature=1.0)
    assert [c["message"]["content"] for c in again["choices"]] == [c["message"]["content"] for c in reply["choices"]]
    other = _post(server, max_tokens=13, seed=8, temperature=1.0)
    assert other["choices"][0]["message"]["content"] != reply["choices"][0]["message"]["content"]


def test_n_spoken_choices_each_have_their_audio(server: RunningServer) -> None:
    reply = _post(server, n=2, max_tokens=39, **SPOKEN)
    audios = [c["message"]["audio"] for c in reply["choices"]]
    assert len({a["id"] for a in audios}) == 2 and all(a["data"] and a["transcript"] for a in audios)
    chunks = _sse(server, n=2, max_tokens=39, modalities=["text", "audio"], audio={"voice": "alloy", "format": "pcm16"})
    ids = {
        c["choices"][0]["index"]: c["choices"][0]["delta"]["audio"]["id"]
        for c in chunks
        if "id" in c["choices"][0]["delta"].get("audio", {})
    }
    assert sorted(ids) == [0, 1] and len(set(ids.values())) == 2
    finished = [c["choices"][0]["index"] for c in chunks if c["choices"][0]["finish_reason"]]
    assert sorted(finished) == [0, 1]


def test_stop_cuts_the_text_before_the_stop_string(server: RunningServer) -> None:
    full = _post(server, max_tokens=26, seed=3)["choices"][0]["message"]["content"]
    cut = len(full) // 2
    stop = full[cut : cut + 2]
    assert stop.strip(), full
    expected = full[: full.index(stop)]
    stopped = _post(server, max_tokens=26, seed=3, stop=["never-there", stop])["choices"][0]
    assert (stopped["message"]["content"], stopped["finish_reason"]) == (expected, "stop")
    streamed = _sse(server, max_tokens=26, seed=3, stop=stop)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in streamed if c["choices"])
    assert text == expected
    assert [c["choices"][0]["finish_reason"] for c in streamed if c["choices"][0]["finish_reason"]] == ["stop"]


def test_logprobs_of_the_text_tokens(server: RunningServer) -> None:
    reply = _post(server, max_tokens=39, logprobs=True, top_logprobs=2)
    content = reply["choices"][0]["logprobs"]["content"]
    assert len(content) == reply["usage"]["completion_tokens_details"]["text_tokens"]
    assert all(len(t["top_logprobs"]) == 2 and t["logprob"] <= 0 for t in content)
    joined = bytes(b for t in content for b in t["bytes"]).decode("utf-8", errors="replace")
    assert joined == reply["choices"][0]["message"]["content"]
    chunks = _sse(server, max_tokens=13, logprobs=True)
    streamed = [
        t
        for c in chunks
        if c["choices"] and c["choices"][0]["logprobs"]
        for t in c["choices"][0]["logprobs"]["content"]
    ]
    assert len(streamed) == 13 and all(t["top_logprobs"] == [] for t in streamed)
    assert _post(server, max_tokens=5)["choices"][0]["logprobs"] is None


def test_an_assistant_message_last_is_continued(server: RunningServer, tiny_llm_dir) -> None:
    tok = GLM4Tokenizer.from_dir(tiny_llm_dir)
    messages = [*HI, {"role": "assistant", "content": "Once upon a time"}]
    reply = _post(server, messages=messages, max_tokens=5, return_token_ids=True)
    tail = [tok.ids.assistant, *tok.encode(ASSISTANT_METADATA + "Once upon a time")]
    assert reply["prompt_token_ids"][-len(tail) :] == tail
    assert len(reply["choices"][0]["token_ids"]) == 5


def test_a_system_message_alone_is_answered(server: RunningServer) -> None:
    reply = _post(server, messages=[{"role": "system", "content": "Greet the user."}], max_tokens=5)
    assert reply["usage"]["completion_tokens"] == 5


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}, "response_format"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"logit_bias": {"1": 5}}, "logit_bias"),
        ({"stop": "x", **SPOKEN}, "stop"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"n": 9}, "n"),
        ({"store": True}, "store"),
        ({"reasoning_effort": "low"}, "reasoning_effort"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"verbosity": "low"}, "verbosity"),
    ],
)
def test_unsupported_parameters_are_refused_by_name(server: RunningServer, body: dict, param: str) -> None:
    assert _refused(server, **body)["param"] == param


def test_harmless_parameters_are_accepted(server: RunningServer) -> None:
    """response_format text, store false, metadata, user: nothing to change in the reply."""
    reply = _post(
        server,
        max_tokens=3,
        response_format={"type": "text"},
        store=False,
        metadata={"k": "v"},
        user="u",
        tool_choice="none",
    )
    assert reply["choices"][0]["message"]["content"] is not None
