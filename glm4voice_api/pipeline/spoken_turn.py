"""A turn with speech: the text turn's events plus decoded audio, as soon as each decoder chunk is ready.

Two tasks run side by side: one reads the engine stream (transcript and audio tokens), one feeds the audio tokens
to this reply's decoder session. Transcript pieces are never held up by the decoder, and the first audio goes out
as soon as the schedule's first chunk (10 tokens by default) is decoded. Whatever way the consumer leaves (end,
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
    def __init__(self, turn: Turn, scheduler: DecoderScheduler, voice: Voice | None = None) -> None:
        self.turn = turn
        self.scheduler = scheduler
        self.voice = voice

    async def events(self) -> AsyncIterator[TurnEvent | AudioChunk]:
        out: asyncio.Queue = asyncio.Queue()
        tokens: asyncio.Queue = asyncio.Queue()
        stream = self.scheduler.open_stream(self.voice)

        async def read_engine() -> None:
            try:
                done: TurnDone | None = None
                try:
                    async for event in self.turn.events():
                        if isinstance(event, TurnDone):
                            done = event
                            continue
                        if isinstance(event, AudioTokensDelta):
                            tokens.put_nowait(event.tokens)
                        out.put_nowait(event)
                finally:
                    tokens.put_nowait(None)  # flush the decoder in every case
                await decoder_task
                out.put_nowait(done)
            except Exception as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
                out.put_nowait(exc)
            out.put_nowait(_END)

        async def decode() -> None:
            final = False
            while not final:
                batch = [await tokens.get()]
                while not tokens.empty():
                    batch.append(tokens.get_nowait())
                final = batch[-1] is None or None in batch
                new = [t for part in batch if part is not None for t in part]
                samples = await stream.feed(new, final=final)
                if len(samples):
                    out.put_nowait(AudioChunk(samples))

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
