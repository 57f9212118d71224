"""A turn with speech: the text turn's events plus decoded audio, as soon as each decoder chunk is ready.

Two tasks run side by side: one reads the engine stream (transcript and audio tokens) and pushes the audio tokens to
this reply's decoder session, one reads the decoded audio. Transcript pieces are never held up by the decoder, and
the first audio goes out as soon as the first chunk (10 tokens by default) is decoded; later chunks are sized by the
scheduler's chunk policy from the audio this stream has buffered. Whatever way the consumer leaves (end,
disconnect, error), both tasks are cancelled, the engine request is aborted and the decoder session is freed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from glm4voice_api.models.speech_decoder.chunks import Voice
from glm4voice_api.pipeline.decoder_scheduler import DecoderScheduler
from glm4voice_api.pipeline.turn import AudioTokensDelta, Turn, TurnDone, TurnEvent


@dataclass
class AudioChunk:
    samples: np.ndarray
    """float32 mono at the decoder's rate (22.05 kHz)."""


_END = object()


class SpokenTurn:
    def __init__(
        self, turn: Turn, scheduler: DecoderScheduler, voice: Voice | None = None, *, live: bool = False
    ) -> None:
        self.turn = turn
        self.scheduler = scheduler
        self.voice = voice
        self.live = live
        """The audio is streamed to a listener as it comes (the decoder may then hold chunks its buffer allows)."""

    async def events(self) -> AsyncIterator[TurnEvent | AudioChunk]:
        out: asyncio.Queue = asyncio.Queue()
        stream = self.scheduler.open_stream(self.voice, live=self.live)

        async def read_engine() -> None:
            try:
                done: TurnDone | None = None
                try:
                    async for event in self.turn.events():
                        if isinstance(event, TurnDone):
                            done = event
                            continue
                        if isinstance(event, AudioTokensDelta):
                            stream.push(event.tokens)
                        out.put_nowait(event)
                finally:
                    if not stream.closed:
                        stream.push([], final=True)  # flush the decoder in every case
                await decoder_task
                out.put_nowait(done)
            except Exception as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
                out.put_nowait(exc)
            out.put_nowait(_END)

        async def decode() -> None:
            # The scheduler decides when each chunk is due (from this stream's buffered audio), so audio is read
            # as it comes, independently of the token deltas.
            try:
                async for samples in stream.audio():
                    out.put_nowait(AudioChunk(samples))
            except Exception as exc:  # handed to the consumer at once
                # Now, not when the engine's reply ends: the consumer raises it and the engine request is aborted
                # (it would otherwise go on generating tokens nobody decodes).
                out.put_nowait(exc)
                raise

        decoder_task = asyncio.ensure_future(decode())
        engine_task = asyncio.ensure_future(read_engine())
        try:
            while (item := await out.get()) is not _END:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            # Synchronous cleanup first: under anyio's level-triggered cancellation (sse-starlette's disconnect
            # handling) every await in this block raises again, so nothing after the first await is guaranteed.
            for task in (engine_task, decoder_task):
                task.cancel()
            stream.close()
            await asyncio.gather(engine_task, decoder_task, return_exceptions=True)
