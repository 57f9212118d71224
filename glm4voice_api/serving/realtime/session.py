"""One Realtime session over one WebSocket: client events in, server events out, until either side ends it.

Client events are handled one at a time, in order (as OpenAI does); a response runs as its own task beside them,
so audio keeps arriving (and the VAD keeps listening) while the model speaks. Speech starting during a response
cancels it (barge-in). Every bad client event gets an `error` event naming it and the session stays open.

Appended audio only lands in the buffer: the voice activity detection runs in the session's own task, on all the
audio that arrived since its last pass. So the receive loop never waits for the detector, and a detector that falls
behind (a busy machine) catches up in one pass instead of a queue of 20 ms round trips that would delay a barge-in.
The VAD task and the receive loop take turns (`_turns`) so that a turn ending and a client event never interleave.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from typing import Protocol

import numpy as np
from pydantic import TypeAdapter, ValidationError

from glm4voice_api.audio.vad import VADEvent, VADStream, VoiceActivityDetector
from glm4voice_api.config import RealtimeSettings, RequestLimits
from glm4voice_api.errors import APIError, invalid_request, server_error, store_unavailable
from glm4voice_api.models.speech_decoder.chunks import Voice
from glm4voice_api.protocol import realtime as wire
from glm4voice_api.serving.admission import Admission
from glm4voice_api.serving.realtime.audio_io import MODEL_RATE, InputConverter, bytes_per_second
from glm4voice_api.serving.realtime.config import SessionConfig, unsupported
from glm4voice_api.serving.realtime.conversation import Conversation, Item
from glm4voice_api.serving.realtime.events import ClientGone, EventFactory, new_id
from glm4voice_api.serving.realtime.response import RealtimeResponse, ResponseHooks, ResponseSpec
from glm4voice_api.serving.replies import Replies
from glm4voice_api.store import StoreUnavailable
from glm4voice_api.text.tokenizer import GLM4Tokenizer

logger = logging.getLogger(__name__)
_EVENTS: TypeAdapter = TypeAdapter(wire.ClientEvent)
MIN_COMMIT_MS = 100


class Channel(Protocol):
    """The transport (the route adapts the WebSocket)."""

    async def receive(self) -> str | bytes | None:
        """The next message; None once the client has gone."""
        ...

    async def send(self, text: str) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


class SessionServices(Protocol):
    """What a session needs from the service that opened it (`service.ServingRealtime`)."""

    tokenizer: GLM4Tokenizer
    limits: RequestLimits
    realtime: RealtimeSettings
    replies: Replies
    admission: Admission

    def observe_voice_to_voice(self, seconds: float) -> None: ...

    async def detector(self) -> VoiceActivityDetector: ...

    async def tokenize(self, audio_16k: np.ndarray) -> list[int]: ...

    async def voice(self, voice: str | dict, tenant: str, param: str) -> Voice | None: ...

    async def item_from_client(self, item: wire.ItemIn, session: RealtimeSession) -> Item: ...

    async def response_spec(
        self, session: RealtimeSession, params: wire.ResponseParams | None
    ) -> tuple[ResponseSpec, list[Item]]: ...


class RealtimeSession:
    def __init__(
        self, service: SessionServices, channel: Channel, tenant: str, config: SessionConfig, beta: bool
    ) -> None:
        self.service = service
        self.channel = channel
        self.tenant = tenant
        self.config = config
        self.events = EventFactory(beta)
        self.beta = beta
        self.conversation = Conversation(service.tokenizer)
        self.conversation_id = new_id("conv")
        self.limits = service.limits
        self.realtime = service.realtime
        self.response: RealtimeResponse | None = None
        self._send_lock = asyncio.Lock()
        self._closed = False
        # Input audio: 16 kHz float32 chunks since the last commit/clear; `buffer_start` is the session sample
        # index of the first one (positions count all audio of the session, as OpenAI's audio_*_ms do).
        self.input = InputConverter(config.input_format)
        self.buffer: list[np.ndarray] = []
        self.buffer_len = 0
        self.buffer_start = 0
        self.samples_in = 0
        self.vad: VADStream | None = None
        self._vad_pending: list[np.ndarray] = []  # appended audio the detector has not seen yet
        self._vad_wake = asyncio.Event()
        self._vad_task: asyncio.Task | None = None
        self._turns = asyncio.Lock()
        self.vad_offset = 0
        self.speech_item_id: str | None = None
        self.speech_stopped_at: float | None = None
        self.last_activity = 0.0

    # -- transport ---------------------------------------------------------------------------------------------
    async def send(self, event: dict) -> None:
        if self._closed:
            raise ClientGone
        text = json.dumps(event, separators=(",", ":"))
        async with self._send_lock:
            try:
                await self.channel.send(text)
            except Exception as exc:  # the transport's own disconnect errors vary by server implementation
                self._closed = True
                raise ClientGone from exc

    async def error(self, error: APIError, client_event_id: str | None = None) -> None:
        await self.send(self.events.error(error, client_event_id))

    # -- the session -------------------------------------------------------------------------------------------
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        ends = loop.time() + self.realtime.max_session_s
        try:
            await self._configure_vad()
            self._vad_task = asyncio.ensure_future(self._vad_loop())
            await self.send(self.events("session.created", session=self.config.render(self.beta)))
            await self.send(
                self.events(
                    "conversation.created", conversation={"id": self.conversation_id, "object": "realtime.conversation"}
                )
            )
            idle = self.realtime.idle_timeout_s or None
            self.last_activity = loop.time()
            while True:
                now = loop.time()
                # Idle means no client event and no answer running (a client listening to an answer is not idle).
                if self.response is not None and not self.response.done:
                    self.last_activity = now
                wake = min(ends, self.last_activity + idle) if idle else ends
                try:
                    async with asyncio.timeout_at(wake):  # receiving is cancel-safe: no message is lost
                        message = await self.channel.receive()
                except TimeoutError:
                    if self.response is not None:
                        self.last_activity = max(self.last_activity, self.response.ended_at or 0.0)
                    busy = self.response is not None and not self.response.done
                    if loop.time() >= ends or not (busy or (idle and loop.time() < self.last_activity + idle)):
                        await self._expire(loop.time() >= ends)
                        return
                    continue
                if message is None:
                    return
                self.last_activity = loop.time()
                await self.handle(message)
        except ClientGone:
            return
        finally:
            self._closed = True
            if self._vad_task is not None:
                self._vad_task.cancel()
                await asyncio.gather(self._vad_task, return_exceptions=True)
            if self.response is not None:
                await self.response.cancel("client_cancelled")

    async def _expire(self, session_limit: bool) -> None:
        if session_limit:
            minutes = self.realtime.max_session_s / 60
            error = invalid_request(
                f"Your session hit the maximum duration of {minutes:g} minutes.", None, code="session_expired"
            )
        else:
            error = invalid_request(
                f"The session was idle for {self.realtime.idle_timeout_s:g} s (no client event) and was closed.",
                None,
                code="idle_timeout",
            )
        if self.response is not None:
            await self.response.cancel("client_cancelled")
        await self.error(error)
        await self.channel.close(1000, error.code or "")

    async def handle(self, message: str | bytes) -> None:
        holder: dict = {}
        try:
            event = self._parse(message, holder)
            handler = getattr(self, "_on_" + event.type.replace(".", "_"))
            if isinstance(event, wire.InputAudioBufferAppend):  # only buffers: no turn to wait for
                await handler(event)
            else:
                async with self._turns:
                    await handler(event)
        except APIError as error:
            await self.error(error, holder.get("event_id"))
        except StoreUnavailable:  # retryable, as the HTTP routes' 503
            await self.error(store_unavailable(), holder.get("event_id"))
        except (ClientGone, asyncio.CancelledError):
            raise
        except Exception:  # a bug: reported like OpenAI's server_error, and the session goes on
            logger.exception("realtime event failed")
            await self.error(server_error(), holder.get("event_id"))

    def _parse(self, message: str | bytes, holder: dict) -> wire.ClientEvent:
        """The validated event; `holder["event_id"]` gets the client's event id as soon as it is known."""
        cap = self.realtime.max_event_bytes
        if len(message) > cap:
            raise APIError(
                f"The event is {len(message)} bytes; at most {cap} bytes are accepted per event.",
                code="event_too_large",
            )
        if isinstance(message, bytes):
            raise invalid_request(
                "Binary frames are not supported: send each event as JSON text.", None, code="invalid_json"
            )
        try:
            data = json.loads(message)
        except (ValueError, RecursionError):
            raise invalid_request("The event is not valid JSON.", None, code="invalid_json") from None
        if isinstance(data, dict) and isinstance(data.get("event_id"), str):
            holder["event_id"] = data["event_id"][:512]
        if not isinstance(data, dict) or not isinstance(data.get("type"), str):
            raise invalid_request("The event must be a JSON object with a string 'type'.", "type", code="invalid_event")
        if data["type"] not in wire.CLIENT_EVENT_TYPES:
            shown = data["type"][:100]
            raise invalid_request(
                f"Invalid value: '{shown}'. Supported values are: "
                + ", ".join(f"'{t}'" for t in wire.CLIENT_EVENT_TYPES)
                + ".",
                "type",
                code="invalid_value",
            )
        try:
            return _EVENTS.validate_python(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = [str(p) for p in first.get("loc", ())[1:]]  # the first is the union's tag
            param = ".".join(loc) or None
            raise invalid_request(f"Invalid '{param or 'event'}': {first.get('msg')}.", param) from None

    # -- session -----------------------------------------------------------------------------------------------
    async def _on_session_update(self, event: wire.SessionUpdate) -> None:
        new = self.config.patched(event.session, self.limits.max_tokens)
        if isinstance(new.voice, dict):
            await self.service.voice(new.voice, self.tenant, "session.audio.output.voice")
        old = self.config
        self.config = new
        if new.input_format != old.input_format:
            self.input = InputConverter(new.input_format)
        if new.vad_config() != old.vad_config():
            await self._configure_vad()
        await self.send(self.events("session.updated", session=new.render(self.beta)))

    async def _configure_vad(self) -> None:
        config = self.config.vad_config()
        if config is None:
            self.vad = None
            return
        detector = await self.service.detector()
        self.vad = detector.stream(config)
        self.vad_offset = self.samples_in
        self._vad_pending.clear()  # the new detector starts listening from here

    # -- input audio -------------------------------------------------------------------------------------------
    async def _on_input_audio_buffer_append(self, event: wire.InputAudioBufferAppend) -> None:
        raw = decode_base64(event.audio, "audio")
        cap = self.realtime.max_buffer_s
        if (self.buffer_len + len(raw) / bytes_per_second(self.config.input_format) * MODEL_RATE) / MODEL_RATE > cap:
            raise APIError(
                f"The input audio buffer would hold more than {cap:g} s of audio; this append was "
                "dropped. Commit or clear the buffer first.",
                "audio",
                code="input_audio_buffer_full",
            )
        pcm = self.input.convert(raw)
        self.buffer.append(pcm)
        self.buffer_len += len(pcm)
        self.samples_in += len(pcm)
        if self.vad is not None and len(pcm):
            self._vad_pending.append(pcm)
            self._vad_wake.set()

    async def _vad_loop(self) -> None:
        """Runs the detector over the audio appended since its last pass, and acts on what it finds."""
        while True:
            await self._vad_wake.wait()
            self._vad_wake.clear()
            vad, pending = self.vad, self._vad_pending
            self._vad_pending = []
            if vad is None or not pending:
                continue
            try:
                found = await vad.feed(np.concatenate(pending))
                async with self._turns:
                    if vad is not self.vad:  # turn detection was reconfigured meanwhile: these events are moot
                        continue
                    for vad_event in found:
                        await self._on_vad(vad_event)
                    if not vad.speaking:
                        # Only the prefix padding can still become part of a turn: bound what silence keeps.
                        keep = (self.config.turn_detection.prefix_padding_ms + 1000) * MODEL_RATE // 1000  # type: ignore[union-attr]
                        self._drop_before(self.vad_offset + vad.samples_seen - keep)
            except ClientGone:
                return
            except Exception:  # a bug or a failed detector pass: reported, and the session goes on listening
                logger.exception("realtime voice activity detection failed")
                try:
                    await self.error(server_error())
                except ClientGone:
                    return

    async def _on_vad(self, event: VADEvent) -> None:
        position = self.vad_offset + event.sample
        td = self.config.turn_detection
        assert td is not None
        if event.kind == "speech_started":
            self._drop_before(position)
            self.speech_item_id = new_id("item")
            await self.send(
                self.events(
                    "input_audio_buffer.speech_started",
                    audio_start_ms=position * 1000 // MODEL_RATE,
                    item_id=self.speech_item_id,
                )
            )
            if self.response is not None and not self.response.done and td.interrupt_response:
                await self.response.cancel("turn_detected")
            return
        item_id = self.speech_item_id or new_id("item")
        self.speech_item_id = None
        self.speech_stopped_at = time.monotonic()
        await self.send(
            self.events(
                "input_audio_buffer.speech_stopped", audio_end_ms=position * 1000 // MODEL_RATE, item_id=item_id
            )
        )
        try:
            await self._commit(item_id, end=position)
        except APIError as error:
            await self.error(error)
            return
        if td.create_response and (self.response is None or self.response.done):
            await self._start_response(None, self.speech_stopped_at)

    def _drop_before(self, position: int) -> None:
        """Forget buffered audio before session sample `position`."""
        drop = min(max(0, position - self.buffer_start), self.buffer_len)
        while drop and self.buffer:
            head = self.buffer[0]
            if len(head) <= drop:
                self.buffer.pop(0)
                cut = len(head)
            else:
                self.buffer[0] = head[drop:]
                cut = drop
            drop -= cut
            self.buffer_len -= cut
            self.buffer_start += cut

    def _take(self, end: int | None) -> np.ndarray:
        """Remove and return the buffered audio up to session sample `end` (None: all of it)."""
        audio = np.concatenate(self.buffer) if self.buffer else np.zeros(0, np.float32)
        n = len(audio) if end is None else min(len(audio), max(0, end - self.buffer_start))
        rest = audio[n:]
        self.buffer = [rest] if len(rest) else []
        self.buffer_len = len(rest)
        self.buffer_start += n
        return audio[:n]

    async def _on_input_audio_buffer_commit(self, event: wire.InputAudioBufferCommit) -> None:
        await self._commit(new_id("item"), end=None)

    async def _on_input_audio_buffer_clear(self, event: wire.InputAudioBufferClear) -> None:
        self._take(None)
        await self.send(self.events("input_audio_buffer.cleared"))

    async def _commit(self, item_id: str, end: int | None) -> None:
        if self.buffer_len * 1000 < MIN_COMMIT_MS * MODEL_RATE and end is None:
            ms = self.buffer_len * 1000 // MODEL_RATE
            raise invalid_request(
                f"Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_MS}ms of audio, but buffer only has {ms:.2f}ms of audio.",
                None,
                code="input_audio_buffer_commit_empty",
            )
        audio = self._take(end)
        tokens = await self.service.tokenize(audio)
        item = Item(
            id=item_id,
            role="user",
            content_type="input_audio",
            speech_tokens=tuple(tokens),
            audio_ms=len(audio) * 1000 // MODEL_RATE,
        )
        previous = self.conversation.add(item)
        await self.send(self.events("input_audio_buffer.committed", previous_item_id=previous, item_id=item.id))
        await self._announce(item, previous)

    async def _announce(self, item: Item, previous: str | None) -> None:
        rendered = item.render(self.events.content_type(item.content_type))
        for event in [*self.events.item_added(rendered, previous), *self.events.item_done(rendered, previous)]:
            await self.send(event)

    async def _on_output_audio_buffer_clear(self, event: wire.OutputAudioBufferClear) -> None:
        raise unsupported("output_audio_buffer.clear (WebRTC only)", "type")

    # -- conversation ------------------------------------------------------------------------------------------
    async def _on_conversation_item_create(self, event: wire.ConversationItemCreate) -> None:
        item = await self.service.item_from_client(event.item, self)
        previous = self.conversation.add(item, event.previous_item_id)
        await self._announce(item, previous)

    async def _on_conversation_item_retrieve(self, event: wire.ConversationItemRetrieve) -> None:
        item = self.conversation.get(event.item_id)
        await self.send(
            self.events("conversation.item.retrieved", item=item.render(self.events.content_type(item.content_type)))
        )

    async def _on_conversation_item_delete(self, event: wire.ConversationItemDelete) -> None:
        self.conversation.delete(event.item_id)
        await self.send(self.events("conversation.item.deleted", item_id=event.item_id))

    async def _on_conversation_item_truncate(self, event: wire.ConversationItemTruncate) -> None:
        if self.response is not None and not self.response.done and self.response.spec.item_id == event.item_id:
            raise invalid_request(
                "The item is still being generated: cancel the response before truncating it.",
                "item_id",
                code="item_in_progress",
            )
        self.conversation.truncate(event.item_id, event.content_index, event.audio_end_ms)
        await self.send(
            self.events(
                "conversation.item.truncated",
                item_id=event.item_id,
                content_index=event.content_index,
                audio_end_ms=event.audio_end_ms,
            )
        )

    # -- responses ---------------------------------------------------------------------------------------------
    async def _on_response_create(self, event: wire.ResponseCreate) -> None:
        if self.response is not None and not self.response.done:
            raise invalid_request(
                f"Conversation already has an active response in progress: "
                f"{self.response.spec.id}. Wait until the response is finished before creating "
                "a new one.",
                None,
                code="conversation_already_has_active_response",
            )
        await self._start_response(event.response, None)

    async def _on_response_cancel(self, event: wire.ResponseCancel) -> None:
        running = self.response if self.response is not None and not self.response.done else None
        if running is None or (event.response_id and event.response_id != running.spec.id):
            raise invalid_request(
                "Cancellation failed: no active response found.", "response_id", code="response_cancel_not_active"
            )
        await running.cancel("client_cancelled")

    async def _start_response(self, params: wire.ResponseParams | None, stopped_at: float | None) -> None:
        spec, dropped = await self.service.response_spec(self, params)
        for item in dropped:
            # The context is full: the oldest turns leave the conversation, and the client is told which.
            self.conversation.delete(item.id)
            await self.send(self.events("conversation.item.deleted", item_id=item.id))
        spec.speech_stopped_at = stopped_at
        spec.conversation_id = self.conversation_id
        hooks = ResponseHooks(
            replies=self.service.replies,
            tokenizer=self.service.tokenizer,
            admission=self.service.admission,
            tenant=self.tenant,
            send=self.send,
            events=self.events,
            conversation=self.conversation,
            observe_voice_to_voice=self.service.observe_voice_to_voice,
        )
        self.response = RealtimeResponse(spec, hooks)
        self.response.start()


def decode_base64(data: str, param: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise invalid_request(
            "Invalid 'audio'. Expected base64-encoded audio bytes.", param, code="invalid_base64"
        ) from None
