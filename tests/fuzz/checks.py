"""Assertions shared by the fuzz tests: the error envelope, a raw HTTP client for lying framing, server health."""

from __future__ import annotations

import base64
import json
import socket
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx

from tests.api.conftest import wait_all_freed
from tests.fuzz.corpus import MODEL, valid

if TYPE_CHECKING:
    from tests.api.conftest import RunningServer

ENVELOPE_KEYS = {"message", "type", "param", "code"}


def assert_envelope(status: int, content_type: str, content: bytes) -> dict:
    """The OpenAI error envelope, exactly: {"error": {message, type, param, code}}; returns the inner object."""
    assert content_type.startswith("application/json"), (status, content_type, content[:300])
    body = json.loads(content)
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == ENVELOPE_KEYS, error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str) and error["type"], error
    assert error["param"] is None or isinstance(error["param"], str), error
    assert error["code"] is None or isinstance(error["code"], str), error
    return error


def raw_request(base_url: str, head: bytes, body: bytes, *, timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are (httpx refuses a lying Content-Length); read one response on a closing connection."""
    url = urlsplit(base_url)
    with socket.create_connection((url.hostname, url.port), timeout=timeout) as sock:
        sock.sendall(head + b"\r\nHost: " + url.netloc.encode() + b"\r\nConnection: close\r\n\r\n" + body)
        with sock.makefile("rb") as stream:
            status = int(stream.readline().split()[1])
            headers: dict[str, str] = {}
            while (line := stream.readline().strip()) != b"":
                key, _, value = line.decode("latin-1").partition(":")
                headers[key.strip().lower()] = value.strip()
            if "content-length" in headers:
                content = stream.read(int(headers["content-length"]))
            else:
                content = stream.read()
    return status, headers, content


wait_for_no_leaks = wait_all_freed
"""Engine requests and decoder sessions drain to 0 once every client has its answer (aborts are async)."""


def assert_server_unaffected(server: RunningServer) -> None:
    """Ready, nothing leaked, and normal requests (text chat, audio in, speech out) still work."""
    wait_for_no_leaks(server)
    assert httpx.get(server.base_url + "/health/ready", timeout=30).status_code == 200
    client = server.client()
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert reply.choices[0].finish_reason == "length"
    audio = base64.b64encode(valid("wav")).decode()
    reply = client.chat.completions.create(
        model=MODEL,
        max_tokens=2,
        messages=[
            {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}}]}
        ],
    )
    assert reply.usage.prompt_tokens_details.audio_tokens > 0
    speech = client.audio.speech.create(model=MODEL, input="ok", voice="alloy", response_format="wav")
    assert speech.content[:4] == b"RIFF"
    wait_for_no_leaks(server)
