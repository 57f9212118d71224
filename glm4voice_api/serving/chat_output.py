"""Shapes a running chat turn into OpenAI objects: one response, or a stream of chunks.

Streaming audio follows OpenAI's observed wire shape: `delta.audio` chunks carrying `transcript` pieces and `data`
(base64 pcm16, 24 kHz mono little-endian), the first carrying `id`, then a chunk with only `expires_at`, then the
`finish_reason` chunk (so both SDK behaviours work), then the optional usage chunk.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np

from glm4voice_api.audio.encode import encode_whole, make_encoder
from glm4voice_api.engine.base import GenerationParams
from glm4voice_api.models.speech_decoder.chunks import Voice
from glm4voice_api.pipeline.spoken_turn import AudioChunk
from glm4voice_api.pipeline.turn import TranscriptDelta, Turn, TurnDone, TurnUsage
from glm4voice_api.protocol import chat as wire
from glm4voice_api.protocol.common import CompletionTokensDetails, PromptTokensDetails, Usage
from glm4voice_api.request_context import request_received
from glm4voice_api.serving.errors import engine_errors
from glm4voice_api.serving.replies import Replies
from glm4voice_api.store import Store, StoredAudio
from glm4voice_api.text.prompt import Prompt


@dataclass
class ChatPlan:
    """A validated request, ready to run."""

    prompt: Prompt
    params: GenerationParams
    stream: bool
    include_usage: bool
    created: int
    response_id: str
    model: str
    tenant: str
    audio_format: str | None  # None: text-only reply
    voice: Voice | None
    audio_id: str | None
    expires_at: int
    return_token_ids: bool = False
    started: float = field(default_factory=request_received)
    """When the request arrived: the first-audio latency counts from here."""


def usage_of(u: TurnUsage) -> Usage:
    return Usage(
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        total_tokens=u.prompt_tokens + u.completion_tokens,
        prompt_tokens_details=PromptTokensDetails(
            audio_tokens=u.prompt_audio_tokens,
            text_tokens=u.prompt_tokens - u.prompt_audio_tokens,
            cached_tokens=u.cached_tokens,
        ),
        completion_tokens_details=CompletionTokensDetails(
            audio_tokens=u.completion_audio_tokens, text_tokens=u.completion_text_tokens
        ),
    )


def _events(replies: Replies, turn: Turn, plan: ChatPlan) -> AsyncIterator:
    return replies.events(turn, spoken=plan.audio_format is not None, voice=plan.voice, stream=plan.stream)


async def _store_reply(store: Store, plan: ChatPlan, done: TurnDone) -> None:
    assert plan.audio_id is not None
    reply = StoredAudio(
        id=plan.audio_id,
        tenant=plan.tenant,
        token_ids=done.reply_ids,
        transcript=done.transcript,
        created_at=plan.created,
        expires_at=plan.expires_at,
    )
    await store.put_audio(reply)


async def complete(replies: Replies, store: Store, turn: Turn, plan: ChatPlan) -> wire.ChatCompletionResponse:
    done: TurnDone | None = None
    chunks: list[np.ndarray] = []
    meter = replies.meter(stream=False)
    async with engine_errors():
        async for event in _events(replies, turn, plan):
            if isinstance(event, TurnDone):
                done = event
            elif isinstance(event, AudioChunk):
                chunks.append(event.samples)
                meter.add(len(event.samples))
    assert done is not None
    meter.done()
    message = wire.ChatCompletionMessage(content=done.transcript)
    if plan.audio_format is not None:
        samples = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
        data = await asyncio.to_thread(encode_whole, plan.audio_format, samples, replies.sample_rate)
        await _store_reply(store, plan, done)
        message = wire.ChatCompletionMessage(
            content=None,
            audio=wire.ChatCompletionAudio(
                id=plan.audio_id,
                data=base64.b64encode(data).decode(),
                expires_at=plan.expires_at,
                transcript=done.transcript,
            ),
        )
    ids = plan.return_token_ids
    return wire.ChatCompletionResponse(
        id=plan.response_id,
        created=plan.created,
        model=plan.model,
        choices=[
            wire.Choice(message=message, finish_reason=done.finish_reason, token_ids=done.reply_ids if ids else None)
        ],
        usage=usage_of(done.usage),
        prompt_token_ids=plan.prompt.token_ids if ids else None,
    )


async def stream(replies: Replies, store: Store, turn: Turn, plan: ChatPlan) -> AsyncIterator[wire.ChatCompletionChunk]:
    def chunk(delta: wire.ChoiceDelta, finish_reason: str | None = None) -> wire.ChatCompletionChunk:
        return wire.ChatCompletionChunk(
            id=plan.response_id,
            created=plan.created,
            model=plan.model,
            choices=[wire.StreamChoice(delta=delta, finish_reason=finish_reason)],
        )

    audio = plan.audio_format is not None
    first_audio = [True]
    first_data = [False]

    def audio_delta(**fields: object) -> wire.ChatCompletionChunk:
        if first_audio[0]:
            fields["id"] = plan.audio_id
            first_audio[0] = False
        return chunk(wire.ChoiceDelta(audio=wire.DeltaAudio(**fields)))

    encoder = make_encoder("pcm16", input_rate=replies.sample_rate) if audio else None
    meter = replies.meter(stream=True)
    yield chunk(wire.ChoiceDelta(role="assistant", content=None if audio else ""))
    async with engine_errors():
        async for event in _events(replies, turn, plan):
            if isinstance(event, TranscriptDelta):
                yield audio_delta(transcript=event.text) if audio else chunk(wire.ChoiceDelta(content=event.text))
            elif isinstance(event, AudioChunk) and encoder is not None:
                meter.add(len(event.samples))
                if data := encoder.feed(event.samples):
                    if not first_data[0]:
                        first_data[0] = True
                        replies.first_audio_sent(plan.started)
                    yield audio_delta(data=base64.b64encode(data).decode())
            elif isinstance(event, TurnDone):
                meter.done()
                if encoder is not None:
                    if tail := encoder.finish():
                        yield audio_delta(data=base64.b64encode(tail).decode())
                    await _store_reply(store, plan, event)
                    yield audio_delta(expires_at=plan.expires_at)
                yield chunk(wire.ChoiceDelta(), finish_reason=event.finish_reason)
                if plan.include_usage:
                    yield wire.ChatCompletionChunk(
                        id=plan.response_id,
                        created=plan.created,
                        model=plan.model,
                        choices=[],
                        usage=usage_of(event.usage),
                    )
