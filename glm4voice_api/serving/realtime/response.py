"""One Realtime response: the same spoken turn as chat (engine -> transcript + audio tokens -> decoder) shaped
into the Realtime events, from `response.created` to `response.done`.

The response holds an admission lease while it runs (so a session counts against its tenant's concurrency only
while it generates). Cancelling its task (barge-in, `response.cancel`, the client leaving) ends the spoken turn:
the engine request is aborted and the decoder session freed before the task goes on to report `cancelled`.
Whatever was generated until then stays in the conversation, as exact ids, for `truncate` to cut.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from glm4voice_api.engine.base import GenerationParams
from glm4voice_api.errors import APIError
from glm4voice_api.models.speech_decoder.chunks import Voice
from glm4voice_api.pipeline.spoken_turn import AudioChunk
from glm4voice_api.pipeline.turn import TranscriptDelta, Turn, TurnDone, TurnUsage
from glm4voice_api.request_context import RequestContext, bind_request, unbind_request
from glm4voice_api.serving.admission import Admission
from glm4voice_api.serving.deadlines import AudioMeter
from glm4voice_api.serving.errors import engine_errors
from glm4voice_api.serving.realtime.audio_io import OutputConverter
from glm4voice_api.serving.realtime.config import render_format
from glm4voice_api.serving.realtime.conversation import Conversation, Item, audio_ms_of
from glm4voice_api.serving.realtime.events import ClientGone, EventFactory
from glm4voice_api.serving.replies import Replies
from glm4voice_api.text.prompt import Prompt
from glm4voice_api.text.tokenizer import GLM4Tokenizer

logger = logging.getLogger(__name__)


@dataclass
class ResponseSpec:
    """A `response.create` resolved against the session: everything the response needs, validated."""

    id: str
    item_id: str
    prompt: Prompt
    params: GenerationParams
    audio: bool
    output_format: str
    voice: Voice | None
    voice_name: str | dict
    speed: float
    max_output_tokens: int | str
    in_conversation: bool
    metadata: dict | None = None
    conversation_id: str | None = None
    speech_stopped_at: float | None = None
    """monotonic time of the `speech_stopped` that triggered it (voice-to-voice latency), if any."""


@dataclass
class ResponseHooks:
    replies: Replies
    tokenizer: GLM4Tokenizer
    admission: Admission
    tenant: str
    send: Callable[[dict], Awaitable[None]]
    events: EventFactory
    conversation: Conversation
    observe_voice_to_voice: Callable[[float], None] = lambda _s: None


@dataclass
class RealtimeResponse:
    spec: ResponseSpec
    hooks: ResponseHooks
    status: str = "in_progress"
    reason: str | None = None
    task: asyncio.Task | None = None
    error: APIError | None = None
    ended_at: float | None = None
    """Event-loop time when `response.done` was sent (the session's idle clock restarts there)."""
    _item: Item | None = field(default=None, repr=False)

    def start(self) -> None:
        self.task = asyncio.ensure_future(self._run())
        self.task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task) -> None:
        self.ended_at = asyncio.get_running_loop().time()
        if not task.cancelled() and (error := task.exception()) is not None:
            # Sending failed (the client left) or a bug: the session goes on (or ends) without this response.
            level = logging.DEBUG if isinstance(error, ClientGone) else logging.ERROR
            logger.log(level, "realtime response %s ended: %r", self.spec.id, error, exc_info=error)

    async def cancel(self, reason: str) -> None:
        """Stop generating now and wait until `response.done` (cancelled) has been sent."""
        if self.task is None or self.task.done():
            return
        self.reason = reason
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    @property
    def done(self) -> bool:
        return self.task is not None and self.task.done()

    # -- the run -----------------------------------------------------------------------------------------------
    def _response_object(self, output: list[dict], usage: TurnUsage | None) -> dict:
        s = self.spec
        obj: dict = {
            "id": s.id,
            "object": "realtime.response",
            "status": self.status,
            "output": output,
            "conversation_id": s.conversation_id if s.in_conversation else None,
            "output_modalities": ["audio"] if s.audio else ["text"],
            "max_output_tokens": s.max_output_tokens,
            "audio": {"output": {"format": render_format(s.output_format), "voice": s.voice_name}},
            "metadata": s.metadata,
        }
        if usage is not None:
            obj["usage"] = _usage(usage)
        if self.status in ("cancelled", "failed", "incomplete"):
            details: dict = {"type": self.status}
            if self.reason:
                details["reason"] = self.reason
            if self.error is not None:
                details["error"] = {"type": self.error.type, "code": self.error.code or "error"}
            obj["status_details"] = details
        return obj

    async def _run(self) -> None:
        h, s = self.hooks, self.spec
        ev = h.events
        await h.send(ev("response.created", response=self._response_object([], None)))
        try:
            lease = await h.admission.admit(h.tenant)
        except (APIError, asyncio.CancelledError) as error:
            if isinstance(error, APIError):  # refused: the tenant's concurrency, the server full, draining
                self.status, self.error = "failed", error
                await h.send(ev.error(error))
            else:  # cancelled while waiting for a slot
                if (task := asyncio.current_task()) is not None:
                    task.uncancel()
                self.status, self.reason = "cancelled", self.reason or "client_cancelled"
            await h.send(ev("response.done", response=self._response_object([], None)))
            return
        context = RequestContext(s.id, {"tenant": h.tenant}, lease=lease)
        token = bind_request(context)  # the drain and the time limits find the lease here (serving.deadlines)
        turn = h.replies.turn(s.prompt, s.params, s.id)
        item = self._item = Item(
            id=s.item_id,
            role="assistant",
            content_type="output_audio" if s.audio else "output_text",
            status="in_progress",
            transcript="" if s.audio else None,
            text=None if s.audio else "",
            speed=s.speed,
        )
        done: TurnDone | None = None
        out = OutputConverter(s.output_format, h.replies.sample_rate, s.speed) if s.audio else None
        pieces: list[str] = []
        try:
            previous = h.conversation.add(item) if s.in_conversation else None
            for event in ev.item_added(self._render(item), previous):
                await h.send(event)
            await h.send(ev("response.output_item.added", response_id=s.id, output_index=0, item=self._render(item)))
            part = {"type": "audio", "transcript": ""} if s.audio else {"type": "text", "text": ""}
            await h.send(
                ev(
                    "response.content_part.added",
                    response_id=s.id,
                    item_id=item.id,
                    output_index=0,
                    content_index=0,
                    part=part,
                )
            )
            done = await self._generate(turn, out, pieces)
            self.status = "completed" if done.finish_reason == "stop" else "incomplete"
            if done.finish_reason != "stop":
                self.reason = "max_output_tokens"
        except asyncio.CancelledError:
            # Swallowed on purpose: the cancel came from `cancel()` (barge-in, response.cancel), which waits for
            # the report below. The spoken turn's generators have already aborted the engine request and freed
            # the decoder session by the time the error reaches here.
            if (task := asyncio.current_task()) is not None:
                task.uncancel()
            self.status = "cancelled"
            self.reason = self.reason or "client_cancelled"
        except APIError as error:
            self.status, self.error = "failed", error
            await h.send(ev.error(error))
        finally:
            lease.release()
            unbind_request(token)
        await self._finish(turn, item, done, out, pieces)

    async def _generate(self, turn: Turn, out: OutputConverter | None, pieces: list[str]) -> TurnDone:
        h, s = self.hooks, self.spec
        common = {"response_id": s.id, "item_id": s.item_id, "output_index": 0, "content_index": 0}
        stream = h.replies.events(turn, spoken=out is not None, voice=s.voice, stream=True)
        meter = h.replies.meter(stream=True)
        try:
            async with engine_errors():
                done = await self._pump(stream, out, pieces, meter, common)
        finally:
            # Whatever ends the loop (the end, a cancel while sending, the client gone), the spoken turn is closed
            # here and now: its engine request aborted and its decoder session freed, not at garbage collection.
            await stream.aclose()
        meter.done()
        if out is not None and (tail := out.finish()):
            await h.send(h.events("response.output_audio.delta", **common, delta=base64.b64encode(tail).decode()))
        return done

    async def _pump(
        self, stream: AsyncIterator, out: OutputConverter | None, pieces: list[str], meter: AudioMeter, common: dict
    ) -> TurnDone:
        send, ev = self.hooks.send, self.hooks.events
        transcript = "response.output_audio_transcript.delta" if out is not None else "response.output_text.delta"
        done: TurnDone | None = None
        first_audio = True
        async for event in stream:
            if isinstance(event, TranscriptDelta):
                pieces.append(event.text)
                await send(ev(transcript, **common, delta=event.text))
            elif isinstance(event, AudioChunk) and out is not None:
                meter.add(len(event.samples))
                if data := out.feed(event.samples):
                    if first_audio:
                        first_audio = False
                        self._first_audio()
                    await send(ev("response.output_audio.delta", **common, delta=base64.b64encode(data).decode()))
            elif isinstance(event, TurnDone):
                done = event
        assert done is not None
        return done

    def _first_audio(self) -> None:
        if self.spec.speech_stopped_at is not None:
            self.hooks.observe_voice_to_voice(time.monotonic() - self.spec.speech_stopped_at)

    async def _finish(
        self, turn: Turn, item: Item, done: TurnDone | None, out: OutputConverter | None, pieces: list[str]
    ) -> None:
        h, s = self.hooks, self.spec
        ev = h.events
        if out is not None:
            out.close()
        reply = done.reply_ids if done is not None else list(turn.splitter.reply.all_ids)
        n_audio = sum(1 for t in reply if h.tokenizer.ids.is_audio(t))
        text = done.transcript if done is not None else "".join(pieces)
        item.reply_ids = reply
        item.status = "completed" if self.status == "completed" else "incomplete"
        if s.audio:
            item.transcript = text
            # What the client can have heard: the audio sent (a cancelled reply's tokens run ahead of it).
            item.audio_ms = min(audio_ms_of(n_audio, s.speed), out.ms_out) if out is not None else 0
        else:
            item.text = text
        common = {"response_id": s.id, "item_id": item.id, "output_index": 0, "content_index": 0}
        if s.audio:
            await h.send(ev("response.output_audio.done", **common))
            await h.send(ev("response.output_audio_transcript.done", **common, transcript=text))
            part = {"type": "audio", "transcript": text}
        else:
            await h.send(ev("response.output_text.done", **common, text=text))
            part = {"type": "text", "text": text}
        await h.send(ev("response.content_part.done", **common, part=part))
        rendered = self._render(item)
        await h.send(ev("response.output_item.done", response_id=s.id, output_index=0, item=rendered))
        if s.in_conversation and h.conversation.has(item.id):
            for event in ev.item_done(rendered, h.conversation.previous_id(item.id)):
                await h.send(event)
        usage = done.usage if done is not None else turn.usage
        await h.send(ev("response.done", response=self._response_object([rendered], usage)))

    def _render(self, item: Item) -> dict:
        return item.render(self.hooks.events.content_type(item.content_type))


def _usage(u: TurnUsage) -> dict:
    return {
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "input_tokens": u.prompt_tokens,
        "output_tokens": u.completion_tokens,
        "input_token_details": {
            "text_tokens": u.prompt_tokens - u.prompt_audio_tokens,
            "audio_tokens": u.prompt_audio_tokens,
            "image_tokens": 0,
            "cached_tokens": u.cached_tokens,
            "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
        },
        "output_token_details": {"text_tokens": u.completion_text_tokens, "audio_tokens": u.completion_audio_tokens},
    }
