"""Streamed audio as the SDK's helpers join it: every base64 piece covers whole 3-byte groups and whole samples, so
the joined string decodes to exactly the streamed audio (chat stream helper, speech SSE, Realtime deltas)."""

from __future__ import annotations

import base64
import binascii
import json

import httpx
import numpy as np
import openai
import pytest

from tests.api.conftest import RunningServer
from tests.api.conftest import delta_audio as _delta_audio
from tests.api.realtime_schema import check_object

pytestmark = [pytest.mark.engine, pytest.mark.xdist_group("server")]
MODEL = "glm-4-voice-9b"


def _strict(data: str) -> bytes:
    return base64.b64decode(data, validate=True)


def test_chat_stream_helper_joins_the_audio_exactly(server: RunningServer) -> None:
    """`chat.completions.stream(...)` + `get_final_completion()`: the joined `message.audio.data` is valid base64 and
    decodes to exactly the samples of the streamed pieces."""
    pieces: list[str] = []
    with server.client().chat.completions.stream(
        model=MODEL,
        messages=[{"role": "user", "content": "Tell me a story"}],
        max_tokens=117,
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "pcm16"},
    ) as stream:
        for event in stream:
            chunk = event.chunk if event.type == "chunk" else None
            if chunk is not None and chunk.choices and (data := _delta_audio(chunk.choices[0].delta).get("data")):
                pieces.append(data)
        try:
            final = stream.get_final_completion()
        except openai.LengthFinishReasonError as err:  # random weights end at max_tokens; the joined reply is here
            final = err.completion
    assert len(pieces) > 1
    for piece in pieces:
        raw = _strict(piece)
        assert len(raw) % 2 == 0  # whole samples in every piece
    assert all(len(_strict(p)) % 6 == 0 for p in pieces[:-1])  # no padding inside the joined string
    audio = final.choices[0].message.audio
    joined = audio.data if not isinstance(audio, dict) else audio["data"]
    assert joined == "".join(pieces)
    samples = np.frombuffer(_strict(joined), "<i2")
    streamed = np.concatenate([np.frombuffer(_strict(p), "<i2") for p in pieces])
    np.testing.assert_array_equal(samples, streamed)
    assert len(samples) / 24000 == pytest.approx(78 * 0.08, abs=0.12)  # 117 tokens = 3 cycles = 78 audio tokens


@pytest.mark.parametrize("fmt", ["pcm", "mp3"])
def test_speech_sse_pieces_join(server: RunningServer, fmt: str) -> None:
    with httpx.stream(
        "POST",
        server.base_url + "/v1/audio/speech",
        json={"model": MODEL, "input": "Hello there, general.", "voice": "alloy", "response_format": fmt}
        | {"stream_format": "sse"},
        timeout=300,
    ) as r:
        assert r.status_code == 200
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    deltas = [e["audio"] for e in events if e["type"] == "speech.audio.delta"]
    assert events[-1]["type"] == "speech.audio.done"
    for e in events:
        check_object("CreateSpeechResponseStreamEvent", e)
    assert all(len(_strict(d)) % (6 if fmt == "pcm" else 3) == 0 for d in deltas[:-1])
    joined = _strict("".join(deltas))
    assert joined == b"".join(_strict(d) for d in deltas)
    if fmt == "pcm":
        assert len(joined) % 2 == 0 and len(joined) > 0


async def test_realtime_audio_deltas_are_whole_samples(server: RunningServer) -> None:
    """Realtime clients decode each delta on its own: each is strict base64 of whole pcm16 samples."""
    from tests.api.test_realtime import _next, _raw_session, wait_idle

    ws = await _raw_session(server)
    try:
        item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]}
        await ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
        await _next(ws, "conversation.item.done")
        await ws.send(json.dumps({"type": "response.create", "response": {"max_output_tokens": 78}}))
        deltas = []
        while (event := await _next(ws, None))["type"] != "response.done":
            if event["type"] == "response.output_audio.delta":
                deltas.append(event["delta"])
    finally:
        await ws.close()
    assert deltas
    try:
        assert all(len(_strict(d)) % 2 == 0 for d in deltas)
    except binascii.Error as exc:  # pragma: no cover - the failure message
        pytest.fail(f"a delta is not strict base64: {exc}")
    await wait_idle(server)
