"""The Realtime API (`/v1/realtime`) on the real server, driven by the official SDK's realtime client.

Speech is espeak-ng's (tests/speech.py), streamed in 20 ms frames with server VAD. Every server event is checked
against the official OpenAPI description and the SDK's own event models (tests/api/realtime_schema.py).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time

import httpx
import numpy as np
import openai
import pytest
import websockets

from tests.api.conftest import RunningServer
from tests.api.realtime_schema import check_event, check_object
from tests.speech import pcm16_bytes, silence, speech

pytestmark = [pytest.mark.engine, pytest.mark.xdist_group("server")]
MODEL = "glm-4-voice-9b"
RATE = 24000
FRAME = 2 * RATE // 50  # bytes of one 20 ms pcm16 frame
QUESTION = "Could you tell me what the weather is like in Berlin today"
BARGE_IN = "Wait, tell me about Paris instead"


def _frames(samples: np.ndarray) -> list[str]:
    data = pcm16_bytes(samples)
    return [base64.b64encode(data[i : i + FRAME]).decode() for i in range(0, len(data), FRAME)]


def _ws_url(server: RunningServer) -> str:
    return server.base_url.replace("http://", "ws://") + f"/v1/realtime?model={MODEL}"


async def wait_idle(server: RunningServer, timeout: float = 60) -> None:
    """Nothing left behind: no engine request, no decoder session, no Realtime session."""
    names = ("glm4voice_engine_active_requests", "glm4voice_decoder_active_sessions", "glm4voice_realtime_sessions")
    deadline = time.monotonic() + timeout
    while True:
        values = {n: await asyncio.to_thread(server.metric, n) for n in names}
        if not any(values.values()):
            return
        assert time.monotonic() < deadline, f"still running after {timeout} s: {values}"
        await asyncio.sleep(0.2)


class Recorder:
    """Reads every server event of an SDK connection (raw, so it can be checked against the schema).

    The checks run in `stop()`, after the conversation: checking hundreds of audio deltas as they arrive made this
    client fall seconds behind the server on a busy 2-core machine, so its barge-in reached the server after the
    answer had ended (a slow client, not a server fault)."""

    def __init__(self, conn, beta: bool = False) -> None:
        self.conn = conn
        self.beta = beta
        self.events: list[dict] = []
        self.raw: list[bytes] = []
        self.arrived = asyncio.Condition()
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        while True:
            raw = await self.conn.recv_bytes()
            event = json.loads(raw)
            async with self.arrived:
                self.raw.append(raw)
                self.events.append(event)
                self.arrived.notify_all()

    async def wait(self, predicate, timeout: float = 180) -> dict:
        async with asyncio.timeout(timeout):
            async with self.arrived:
                while True:
                    if self.task.done():
                        self.task.result()  # a schema failure surfaces here
                    for event in self.events:
                        if predicate(event):
                            return event
                    await self.arrived.wait()

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["type"] == kind]

    def stop(self) -> None:
        """Stop reading, then check every event received against the schemas and the SDK's own models."""
        self.task.cancel()
        for raw, event in zip(self.raw, self.events, strict=True):
            check_event(event, beta=self.beta)
            assert self.conn.parse_event(raw).type == event["type"]


async def test_sdk_conversation_with_vad_barge_in_truncation_and_history(server: RunningServer) -> None:
    client = openai.AsyncOpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0)
    v2v_before = await asyncio.to_thread(server.metric, "glm4voice_realtime_voice_to_voice_seconds_count")
    async with client.realtime.connect(model=MODEL) as conn:
        rec = Recorder(conn)
        created = await rec.wait(lambda e: e["type"] == "session.created")
        assert created["session"]["audio"]["input"]["turn_detection"]["type"] == "server_vad"
        await conn.session.update(
            session={
                "type": "realtime",
                # 80 s of speech: the barge-in lands while it is still being made, however fast the machine
                "max_output_tokens": 1560,
                "instructions": "Answer briefly.",
                "audio": {"input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 600}}},
            }
        )
        updated = await rec.wait(lambda e: e["type"] == "session.updated")
        assert updated["session"]["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 600

        # Turn 1: the question, then silence, in 20 ms frames; the server ends the turn and answers by itself.
        for frame in _frames(np.concatenate([silence(0.3, RATE), speech(QUESTION, RATE), silence(1.0, RATE)])):
            await conn.input_audio_buffer.append(audio=frame)
        started = await rec.wait(lambda e: e["type"] == "input_audio_buffer.speech_started")
        stopped = await rec.wait(lambda e: e["type"] == "input_audio_buffer.speech_stopped")
        assert started["item_id"] == stopped["item_id"] and 0 <= started["audio_start_ms"] < 400
        committed = await rec.wait(lambda e: e["type"] == "input_audio_buffer.committed")
        assert committed["item_id"] == stopped["item_id"]
        first = await rec.wait(lambda e: e["type"] == "response.created")
        response_1 = first["response"]["id"]
        await rec.wait(lambda e: e["type"] == "response.output_audio.delta")
        # Audio arrives while the answer is still being generated.
        assert not [e for e in rec.of("response.done") if e["response"]["id"] == response_1]
        item_1 = rec.of("response.output_item.added")[0]["item"]["id"]
        await conn.session.update(session={"type": "realtime", "max_output_tokens": 78})  # the next answer: short

        # Turn 2 barges in, at real-time pace; once the answer is cancelled the client truncates what it heard.
        truncated_at: list[int] = []

        async def truncate_when_cancelled() -> None:
            done = await rec.wait(lambda e: e["type"] == "response.done" and e["response"]["id"] == response_1)
            heard = (
                sum(
                    len(base64.b64decode(e["delta"]))
                    for e in rec.of("response.output_audio.delta")
                    if e["response_id"] == response_1
                )
                // 2
                * 1000
                // RATE
            )
            truncated_at.append(max(0, heard // 2))
            await conn.conversation.item.truncate(item_id=item_1, content_index=0, audio_end_ms=truncated_at[0])
            assert done["response"]["status"] == "cancelled", done

        truncator = asyncio.ensure_future(truncate_when_cancelled())
        loop = asyncio.get_running_loop()
        start = loop.time()
        for k, frame in enumerate(_frames(np.concatenate([speech(BARGE_IN, RATE), silence(1.2, RATE)]))):
            await asyncio.sleep(max(0.0, start + k * 0.02 - loop.time()))
            await conn.input_audio_buffer.append(audio=frame)
        await asyncio.wait_for(truncator, 120)
        cancelled = next(e for e in rec.of("response.done") if e["response"]["id"] == response_1)["response"]
        assert cancelled["status_details"]["reason"] == "turn_detected"
        assert cancelled["output"][0]["status"] == "incomplete"
        ack = await rec.wait(lambda e: e["type"] == "conversation.item.truncated")
        assert ack["item_id"] == item_1 and ack["audio_end_ms"] == truncated_at[0]

        second = await rec.wait(lambda e: e["type"] == "response.done" and e["response"]["id"] != response_1)
        assert second["response"]["status"] in ("completed", "incomplete"), second
        speech_2 = rec.of("input_audio_buffer.speech_stopped")[-1]
        start_2 = next(e for e in rec.of("input_audio_buffer.speech_started") if e["item_id"] == speech_2["item_id"])
        rec.stop()

    # The second answer's prompt holds the first turn, the truncated answer (its heard audio tokens exactly) and the
    # second turn: its input tokens grow accordingly.
    usage_1, usage_2 = cancelled["usage"], second["response"]["usage"]
    assert usage_2["input_tokens"] > usage_1["input_tokens"]
    audio_1 = usage_1["input_token_details"]["audio_tokens"]
    audio_2 = usage_2["input_token_details"]["audio_tokens"]
    kept_reply_audio = -(-truncated_at[0] // 80)  # 12.5 tokens per second, rounded up
    turn_2_seconds = (speech_2["audio_end_ms"] - start_2["audio_start_ms"]) / 1000
    assert abs((audio_2 - audio_1 - kept_reply_audio) - 12.5 * turn_2_seconds) <= 3
    # Nothing left behind; the voice-to-voice latency was measured.
    await wait_idle(server)
    assert await asyncio.to_thread(server.metric, "glm4voice_realtime_voice_to_voice_seconds_count") >= v2v_before + 1


async def _raw_session(server: RunningServer, **kwargs):
    ws = await websockets.connect(_ws_url(server), max_size=None, **kwargs)
    created = json.loads(await ws.recv())
    assert created["type"] == "session.created", created
    json.loads(await ws.recv())  # conversation.created
    return ws


async def _next(ws, kind: str | None, timeout: float = 120) -> dict:
    """The next event of type `kind` (None: the next event), every event checked against the schemas."""
    async with asyncio.timeout(timeout):
        while True:
            event = json.loads(await ws.recv())
            check_event(event)
            if kind is None or event["type"] == kind:
                return event


async def _error_for(ws, message: str, event_id: str | None = None) -> dict:
    await ws.send(message)
    error = (await _next(ws, "error"))["error"]
    assert error["event_id"] == event_id
    # The session is still open and working.
    await ws.send(json.dumps({"type": "session.update", "session": {"type": "realtime", "instructions": "ok"}}))
    assert (await _next(ws, "session.updated"))["session"]["instructions"] == "ok"
    return error


async def test_bad_client_events_get_error_events_and_the_session_goes_on(server: RunningServer) -> None:
    ws = await _raw_session(server)
    try:
        assert (await _error_for(ws, "{not json"))["code"] == "invalid_json"
        error = await _error_for(ws, json.dumps({"type": "response.frobnicate", "event_id": "e1"}), "e1")
        assert error["code"] == "invalid_value" and error["param"] == "type"
        error = await _error_for(
            ws, json.dumps({"type": "input_audio_buffer.append", "audio": "not base64!", "event_id": "e2"}), "e2"
        )
        assert error["code"] == "invalid_base64"
        error = await _error_for(
            ws,
            json.dumps(
                {
                    "type": "session.update",
                    "session": {"audio": {"input": {"format": {"type": "audio/flac"}}}},
                    "event_id": "e3",
                }
            ),
            "e3",
        )
        assert error["param"].startswith("session.audio.input.format")
        too_big = json.dumps({"type": "input_audio_buffer.append", "audio": "A" * (15 * 1024 * 1024 + 4)})
        assert (await _error_for(ws, too_big))["code"] == "event_too_large"
        # The buffer's cap (300 s): appends beyond it are refused; what was accepted stays.
        await ws.send(json.dumps({"type": "session.update", "session": {"audio": {"input": {"turn_detection": None}}}}))
        await _next(ws, "session.updated")
        ten_seconds = base64.b64encode(bytes(2 * RATE * 10)).decode()
        for _ in range(30):
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": ten_seconds}))
        error = await _error_for(ws, json.dumps({"type": "input_audio_buffer.append", "audio": ten_seconds}))
        assert error["code"] == "input_audio_buffer_full"
        await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
        await _next(ws, "input_audio_buffer.cleared")
        assert (await _error_for(ws, json.dumps({"type": "input_audio_buffer.commit"})))["code"] == (
            "input_audio_buffer_commit_empty"
        )
        error = await _error_for(
            ws,
            json.dumps(
                {"type": "conversation.item.truncate", "item_id": "item_nope", "content_index": 0, "audio_end_ms": 10}
            ),
        )
        assert error["code"] == "item_not_found"
        assert (await _error_for(ws, json.dumps({"type": "response.cancel"})))["code"] == "response_cancel_not_active"
        error = await _error_for(ws, json.dumps({"type": "response.create"}))
        assert error["code"] == "no_user_input"
        error = await _error_for(
            ws, json.dumps({"type": "session.update", "session": {"tools": [{"type": "function", "name": "f"}]}})
        )
        assert error["code"] == "unsupported_value"
    finally:
        await ws.close()
    await wait_idle(server)


async def test_client_vanishing_mid_answer_leaves_nothing(server: RunningServer) -> None:
    aborted = await asyncio.to_thread(server.metric, "glm4voice_engine_aborted_requests_total")
    ws = await _raw_session(server)
    await ws.send(
        json.dumps(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "Tell me a long story."}],
                },
            }
        )
    )
    # A long answer, and the client vanishes while the server's engine is generating it, as the server's own
    # metrics say. Not at the first words the client reads: a client on a loaded machine reads its events late,
    # and twice (clean-clone CI runs, 2026-12-04 and -05; 4 of 10 runs beside three busy loops here) its first
    # transcript delta came only after the server had written the whole answer, 47 s of audio, leaving nothing to
    # abort.
    await ws.send(json.dumps({"type": "response.create", "response": {"max_output_tokens": 900}}))
    deadline = time.monotonic() + 120
    while not await asyncio.to_thread(server.metric, "glm4voice_engine_active_requests"):
        assert time.monotonic() < deadline, "the answer never started"
        await asyncio.sleep(0.02)
    ws.transport.abort()  # no close handshake: the client is simply gone
    await wait_idle(server)
    assert await asyncio.to_thread(server.metric, "glm4voice_engine_aborted_requests_total") > aborted


async def test_telephony_formats_through_the_beta_client(server: RunningServer) -> None:
    """The SDK's beta client (`OpenAI-Beta: realtime=v1`) gets the beta names; G.711 audio in and out."""
    from glm4voice_api.audio import g711

    # The beta client always dials wss:// unless told the WebSocket base URL (plain ws:// on loopback here).
    client = openai.AsyncOpenAI(
        base_url=server.base_url + "/v1",
        api_key="unused",
        max_retries=0,
        websocket_base_url=server.base_url.replace("http://", "ws://") + "/v1",
    )
    async with client.beta.realtime.connect(model=MODEL) as conn:

        async def next_event(kind: str | None) -> dict:
            async with asyncio.timeout(120):
                while True:
                    event = json.loads(await conn.recv_bytes())
                    check_event(event, beta=True)
                    if kind is None or event["type"] == kind:
                        return event

        await conn.session.update(
            session={
                "input_audio_format": "g711_ulaw",
                "output_audio_format": "g711_alaw",
                "turn_detection": None,
                "max_response_output_tokens": 78,
                "voice": "ash",
            }
        )
        session = (await next_event("session.updated"))["session"]
        assert session["input_audio_format"] == "g711_ulaw" and session["output_audio_format"] == "g711_alaw"
        question = speech(QUESTION, 8000)
        await conn.input_audio_buffer.append(audio=base64.b64encode(g711.encode(question, "pcmu")).decode())
        await conn.input_audio_buffer.commit()
        await conn.response.create()
        created = await next_event("conversation.item.created")
        assert created["item"]["role"] == "user"
        audio = b""
        while (event := await next_event(None))["type"] != "response.done":
            if event["type"] == "response.audio.delta":
                audio += base64.b64decode(event["delta"])
    usage = event["response"]["usage"]
    # 12.5 speech tokens per second of the question (8 kHz mu-law in).
    assert abs(usage["input_token_details"]["audio_tokens"] - 12.5 * len(question) / 8000) <= 3
    # A-law out: one byte per sample at 8 kHz, as long as the audio tokens last (80 ms each).
    seconds = usage["output_token_details"]["audio_tokens"] * 0.08
    assert abs(len(audio) / 8000 - seconds) < 0.2, (len(audio), seconds)
    assert np.abs(g711.decode(audio, "pcma")).max() > 0
    await wait_idle(server)


async def test_client_secret_opens_a_browser_style_session(server: RunningServer) -> None:
    body = {
        "expires_after": {"anchor": "created_at", "seconds": 60},
        "session": {"type": "realtime", "instructions": "Be brief.", "audio": {"output": {"voice": "ash"}}},
    }
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
        response = await http.post("/v1/realtime/client_secrets", json=body)
        bad = await http.post("/v1/realtime/client_secrets", json={"expires_after": {"seconds": 5}})
    assert response.status_code == 200, response.text
    secret = response.json()
    check_object("RealtimeCreateClientSecretResponse", secret)
    assert secret["value"].startswith("ek_") and secret["expires_at"] - time.time() <= 61
    assert secret["session"]["instructions"] == "Be brief."
    assert bad.status_code == 400 and bad.json()["error"]["param"]
    ws = await websockets.connect(
        _ws_url(server), subprotocols=["realtime", "openai-insecure-api-key." + secret["value"]]
    )
    try:
        assert ws.subprotocol == "realtime"
        created = json.loads(await ws.recv())
        check_event(created)
        assert created["session"]["instructions"] == "Be brief."
        assert created["session"]["audio"]["output"]["voice"] == "ash"
    finally:
        await ws.close()
    # An unknown model is an error event, then the socket closes.
    ws = await websockets.connect(server.base_url.replace("http://", "ws://") + "/v1/realtime?model=nope")
    error = json.loads(await ws.recv())
    assert error["type"] == "error" and error["error"]["code"] == "model_not_found"
    await ws.wait_closed()
    await wait_idle(server)


async def test_text_items_and_an_earlier_chat_answer_make_the_same_prompt_as_chat(server: RunningServer) -> None:
    """User text items and an assistant item made from a chat reply's `audio.id` (its exact ids from the store): the
    prompt is token for token the one chat builds from the same conversation; a text-only answer streams text."""
    client = openai.AsyncOpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0)
    reply = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=39,
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "wav"},
    )
    audio = reply.choices[0].message.audio
    history = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "audio": {"id": audio.id}},
        {"role": "user", "content": "And then?"},
    ]
    chat_prompt = (await client.chat.completions.create(model=MODEL, messages=history, max_tokens=1)).usage
    items = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_audio", "id": audio.id}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "And then?"}]},
    ]
    ws = await _raw_session(server)
    try:
        ids = []
        for item in items:
            await ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
            ids.append((await _next(ws, "conversation.item.done"))["item"]["id"])
        await ws.send(json.dumps({"type": "conversation.item.retrieve", "item_id": ids[1]}))
        retrieved = (await _next(ws, "conversation.item.retrieved"))["item"]
        assert retrieved["role"] == "assistant" and retrieved["content"][0]["transcript"] == audio.transcript
        await ws.send(
            json.dumps(
                {"type": "response.create", "response": {"output_modalities": ["text"], "max_output_tokens": 39}}
            )
        )
        deltas = []
        while (event := await _next(ws, None))["type"] != "response.done":
            if event["type"] == "response.output_text.delta":
                deltas.append(event["delta"])
        done = event["response"]
        assert done["usage"]["input_tokens"] == chat_prompt.prompt_tokens
        assert done["usage"]["input_token_details"]["audio_tokens"] == chat_prompt.prompt_tokens_details.audio_tokens
        assert done["output"][0]["content"][0] == {"type": "output_text", "text": "".join(deltas)}
        missing = await _error_for(
            ws,
            json.dumps(
                {
                    "type": "conversation.item.create",
                    "item": {
                        "type": "message",
                        "role": "assistant",
                        "content": [{"type": "output_audio", "id": "audio_nope"}],
                    },
                }
            ),
        )
        assert missing["code"] == "audio_not_found"
    finally:
        await ws.close()
    await wait_idle(server)
