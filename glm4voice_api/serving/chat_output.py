"""Shapes running chat turns (one per choice, `n`) into OpenAI objects: one response, or a stream of chunks.

Streaming audio follows OpenAI's observed wire shape: `delta.audio` chunks carrying `transcript` pieces and `data`
(base64 pcm16, 24 kHz mono little-endian), the first carrying `id`, then a chunk with only `expires_at`, then the
`finish_reason` chunk (so both SDK behaviours work), then the optional usage chunk. With `n` > 1 the choices' chunks
interleave as they are made, each with its `index` (and, spoken, its own audio id).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field

import numpy as np

from glm4voice_api.audio.b64 import Base64Pieces
from glm4voice_api.audio.encode import encode_whole, make_encoder
from glm4voice_api.engine.base import GenerationParams, TokenLogprob
from glm4voice_api.models.speech_decoder.chunks import Voice
from glm4voice_api.pipeline.spoken_turn import AudioChunk
from glm4voice_api.pipeline.turn import TranscriptDelta, Turn, TurnDone, TurnUsage
from glm4voice_api.protocol import chat as wire
from glm4voice_api.protocol.common import CompletionTokensDetails, PromptTokensDetails, Usage
from glm4voice_api.request_context import request_received
from glm4voice_api.serving.chat_text import StopText, merge, wire_logprobs
from glm4voice_api.serving.errors import engine_errors
from glm4voice_api.serving.replies import Replies
from glm4voice_api.store import Store, StoredAudio
from glm4voice_api.text.prompt import Prompt


@dataclass
class ChatPlan:
    """A validated request, ready to run."""

    prompt: Prompt
    params: list[GenerationParams]
    """One per choice (`n`); each its own seed when the request gave one."""
    stream: bool
    include_usage: bool
    created: int
    response_id: str
    model: str
    tenant: str
    audio_format: str | None  # None: text-only reply
    voice: Voice | None
    audio_ids: list[str | None]
    expires_at: int
    return_token_ids: bool = False
    system_fingerprint: str = ""
    stop: tuple[str, ...] = ()
    top_logprobs: int | None = None
    """None: no logprobs; else how many alternatives per token (0 and up)."""
    started: float = field(default_factory=request_received)
    """When the request arrived: the first-audio latency counts from here."""


def usage_of(usages: list[TurnUsage]) -> Usage:
    """The prompt once (every choice shares it), the completions summed."""
    first = usages[0]
    completion = sum(u.completion_tokens for u in usages)
    audio = sum(u.completion_audio_tokens for u in usages)
    return Usage(
        prompt_tokens=first.prompt_tokens,
        completion_tokens=completion,
        total_tokens=first.prompt_tokens + completion,
        prompt_tokens_details=PromptTokensDetails(
            audio_tokens=first.prompt_audio_tokens,
            text_tokens=first.prompt_tokens - first.prompt_audio_tokens,
            cached_tokens=first.cached_tokens,
        ),
        completion_tokens_details=CompletionTokensDetails(audio_tokens=audio, text_tokens=completion - audio),
    )


@dataclass
class _Text:
    text: str
    logprobs: list[TokenLogprob] | None


@dataclass
class _Audio:
    data: str  # base64: pcm16 pieces when streaming, the whole encoded file at the end otherwise


@dataclass
class _Done:
    finish_reason: str
    usage: TurnUsage
    reply_ids: list[int]
    transcript: str


async def _store_reply(store: Store, plan: ChatPlan, audio_id: str, done: _Done) -> None:
    reply = StoredAudio(
        id=audio_id,
        tenant=plan.tenant,
        token_ids=done.reply_ids,
        transcript=done.transcript,
        created_at=plan.created,
        expires_at=plan.expires_at,
    )
    await store.put_audio(reply)


async def _choice(replies: Replies, store: Store, turn: Turn, plan: ChatPlan, index: int) -> AsyncIterator:
    """One choice's text pieces, audio and end (`_Text`, `_Audio`, `_Done`); its reply stored when spoken."""
    spoken = plan.audio_format is not None
    stopper = StopText(plan.stop)
    pieces = Base64Pieces(frame_bytes=2)  # pcm16: the SDK joins the strings, so every piece is 6-byte aligned
    encoder = make_encoder("pcm16", input_rate=replies.sample_rate) if spoken and plan.stream else None
    chunks: list[np.ndarray] = []
    meter = replies.meter(stream=plan.stream)
    first_data = True
    done: _Done | None = None
    if index == 0:
        replies.reply_started(plan.started)
    events = replies.events(turn, spoken=spoken, voice=plan.voice, stream=plan.stream)
    async with engine_errors(), aclosing(events):
        async for event in events:
            if isinstance(event, TranscriptDelta):
                text = stopper.feed(event.text)
                if text or event.logprobs:
                    yield _Text(text, event.logprobs)
                if stopper.stopped:
                    # The text reached a stop string: leaving the loop closes the turn, which aborts the engine
                    # request (no tokens made past what the client gets).
                    done = _Done("stop", turn.usage, list(turn.splitter.reply.all_ids), stopper.text)
                    break
            elif isinstance(event, AudioChunk):
                meter.add(len(event.samples))
                if encoder is None:
                    chunks.append(event.samples)
                elif data := pieces.feed(encoder.feed(event.samples)):
                    if first_data and index == 0:
                        replies.first_audio_sent(plan.started)
                    first_data = False
                    yield _Audio(data)
            elif isinstance(event, TurnDone):
                meter.done()
                if tail := stopper.flush():
                    yield _Text(tail, None)
                done = _Done(event.finish_reason, event.usage, event.reply_ids, event.transcript)
    assert done is not None
    if spoken:
        if encoder is not None:
            if tail := pieces.feed(encoder.finish()) + pieces.finish():
                yield _Audio(tail)
        else:
            samples = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
            data = await asyncio.to_thread(encode_whole, plan.audio_format, samples, replies.sample_rate)
            yield _Audio(base64.b64encode(data).decode())
        audio_id = plan.audio_ids[index]
        assert audio_id is not None
        await _store_reply(store, plan, audio_id, done)
    yield done


async def complete(replies: Replies, store: Store, turns: list[Turn], plan: ChatPlan) -> wire.ChatCompletionResponse:
    async def one(index: int) -> tuple[wire.Choice, _Done]:
        logprobs: list[TokenLogprob] = []
        audio, done = "", None
        async with aclosing(_choice(replies, store, turns[index], plan, index)) as items:
            async for item in items:
                if isinstance(item, _Text):
                    logprobs += item.logprobs or []
                elif isinstance(item, _Audio):
                    audio = item.data
                elif isinstance(item, _Done):
                    done = item
        assert done is not None
        if plan.audio_format is None:
            message = wire.ChatCompletionMessage(content=done.transcript)
        else:
            message = wire.ChatCompletionMessage(
                content=None,
                audio=wire.ChatCompletionAudio(
                    id=plan.audio_ids[index], data=audio, expires_at=plan.expires_at, transcript=done.transcript
                ),
            )
        choice = wire.Choice(
            index=index,
            message=message,
            finish_reason=done.finish_reason,
            logprobs=_logprobs(replies, plan, logprobs),
            token_ids=done.reply_ids if plan.return_token_ids else None,
        )
        return choice, done

    # A task group: a failed choice cancels the others (their engine requests aborted), as a cancelled request does.
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(one(i)) for i in range(len(turns))]
    results = [t.result() for t in tasks]
    return wire.ChatCompletionResponse(
        id=plan.response_id,
        created=plan.created,
        model=plan.model,
        choices=[c for c, _ in results],
        usage=usage_of([d.usage for _, d in results]),
        system_fingerprint=plan.system_fingerprint,
        prompt_token_ids=plan.prompt.token_ids if plan.return_token_ids else None,
    )


def _logprobs(replies: Replies, plan: ChatPlan, entries: list[TokenLogprob] | None) -> wire.ChoiceLogprobs | None:
    if plan.top_logprobs is None or entries is None:
        return None
    return wire.ChoiceLogprobs(content=wire_logprobs(replies.tokenizer, entries, plan.top_logprobs))


def _chunk(plan: ChatPlan, choices: list[wire.StreamChoice], usage: Usage | None = None) -> wire.ChatCompletionChunk:
    chunk = wire.ChatCompletionChunk(
        id=plan.response_id,
        created=plan.created,
        model=plan.model,
        choices=choices,
        usage=usage,
        system_fingerprint=plan.system_fingerprint,
    )
    return chunk.with_usage_key() if plan.include_usage else chunk


async def stream(
    replies: Replies, store: Store, turns: list[Turn], plan: ChatPlan
) -> AsyncIterator[wire.ChatCompletionChunk]:
    audio = plan.audio_format is not None

    def chunk(index: int, delta: wire.ChoiceDelta, finish_reason: str | None = None, logprobs=None):
        return _chunk(
            plan, [wire.StreamChoice(index=index, delta=delta, finish_reason=finish_reason, logprobs=logprobs)]
        )

    first_audio = set(range(len(turns)))

    def audio_delta(index: int, **fields: object) -> wire.ChatCompletionChunk:
        if index in first_audio:
            fields["id"] = plan.audio_ids[index]
            first_audio.discard(index)
        return chunk(index, wire.ChoiceDelta(audio=wire.DeltaAudio(**fields)))

    for index in range(len(turns)):
        yield chunk(index, wire.ChoiceDelta(role="assistant", content=None if audio else ""))
    usages: list[TurnUsage] = []
    choices = [_choice(replies, store, turn, plan, i) for i, turn in enumerate(turns)]
    async with aclosing(merge(choices)) as items:
        async for index, item in items:
            if isinstance(item, _Text):
                logprobs = _logprobs(replies, plan, item.logprobs)
                if audio:
                    out = audio_delta(index, transcript=item.text)
                    out.choices[0].logprobs = logprobs
                    yield out
                else:
                    yield chunk(index, wire.ChoiceDelta(content=item.text), logprobs=logprobs)
            elif isinstance(item, _Audio):
                yield audio_delta(index, data=item.data)
            elif isinstance(item, _Done):
                usages.append(item.usage)
                if audio:
                    yield audio_delta(index, expires_at=plan.expires_at)
                yield chunk(index, wire.ChoiceDelta(), finish_reason=item.finish_reason)
    if plan.include_usage:
        yield _chunk(plan, [], usage_of(usages))
